"""Benchmark: phase-1 time with and without the candidates left out for being no cheaper
than the teacher's own layer (``search.skip_dominated``), on the table3 runs.

Usage: python benchmarks/phase1_left_out.py --family resnest [--scale medium] [--steps 10]
                                            [--threads 2] [--no-write]

Opens the table3 run of the family (``benchmarks/work/table3-<family>-<scale>/run``; it must
be profiled: ``latency.json`` and ``costs.json`` tell which candidates are left out) and
runs phase 1 (:func:`lana.distill.phase1.distill` with the run's settings, but ``--steps`` steps
and no checkpoints) into fresh temporary directories twice, side by side in one process:
on every candidate, and on the ones the pipeline keeps. Same teacher, data, seed and
grouping rule (``distill.max_memory_mb``), so the ratio is the saving; the projection
scales the measured time to the run's configured steps. Each family's numbers are kept in
``benchmarks/work/phase1-left-out-<family>-<scale>.json``, and the RESULTS.md section
shows every family measured so far.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import machine, write_section  # noqa: E402

SECTION = "## Phase 1: candidates left out (search.skip_dominated, issue 6 runs)"


def measure(family: str, scale: str, steps: int, threads: int) -> dict:
    """Time ``steps`` of phase 1 on all candidates and on the kept ones of the table3 run."""
    import torch

    from lana.distill.phase1 import UNTRAINED, distill
    from lana.errors import ArtifactError
    from lana.pipeline.keys import without
    from lana.pipeline.runner import Run
    from lana.search.library import op_costs

    run_dir = HERE / "work" / f"table3-{family}-{scale}" / "run"
    if not (run_dir / "latency.json").exists():
        raise ArtifactError(f"{run_dir} is not profiled yet: run `python benchmarks/table3.py "
                            f"--family {family} --scale {scale}` first")
    run = Run(run_dir)
    torch.set_num_threads(threads)
    if not run.config.search.skip_dominated:
        raise ArtifactError(f"{run_dir} has search.skip_dominated off: nothing to compare")
    every = [[s for s in ops if s not in UNTRAINED] for ops in run.candidates]
    kept = without(every, run.dominated())
    cfg = run.config.distill.model_copy(update={"steps": steps, "checkpoint_every": steps + 1})
    data = run.splits.train
    out: dict = {"family": family, "scale": scale, "teacher": run.config.model.name,
                 "steps": steps, "run_steps": run.config.distill.steps, "threads": threads,
                 "batch_size": cfg.batch_size, "layers": len(every)}
    per_op = op_costs(run.candidates, run.profile(), run.costs())
    for name, cands in (("all", every), ("kept", kept)):
        params = sum(per_op[i][s]["params"] for i, specs in enumerate(cands) for s in specs)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            distill(run.chain, cands, data, cfg, tmp, run.config.seed, device=run.device)
            seconds = time.perf_counter() - start
        out[name] = {"candidates": sum(map(len, cands)), "params": params,
                     "seconds": seconds}
        print(f"{family} {name}: {out[name]['candidates']} candidates, {seconds:.1f} s for "
              f"{steps} steps", flush=True)
    out["machine"], out["date"] = machine(), time.strftime("%Y-%m-%d")
    return out


def render(results: list[dict], cmd: str) -> str:
    rows = ["| family (teacher) | candidates: all / kept | params of the candidates: all / "
            "kept | wall s, all | wall s, kept | kept / all | projected phase 1, all -> kept |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        a, k = r["all"], r["kept"]
        scale = r["run_steps"] / r["steps"]
        rows.append(
            f"| {r['family']} ({r['teacher']}) | {a['candidates']} / {k['candidates']} | "
            f"{a['params'] / 1e6:.2f}M / {k['params'] / 1e6:.2f}M | {a['seconds']:.1f} | "
            f"{k['seconds']:.1f} | {k['seconds'] / a['seconds']:.3f} | "
            f"{a['seconds'] * scale / 60:.0f} min -> {k['seconds'] * scale / 60:.0f} min |")
    machines = sorted({r["machine"] for r in results})
    return f"""{SECTION}

Command: `{cmd}` per family (on a profiled table3 run). Machine: {'; '.join(machines)};
{', '.join(f"{r['family']} {r['date']}, {r['threads']} thread(s)" for r in results)}.
Phase 1 of each table3 run ({results[0]['scale']} scale), timed for a few steps in fresh
directories, once on every candidate and once on those the pipeline keeps: a candidate
costing at least as much as the teacher's own layer in every cost column (latency, params,
FLOPs) is left out, since the search could never prefer it. Same teacher passes, data,
seed and grouping rule; the projection scales the measured seconds to the run's configured
steps (teacher passes included, start-up excluded).

""" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", required=True)
    ap.add_argument("--scale", default="medium")
    ap.add_argument("--steps", type=int, default=10, help="phase-1 steps timed per set")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    from lana.core.io import read_json, write_json
    from lana.errors import LanaError

    try:
        res = measure(args.family, args.scale, args.steps, args.threads)
    except LanaError as exc:
        print(f"phase1_left_out: {exc}", file=sys.stderr)
        return 2
    cmd = (f"python benchmarks/phase1_left_out.py --family FAMILY --scale {args.scale} "
           f"--steps {args.steps}" + (f" --threads {args.threads}" if args.threads != 1
                                      else ""))
    if args.no_write:
        print(render([res], cmd))
        return 0
    write_json(HERE / "work" / f"phase1-left-out-{args.family}-{args.scale}.json", res)
    results = [read_json(p) for p in
               sorted((HERE / "work").glob(f"phase1-left-out-*-{args.scale}.json"))]
    body = render(results, cmd)
    print(body)
    write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
