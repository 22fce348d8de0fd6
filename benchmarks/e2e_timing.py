"""How steady are end-to-end timings? 3 long interleaved rounds against 24 short ones.

Usage: python benchmarks/e2e_timing.py [--model efficientnet_b0] [--backend onnxruntime]
                                       [--repeats 3] [--students 8]

A teacher (timm, random weights, 224 px) and random students from lana's default space
are timed end to end with ``lana.latency.timing.measure_interleaved``, normalised as the
pipeline does, ``--repeats`` times with each scheme, the schemes alternating so that both
see the same machine. Both schemes give every network the same time (12 x
``--max-seconds``): the one before issue 4's noise fix (3 rounds of 4 x the cap, warm-up
in every round) and ``lana.latency.timing.e2e_kwargs`` (24 rounds). Reported per scheme: the
spread of each network's ms from one call to the next and of each student's speed-up
over the teacher (what a speed-up budget is checked on), as relative standard
deviations. Writes the "End-to-end timing" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from _results import machine, write_section
from latency_additivity import candidates_of

from lana.distill.phase1 import build_candidate
from lana.latency.timing import Settings, e2e_kwargs, measure_interleaved, reference_ms
from lana.pipeline.student import assemble


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_b0")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--students", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=0.3, help="per-op time cap")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--group", type=int, default=3, help="networks timed per call")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = ap.parse_args()

    import timm

    from lana.model.decompose import decompose

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=1000).eval()
    shape = (3, args.image_size, args.image_size)
    chain = decompose(model, torch.zeros(2, *shape))
    cands = candidates_of(chain)
    rng = np.random.default_rng(0)
    choices = {"teacher": ["teacher"] * len(cands)}
    for n in range(args.students):
        choices[f"s{n}"] = [str(rng.choice(c)) for c in cands]
    settings = Settings(backend=args.backend, threads=1, normalize=True)
    baseline = reference_ms(settings, warmup=args.warmup, max_seconds=args.max_seconds)
    names = list(choices)
    # Every call holds the teacher, so each student's speed-up is timed alongside it.
    groups = [["teacher", *names[1 + i:1 + i + args.group - 1]]
              for i in range(0, len(names) - 1, args.group - 1)]
    cap = args.max_seconds
    schemes = {
        "3 rounds of 4x the cap (before)": {"rounds": 3, "warmup": args.warmup,
                                            "max_seconds": 4 * cap},
        f"{e2e_kwargs(cap, args.warmup)['rounds']} rounds (e2e_kwargs)":
            e2e_kwargs(cap, args.warmup),
    }
    ms: dict[str, list[dict[str, float]]] = {k: [] for k in schemes}
    ratio: dict[str, list[dict[str, float]]] = {k: [] for k in schemes}
    start = time.time()
    for rep in range(args.repeats):
        for label, kw in schemes.items():
            got: dict[str, float] = {}
            speed: dict[str, float] = {}
            for g in groups:
                nets = {n: assemble(chain, choices[n], lambda i, s: (
                    chain.layers[i] if s == "teacher" else build_candidate(chain, i, s)))
                    for n in g}
                res = measure_interleaved(nets, (1, *shape), settings, baseline_ms=baseline,
                                          **kw)
                got.update({n: m.median_ms for n, m in res.items() if n != "teacher"})
                got.setdefault("teacher", res["teacher"].median_ms)
                speed.update({n: res["teacher"].median_ms / res[n].median_ms
                              for n in g if n != "teacher"})
            ms[label].append(got)
            ratio[label].append(speed)
            print(f"repeat {rep}: {label}: teacher {got['teacher']:.2f} ms", flush=True)
    wall = time.time() - start

    def spread(rows: list[dict[str, float]]) -> np.ndarray:
        a = np.array([[r[n] for n in rows[0]] for r in rows])
        return a.std(0, ddof=1) / a.mean(0)

    lines = ["| scheme | teacher ms (mean) | ms spread per network: median / max | "
             "speed-up spread per student: median / max |", "|---|---|---|---|"]
    for label in schemes:
        s_ms, s_ratio = spread(ms[label]), spread(ratio[label])
        teacher = float(np.mean([r["teacher"] for r in ms[label]]))
        lines.append(f"| {label} | {teacher:.2f} | {np.median(s_ms):.1%} / {s_ms.max():.1%} "
                     f"| {np.median(s_ratio):.1%} / {s_ratio.max():.1%} |")
    table = "\n".join(lines)
    print(table)
    cmd = " ".join(["python benchmarks/e2e_timing.py", *sys.argv[1:]])
    body = f"""## End-to-end timing: 3 long rounds against 24 short ones (issue 4)

Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {wall / 60:.0f} min).
Machine: {machine()}. {args.model} and {args.students} random students of lana's default
space at {args.image_size} px, random weights, {args.backend}, batch 1, 1 thread, normalised;
each network timed {args.repeats} times per scheme, the schemes alternating; {args.group}
networks per call, the teacher in every call. Spread: relative standard deviation over the
repeats (of the ms, and of the student's speed-up over the teacher timed alongside).

{table}
"""
    if not args.no_write:
        write_section("## End-to-end timing: 3 long rounds against 24 short ones", body)


if __name__ == "__main__":
    main()
