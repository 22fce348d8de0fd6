"""Benchmark: does the teacher's speed drift apart from a small student's, and with what?

Usage: python benchmarks/teacher_drift.py [--windows 12] [--gap 20] [--out JSON]

The pretrained searches (issue 33) saw the teacher EfficientNet-Lite2 at 64 px time
1.46-1.93 ms from solve to solve while students of similar LUT sums stayed within a few
per cent. Hypothesis: the teacher streams its 19 MB of weights on every run, so it slows
with the memory traffic of the machine's other tenants, and a small student does not.
This times, with the plain ONNX Runtime loop of ``ort_timing.py`` (batch 1, one thread,
interleaved rounds), in
``--windows`` windows ``--gap`` seconds apart: the teacher, the LANA 5x student of
``results/pretrained/lana-full.json`` (random weights: latency is the architecture's), a
memory-streaming probe (a 2560 x 2048 linear layer on one row: 21 MB of weights, no
reuse) and a compute probe (a 3x3 conv, 64 channels, 32x32 px: 147 kB of weights). It
reports each window's medians and the correlation across windows of the teacher/student
ratio with each probe's time. Results: ``benchmarks/results/teacher_drift.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import machine
from ort_timing import export, time_windows

HERE = Path(__file__).resolve().parent


def main() -> int:
    import timm

    from lana.distill.phase1 import build_candidate
    from lana.model.decompose import decompose
    from lana.pipeline.student import assemble

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=12)
    ap.add_argument("--gap", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", default=str(HERE / "results" / "teacher_drift.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    teacher = timm.create_model("tf_efficientnet_lite2", num_classes=10)
    chain = decompose(teacher.eval(), torch.zeros(2, 3, 64, 64))
    rows = json.loads((HERE / "results" / "pretrained" / "lana-full.json").read_text())["rows"]
    choices = next(r["choices"] for r in rows if r["method"] == "lana" and r["budget"] == "5x")
    student = assemble(chain, choices, lambda i, s: (
        chain.layers[i] if s == "teacher" else build_candidate(chain, i, s)))
    nets = {"teacher": (teacher, (3, 64, 64)), "student_5x": (student, (3, 64, 64)),
            "stream_probe": (torch.nn.Linear(2560, 2048), (2560,)),
            "compute_probe": (torch.nn.Conv2d(64, 64, 3, padding=1), (64, 32, 32))}
    loads = []

    def say(msg: str) -> None:
        loads.append(os.getloadavg()[0])
        print(msg, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        files = {name: export(m, Path(tmp) / f"{name}.onnx", shape)
                 for name, (m, shape) in nets.items()}
        timed = time_windows(files, windows=args.windows, gap_s=args.gap, rounds=args.rounds,
                             runs=args.runs, say=say)
    start = timed["windows"][0]["at"]
    # A window's ms are medians over its rounds; "ratio" is the median over rounds of the
    # teacher's time over the student's (a speed-up, as every timing in lana reads it).
    windows = [{**w["ms"], "ratio": w["speedup"]["student_5x"], "t_s": w["at"] - start}
               for w in timed["windows"]]

    def corr(a: str, b: str) -> float:
        return float(np.corrcoef([w[a] for w in windows], [w[b] for w in windows])[0, 1])

    def spread(k: str) -> float:
        v = [w[k] for w in windows]
        return float((max(v) - min(v)) / np.median(v))

    out = {"command": "python benchmarks/teacher_drift.py " + " ".join(
               f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "load": [min(loads), max(loads)], "windows": windows,
           "range_over_median": {k: spread(k) for k in (*nets, "ratio")},
           "corr_ratio_with": {k: corr("ratio", k) for k in ("stream_probe", "compute_probe",
                                                            "teacher", "student_5x")},
           "corr_teacher_with": {k: corr("teacher", k) for k in ("stream_probe",
                                                                "compute_probe")},
           "corr_student_with_stream_probe": corr("student_5x", "stream_probe")}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("range_over_median", "corr_ratio_with",
                                          "corr_teacher_with")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
