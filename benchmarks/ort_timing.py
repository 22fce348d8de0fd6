"""An independent stopwatch: plain ONNX Runtime, none of lana's measuring code.

This is how a user checks lana's claim with their own tools: export every network with
``torch.onnx.export`` (not lana's exporter), open one ``InferenceSession`` per network with
one intra-op thread, and time batch-1 runs with ``time.perf_counter``, the teacher
interleaved with every other network in the same rounds. A speed-up is the teacher's
median over the network's median *within one round*, so a machine that speeds up or slows
down between rounds does not move it. Windows are groups of rounds minutes apart; each is
reported on its own.

Usage (in a fresh process, after the networks were exported)::

    python benchmarks/ort_timing.py DIR --windows 3 --gap 120 --out timing.json

``DIR`` holds ``teacher.onnx`` and one ``<name>.onnx`` per network.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any


def export(model: Any, path: Path, input_shape: tuple[int, ...]) -> Path:
    """``torch.onnx.export`` of ``model`` (eval mode) at batch 1, the plain legacy exporter
    with its default constant folding: what a user's own export script does."""
    import torch

    model = model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, *input_shape),), str(path),
                          input_names=["x"], output_names=["y"], opset_version=17,
                          dynamo=False)
    return path


def sessions(files: dict[str, Path], threads: int = 1) -> dict[str, Any]:
    import onnxruntime as ort

    out = {}
    for name, f in files.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        out[name] = ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
    return out


def _median_ms(sess: Any, feed: dict, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def time_round(sess: dict[str, Any], feeds: dict[str, dict], runs: int, warmup: int,
               rng: random.Random) -> dict[str, float]:
    """One round: every network (shuffled order) warmed up, then ``runs`` timed calls;
    the median ms of each."""
    names = list(sess)
    rng.shuffle(names)
    out = {}
    for name in names:
        for _ in range(warmup):
            sess[name].run(None, feeds[name])
        out[name] = _median_ms(sess[name], feeds[name], runs)
    return out


def time_windows(files: dict[str, Path], *, windows: int = 3, gap_s: float = 120.0,
                 rounds: int = 5, runs: int = 50, warmup: int = 10, threads: int = 1,
                 reference: str = "teacher", say=print) -> dict:
    """Time every network of ``files`` (``reference`` among them) in ``windows`` windows
    ``gap_s`` apart, each of ``rounds`` interleaved rounds. Returns per window and network
    the median ms and the median over rounds of ``reference ms / network ms``."""
    import numpy as np

    if reference not in files:
        raise ValueError(f"the networks must include {reference!r}")
    sess = sessions(files, threads)
    feeds = {}
    for name, s in sess.items():
        inp = s.get_inputs()[0]
        shape = [1 if not isinstance(d, int) else d for d in inp.shape]
        feeds[name] = {inp.name: np.random.default_rng(0).standard_normal(
            shape).astype(np.float32)}
    rng = random.Random(0)
    out: dict[str, Any] = {"threads": threads, "rounds": rounds, "runs": runs,
                           "reference": reference, "windows": []}
    for w in range(windows):
        if w:
            say(f"[ort_timing] waiting {gap_s:.0f} s before window {w + 1}/{windows}")
            time.sleep(gap_s)
        start = time.time()
        per_round = [time_round(sess, feeds, runs, warmup, rng) for _ in range(rounds)]
        win = {"at": start, "ms": {}, "speedup": {}}
        for name in files:
            win["ms"][name] = statistics.median(r[name] for r in per_round)
            win["speedup"][name] = statistics.median(r[reference] / r[name]
                                                     for r in per_round)
        out["windows"].append(win)
        say(f"[ort_timing] window {w + 1}/{windows}: " + ", ".join(
            f"{n} {win['speedup'][n]:.2f}x" for n in sorted(files) if n != reference))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="folder of <name>.onnx files, teacher.onnx among them")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--gap", type=float, default=120.0, help="seconds between windows")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    files = {p.stem: p for p in sorted(args.dir.glob("*.onnx"))}
    res = time_windows(files, windows=args.windows, gap_s=args.gap, rounds=args.rounds,
                       runs=args.runs, threads=args.threads)
    args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
