"""Progress bars and terminal output (rich), in one place so every stage looks the same."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)


def _enabled() -> bool:
    return os.environ.get("LANA_PROGRESS", "1") != "0" and sys.stderr.isatty()


def progress() -> Progress:
    """A rich Progress with ETA; it renders nothing when stderr is not a terminal."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console, disable=not _enabled(),
                    transient=False)


def track(items: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
    """Iterate ``items`` with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress() as bar:
        task = bar.add_task(description, total=total, info="")
        for item in items:
            yield item
            bar.advance(task)


def log(message: str) -> None:
    """One line of status for the user (stderr, so stdout stays machine-readable)."""
    console.print(message, highlight=False)
