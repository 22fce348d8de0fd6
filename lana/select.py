"""Phase 2c in the pipeline: solve the ILP, then measure and rank the K students.

The ILP sees only the library (plain numbers, :mod:`lana.search`). Here its solutions are
turned into networks: each of the K diverse solutions is assembled from phase-1 weights,
evaluated on held-out data (BatchNorm in batch-statistics mode, as in the paper) and
measured end to end. The best student that *measurably* meets the budget wins; when none
does, the LUT budget is tightened by the observed error and the ILP re-solved.

:func:`select` takes the network-side work as three callables, so the logic is testable
with fakes and independent of torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lana.config import BudgetConfig, SearchConfig
from lana.errors import InfeasibleBudgetError
from lana.progress import log, progress
from lana.search import Budget, Library, minimum_reachable, solve


def select(library: Library, latency: dict, budget: BudgetConfig, target_ms: float,
           cfg: SearchConfig, build: Callable[[list[str]], Any],
           measure: Callable[[dict[str, Any]], dict[str, float]],
           evaluate: Callable[[Any], dict[str, float]]) -> dict:
    """Search, verify and rank students; return the content of ``search.json``.

    ``latency`` holds ``stem_ms``, ``head_ms``, ``teacher_measured_ms``,
    ``teacher_predicted_ms`` (from the profile stage). ``build(specs)`` assembles a student,
    ``measure(students)`` returns end-to-end ms per name plus ``"teacher"`` (timed in the
    same session), ``evaluate(student)`` returns held-out ``loss`` and ``accuracy``.
    """
    fixed = latency["stem_ms"] + latency["head_ms"]
    # The LUT sums ops timed alone; the whole network runs at a different speed (fusion,
    # caches, per-call overhead). The teacher's measured/predicted ratio calibrates that.
    ratio = latency["teacher_measured_ms"] / latency["teacher_predicted_ms"]
    layer_budget = target_ms / ratio - fixed
    floor = minimum_reachable(library, "latency_ms")
    if layer_budget < floor:
        backend = latency.get("settings", {}).get("backend", "the backend")
        raise InfeasibleBudgetError(
            f"a budget of {target_ms:.4g} ms is below the minimum reachable latency "
            f"{(floor + fixed) * ratio:.4g} ms of this candidate space on {backend} "
            f"(stem+head alone: {fixed * ratio:.4g} ms). Raise the budget (or lower the "
            "speed-up), or add cheaper candidate ops.",
            minimum={"latency_ms": (floor + fixed) * ratio})
    attempts = []
    chosen = None
    solve_seconds = 0.0
    for _ in range(cfg.max_resolves + 1):
        with progress() as bar:
            task = bar.add_task("phase 2c ILP", total=cfg.k, info="diverse solutions")
            result = solve(library, [Budget("latency_ms", "<=", layer_budget)], k=cfg.k,
                           overlap=cfg.overlap,
                           on_solution=lambda n, b=bar, t=task: b.update(t, completed=n))
            # Fewer than K diverse architectures may exist; the bar ends where the ILP did.
            bar.update(task, total=len(result.solutions), completed=len(result.solutions))
        solve_seconds += result.solve_seconds
        students = {f"s{n}": build(sol.specs) for n, sol in enumerate(result.solutions)}
        measured = measure(students)
        allowed = (measured["teacher"] / budget.speedup if budget.speedup is not None
                   else target_ms)
        rows = []
        with progress() as bar:
            task = bar.add_task("phase 2c evaluate", total=len(result.solutions),
                                info="K students on held-out data")
            evals = []
            for n in range(len(result.solutions)):
                evals.append(evaluate(students[f"s{n}"]))
                bar.advance(task)
        for n, sol in enumerate(result.solutions):
            ev = evals[n]
            ms = measured[f"s{n}"]
            rows.append({"choices": sol.specs, "score": sol.score,
                         "latency_ms_lut": sol.cost["latency_ms"] + fixed,
                         "latency_ms_predicted": (sol.cost["latency_ms"] + fixed) * ratio,
                         "latency_ms_measured": ms,
                         "meets_budget": ms <= allowed * (1 - cfg.margin),
                         "val_loss": ev["loss"], "val_accuracy": ev["accuracy"]})
        attempts.append({"layer_budget_ms": layer_budget, "teacher_ms": measured["teacher"],
                         "allowed_ms": allowed, "solve_seconds": result.solve_seconds,
                         "students": rows})
        ok = [r for r in rows if r["meets_budget"]]
        if ok:
            chosen = min(ok, key=lambda r: r["val_loss"])
            break
        best = min(rows, key=lambda r: r["val_loss"])
        shrink = min(0.97, allowed * (1 - cfg.margin) / best["latency_ms_measured"])
        log(f"[yellow]search: best student measured {best['latency_ms_measured']:.4g} ms > "
            f"{allowed:.4g} ms allowed; tightening the LUT budget by {1 - shrink:.1%} and "
            f"re-solving[/yellow]")
        new_budget = max(floor, (layer_budget + fixed) * shrink - fixed)
        if new_budget >= layer_budget:
            break  # already at the cheapest reachable architecture
        layer_budget = new_budget
    if chosen is None:
        chosen = min((r for a in attempts for r in a["students"]),
                     key=lambda r: r["latency_ms_measured"])
        log(f"[red]search: no student measurably met the budget after {len(attempts)} "
            "solve(s); keeping the fastest one (see meets_budget in summary.json)[/red]")
    return {"budget": budget.model_dump(exclude_none=True), "budget_ms": target_ms,
            "calibration": ratio, "fixed_ms": fixed, "k": cfg.k, "overlap": cfg.overlap,
            "log10_space_size": library.log10_space_size(), "solve_seconds": solve_seconds,
            "resolves": len(attempts) - 1, "attempts": attempts, "chosen": chosen}


def select_student(run, lib: dict, budget: BudgetConfig) -> dict:
    """:func:`select` wired to a :class:`lana.pipeline.Run` (real networks and timings)."""
    from lana.profile import measure_models
    from lana.student import assemble
    from lana.train import evaluate

    val = run.splits.val.subset(run.config.search.eval_samples, run.config.seed + 1)
    return select(
        Library.from_dict(lib), run.profile(), budget, run.budget_ms(budget),
        run.config.search,
        build=lambda specs: assemble(run.chain, specs, run._load),
        measure=lambda students: measure_models({"teacher": run.teacher, **students},
                                                run.input_shape, run.config.latency),
        evaluate=lambda student: evaluate(student, val, batch_stats=True),
    )
