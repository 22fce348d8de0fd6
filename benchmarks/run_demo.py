"""Benchmark: `lana demo` from scratch (teacher training included), results to RESULTS.md.

Usage: python benchmarks/run_demo.py [--out DIR] [--keep-cache]

Runs the demo in a fresh run directory with an empty teacher cache (unless --keep-cache),
times it, checks the acceptance targets of the pipeline issue (student meets its measured
budget, speed-up >= 1.8x, accuracy within 2 points of the teacher) and rewrites the
"lana demo" section of benchmarks/RESULTS.md with the numbers, the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import machine, write_section

SECTION = "## lana demo (pipeline issue acceptance)"






def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep-cache", action="store_true")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="lana-demo-bench-"))
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ)
    if not args.keep_cache:
        env["LANA_CACHE_DIR"] = tempfile.mkdtemp(prefix="lana-cache-")
    cmd = [sys.executable, "-m", "lana.cli", "demo", "--out", str(out)]
    start = time.time()
    subprocess.run(cmd, check=True, env=env)
    wall = time.time() - start
    summary = json.loads((out / "summary.json").read_text())
    t, s = summary["teacher"], summary["students"][0]
    drop = 100 * (t["accuracy"] - s["accuracy"])
    checks = {
        "student measured latency within budget": s["meets_budget"],
        "speed-up >= 1.8x": s["speedup"] >= 1.8,
        "accuracy within 2 points of the teacher": drop <= 2.0,
        "demo <= 10 minutes": wall <= 600,
    }
    lat = summary["latency"]
    timings = ", ".join(f"{k.removesuffix('_s')} {v:.0f} s"
                        for k, v in summary.get("timings_s", {}).items())
    body = f"""{SECTION}

Command: `python benchmarks/run_demo.py` (runs `lana demo` in a fresh directory with an
empty teacher cache). Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}.
Latency: {lat['backend']}, batch {lat['batch_size']}, {lat['threads']} thread(s), measured end
to end with the teacher interleaved.

| model | test accuracy | latency ms (measured) | speed-up |
|---|---|---|---|
| teacher {t['name']} | {100 * t['accuracy']:.2f}% | {s['teacher_latency_ms_measured']:.4f} | 1.00× |
| student (budget {s['budget']}) | {100 * s['accuracy']:.2f}% | {s['latency_ms_measured']:.4f} | {s['speedup']:.2f}× |

- accuracy drop: {drop:.2f} points; student before fine-tuning: {100 * s['accuracy_before_finetune']:.2f}%
- predicted (calibrated LUT) {s['latency_ms_predicted']:.4f} ms vs measured {s['latency_ms_measured']:.4f} ms; budget {s['budget_ms']:.4f} ms
- search space 10^{summary['search']['log10_space_size']:.1f}, K = {summary['search']['k']}, ILP {summary['search']['solve_seconds']:.2f} s
- wall time {wall:.0f} s ({timings})
- layers: {' '.join(s['choices'])}

Targets: """ + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in checks.items()) + "\n"
    write_section(SECTION, body)
    print(body)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
