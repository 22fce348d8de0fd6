"""Phase 2c in the pipeline: solve the ILP, then measure and rank the K students.

The ILP sees only the library (plain numbers, :mod:`lana.search`). Here its solutions are
turned into networks: each of the K diverse solutions is assembled from phase-1 weights,
evaluated on held-out data (BatchNorm in batch-statistics mode, as in the paper) and
measured end to end. The best student that *measurably* meets the budget wins; when none
does, the LUT budget is tightened by the observed error and the ILP re-solved.
"""

from __future__ import annotations

from lana.config import BudgetConfig
from lana.errors import InfeasibleBudgetError
from lana.progress import log
from lana.search import Budget, Library, minimum_reachable, solve


def select_student(run, lib: dict, budget: BudgetConfig) -> dict:
    """Search, verify and rank students for ``budget``; return the ``search.json`` content."""
    from lana.profile import measure_models
    from lana.student import assemble
    from lana.train import evaluate

    cfg = run.config.search
    lat = run.profile()
    target = run.budget_ms(budget)
    fixed = lat["stem_ms"] + lat["head_ms"]
    # The LUT sums ops timed alone; the whole network runs at a different speed (fusion,
    # caches, per-call overhead). The teacher's measured/predicted ratio calibrates that.
    ratio = lat["teacher_measured_ms"] / lat["teacher_predicted_ms"]
    library = Library.from_dict(lib)
    layer_budget = target / ratio - fixed
    floor = minimum_reachable(library, "latency_ms")
    if layer_budget < floor:
        raise InfeasibleBudgetError(
            f"a budget of {target:.4g} ms is below the minimum reachable latency "
            f"{(floor + fixed) * ratio:.4g} ms of this candidate space on "
            f"{lat['settings']['backend']} (stem+head alone: {fixed * ratio:.4g} ms). Raise "
            "the budget (or lower the speed-up), or add cheaper candidate ops.",
            minimum={"latency_ms": (floor + fixed) * ratio})
    val = run.splits.val.subset(cfg.eval_samples, run.config.seed + 1)
    attempts = []
    chosen = None
    solve_seconds = 0.0
    for _attempt in range(cfg.max_resolves + 1):
        result = solve(library, [Budget("latency_ms", "<=", layer_budget)], k=cfg.k,
                       overlap=cfg.overlap)
        solve_seconds += result.solve_seconds
        students = {f"s{n}": assemble(run.chain, sol.specs, run._load)
                    for n, sol in enumerate(result.solutions)}
        measured = measure_models({"teacher": run.teacher, **students}, run.input_shape,
                                  run.config.latency)
        rows = []
        for n, sol in enumerate(result.solutions):
            ev = evaluate(students[f"s{n}"], val, batch_stats=True)
            ms = measured[f"s{n}"]
            meets = (measured["teacher"] / ms >= budget.speedup if budget.speedup is not None
                     else ms <= target)
            rows.append({"choices": sol.specs, "score": sol.score,
                         "latency_ms_lut": sol.cost["latency_ms"] + fixed,
                         "latency_ms_predicted": (sol.cost["latency_ms"] + fixed) * ratio,
                         "latency_ms_measured": ms, "meets_budget": meets,
                         "val_loss": ev["loss"], "val_accuracy": ev["accuracy"]})
        attempts.append({"layer_budget_ms": layer_budget, "teacher_ms": measured["teacher"],
                         "solve_seconds": result.solve_seconds, "students": rows})
        ok = [r for r in rows if r["meets_budget"]]
        if ok:
            chosen = min(ok, key=lambda r: r["val_loss"])
            break
        best = min(rows, key=lambda r: r["val_loss"])
        allowed = target if budget.speedup is None else measured["teacher"] / budget.speedup
        shrink = min(0.97, allowed / best["latency_ms_measured"])
        log(f"[yellow]search: best student measured {best['latency_ms_measured']:.4g} ms > "
            f"{allowed:.4g} ms; tightening the LUT budget by {1 - shrink:.1%} and "
            f"re-solving[/yellow]")
        layer_budget = max(floor, (layer_budget + fixed) * shrink - fixed)
    if chosen is None:
        chosen = min((r for a in attempts for r in a["students"]),
                     key=lambda r: r["latency_ms_measured"])
        log("[red]search: no student measurably met the budget after "
            f"{cfg.max_resolves} re-solves; keeping the fastest one[/red]")
    return {"budget": budget.model_dump(exclude_none=True), "budget_ms": target,
            "calibration": ratio, "fixed_ms": fixed, "k": cfg.k, "overlap": cfg.overlap,
            "log10_space_size": library.log10_space_size(), "solve_seconds": solve_seconds,
            "attempts": attempts, "chosen": chosen}
