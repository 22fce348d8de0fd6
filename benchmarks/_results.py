"""Shared by the benchmarks: the machine description and RESULTS.md section updates."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """CPU model and core count from /proc/cpuinfo, plus the Python version."""
    cpu, n = platform.processor() or platform.machine(), 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("processor"):
                n += 1
    except OSError:
        pass
    return f"{cpu}, {n or os.cpu_count()} cores (/proc/cpuinfo), Python {platform.python_version()}"


# A section's last line that links its entry in HISTORY.md (earlier runs, by-hand notes).
HISTORY_LINE = "History: "


def replace_section(text: str, heading: str, body: str) -> str:
    """Replace (or append) the section starting at ``heading``, keeping the others.

    A new section goes at the end, so the ``## Headline`` at the top stays first. The old
    section's ``History: ...`` link to HISTORY.md is kept (appended) unless ``body`` has it."""
    start = text.find(heading)
    if start < 0:
        return text.rstrip() + "\n\n" + body
    end = text.find("\n## ", start + len(heading))
    old = text[start:] if end < 0 else text[start:end]
    kept = [ln for ln in old.splitlines() if ln.startswith(HISTORY_LINE) and ln not in body]
    if kept:
        body = body.rstrip("\n") + "\n\n" + "\n".join(kept) + "\n"
    if end < 0:
        return text[:start] + body
    # A blank line before the next heading, however the body ends.
    return text[:start] + body.rstrip("\n") + "\n\n" + text[end + 1:]


def write_section(heading: str, body: str, reading: Path | None = None) -> None:
    """Rewrite this benchmark's section of RESULTS.md; ``reading``, a by-hand reading kept
    beside the results, is appended when it exists."""
    if reading is not None and reading.exists():
        body = body.rstrip("\n") + "\n\n" + reading.read_text().strip() + "\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    RESULTS.write_text(replace_section(text, heading, body))


def cached_json(path: Path, compute: Callable[[], dict]) -> dict:
    """``path``'s JSON if it exists, else ``compute()`` written there atomically: one
    resumable step of a benchmark, so a re-run skips what is done."""
    if path.exists():
        return json.loads(path.read_text())
    row = compute()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=1))
    tmp.replace(path)
    return row
