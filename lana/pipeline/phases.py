"""What each stage computes, over a :class:`~lana.pipeline.runner.Run`.

The runner decides *whether* a stage runs (its file exists with the same key: skip) and
writes what it returns; the functions here say *what* it computes, each from the run's
config, teacher, data and earlier stages' results: phase 2b (:func:`profile`), phase 2a
(:func:`score`, :func:`library`), phase 2c (:func:`search`), phase 3 (:func:`finetune`),
the export and its latency check (:func:`export`), later re-timings (:func:`verify`) and
``summary.json`` (:func:`summary`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from lana.config import BudgetConfig, extra_columns
from lana.core import dist as D
from lana.core.io import load_state, load_tensors, read_json, save_tensors, write_json
from lana.core.layout import (
    CANDIDATES,
    DISTILL_INDEX,
    EXPORT,
    FINETUNE_CHECKPOINT,
    FINETUNED_WEIGHTS,
    LIBRARY,
    MEMORY,
    MODEL_DIR,
    SEARCH,
    STUDENTS_DIR,
    SUMMARY,
    VERIFY,
)
from lana.core.progress import log
from lana.errors import ArtifactError
from lana.latency.backends import deploy_env
from lana.latency.spread import interval_of
from lana.pipeline import teacher as teacher_source
from lana.pipeline.keys import stage_inputs
from lana.pipeline.stages import key_hash
from lana.pipeline.verify import independent_summary
from lana.search.library import latency_columns, op_costs

if TYPE_CHECKING:
    from lana.pipeline.runner import Run

SUMMARY_FORMAT = "lana-summary/1"


def profile(run: Run) -> dict:
    """Phase 2b: latency of stem, head, every candidate and the teacher end to end (and
    each extra latency column)."""
    from lana.latency.profile import profile_candidates

    cfg = run.config.latency
    lut = run.lut()
    res = profile_candidates(run.chain, run.candidates, run.build_candidate, cfg, lut,
                             run.input_shape)
    if res.get("remote"):  # measured on the target from the bundle's teacher network
        res["teacher_measured_ms"] = res["teacher_network_ms"]
    else:
        _weight_traffic(run, res, lut)
    res["teacher_predicted_ms"] = res["stem_ms"] + res["head_ms"] + sum(
        row[ops.index("teacher")] for row, ops in zip(res["layers"], run.candidates,
                                                      strict=True))
    res["specs"] = run.candidates
    res["extra"] = {}
    for column, extra_cfg in extra_columns(cfg).items():
        x = profile_candidates(run.chain, run.candidates, run.build_candidate,
                               extra_cfg, lut, run.input_shape)
        res["extra"][column] = {k: x[k] for k in ("settings", "stem_ms", "head_ms",
                                                  "layers")}
    return res


def _weight_traffic(run: Run, res: dict, lut) -> None:
    """Time the teacher (``teacher_measured_ms``) beside ``latency.calibration_students``
    random students and fit the weights' memory traffic on them
    (:mod:`lana.latency.traffic`); where it earns its place, every op's cost in ``res``
    grows by its parameters times the fitted rate (the LUT's own figures are kept under
    ``res["lut"]``, the fit under ``res["weight_traffic"]``)."""
    import numpy as np

    from lana.latency.traffic import fit_weight_traffic
    from lana.pipeline.student import assemble

    n = run.config.latency.calibration_students
    rng = np.random.default_rng(run.config.seed)
    choices = {f"c{k}": [str(rng.choice(specs)) for specs in run.candidates] for k in range(n)}

    def load(i: int, spec: str) -> nn.Module:
        return run.chain.layers[i] if spec == "teacher" else run.build_candidate(i, spec)

    students = {name: assemble(run.chain, ch, load) for name, ch in choices.items()}
    measured = _beside_teacher(run, students, lut)
    res["teacher_measured_ms"] = measured["teacher"]
    if not n:
        return
    costs = run.costs()
    fixed_ms = res["stem_ms"] + res["head_ms"]
    fixed_params = costs["stem"]["params"] + costs["head"]["params"]

    def sums(ch: list[str]) -> tuple[float, float]:
        idx = [ops.index(s) for ops, s in zip(run.candidates, ch, strict=True)]
        return (fixed_ms + sum(res["layers"][i][j] for i, j in enumerate(idx)),
                fixed_params + sum(costs["layers"][i][j]["params"] for i, j in enumerate(idx)))

    points = [(*sums(ch), measured[name]) for name, ch in
              [("teacher", ["teacher"] * len(run.candidates)), *choices.items()]]
    traffic = fit_weight_traffic(points)
    res["weight_traffic"] = {"choices": list(choices.values()), **traffic.to_dict()}
    if not traffic.used:
        return
    res["lut"] = {k: res[k] for k in ("stem_ms", "head_ms", "layers")}
    res["stem_ms"] = traffic.cost(res["stem_ms"], costs["stem"]["params"])
    res["head_ms"] = traffic.cost(res["head_ms"], costs["head"]["params"])
    res["layers"] = [[traffic.cost(ms, c["params"]) for ms, c in zip(row, crow, strict=True)]
                     for row, crow in zip(res["layers"], costs["layers"], strict=True)]
    log(f"latency: whole networks run slower than their LUT sums by their weights' memory "
        f"traffic ({traffic.reason}): every op costs "
        f"{traffic.ms_per_mparam:.3g} ms more per million parameters")


def _beside_teacher(run: Run, students: dict[str, nn.Module], lut) -> dict[str, float]:
    """End-to-end ms of ``students`` and the teacher (``"teacher"``), timed together in
    interleaved rounds with the run's latency settings and scaled to ``lut``'s reference
    baseline (:func:`lana.latency.profile.measure_models`): how every stage times whole
    networks, so a speed-up is always a ratio measured in one call."""
    from lana.latency.profile import measure_models

    return measure_models({"teacher": run.teacher, **students}, run.input_shape,
                          run.config.latency, lut=lut)

def candidates(run: Run) -> list[list[str]]:
    """Per layer, the op specs of ``space.ops`` that fit it, from ``candidates.json`` or
    worked out (and written) once; ops that fail to build at a layer are skipped, said."""
    path = run.dir / CANDIDATES
    if path.exists():
        data = read_json(path)
        return [layer["ops"] for layer in data["layers"]]
    from lana.space.ops import fitting_candidates, resolve_space, space_specs

    # space.ops 'auto' resolves to the teacher family's default space; the resolved
    # patterns are recorded next to the per-layer specs.
    patterns = resolve_space(run.config.space.ops, run.chain.family)
    out = fitting_candidates(
        run.chain.info, space_specs(patterns), run.build_candidate,
        on_skip=lambda info, spec, exc: log(f"[yellow]skipping {spec} at {info.name}: "
                                            f"{exc}[/yellow]"))
    write_json(path, {"space": {"family": run.chain.family, "ops": patterns},
                      "layers": [{"name": n, **info.to_dict(), "ops": ops} for n, info, ops
                                 in zip(run.chain.names, run.chain.info, out,
                                        strict=True)]})
    return out


def distill(run: Run, rank: int | None, world: int | None) -> dict:
    """Phase 1 over the run: this rank's share of the candidates still to train (see
    :meth:`lana.pipeline.runner.Run.distill`); the phase-1 index."""
    from lana.distill.phase1 import distill as distill_candidates
    from lana.distill.phase1 import pending

    _ = run.device  # every rank checks its device before any of them waits for another
    if D.world() > 1:
        teacher_source.on_every_rank(run)  # a teacher to train is trained by every rank
        # One rank evaluates it, lists the candidates and measures their latency.
        D.on_main(lambda: (run.prepare(), run.left_out("phase 1")))
    rank = D.rank() if rank is None else rank
    world = D.world() if world is None else world
    index_path = run.dir / DISTILL_INDEX
    # Every rank reads the same latency.json, so every rank shards the same list.
    to_train = run.to_train()
    todo = pending(to_train, run.dir, rank, world)
    start = time.time()
    plan: dict = {}  # groups and their estimated memory (rank 0's, under torchrun)
    if todo:
        D.reset_peak_rss()
        distill_candidates(run.chain, to_train, run.splits.train, run.config.distill,
                           run.dir, run.config.seed, rank, world, report=plan,
                           device=run.device)
    if not D.all_ok(not todo):  # also the barrier after which every shard is saved
        run.record_time("distill", start, plan)
    return read_json(index_path) if index_path.exists() else {}


def score(run: Run, left_out: list[list[str]]) -> dict:
    """Phase 2a: replace-one scores on held-out data, every candidate but ``left_out``."""
    from lana.distill.score import replace_one_scores

    _require_distilled(run, left_out)
    cfg = run.config.score
    res = replace_one_scores(run.chain, run.candidates, run.load_candidate,
                             run.splits.val.subset(cfg.samples, run.config.seed),
                             cfg.metric, cfg.batch_size, device=run.device,
                             skip=left_out)
    res["specs"] = run.candidates
    res["left_out"] = left_out
    return res


def _require_distilled(run: Run, left_out: list[list[str]]) -> None:
    from lana.distill.phase1 import UNTRAINED, weight_path

    missing = [f"{run.chain.names[i]}:{s}" for i, specs in enumerate(run.candidates)
               for s in specs if s not in UNTRAINED and s not in left_out[i]
               and not weight_path(run.dir, i, s).exists()]
    if missing:
        raise ArtifactError(f"{len(missing)} candidates have no phase-1 weights yet "
                            f"(e.g. {missing[:3]}); run `lana distill {run.dir}` first")


def library(run: Run) -> dict:
    """``library.json``: per layer and op, its score and its cost in every column."""
    lat, sc, costs = run.profile(), run.score(), run.costs()
    # Every cost column: the configured latency, extra latency columns (other backends
    # or batch sizes), parameters and FLOPs; the search can bound any of them.
    per_op = op_costs(run.candidates, lat, costs)
    left_out = sc.get("left_out") or [[] for _ in run.candidates]
    layers = []
    for name, specs, scores, cost, out in zip(run.chain.names, run.candidates,
                                              sc["scores"], per_op, left_out, strict=True):
        layers.append({"name": name, "ops": [
            {"spec": s, "score": a, "cost": cost[s]}
            for s, a in zip(specs, scores, strict=True) if s not in out],
            # Not searched: no cheaper than the teacher's layer (search.skip_dominated).
            **({"left_out": out} if out else {})})
    fixed = {col: c["stem_ms"] + c["head_ms"] for col, c in latency_columns(lat).items()}
    fixed.update({k: costs["stem"][k] + costs["head"][k] for k in ("params", "flops")})
    lib = {"layers": layers, "fixed_cost": fixed, "latency": lat["settings"]}
    write_json(run.dir / LIBRARY, lib)
    return lib


def search(run: Run, budget: BudgetConfig) -> dict:
    """Phase 2c: :func:`lana.search.select.select` wired to the run (its library, real
    networks from phase-1 weights, held-out loss and end-to-end timings)."""
    from lana.distill.train import evaluate
    from lana.search.select import select
    from lana.search.solver import Budget, Library

    lib = run.library()
    val = run.splits.val.subset(run.config.search.eval_samples, run.config.seed + 1)
    fixed = lib.get("fixed_cost", {})
    lut = run.lut()  # read once, not at every timing of the search
    extra = []
    for text in run.config.search.extra_budgets:
        b = Budget.parse(text)  # whole network -> the layers' share
        extra.append(Budget(b.key, b.op, b.value - fixed.get(b.key, 0.0)))
    return select(
        Library.from_dict(lib), run.profile(), budget, run.budget_ms(budget),
        run.config.search,
        build=lambda specs: run.assemble(specs),
        measure=None if run.profile().get("remote") else
        lambda students: _beside_teacher(run, students, lut),
        evaluate=lambda student: evaluate(student, val, batch_stats=True, device=run.device),
        extra_budgets=extra, wait=time.sleep,
    )


def finetune(run: Run, budget: BudgetConfig, chosen: dict) -> dict:
    """Phase 3: the chosen student fine-tuned with cross-entropy + KD from the teacher
    (under torchrun on every rank, DDP); its accuracy before and after."""
    from lana.distill.train import Checkpointing, Recipe, evaluate, train_classifier

    student = run.assemble(chosen["choices"])
    before = evaluate(student, run.splits.test, device=run.device)
    cfg = run.config.finetune
    start = time.time()
    stats = {"steps": 0, "train_loss": math.nan}
    if cfg.epochs > 0:
        key = key_hash({**stage_inputs(run.config, "finetune"),
                        "choices": chosen["choices"]})
        stats = train_classifier(
            student, run.splits.train, Recipe.from_config(cfg, seed=run.config.seed),
            teacher=run.teacher, description="phase 3 finetune",
            checkpointing=Checkpointing(
                path=run.student_dir(budget) / FINETUNE_CHECKPOINT, key=key,
                every=cfg.checkpoint_every, kill_tag="finetune"),
            device=run.device)
    after = evaluate(student, run.splits.test, device=run.device)
    if D.is_main():
        save_tensors(run.student_dir(budget) / FINETUNED_WEIGHTS, student.state_dict())
    return {"accuracy_before": before["accuracy"], "accuracy": after["accuracy"],
            "loss": after["loss"], **stats, "seconds": time.time() - start}


def finetuned_student(run: Run, budget: BudgetConfig, chosen: dict) -> nn.Module:
    """The student of ``chosen`` with its fine-tuned weights, in eval mode."""
    from lana.pipeline.student import assemble

    path = run.student_dir(budget) / FINETUNED_WEIGHTS
    student = assemble(run.chain, chosen["choices"], run.build_candidate)
    load_state(student, load_tensors(path), path)
    return student.eval()


def export(run: Run, budget: BudgetConfig, ft: dict) -> dict:
    """The fine-tuned student saved (ONNX, safetensors, arch JSON) and its latency
    checked against the budget beside the teacher, as the search checked it."""
    from lana.pipeline.student import arch_dict, save_student
    from lana.search.verdict import time_until_decided

    chosen = run.search(budget)["chosen"]
    student = finetuned_student(run, budget, chosen)
    arch = arch_dict(run.config.model.name, run.model_kwargs(), run.input_shape,
                     student, chosen["choices"])
    if run.config.model.layers is not None:  # a split by hand is part of the arch
        arch["model"]["layers"] = list(run.config.model.layers)
    files = save_student(run.student_dir(budget) / MODEL_DIR, student, arch)
    D.maybe_kill("export", "saved")  # crash-safety tests: files written, not verified
    target = run.budget_ms(budget)
    common = {"budget": budget.model_dump(exclude_none=True), "budget_ms": target,
              "latency_ms_predicted": chosen["latency_ms_predicted"]}
    result = {"accuracy": ft["accuracy"], "accuracy_before_finetune": ft["accuracy_before"],
              "choices": chosen["choices"],
              "files": {k: str(Path(MODEL_DIR) / v) for k, v in files.items()}}
    if run.profile().get("remote"):
        # The target is another machine: time model/model.onnx there with
        # `lana profile`; here only the prediction is known.
        log("[yellow]export: latency.device is another machine; the student's latency "
            "is predicted, not measured (measure model/model.onnx on the "
            "target)[/yellow]")
        return {**common, "latency_ms_measured": None,
                "teacher_latency_ms": run.profile()["teacher_measured_ms"],
                "speedup": None, "meets_budget": None, **result}
    # A speed-up budget is checked against the teacher timed alongside, so a machine
    # that got slower since profiling fails no student unfairly; the median of
    # separate timings decides, as in the search (lana.search.verdict.time_until_decided).
    lut = run.lut()  # read once: every timing is scaled to its reference baseline
    timings, pooled = time_until_decided(
        lambda: _beside_teacher(run, {"student": student}, lut),
        "student", budget.speedup, target, 1.0, run.config.search.confirm)
    return {**common, "latency_ms_measured": pooled["latency_ms"],
            "teacher_latency_ms": pooled["teacher_ms"], "speedup": pooled["speedup"],
            "meets_budget": pooled["fraction"] <= 1 + 1e-9, "timings_ms": timings,
            **result}


def verify(run: Run, budget: BudgetConfig, sessions: int, gap_s: float,
           on_session=None) -> dict:
    """The exported student timed beside the teacher in ``sessions`` more sessions
    ``gap_s`` seconds apart, judged on the median of every timing so far (see
    :meth:`lana.pipeline.runner.Run.verify`)."""
    from lana.search.verdict import pool_timings

    exp = run.exported(budget)
    path = run.student_dir(budget) / VERIFY
    record = read_json(path) if path.exists() else {}
    record.setdefault("sessions", [])  # a file with only independent windows has none
    # The exported architecture, as exported: a search whose settings changed since
    # is not re-run here.
    student = finetuned_student(run, budget, {"choices": exp["choices"]})
    lut = run.lut()
    target = exp["budget_ms"]
    for n in range(sessions):
        last = max([s["at"] for s in record["sessions"]], default=0.0)
        wait = last + gap_s - time.time()
        if record["sessions"] and wait > 0:
            log(f"verify: next timing session in {wait:.0f} s (sessions are spread "
                "out in time)")
            time.sleep(wait)
        ms = _beside_teacher(run, {"student": student}, lut)
        record["sessions"].append({"at": time.time(), **ms})
        write_json(path, record)
        if on_session is not None:
            on_session(n, record["sessions"][-1])
    exported = list(exp.get("timings_ms") or [])
    pooled = pool_timings([*exported, *record["sessions"]], "student", budget.speedup,
                          target)
    return {**record, "budget": budget.model_dump(exclude_none=True),
            "budget_ms": target, "export_timings": exported,
            "pooled": pooled, "meets_budget": pooled["fraction"] <= 1 + 1e-9}


def summary(run: Run) -> dict:
    """``summary.json`` from the stage outputs (docs/run-directory.md)."""
    lat = run.profile()
    teacher = run.teacher_eval
    students = []
    search_info = {}
    for sdir in sorted((run.dir / STUDENTS_DIR).glob("*")):
        exp_p, s_p = sdir / EXPORT, sdir / SEARCH
        if not (exp_p.exists() and s_p.exists()):
            continue
        exp, srch = read_json(exp_p), read_json(s_p)
        students.append({"budget": exp["budget"], "budget_ms": exp["budget_ms"],
                         "latency_ms_predicted": exp["latency_ms_predicted"],
                         "latency_ms_measured": exp["latency_ms_measured"],
                         "teacher_latency_ms_measured": exp["teacher_latency_ms"],
                         "speedup": exp["speedup"], "meets_budget": exp["meets_budget"],
                         "speedup_interval": interval_of(srch, exp["speedup"]),
                         "margin": srch.get("margin"),
                         "timings_ms": exp.get("timings_ms"),
                         "accuracy": exp["accuracy"],
                         "accuracy_before_finetune": exp["accuracy_before_finetune"],
                         "choices": exp["choices"], "path": str(sdir / MODEL_DIR),
                         "independent_verify": independent_summary(run.dir, sdir)})
        search_info = {"solve_seconds": srch["solve_seconds"],
                       "log10_space_size": srch["log10_space_size"], "k": srch["k"]}
    settings = lat["settings"]
    out = {
        "format": SUMMARY_FORMAT,
        "teacher": {"name": teacher["name"], "accuracy": teacher["accuracy"],
                    "latency_ms": lat["teacher_measured_ms"], "params": teacher["params"]},
        "latency": {"backend": settings["backend"], "batch_size": settings["batch_size"],
                    "threads": settings["threads"], "device": settings["device"],
                    "deploy_env": deploy_env(settings["backend"])},
        "students": students,
        "search": search_info,
        "timings_s": run.timings(),
        "peak_rss_mb": read_json(run.dir / MEMORY) if (run.dir / MEMORY).exists() else {},
    }
    write_json(run.dir / SUMMARY, out)
    return out
