"""What a library can reach under budgets, and why budgets cannot be met.

Checked before any search, so that an impossible budget is reported with the layers that
make it so and the bound to ask for instead, not as a solver failure. Needs only numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lana.errors import ConfigError, InfeasibleBudgetError
from lana.search.budget import Budget
from lana.search.library import Library
from lana.search.problem import Problem, worst_total

__all__ = ["check_reachable", "conflict_error", "dominated", "minimum_reachable",
           "score_optimum_cost"]

def dominated(costs: Sequence[Mapping[str, Mapping[str, float]]],
              reference: str = "teacher") -> list[list[str]]:
    """Per layer, the ops that cost at least as much as ``reference`` in every cost column.

    ``costs[i]`` maps each op of layer ``i`` to its cost columns (``{spec: {key: value}}``).
    Such an op lowers no whole-network cost the search may be bounded by, while the
    reference (the teacher's own layer) is exact: its replace-one score is 0 by definition,
    so the search could prefer the op only for a score better than exact, i.e. by noise.
    A layer without ``reference`` has none; ``reference`` itself is never listed.
    """
    out: list[list[str]] = []
    for layer in costs:
        ref = layer.get(reference)
        out.append([] if ref is None else [
            spec for spec, cost in layer.items()
            if spec != reference and all(cost[k] >= v for k, v in ref.items())])
    return out


def minimum_reachable(library: Library, key: str, sense: str = "min") -> float:
    """The smallest (``sense="min"``) or largest (``"max"``) summed ``key`` cost any
    architecture in the library can reach: each layer at its cheapest (costliest) op."""
    if sense not in ("min", "max"):
        raise ConfigError(f"sense must be 'min' or 'max', got {sense!r}")
    _check_cost_key(library, key)
    return _reach(library, key, sense)


def _check_cost_key(library: Library, key: str) -> None:
    library.validate()
    if key not in library.cost_keys():
        raise ConfigError(
            f"the library has no cost {key!r}; available: {', '.join(library.cost_keys())}"
        )


def score_optimum_cost(library: Library, key: str) -> float:
    """The summed ``key`` cost of the best-scoring architecture of the whole library (each
    layer at its lowest-score op, the cheapest of equal scores). A budget above it gives the
    ILP nothing better: its optimum is this architecture. Well-trained teachers make it the
    costliest one; where candidates score better than the teacher's own layer (redundant
    late blocks, noisy scores), it can be far cheaper."""
    _check_cost_key(library, key)
    per_layer = [min((op.score, op.cost[key]) for op in layer.ops)[1]
                 for layer in library.layers]
    return worst_total(per_layer, ">=")


def _reach(library: Library, key: str, sense: str) -> float:
    pick = min if sense == "min" else max
    per_layer = [pick(op.cost[key] for op in layer.ops) for layer in library.layers]
    # Conservative rounding in the direction that makes a budget harder to meet, so that
    # "budget >= minimum_reachable" really is reachable under either way of summing.
    return worst_total(per_layer, "<=" if sense == "min" else ">=")


def _extreme_choices(library: Library, key: str, sense: str) -> list[int]:
    arrays = library.cost_arrays(key)
    return [int(np.argmin(a) if sense == "min" else np.argmax(a)) for a in arrays]


def check_reachable(library: Library, budgets: Sequence[Budget]) -> None:
    problems: list[str] = []
    bounds: dict[str, float] = {}
    for budget in budgets:
        sense = "min" if budget.op == "<=" else "max"
        reach = _reach(library, budget.key, sense)
        if budget.satisfied_by(reach):
            continue
        bounds[budget.key] = reach
        choices = _extreme_choices(library, budget.key, sense)
        contrib = sorted(
            range(len(library.layers)),
            key=lambda i: -abs(library.layers[i].ops[choices[i]].cost[budget.key]),
        )[:3]
        tops = "; ".join(
            f"{library.layers[i].name!r} (layers[{i}], "
            f"{'cheapest' if sense == 'min' else 'largest'} op "
            f"{library.layers[i].ops[choices[i]].spec!r}, "
            f"{budget.key}={library.layers[i].ops[choices[i]].cost[budget.key]:.6g})"
            for i in contrib
        )
        if sense == "min":
            problems.append(
                f"budget {budget} cannot be met: the minimum reachable {budget.key} is "
                f"{reach!r} (every layer at its cheapest op), above the requested "
                f"{budget.value!r}. Layers contributing most to that minimum: {tops}. "
                f"Raise the budget to at least {reach!r}, or add cheaper candidate ops "
                "(e.g. identity or thinner blocks) to those layers."
            )
        else:
            problems.append(
                f"budget {budget} cannot be met: the maximum reachable {budget.key} is "
                f"{reach!r} (every layer at its largest op), below the requested "
                f"{budget.value!r}. Layers contributing most to that maximum: {tops}. "
                f"Lower the budget to at most {reach!r}, or add larger candidate ops to "
                "those layers."
            )
    if problems:
        raise InfeasibleBudgetError("\n".join(problems), minimum=bounds)


def conflict_error(problem: Problem) -> InfeasibleBudgetError:
    library = problem.library
    lines = []
    bounds: dict[str, float] = {}
    keys = sorted({b.key for b in problem.budgets})
    for budget in problem.budgets:
        sense = "min" if budget.op == "<=" else "max"
        reach = _reach(library, budget.key, sense)
        bounds[budget.key] = reach
        # What the other costs look like at this budget's extreme tells the user which
        # budget to relax and by roughly how much.
        at = problem.cost_sums(_extreme_choices(library, budget.key, sense))
        others = ", ".join(f"{k}={at[k]:.6g}" for k in keys if k != budget.key)
        lines.append(
            f"  {budget}: {sense}imum reachable {budget.key} alone is {reach!r}"
            + (f" (that architecture has {others})" if others else "")
        )
    return InfeasibleBudgetError(
        "the budgets conflict: each is reachable on its own but no architecture meets all "
        "of them together:\n" + "\n".join(lines) + "\nRelax at least one of them.",
        minimum=bounds,
    )
