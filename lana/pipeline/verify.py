"""``lana verify --independent``: the exported files timed the way a user would time them.

lana's own checks time the teacher and the student with its measuring code
(:mod:`lana.latency.timing`), inside the process that built them. A user checking the promised
speed-up times the ONNX files instead, with a plain ONNX Runtime loop of their own. This
mode does the same: every timing window runs :mod:`lana.latency.ort_timer` in a fresh Python
process (``sys.executable -m lana.latency.ort_timer``), which loads ``DIR/teacher/model.onnx`` and
the student's ``model/model.onnx`` with ``onnxruntime.InferenceSession`` and times them
interleaved in rounds with ``time.perf_counter``; none of lana's measuring code runs there.
Windows are spread out in time (``gap_s``), since a shared machine's speed moves between
windows.

Per window the record holds the medians over rounds (teacher ms, student ms, speed-up), the
per-round figures and the pid of the process that timed it. Windows are stored as they end
under the ``independent`` key of ``students/<budget>/verify.json`` (re-running adds
windows; they are dropped when the ONNX files or the thread count and batch size change),
summarised in ``summary.json`` (``independent_verify`` per student) and in the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lana.core.io import read_json, write_json
from lana.core.layout import EXPORT, SUMMARY, TEACHER_ONNX, VERIFY
from lana.core.progress import log
from lana.errors import ArtifactError, ConfigError, LanaError

if TYPE_CHECKING:  # pragma: no cover
    from lana.config import BudgetConfig
    from lana.pipeline.runner import Run

#: Timed rounds per window; each network runs about ``12 * latency.max_seconds`` in all
#: per window, as in export's check, spread over the rounds.
ROUNDS = 20
#: Seconds at least between the starts of two windows, unless told otherwise.
DEFAULT_GAP_S = 300.0
# Comparisons of floats written to JSON and read back: a speed-up of exactly the budget
# holds it.
_EPS = 1e-9


def supported_backends() -> list[str]:
    """The registered latency backends this mode can check: ONNX Runtime on the CPU."""
    from lana.latency.backends import BACKENDS

    return sorted(name for name in BACKENDS if _is_ort_cpu(name))


def _is_ort_cpu(name: str) -> bool:
    from lana.latency.backends import OnnxRuntimeBackend, get_backend

    backend = get_backend(name)
    return (isinstance(backend, OnnxRuntimeBackend)
            and backend.provider == "CPUExecutionProvider")


def require_supported(backend: str) -> None:
    """ConfigError unless ``backend`` (a run's ``latency.backend``) is timed by ONNX Runtime
    on the CPU: the only runtime the independent timer uses, so the only one whose budget it
    can confirm."""
    if not _is_ort_cpu(backend):
        raise ConfigError(
            f"`lana verify --independent` times the exported ONNX files with ONNX Runtime on "
            f"the CPU, so it supports only the latency backend(s) "
            f"{', '.join(supported_backends())}; this run measured with {backend!r}. Use "
            "`lana verify` without --independent, which times with the run's own backend")


def budget_holds(budget: dict, budget_ms: float, speedup: float, student_ms: float) -> bool:
    """Whether one window meets ``budget`` (``{"speedup": x}`` or ``{"latency_ms": y}``,
    as export.json records it): the teacher/student speed-up at least the budget's for a
    speed-up budget; the student's ms at most ``budget_ms`` for a millisecond budget."""
    if budget.get("speedup") is not None:
        return speedup >= budget["speedup"] * (1 - _EPS)
    return student_ms <= budget_ms * (1 + _EPS)


def summarize(windows: Sequence[dict], budget: dict, budget_ms: float) -> dict:
    """The distribution over ``windows`` (records of :func:`time_window`): the speed-up's
    median, min and max, the median teacher and student ms, whether the budget holds in
    each window, and ``meets_budget``: whether it holds for the medians over windows."""
    if not windows:
        raise ConfigError("no independent timing windows yet: run with --windows 1 or more")
    speedups = [w["speedup"] for w in windows]
    holds = [budget_holds(budget, budget_ms, w["speedup"], w["student_ms"]) for w in windows]
    med = {"speedup": statistics.median(speedups),
           "teacher_ms": statistics.median(w["teacher_ms"] for w in windows),
           "student_ms": statistics.median(w["student_ms"] for w in windows)}
    return {"window_count": len(windows), "speedup_median": med["speedup"],
            "speedup_min": min(speedups), "speedup_max": max(speedups),
            "teacher_ms_median": med["teacher_ms"], "student_ms_median": med["student_ms"],
            "holds": holds, "windows_held": sum(holds),
            "meets_budget": budget_holds(budget, budget_ms, med["speedup"],
                                         med["student_ms"]),
            "budget": budget, "budget_ms": budget_ms}


def time_window(teacher_onnx: Path, student_onnx: Path, *, threads: int, batch_size: int,
                warmup: int, rounds: int = ROUNDS, round_seconds: float = 0.18) -> dict:
    """One window: :mod:`lana.latency.ort_timer` in a fresh process of ``sys.executable`` on the two
    ONNX files; returns its record. LanaError, with the process's last words, when it
    fails."""
    cmd = [sys.executable, "-m", "lana.latency.ort_timer", str(Path(teacher_onnx).resolve()),
           str(Path(student_onnx).resolve()),
           "--threads", str(threads), "--batch-size", str(batch_size),
           "--warmup", str(warmup), "--rounds", str(rounds),
           "--round-seconds", f"{round_seconds:g}"]
    # The child imports this very copy of lana (only lana.latency.ort_timer), installed or not:
    # `-m` looks in the working directory first, so it runs from the one holding lana.
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH"))
                                         if p)}
    # Generous: a window takes about 2 * rounds * round_seconds plus the process start.
    limit = 600 + 20 * rounds * round_seconds
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root,
                              timeout=limit)
    except subprocess.TimeoutExpired:
        raise LanaError(f"the timing process did not finish within {limit:.0f} s: "
                        f"{' '.join(cmd)}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
        raise LanaError(f"the timing process failed (exit code {proc.returncode}): "
                        + " | ".join(last) + f"\ncommand: {' '.join(cmd)}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise LanaError(f"the timing process printed no result: {proc.stdout[-500:]!r}"
                        ) from None


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _key(teacher_onnx: Path, student_onnx: Path, threads: int, batch_size: int) -> dict:
    """What a window's figures depend on: windows of another key are not comparable."""
    return {"teacher_onnx_sha256": _digest(teacher_onnx),
            "student_onnx_sha256": _digest(student_onnx),
            "threads": threads, "batch_size": batch_size}


def student_onnx(sdir: Path, exp: dict) -> Path:
    """The exported student's ONNX file (export.json's ``files``); ArtifactError when the
    export wrote none or it is gone."""
    rel = (exp.get("files") or {}).get("onnx")
    path = sdir / rel if rel else None
    if path is None or not path.exists():
        raise ArtifactError(f"{sdir / 'model'} holds no exported ONNX student; export it "
                            "again (delete export.json, then `lana export`)")
    return path


def independent_summary(run_dir: Path, sdir: Path) -> dict | None:
    """The ``independent_verify`` entry of ``summary.json`` for the student in ``sdir``:
    :func:`summarize` of its stored windows; None when there are none, or when they timed
    other ONNX files than the run directory holds now (a student exported again)."""
    vpath, epath = sdir / VERIFY, sdir / EXPORT
    if not (vpath.exists() and epath.exists()):
        return None
    ind = read_json(vpath).get("independent") or {}
    exp = read_json(epath)
    teacher = run_dir / TEACHER_ONNX
    if not ind.get("windows") or not teacher.exists():
        return None
    try:
        student = student_onnx(sdir, exp)
    except ArtifactError:
        return None
    key = ind.get("key", {})
    if _key(teacher, student, key.get("threads"), key.get("batch_size")) != key:
        return None
    return summarize(ind["windows"], exp["budget"], exp["budget_ms"])



def _wait_for_gap(windows: list[dict], gap_s: float) -> None:
    """Sleep until ``gap_s`` seconds after the last stored window ended."""
    if not windows:
        return
    wait = windows[-1]["at"] + gap_s - time.time()
    if wait > 0:
        log(f"verify --independent: next window in {wait:.0f} s (windows are spread out in "
            "time)")
        time.sleep(wait)


def verify_independent(run: Run, budget: BudgetConfig | None = None, windows: int = 3,
                       gap_s: float = DEFAULT_GAP_S,
                       on_window: Callable[[int, dict], None] | None = None) -> dict:
    """Time the exported student against ``teacher/model.onnx`` in ``windows`` more
    windows, each in a fresh process, at least ``gap_s`` seconds apart (see the module
    doc); ``on_window(n, record)`` after each. Stores the windows in ``verify.json`` and
    the summary in ``summary.json``. Returns the stored record (``key``, ``windows``) with
    :func:`summarize`'s figures and the two files' paths."""
    if windows < 0 or gap_s < 0:
        raise ConfigError("windows and gap must be >= 0")
    budget = budget or run.config.search.budget
    lat = run.config.latency
    require_supported(lat.backend)
    exp = run.exported(budget)
    sdir = run.student_dir(budget)
    student = student_onnx(sdir, exp)
    teacher = run.teacher_onnx()
    path = sdir / VERIFY
    record = read_json(path) if path.exists() else {"sessions": []}
    key = _key(teacher, student, lat.threads, lat.batch_size)
    ind = record.get("independent") or {}
    if ind.get("windows") and ind.get("key") != key:
        log("[yellow]verify --independent: the ONNX files or the thread count / batch size "
            f"changed since the {len(ind['windows'])} stored window(s); they are "
            "dropped[/yellow]")
    if ind.get("key") != key:
        ind = {"key": key, "windows": []}
    for n in range(windows):
        _wait_for_gap(ind["windows"], gap_s)
        w = time_window(teacher, student, threads=lat.threads, batch_size=lat.batch_size,
                        warmup=lat.warmup, round_seconds=12 * lat.max_seconds / ROUNDS)
        w["holds"] = budget_holds(exp["budget"], exp["budget_ms"], w["speedup"],
                                  w["student_ms"])
        ind["windows"].append(w)
        record["independent"] = ind
        write_json(path, record)  # as each window ends: Ctrl-C loses only the one under way
        if on_window is not None:
            on_window(n, w)
    summary = summarize(ind["windows"], exp["budget"], exp["budget_ms"])
    _update_summary(run.dir, exp["budget"], summary)
    return {**ind, **summary, "teacher_onnx": str(teacher), "student_onnx": str(student)}


def _update_summary(run_dir: Path, budget: dict, entry: dict) -> None:
    """Set the student's ``independent_verify`` in an existing ``summary.json`` in place
    (rewriting the whole summary would re-read every stage)."""
    path = run_dir / SUMMARY
    if not path.exists():
        return
    summary = read_json(path)
    for s in summary.get("students", []):
        if s.get("budget") == budget:
            s["independent_verify"] = entry
    write_json(path, summary)


__all__ = ["DEFAULT_GAP_S", "budget_holds", "independent_summary",
           "require_supported", "summarize", "supported_backends", "time_window",
           "verify_independent"]
