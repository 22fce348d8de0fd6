"""Time a teacher and a student ONNX file with plain ONNX Runtime: one timing window.

``lana verify DIR --independent`` runs this module once per window, each time in a fresh
Python process, so that nothing of the process that trained, profiled or exported the
networks (threads, allocator state, caches, lana's own timing code) takes part. It imports
only the standard library, numpy and onnxruntime, never torch or lana's measuring code
(:mod:`lana.latency.timing`, :mod:`lana.latency.profile`), and prints one JSON object on
stdout. Run it by hand the same way::

    python -m lana.latency.ort_timer DIR/teacher/model.onnx DIR/students/speedup2/model/model.onnx

What it does: one ``onnxruntime.InferenceSession`` per file (CPU provider,
``intra_op_num_threads=--threads``, ``inter_op_num_threads=1``, sequential execution,
ONNX Runtime's default graph optimisations), one random input of ``--batch-size`` images fed
with ``session.run``; ``--warmup`` untimed runs of each; then ``--rounds`` rounds in which
each network runs ``n`` times, every run timed with ``time.perf_counter``, the order of the
two networks alternating from round to round. ``n`` is chosen from the warm-up so that a
round takes about ``--round-seconds`` per network (at least 3 runs). Per round the median of
each network's runs is kept; the window's figures are the medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

TIMER_FORMAT = "lana-ort-timer/1"


def _session(path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: ORT warns about unused initialisers
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _runner(path: str, threads: int, batch_size: int) -> Callable[[], object]:
    """A zero-argument call running the ONNX file ``path`` once on a fixed random input."""
    import numpy as np

    session = _session(path, threads)
    inp = session.get_inputs()[0]
    shape = [batch_size if i == 0 and not isinstance(d, int) else d
             for i, d in enumerate(inp.shape)]
    if not all(isinstance(d, int) for d in shape):
        raise SystemExit(f"{path}: input {inp.name} has a dynamic shape {inp.shape} other "
                         "than the batch dimension; cannot make an input for it")
    if shape[0] != batch_size:
        raise SystemExit(f"{path} takes batches of {shape[0]} (its input shape is static: "
                         f"{shape}), not {batch_size}")
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {inp.name: x}
    return lambda: session.run(None, feed)


def _timed(run: Callable[[], object], n: int) -> float:
    """The median of ``n`` runs of ``run``, each timed alone, in ms."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def time_pair(teacher: str, student: str, *, threads: int = 1, batch_size: int = 1,
              warmup: int = 10, rounds: int = 20, round_seconds: float = 0.1) -> dict:
    """Time the ONNX files ``teacher`` and ``student`` interleaved in rounds (see the
    module doc). Returns the window's record: ``teacher_ms``, ``student_ms`` and
    ``speedup`` (medians over rounds of the round medians and of their ratios),
    ``rounds`` ([teacher ms, student ms] per round), the runs per round, the process id
    and the onnxruntime version."""
    import onnxruntime as ort

    if rounds < 1 or warmup < 0 or threads < 1 or batch_size < 1:
        raise SystemExit("rounds, threads and batch size must be >= 1, warmup >= 0")
    started = time.time()
    runs = {"teacher": _runner(teacher, threads, batch_size),
            "student": _runner(student, threads, batch_size)}
    per_run = {}
    for name, run in runs.items():
        for _ in range(max(warmup, 1)):  # the first run allocates: never timed
            run()
        per_run[name] = _timed(run, 3)
    # As many runs as fill a round of the slower network: both get the same count.
    n = max(3, min(10_000, int(round_seconds * 1e3 / max(per_run.values()))))
    medians = []
    for r in range(rounds):
        order = ("teacher", "student") if r % 2 == 0 else ("student", "teacher")
        medians.append({name: _timed(runs[name], n) for name in order})
    rows = [[m["teacher"], m["student"]] for m in medians]
    return {"format": TIMER_FORMAT, "pid": os.getpid(), "started": started, "at": time.time(),
            "teacher_ms": statistics.median(t for t, _ in rows),
            "student_ms": statistics.median(s for _, s in rows),
            "speedup": statistics.median(t / s for t, s in rows),
            "rounds": rows, "runs_per_round": n, "warmup": max(warmup, 1),
            "threads": threads, "batch_size": batch_size,
            "onnxruntime": ort.__version__, "python": sys.version.split()[0],
            # What this process imported of lana: evidence that no timing code of it ran.
            "lana_modules": sorted(m for m in sys.modules if m.split(".")[0] == "lana")}


def main(argv: list[str] | None = None) -> int:
    """Command line: time two ONNX files and print the window's JSON record."""
    p = argparse.ArgumentParser(prog="python -m lana.latency.ort_timer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("teacher", help="the teacher's ONNX file (DIR/teacher/model.onnx)")
    p.add_argument("student", help="the student's ONNX file (.../model/model.onnx)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--batch-size", type=int, default=1, help="images per run (default 1)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs each (default 10)")
    p.add_argument("--rounds", type=int, default=20, help="timed rounds (default 20)")
    p.add_argument("--round-seconds", type=float, default=0.1,
                   help="about how long each network runs per round (default 0.1)")
    a = p.parse_args(argv)
    for path in (a.teacher, a.student):
        if not os.path.isfile(path):
            raise SystemExit(f"{path} does not exist")
    res = time_pair(a.teacher, a.student, threads=a.threads, batch_size=a.batch_size,
                    warmup=a.warmup, rounds=a.rounds, round_seconds=a.round_seconds)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
