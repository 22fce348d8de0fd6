"""Benchmark: does the LUT sum predict the measured latency of a whole student?

Usage: python benchmarks/latency_additivity.py [--models efficientnet_b0 resnest26d]
           [--students 50] [--backends onnxruntime torch] [--calib-students 8]
           [--image-size 224] [--num-classes 1000] [--threads 1]
           [--work benchmarks/work/latency_additivity]
           [--no-write]

For every model (timm, random weights, ``pretrained=False``, ``--num-classes`` classes) at
``--image-size`` px and every backend at batch 1:

1. the LUT of every candidate of lana's default space at its layer (phase 2b, the same
   :func:`lana.latency.profile.profile_candidates` the pipeline runs), cached in
   ``WORK/lut.json`` so an interrupted run resumes where it stopped;
2. the teacher and ``--calib-students`` random students measured end to end: the
   points the pipeline's correction (:func:`lana.search.calibration.fit_calibration`,
   measured ~ alpha * LUT sum + beta) is fitted on, as in ``lana search`` where the teacher
   and the K students of the first solve calibrate the re-solve;
3. ``--students`` other random students (one uniformly random op per layer) measured end
   to end and predicted by (a) the plain LUT sum, (b) the teacher's measured/LUT ratio,
   (c) the fitted line. Every measurement is cached in ``WORK/<model>_<backend>.json``.

Reported: median and 90th percentile of |predicted - measured| / measured. Targets of
the issue: median <= 5 %, p90 <= 10 % (for each backend). As a diagnostic for shared
machines, the same errors are also given with every median replaced by the fastest run
(LUT ``min_ms`` summed, networks' minimum). Rewrites the "latency
additivity" section of benchmarks/RESULTS.md with the command, machine and load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _results import machine, write_section

from lana.config import LatencyConfig
from lana.core.io import read_json, write_json
from lana.distill.phase1 import build_candidate
from lana.latency.lut import LatencyTable, reference_baseline
from lana.latency.profile import (
    lut_profile,
    module_key,
    op_key,
    profile_candidates,
    settings_from,
    static_costs,
)
from lana.latency.timing import Settings, e2e_kwargs, measure_interleaved
from lana.latency.traffic import fit_weight_traffic
from lana.model.decompose import decompose
from lana.pipeline.student import assemble
from lana.search.calibration import fit_calibration
from lana.space.ops import fitting_candidates, resolve_space, space_specs

SECTION = "## Latency additivity (latency issue acceptance)"
# GPU backends (torch-cuda, ...) report in a section of their own, beside the CPU one.
GPU_SECTION = "## Latency additivity on a GPU"
DEFAULT_MODELS = ["efficientnet_b0", "efficientnet_b2", "tf_efficientnetv2_b0", "resnest26d"]
TARGET_MEDIAN, TARGET_P90 = 0.05, 0.10


def candidates_of(chain) -> list[list[str]]:
    """The teacher family's default-space candidates per layer, as ``Run.candidates``."""
    specs = space_specs(resolve_space("auto", chain.family))
    return fitting_candidates(chain.info, specs, lambda i, s: build_candidate(chain, i, s))


def errors(pred: list[float], meas: list[float]) -> dict[str, float]:
    """Median and p90 of the relative absolute error, plus the mean signed error."""
    rel = np.abs(np.asarray(pred) - np.asarray(meas)) / np.asarray(meas)
    signed = (np.asarray(pred) - np.asarray(meas)) / np.asarray(meas)
    return {"median": float(np.median(rel)), "p90": float(np.percentile(rel, 90)),
            "bias": float(np.mean(signed))}


def run_one(model_name: str, backend: str, args: argparse.Namespace, lut: LatencyTable,
            work: Path) -> dict:
    """LUT, calibration and evaluation students for one model and backend (cached)."""
    import timm

    norm = "_norm" if args.normalize else ""
    classes = "" if args.num_classes == 1000 else f"_{args.num_classes}cls"
    cache_path = work / f"{model_name}_{backend}_{args.image_size}px{classes}{norm}.json"
    cache = read_json(cache_path) if cache_path.exists() else {"measured": {}}
    if args.report_only and len(cache.get("measured_min", {})) < (
            1 + args.calib_students + args.students):
        return None  # not measured yet (or still running elsewhere)
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False,
                              num_classes=args.num_classes).eval()
    shape = (3, args.image_size, args.image_size)
    chain = decompose(model, torch.zeros(2, *shape))
    cands = candidates_of(chain)
    cfg = LatencyConfig(backend=backend, threads=args.threads, max_seconds=args.max_seconds,
                        normalize=args.normalize, device="lut" if args.report_only else None)
    settings = settings_from(cfg, lut)
    t0 = time.time()
    if args.report_only:  # times nothing: reads the LUT's own device (e.g. a GPU)
        prof = lut_profile(chain, cands, lut, settings, shape, network=False)
    else:
        prof = profile_candidates(chain, cands, lambda i, s: build_candidate(chain, i, s),
                                  cfg, lut, shape)
        lut.save()
    lut_s = time.time() - t0
    fixed = prof["stem_ms"] + prof["head_ms"]

    def lut_sum(choice: list[str]) -> float:
        return fixed + sum(prof["layers"][i][cands[i].index(s)] for i, s in enumerate(choice))

    rng = np.random.default_rng(args.seed)
    n_total = args.calib_students + args.students
    choices = {"teacher": ["teacher"] * len(cands)}
    for n in range(n_total):
        choices[f"s{n}"] = [str(rng.choice(c)) for c in cands]
    cache.setdefault("measured_min", {})
    todo = [name for name in choices if name not in cache["measured_min"]]
    for start in range(0, len(todo), args.group):
        group = todo[start:start + args.group]
        nets = {name: assemble(chain, choices[name], lambda i, s: (
            chain.layers[i] if s == "teacher" else build_candidate(chain, i, s)))
            for name in group}
        # As lana.latency.profile.measure_models (lana.latency.timing.e2e_kwargs), keeping the
        # minimum as well as the median.
        # Normalised, in the LUT's units (its reference baseline), as measure_models.
        base = ({"baseline_ms": reference_baseline(lut, settings, warmup=cfg.warmup,
                                                   max_seconds=cfg.max_seconds)}
                if args.normalize else {})
        res = measure_interleaved(nets, (cfg.batch_size, *shape), settings,
                                  **e2e_kwargs(cfg.max_seconds, cfg.warmup), **base)
        cache["measured"].update({k: m.median_ms for k, m in res.items()})
        cache["measured_min"].update({k: m.min_ms for k, m in res.items()})
        cache.setdefault("load", []).append(os.getloadavg()[0])
        write_json(cache_path, cache)  # resumable after every group
        print(f"  {model_name}/{backend}: measured {len(cache['measured'])}/{len(choices)}",
              flush=True)
    meas = cache["measured"]
    bs = cfg.batch_size
    with torch.no_grad():
        head_in = (bs, *chain.info[-1].out_shape)
    stem_min = lut.get(module_key("stem", chain.stem), (bs, *shape), settings).min_ms
    head_min = lut.get(module_key("head", chain.head), head_in, settings).min_ms

    def lut_min_sum(choice: list[str]) -> float:
        # The same sum over each op's fastest run: on a machine shared with other jobs the
        # minimum is the closest a timing gets to the uncontended latency.
        return stem_min + head_min + sum(
            0.0 if s == "identity" else
            lut.get(op_key(chain, i, s), (bs, *chain.info[i].in_shape), settings).min_ms
            for i, s in enumerate(choice))

    mins = cache["measured_min"]
    calib_names = ["teacher"] + [f"s{n}" for n in range(args.calib_students)]
    eval_names = [f"s{n}" for n in range(args.calib_students, n_total)]
    cal = fit_calibration([(lut_sum(choices[k]), meas[k]) for k in calib_names])
    # As the profile stage (lana.pipeline.phases._weight_traffic): every op also costs its
    # parameters at the rate fitted on the calibration networks, then the calibration.
    costs = static_costs(chain, cands, lambda i, s: build_candidate(chain, i, s), shape)

    def n_params(choice: list[str]) -> float:
        return costs["stem"]["params"] + costs["head"]["params"] + sum(
            costs["layers"][i][cands[i].index(s)]["params"] for i, s in enumerate(choice))

    traffic = fit_weight_traffic([(lut_sum(choices[k]), n_params(choices[k]), meas[k])
                                  for k in calib_names])

    def eff_sum(name: str) -> float:
        return traffic.cost(lut_sum(choices[name]), n_params(choices[name]))

    cal_t = fit_calibration([(eff_sum(k), meas[k]) for k in calib_names])
    ratio = meas["teacher"] / lut_sum(choices["teacher"])
    truth = [meas[k] for k in eval_names]
    sums = [lut_sum(choices[k]) for k in eval_names]
    return {
        "load": cache.get("load", []),
        "model": model_name, "backend": backend, "layers": len(cands),
        "ops": sum(len(c) for c in cands), "lut_seconds": lut_s,
        "teacher_ms": meas["teacher"], "teacher_lut_ms": lut_sum(choices["teacher"]),
        "students": len(eval_names), "calibration": cal.to_dict(),
        "uncorrected": errors(sums, truth),
        "teacher_ratio": errors([ratio * s for s in sums], truth),
        "corrected": errors([cal.predict(s) for s in sums], truth),
        "traffic": {**traffic.to_dict(), "calibration": cal_t.to_dict(),
                    "corrected": errors([cal_t.predict(eff_sum(k)) for k in eval_names],
                                        truth)},
        # Any plausible line, without the tests that make the pipeline prefer the ratio.
        "corrected_line": errors([fit_calibration(
            [(lut_sum(choices[k]), meas[k]) for k in calib_names], test_line=False).predict(s)
            for s in sums], truth),
        "points": {"calibration": [[lut_sum(choices[k]), meas[k]] for k in calib_names],
                   "evaluation": [[s, t] for s, t in zip(sums, truth, strict=True)]},
        "measured_range": [min(truth), max(truth)],
        "min_uncorrected": errors([lut_min_sum(choices[k]) for k in eval_names],
                                  [mins[k] for k in eval_names]),
        "min_corrected": errors(
            [fit_calibration([(lut_min_sum(choices[k]), mins[k]) for k in calib_names])
             .predict(lut_min_sum(choices[k])) for k in eval_names],
            [mins[k] for k in eval_names]),
    }


def verdict(e: dict) -> str:
    ok = e["median"] <= TARGET_MEDIAN and e["p90"] <= TARGET_P90
    return "met" if ok else "missed"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--students", type=int, default=50, help="evaluation students per model")
    p.add_argument("--calib-students", type=int, default=8,
                   help="students (besides the teacher) the correction is fitted on")
    p.add_argument("--backends", nargs="+", default=["onnxruntime", "torch"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000,
                   help="classifier width (the head's weights are part of every network)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=0.3, help="time cap per LUT op")
    p.add_argument("--group", type=int, default=4,
                   help="students measured interleaved together (and cached) per group")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="raw timings (latency.normalize: false) instead of scaled by the "
                   "reference op timed alongside")
    p.add_argument("--work", default=str(Path(__file__).parent / "work" / "latency_additivity"))
    p.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: report the (model, backend) pairs whose students "
                   "are all cached in WORK, list the others as pending")
    args = p.parse_args()
    from lana.latency.backends import get_backend

    kinds = {get_backend(b).device_kind for b in args.backends}
    if len(kinds) > 1:
        p.error("give CPU backends and GPU backends in separate runs (they report in "
                "separate sections of RESULTS.md)")
    gpu = kinds == {"cuda"}
    section = GPU_SECTION if gpu else SECTION
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lut = LatencyTable(work / "lut.json")
    if args.report_only:
        # Never write the shared LUT: another process may be adding entries to it.
        lut.path = work / f"lut.report-{os.getpid()}.json"
    load_before = os.getloadavg()
    t0 = time.time()
    rows: list[dict] = []
    pending: list[str] = []
    for model_name in args.models:
        for backend in args.backends:
            print(f"{model_name} / {backend}", flush=True)
            row = run_one(model_name, backend, args, lut, work)
            if row is None:
                pending.append(f"{model_name}/{backend}")
            else:
                rows.append(row)
    wall = time.time() - t0
    if args.report_only and lut.path is not None:
        lut.path.unlink(missing_ok=True)
    load_after = os.getloadavg()
    write_json(work / "summary.json", {"args": vars(args), "rows": rows})

    lines = ["| model | backend | layers/ops | teacher ms (LUT sum) | students | "
             "uncorrected median / p90 | teacher ratio median / p90 | "
             "corrected median / p90 (alpha, beta) | targets (corrected / uncorrected) | "
             "always-line corrected median / p90 | "
             "min-based uncorrected / corrected median (p90) | "
             "with weight traffic: corrected median / p90 (ms per Mparam) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        u, t, c, cal = r["uncorrected"], r["teacher_ratio"], r["corrected"], r["calibration"]
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['layers']}/{r['ops']} | "
            f"{r['teacher_ms']:.2f} ({r['teacher_lut_ms']:.2f}) | {r['students']} | "
            f"{u['median']:.1%} / {u['p90']:.1%} | {t['median']:.1%} / {t['p90']:.1%} | "
            f"{c['median']:.1%} / {c['p90']:.1%} ({cal['alpha']:.3f}, {cal['beta']:.2f} ms, "
            f"{cal['method']}) | {verdict(c)} / {verdict(u)} | "
            f"{r['corrected_line']['median']:.1%} / {r['corrected_line']['p90']:.1%} | "
            f"{r['min_uncorrected']['median']:.1%} ({r['min_uncorrected']['p90']:.1%}) / "
            f"{r['min_corrected']['median']:.1%} ({r['min_corrected']['p90']:.1%}) | "
            + (f"{r['traffic']['corrected']['median']:.1%} / "
               f"{r['traffic']['corrected']['p90']:.1%} "
               f"({r['traffic']['ms_per_mparam']:.3g}"
               f"{'' if r['traffic']['used'] else ', unused'}) |"))
    table = "\n".join(lines)
    print(table)
    met_c = sum(verdict(r["corrected"]) == "met" for r in rows)
    met_u = sum(verdict(r["uncorrected"]) == "met" for r in rows)
    verdicts = (f"Targets met on {met_c} of {len(rows)} (model, backend) pairs with the "
                f"correction and on {met_u} of {len(rows)} without it.")
    if args.normalize:
        # How far the machine's own speed moved while the LUT was built: the reference's
        # median beside each entry over its baseline (what normalisation cancelled).
        speed = []
        for e in lut.entries().values():
            record = (lut.reference(Settings.from_dict(e["settings"]))
                      if e.get("ref_ms") and e["settings"].get("normalize") else None)
            if record:
                speed.append(e["ref_ms"] / record["baseline_ms"])
        if speed:
            q = np.percentile(speed, [5, 50, 95])
            verdicts += (f" Timings are normalised (latency.normalize: true): beside "
                         f"the {len(speed)} LUT entries the reference op ran at {q[0]:.2f}x / "
                         f"{q[1]:.2f}x / {q[2]:.2f}x (5th / 50th / 95th percentile) of its "
                         "baseline; that drift is scaled out of every entry and network.")
    else:
        flagged = sum(1 for e in lut.entries().values() if e.get("flagged"))
        verdicts += (f" Raw timings (--no-normalize); the drift monitor flagged {flagged} "
                     f"of {len(lut)} LUT entries (reference op more than 10 % off its "
                     "baseline even after re-measuring).")
    loads = [x for r in rows for x in r["load"]]
    if args.report_only:
        load_text = (f"1-min load average while the students were measured: "
                     f"{min(loads):.1f}-{max(loads):.1f}" if loads else
                     "the load during the measurements was not recorded in the cache")
    else:
        load_text = (f"load average {load_before[0]:.1f} before and {load_after[0]:.1f} "
                     "after")
    cmd = "python benchmarks/latency_additivity.py " + " ".join(sys.argv[1:])
    full = (set(args.models) >= set(DEFAULT_MODELS) and args.students >= 50
            and args.image_size == 224 and not pending)
    where = machine()
    if gpu and torch.cuda.is_available():
        where += (f"; GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
                  f"CUDA {torch.version.cuda}")
    elif gpu:  # --report-only on a machine without the GPU: name the LUT's device
        devices = sorted({e["settings"]["device"] for e in lut.entries().values()
                          if e["settings"]["backend"] in args.backends})
        where = f"timed on {', '.join(devices)}; rendered on {where}"
    body = (
        f"{section}\n\n"
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        + ("rendered from the cached measurements in the work directory" if args.report_only
           else f"{wall / 60:.0f} min wall") + ").\n"
        f"Machine: {where}; {load_text}"
        # The benchmark's own process is a load of 1.0 on its own.
        + (f" (other work ran beside it at times: load up to {max(loads):.1f})"
           if max(loads or [0.0]) > 1.3 else " (nothing else running)")
        + f". Batch 1, {args.threads} thread(s), {args.image_size} px, random weights, "
        f"lana's default space. The correction is fitted on the teacher plus "
        f"{args.calib_students} random students; the errors are on {args.students} other "
        f"random students per model."
        + (f" Not measured yet (pending): {', '.join(pending)}." if pending else "")
        + f" Targets: median <= {TARGET_MEDIAN:.0%} and p90 <= "
        f"{TARGET_P90:.0%} of |predicted - measured| / measured.\n\n{table}\n\n"
        f"{verdicts}\n\n"
        + ("" if full or gpu else
           "This was a reduced run (not every model of the issue, fewer than 50 students "
           "or another image size); the full run (4 models x 2 backends x 50 students at "
           "224 px) is pending.\n"))
    if not args.no_write:
        write_section(section, body)
        print("updated benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
