"""Benchmark: does the teacher's speed drift apart from a small student's, and with what?

Usage: python benchmarks/teacher_drift.py [--windows 12] [--gap 20] [--out JSON]

The pretrained searches (issue 33) saw the teacher EfficientNet-Lite2 at 64 px time
1.46-1.93 ms from solve to solve while students of similar LUT sums stayed within a few
per cent. Hypothesis: the teacher streams its 19 MB of weights on every run, so it slows
with the memory traffic of the machine's other tenants, and a small student does not.
This times, with a plain ONNX Runtime loop (batch 1, one thread, interleaved rounds), in
``--windows`` windows ``--gap`` seconds apart: the teacher, the LANA 5x student of
``results/pretrained/lana-full.json`` (random weights: latency is the architecture's), a
memory-streaming probe (a 2560 x 2048 linear layer on one row: 21 MB of weights, no
reuse) and a compute probe (a 3x3 conv, 64 channels, 32x32 px: 147 kB of weights). It
reports each window's medians and the correlation across windows of the teacher/student
ratio with each probe's time. Results: ``benchmarks/results/teacher_drift.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from _results import machine

HERE = Path(__file__).resolve().parent


def session(model: torch.nn.Module, x: torch.Tensor):
    buf = io.BytesIO()
    torch.onnx.export(model.eval(), x, buf, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    s = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x.numpy()}
    return lambda: s.run(None, feed)


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
    x = torch.randn(1, 3, 64, 64)
    chain = decompose(teacher.eval(), torch.zeros(2, 3, 64, 64))
    rows = json.loads((HERE / "results" / "pretrained" / "lana-full.json").read_text())["rows"]
    choices = next(r["choices"] for r in rows if r["method"] == "lana" and r["budget"] == "5x")
    student = assemble(chain, choices, lambda i, s: (
        chain.layers[i] if s == "teacher" else build_candidate(chain, i, s)))
    nets = {"teacher": session(teacher, x), "student_5x": session(student, x),
            "stream_probe": session(torch.nn.Linear(2560, 2048), torch.randn(1, 2560)),
            "compute_probe": session(torch.nn.Conv2d(64, 64, 3, padding=1),
                                     torch.randn(1, 64, 32, 32))}
    for run in nets.values():
        for _ in range(20):
            run()
    windows = []
    t0 = time.time()
    for w in range(args.windows):
        if w:
            time.sleep(args.gap)
        times: dict[str, list[float]] = {k: [] for k in nets}
        for _ in range(args.rounds):
            for name, run in nets.items():
                run()
                for _ in range(args.runs):
                    a = time.perf_counter()
                    run()
                    times[name].append((time.perf_counter() - a) * 1e3)
        med = {k: float(np.median(v)) for k, v in times.items()}
        med["ratio"] = med["teacher"] / med["student_5x"]
        med["t_s"] = time.time() - t0
        med["load"] = os.getloadavg()[0]
        windows.append(med)
        print(" ".join(f"{k} {v:.4f}" for k, v in med.items()), flush=True)

    def corr(a: str, b: str) -> float:
        return float(np.corrcoef([w[a] for w in windows], [w[b] for w in windows])[0, 1])

    def spread(k: str) -> float:
        v = [w[k] for w in windows]
        return float((max(v) - min(v)) / np.median(v))

    out = {"command": "python benchmarks/teacher_drift.py " + " ".join(
               f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "windows": windows,
           "range_over_median": {k: spread(k) for k in (*nets, "ratio")},
           "corr_ratio_with": {k: corr("ratio", k) for k in ("stream_probe", "compute_probe",
                                                            "teacher", "student_5x")}}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("range_over_median", "corr_ratio_with")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
