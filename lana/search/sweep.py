"""Budget sweep: the Pareto front of predicted score vs one cost, by solving the ILP per budget.

Budgets are spaced evenly between the cheapest reachable cost and the cost of the
best-score architecture (above which a larger budget changes nothing). Baselines from
:mod:`lana.search.baselines` can be run at the same budgets for comparison. Like the search it
needs no torch; matplotlib is imported only by :func:`plot`.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lana.core.io import atomic_write_bytes
from lana.errors import ConfigError
from lana.search.baselines import BASELINES
from lana.search.solver import Budget, Layer, Library, Op, Solution, minimum_reachable, solve

__all__ = ["budget_range", "plot", "sweep", "write_csv"]

# A baseline gets at least this much time per point even when the ILP was faster, so that
# random search and evolution get a fair number of samples.
_MIN_BASELINE_SECONDS = 0.05


def _worst_sum(values: Sequence[float]) -> float:
    # The search checks budgets against both sum() and fsum(); take the larger so that a
    # budget equal to this total is met however it is summed.
    return max(sum(values, 0.0), math.fsum(values))


def _arch_cost(library: Library, choices: Sequence[int], key: str) -> float:
    return _worst_sum([layer.ops[c].cost[key] for layer, c in zip(library.layers, choices,
                                                                 strict=True)])


def budget_range(library: Library, cost_key: str,
                 extra_budgets: Sequence[Budget | str] = ()) -> tuple[float, float]:
    """(lowest, highest) useful ``cost_key <=`` budget under ``extra_budgets``.

    The lowest is the cheapest ``cost_key`` any architecture meeting ``extra_budgets``
    reaches; the highest is the ``cost_key`` of the best-score architecture meeting them.
    Raises :class:`lana.errors.InfeasibleBudgetError` if ``extra_budgets`` alone cannot be met.
    """
    extras = [Budget.parse(b) for b in extra_budgets]
    if any(b.key == cost_key and b.op == "<=" for b in extras):
        raise ConfigError(
            f"the sweep sets the {cost_key}<= budget itself; drop it from the extra budgets "
            "(a >= bound on it is fine)"
        )
    best = solve(library, extras).solutions[0]
    high = _arch_cost(library, best.choices, cost_key)
    if extras:
        # The cheapest architecture meeting the other budgets: the same ILP with the cost as
        # the score (the per-layer cheapest ops may break those budgets).
        as_cost = Library(
            layers=[Layer(name=layer.name, ops=[Op(spec=op.spec, score=op.cost[cost_key],
                                                   cost=op.cost) for op in layer.ops])
                    for layer in library.layers]
        )
        cheapest = solve(as_cost, extras).solutions[0]
        low = _arch_cost(library, cheapest.choices, cost_key)
    else:
        low = minimum_reachable(library, cost_key, "min")
    return low, max(low, high)


def _row(method: str, budget: float, sol: Solution | None, keys: Sequence[str],
         seconds: float) -> dict[str, Any]:
    return {
        "method": method,
        "budget": budget,
        "score": None if sol is None else sol.score,
        "cost": {k: None for k in keys} if sol is None else dict(sol.cost),
        "choices": None if sol is None else list(sol.choices),
        "specs": None if sol is None else list(sol.specs),
        "seconds": seconds,
    }


def sweep(
    library: Library,
    cost_key: str,
    points: int = 30,
    extra_budgets: Sequence[Budget | str] = (),
    baselines: Sequence[str] = (),
    *,
    baseline_time_limit: float | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Solve the ILP at ``points`` budgets ``cost_key <= B`` spaced evenly over
    :func:`budget_range`, each together with ``extra_budgets``.

    Returns one row per (method, budget), ILP rows first, budgets ascending:
    ``{"method", "budget", "score", "cost": {key: total}, "choices", "specs", "seconds"}``.
    ``baselines`` names entries of :data:`lana.search.baselines.BASELINES` to run at the same
    budgets, each for ``baseline_time_limit`` seconds per point (default: as long as the ILP
    took there, at least 0.05 s); a baseline that finds nothing has ``score`` None.
    """
    if not isinstance(library, Library):
        raise ConfigError(f"sweep() needs a Library, got {type(library).__name__}")
    library.validate()
    if cost_key not in library.cost_keys():
        raise ConfigError(
            f"the library has no cost {cost_key!r}; available: {', '.join(library.cost_keys())}"
        )
    if isinstance(points, bool) or not isinstance(points, numbers.Integral) or points < 1:
        raise ConfigError(f"points must be an integer >= 1, got {points!r}")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(
            f"unknown baseline {unknown[0]!r}; choose from {', '.join(sorted(BASELINES))}"
        )
    if baseline_time_limit is not None and not baseline_time_limit > 0:
        raise ConfigError(f"baseline_time_limit must be positive, got {baseline_time_limit!r}")
    extras = [Budget.parse(b) for b in extra_budgets]
    low, high = budget_range(library, cost_key, extras)
    # Identical budgets would only repeat the same solve. linspace returns both ends
    # exactly, so the first and last budgets are exactly reachable.
    values = [low] if high <= low else sorted(set(np.linspace(low, high, int(points)).tolist()))

    keys = library.cost_keys()
    rows: list[dict[str, Any]] = []
    ilp_seconds: list[float] = []
    for value in values:
        t0 = time.perf_counter()
        res = solve(library, [Budget(cost_key, "<=", value), *extras])
        ilp_seconds.append(time.perf_counter() - t0)
        rows.append(_row("ilp", value, res.solutions[0], keys, ilp_seconds[-1]))
    for name in baselines:
        fn = BASELINES[name]
        for value, spent in zip(values, ilp_seconds, strict=True):
            limit = baseline_time_limit or max(spent, _MIN_BASELINE_SECONDS)
            t0 = time.perf_counter()
            sol = fn(library, [Budget(cost_key, "<=", value), *extras], time_limit=limit,
                     seed=seed)
            rows.append(_row(name, value, sol, keys, time.perf_counter() - t0))
    return rows


def _csv_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys = sorted({k for r in rows for k in r["cost"]})
    return ["method", "budget", "score", *keys, "seconds", "choices"]


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Atomically write sweep rows as CSV: method, budget, score, every cost, seconds, and
    the chosen op specs separated by spaces (empty cells where a baseline found nothing)."""
    columns = _csv_columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        def fmt(x: Any) -> str:
            return "" if x is None else repr(float(x))

        w.writerow([r["method"], fmt(r["budget"]), fmt(r["score"]),
                    *(fmt(r["cost"].get(k)) for k in columns[3:-2]), f"{r['seconds']:.6f}",
                    "" if r["specs"] is None else " ".join(r["specs"])])
    atomic_write_bytes(path, buf.getvalue().encode())


def plot(rows: Sequence[dict[str, Any]], cost_key: str, path: str | os.PathLike[str],
         title: str | None = None) -> None:
    """Write the Pareto front (predicted score vs ``cost_key``) as PNG or SVG (by extension).

    The ILP's points are drawn as a staircase (the best score reachable at each cost);
    baselines as markers at the cost they actually used.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ConfigError(f"the plot must be a .png or .svg file, got {path.name!r}")
    # Figure + Agg canvas directly: no pyplot global state and no GUI backend, so this is
    # safe in threads, tests and headless machines.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    markers = {"ilp": "o", "greedy": "s", "evolution": "^", "random": "x"}
    for m in methods:
        pts = sorted((r["cost"][cost_key], r["score"]) for r in rows
                     if r["method"] == m and r["score"] is not None)
        if not pts:
            continue
        x, y = zip(*pts, strict=True)
        if m == "ilp":
            ax.plot(x, y, marker="o", drawstyle="steps-post", label="ILP (optimal)", zorder=3)
        else:
            ax.plot(x, y, linestyle="none", marker=markers.get(m, "."), label=m, alpha=0.8)
    ax.set_xlabel(f"{cost_key} (sum over layers)")
    ax.set_ylabel("predicted score (sum, lower is better)")
    ax.set_title(title or f"Pareto front: score vs {cost_key}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=120)
    atomic_write_bytes(path, buf.getvalue())
