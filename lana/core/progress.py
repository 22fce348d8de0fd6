"""Progress bars and terminal output (rich), in one place so every stage looks the same."""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class _LineProgress:
    """Progress for logs (stderr not a terminal): one line per task at every 25%, and one
    at least every ``every`` seconds in between (with an ETA), so that an hour-long stage
    under nohup or torchrun shows it is alive."""

    def __init__(self, every: float = 60.0) -> None:
        self.tasks: dict[int, dict] = {}
        self.every = every

    def __enter__(self) -> _LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for t in self.tasks.values():
            if t["completed"] < (t["total"] or 0):
                self._line(t, "stopped")

    def add_task(self, description: str, total: float | None = None, completed: float = 0,
                 **fields: object) -> int:
        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total, "completed": completed,
                           "next": 0.25, "info": fields.get("info", ""), "start": time.time(),
                           "last": time.time()}
        return tid

    def update(self, task: int, advance: float = 0, completed: float | None = None,
               info: str | None = None, total: float | None = None, **_: object) -> None:
        t = self.tasks[task]
        if total is not None:
            t["total"] = total
        t["completed"] = completed if completed is not None else t["completed"] + advance
        if info is not None:
            t["info"] = info
        if t["total"]:
            frac = t["completed"] / t["total"]
            if frac >= t["next"] - 1e-9:
                while t["next"] <= frac + 1e-9:
                    t["next"] += 0.25
                self._line(t, f"{frac:.0%}")
            elif time.time() - t["last"] >= self.every and frac > 0:
                elapsed = time.time() - t["start"]
                self._line(t, f"{frac:.0%}, eta {elapsed * (1 - frac) / frac:.0f} s")

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    @staticmethod
    def _line(t: dict, what: str) -> None:
        t["last"] = time.time()
        elapsed = t["last"] - t["start"]
        console.print(f"{t['description']}: {what} ({t['completed']:g}/{t['total']:g}) "
                      f"{t['info']} [{elapsed:.0f} s]", highlight=False)


def progress() -> Progress | _LineProgress:
    """A rich Progress with ETA on a terminal; occasional plain lines in logs."""
    if os.environ.get("LANA_PROGRESS", "1") == "0":
        return Progress(console=console, disable=True)
    if not sys.stderr.isatty():
        return _LineProgress()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), console=console, transient=False)


def log(message: str) -> None:
    """One line of status for the user (stderr, so stdout stays machine-readable)."""
    console.print(message, highlight=False)


def duration(seconds: float) -> str:
    """A duration as a person reads it: seconds, minutes or hours."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
