"""Phase 2c of LANA: choose one candidate op per layer with an integer linear program.

Every layer ``i`` of the teacher has candidate ops ``j`` with a *score* ``a_ij`` (predicted
loss increase, lower is better) and additive *costs* ``b_ij[key]`` (latency, params, ...).
:func:`solve` picks one op per layer minimising the summed score subject to budgets on the
summed costs, and can return K diverse architectures (each shares at most
``floor(overlap * N)`` layer choices with every earlier one), as in the paper.

This module deliberately depends only on numpy/scipy so that searching never needs torch.
"""

from __future__ import annotations

import itertools
import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import csr_matrix, vstack

from lana.budget import Budget, is_real
from lana.errors import ConfigError, InfeasibleBudgetError, LanaError
from lana.library import Layer, Library, Op, Solution
from lana.problem import Problem, normalize_budgets, worst_total

__all__ = [
    "Budget",
    "Layer",
    "Library",
    "Op",
    "SearchResult",
    "Solution",
    "brute_force",
    "dominated",
    "minimum_reachable",
    "normalize_budgets",
    "solve",
]

# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

@dataclass
class SearchResult:
    """What :func:`solve` found: solutions in the order found (the first is the optimum).

    ``timed_out`` is True when ``time_limit`` stopped the search before K solutions were
    found or infeasibility was proven (the last solution may then be unproven-optimal).
    ``gaps[n]`` is what the search proved about solution ``n``: no architecture meeting the
    budgets and the overlap bound against solutions ``0 .. n-1`` scores below
    ``score - gap * (score - base)``, where ``base`` is the sum of every layer's best op
    score (0 for a proven optimum; None when nothing was proven).
    """

    solutions: list[Solution]
    solve_seconds: float
    budgets: list[Budget]
    k_requested: int = 1
    log10_space_size: float = 0.0
    timed_out: bool = False
    gaps: list[float | None] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form of the result (budgets as text such as ``"latency_ms<=5.0"``)."""
        return {
            "solutions": [s.to_dict() for s in self.solutions],
            "solve_seconds": self.solve_seconds,
            "budgets": [str(b) for b in self.budgets],
            "k_requested": self.k_requested,
            "log10_space_size": self.log10_space_size,
            "timed_out": self.timed_out,
            "gaps": list(self.gaps),
        }


# ---------------------------------------------------------------------------------------------
# Reachability
# ---------------------------------------------------------------------------------------------


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


def _check_reachable(library: Library, budgets: Sequence[Budget]) -> None:
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


def _conflict_error(problem: Problem) -> InfeasibleBudgetError:
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


# ---------------------------------------------------------------------------------------------
# The ILP
# ---------------------------------------------------------------------------------------------


def _countdown(time_limit: float | None) -> Callable[[], float | None]:
    """A clock of the seconds left of ``time_limit`` from now (None: no limit)."""
    start = time.perf_counter()

    def left() -> float | None:
        return None if time_limit is None else time_limit - (time.perf_counter() - start)

    return left


class _Ilp:
    """Scaled, pruned numeric view of a :class:`Problem`, shared by the K re-solves.

    It reads only the problem's plain data (per-layer score and cost arrays, the budgets'
    operators and values), never the library itself.
    """

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        # The LP lower bound (scaled objective) behind the last diverse solve's answer, kept
        # so that solve() can report the gap it proves; None when there is none.
        self.last_bound: float | None = None
        self.budgets = problem.budgets
        self.n_layers = problem.n_layers
        scores = problem.scores
        # Shifting each layer by its minimum and scaling by the largest remaining spread keeps
        # HiGHS's coefficients in [0, 1] whatever the units (ms, params, flops).
        shifted = [s - s.min() for s in scores]
        spread = max(float(s.max()) for s in shifted)
        self.obj = [s / (spread if spread > 0 else 1.0) for s in shifted]

        # Budgets that every architecture meets are dropped: they would only add numerics.
        self.rows: list[tuple[int, list[np.ndarray], float, float]] = []  # (b, coefs, shift, scale)
        for b, budget in enumerate(self.budgets):
            costs = problem.costs[b]
            pick = np.max if budget.op == "<=" else np.min
            # The costliest architecture (cheapest for >=), summed the unfavourable way: if even
            # it meets the budget, every architecture does (float sums are monotone).
            worst = worst_total([float(pick(c)) for c in costs], budget.op)
            if budget.satisfied_by(worst):
                continue
            mins = [float(c.min()) for c in costs]
            sh = [c - m for c, m in zip(costs, mins, strict=True)]
            scale = max(float(c.max()) for c in sh) or 1.0
            self.rows.append((b, [c / scale for c in sh], math.fsum(mins), scale))

        # Dominance: op j' dominates j if it is no worse in score and in every binding budget
        # direction. Swapping j -> j' never breaks a budget (float sums are monotone) and never
        # raises the score, so dominated ops can be dropped -- unless j' was chosen by an
        # earlier solution, because then the swap could break a diversity constraint.
        # Precomputed once; each re-solve only masks the rows of protected ops.
        self.dom: list[np.ndarray] = []
        directed = [problem.costs[b] for b, _, _, _ in self.rows]
        signs = [1.0 if self.budgets[b].op == "<=" else -1.0 for b, _, _, _ in self.rows]
        for i in range(self.n_layers):
            cols = [scores[i]] + [s * c[i] for s, c in zip(signs, directed, strict=True)]
            idx = np.arange(len(scores[i]))
            # Index order breaks ties between identical ops so exactly one of them survives.
            le = np.ones((len(idx), len(idx)), dtype=bool)
            lt = idx[:, None] < idx[None, :]
            for col in cols:
                le &= col[:, None] <= col[None, :]
                lt |= col[:, None] < col[None, :]
            self.dom.append(le & lt)

    def kept(self, protected: list[set[int]]) -> list[np.ndarray]:
        """Per layer, indices of ops that may appear in some optimal solution."""
        out = []
        for i, dom in enumerate(self.dom):
            if protected[i]:
                free = np.ones(dom.shape[0], dtype=bool)
                free[list(protected[i])] = False
                removed = dom[free].any(axis=0)
            else:
                removed = dom.any(axis=0)
            out.append(np.flatnonzero(~removed))
        return out

    def build(
        self,
        kept: list[np.ndarray],
        exclusions: Sequence[tuple[Sequence[int], int]],
        tighten: Sequence[float],
    ) -> _Model:
        """The (I)LP over the ops in ``kept``: one op per layer, the binding budgets (moved in
        by ``tighten``, in cost units) and one row per (choices, max shared layers) exclusion
        (over those of its ops that are in ``kept``)."""
        n = self.n_layers
        sizes = [len(k) for k in kept]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        nvar = int(offsets[-1])
        var_layer = np.repeat(np.arange(n), sizes)
        pos = [{int(op): int(offsets[i] + t) for t, op in enumerate(k)} for i, k in
               enumerate(kept)]
        c = np.concatenate([self.obj[i][kept[i]] for i in range(n)])
        rows_i: list[np.ndarray] = [var_layer]
        cols_i: list[np.ndarray] = [np.arange(nvar)]
        vals: list[np.ndarray] = [np.ones(nvar)]
        lb: list[float] = [1.0] * n
        ub: list[float] = [1.0] * n
        r = n
        for (b, coefs, shift, scale), extra in zip(self.rows, tighten, strict=True):
            budget = self.budgets[b]
            rows_i.append(np.full(nvar, r))
            cols_i.append(np.arange(nvar))
            vals.append(np.concatenate([coefs[i][kept[i]] for i in range(n)]))
            if budget.op == "<=":
                lb.append(-np.inf)
                ub.append((budget.value - extra - shift) / scale)
            else:
                lb.append((budget.value + extra - shift) / scale)
                ub.append(np.inf)
            r += 1
        for choices, limit in exclusions:
            # An op left out of the model is never chosen, so it cannot add to the overlap.
            cols = [pos[i][int(ch)] for i, ch in enumerate(choices) if int(ch) in pos[i]]
            rows_i.append(np.full(len(cols), r))
            cols_i.append(np.array(cols, dtype=np.int64))
            vals.append(np.ones(len(cols)))
            lb.append(-np.inf)
            ub.append(float(limit))
            r += 1
        a = csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows_i), np.concatenate(cols_i))),
            shape=(r, nvar),
        )
        return _Model(kept, offsets, c, a, np.array(lb), np.array(ub))

    def run_milp(
        self, model: _Model, time_limit: float | None, gap: float, node_limit: int | None = None
    ) -> tuple[list[int] | None, str]:
        """Solve ``model`` as a 0/1 program; (choices or None, outcome) with outcome "optimal"
        (within ``gap``), "limit" (best at ``node_limit``), "timeout" or "infeasible"."""
        options: dict[str, Any] = {"disp": False, "presolve": True, "mip_rel_gap": gap}
        if node_limit is not None:
            options["node_limit"] = int(node_limit)
        if time_limit is not None:
            options["time_limit"] = max(time_limit, 1e-3)
        nvar = len(model.c)
        res = milp(
            model.c,
            constraints=LinearConstraint(model.a, model.lb, model.ub),
            integrality=np.ones(nvar),
            bounds=Bounds(0.0, 1.0),
            options=options,
        )
        message = str(res.message).lower()
        hit_time = res.status == 1 and "time limit" in message
        if res.x is None:
            if hit_time:
                return None, "timeout"
            if res.status == 2 or "infeasible" in message:
                return None, "infeasible"
            if node_limit is not None:
                return None, "limit"
            raise LanaError(f"the ILP solver failed: {res.message}")
        if res.status == 0:
            return model.choices(res.x), "optimal"
        if hit_time:
            return model.choices(res.x), "timeout"
        if node_limit is not None:
            # scipy has no status for HiGHS's node limit; the solution is still feasible.
            return model.choices(res.x), "limit"
        raise LanaError(f"the ILP solver stopped early: {res.message}")

    def run_lp(
        self, model: _Model, time_limit: float | None
    ) -> tuple[float, np.ndarray, np.ndarray] | None | str:
        """LP relaxation of ``model``: (bound, reduced costs, x), "infeasible", or None when
        the LP could not be solved (the caller then falls back to the plain ILP)."""
        a, lo, hi = model.a, model.lb, model.ub
        eq = lo == hi
        up = ~eq & np.isfinite(hi)
        down = ~eq & np.isfinite(lo)
        parts = [a[up], -a[down]]
        a_ub = vstack(parts).tocsr() if (up.any() or down.any()) else None
        b_ub = np.concatenate([hi[up], -lo[down]]) if a_ub is not None else None
        options: dict[str, Any] = {"presolve": True}
        if time_limit is not None:
            options["time_limit"] = max(time_limit, 1e-3)
        res = linprog(model.c, A_ub=a_ub, b_ub=b_ub, A_eq=a[eq], b_eq=lo[eq], bounds=(0, 1),
                      method="highs-ds", options=options)
        if res.status == 2:
            return "infeasible"
        if res.status != 0 or res.x is None:
            return None
        return float(res.fun), np.asarray(res.lower.marginals, dtype=np.float64), res.x

    def _restricted(
        self,
        exclusions: Sequence[tuple[Sequence[int], int]],
        tighten: Sequence[float],
    ) -> tuple[list[set[int]], list[np.ndarray], _Model]:
        """(ops each layer's earlier solutions chose, ops kept after dominance, the model
        over the kept ops): the ops an exclusion row names must stay in the model."""
        protected: list[set[int]] = [set() for _ in range(self.n_layers)]
        for choices, _ in exclusions:
            for i, c in enumerate(choices):
                protected[i].add(int(c))
        kept = self.kept(protected)
        return protected, kept, self.build(kept, exclusions, tighten)

    def solve_once(
        self,
        exclusions: Sequence[tuple[Sequence[int], int]],
        tighten: Sequence[float],
        time_limit: float | None,
        gap: float = 0.0,
        staged: bool | None = False,
        node_limit: int | None = None,
    ) -> tuple[list[int] | None, str]:
        """One search under ``exclusions``; (choices or None, outcome) with outcome
        "optimal" (within ``gap``), "limit" (best within ``node_limit`` branch-and-bound
        nodes per ILP), "timeout" (best so far) or "infeasible".

        ``staged`` first finds a good solution on a shortlist of ops and then drops every op
        whose LP reduced cost proves it cannot beat that solution, so that HiGHS works on a
        small model: much faster on large models, and still within ``gap``.
        ``staged=None`` stages only models above ``_STAGE_MIN_VARS`` variables, below which
        the extra LP and ILP cost more than they save.
        """
        n = self.n_layers
        protected, kept, full = self._restricted(exclusions, tighten)
        left = _countdown(time_limit)

        if staged is None:
            staged = len(full.c) > _STAGE_MIN_VARS
        if not staged:
            return self._full(full, left, gap, node_limit)
        lp = self.run_lp(full, left())
        if lp == "infeasible":
            return None, "infeasible"
        if lp is None or isinstance(lp, str):
            return self._full(full, left, gap, node_limit)
        bound, rc, x = lp
        # Shortlist: everything the LP uses, every op an exclusion row names (so the rows can
        # be built), and the few ops per layer that the LP prices closest to free.
        short = []
        for i in range(n):
            lo_, hi_ = full.offsets[i], full.offsets[i + 1]
            r_i, x_i = rc[lo_:hi_], x[lo_:hi_]
            pick = set(np.argsort(r_i, kind="stable")[:_SHORTLIST].tolist())
            pick.update(np.flatnonzero(x_i > 1e-9).tolist())
            ops = set(kept[i][sorted(pick)].tolist()) | protected[i]
            short.append(np.array(sorted(ops), dtype=np.int64))
        first, outcome = self.run_milp(self.build(short, exclusions, tighten), left(), gap,
                                       node_limit)
        if first is None:
            # The shortlist may be too narrow to meet every row; the full model decides.
            if outcome == "timeout":
                return None, "timeout"
            return self._full(full, left, gap, node_limit)
        if outcome == "timeout":
            return first, "timeout"
        incumbent = self.objective(first)
        if incumbent - bound <= gap * abs(incumbent):
            # Already as close to the LP bound as HiGHS would be asked to get.
            return first, "optimal"
        # Any solution using op j costs at least bound + rc[j], so ops with rc[j] above the
        # incumbent's distance to the bound cannot improve on it (margin for LP tolerances).
        slack = incumbent - bound + 1e-6 * (1.0 + abs(incumbent))
        reduced = []
        for i in range(n):
            lo_, hi_ = full.offsets[i], full.offsets[i + 1]
            ops = set(kept[i][rc[lo_:hi_] <= slack].tolist()) | protected[i] | {first[i]}
            reduced.append(np.array(sorted(ops), dtype=np.int64))
        second, outcome2 = self.run_milp(self.build(reduced, exclusions, tighten), left(), gap,
                                         node_limit)
        if outcome2 == "timeout":
            outcome = "timeout"
        elif outcome2 == "limit":
            outcome = "limit"
        if second is None or self.objective(second) > incumbent:
            return first, outcome
        return second, outcome

    def _full(
        self, full: _Model, left: Callable[[], float | None], gap: float, node_limit: int | None
    ) -> tuple[list[int] | None, str]:
        choices, outcome = self.run_milp(full, left(), gap, node_limit)
        if choices is None and outcome == "limit":
            # Not even a feasible point within the node limit: finish it properly, under the
            # overall deadline only, rather than give up on this diverse solution.
            return self.run_milp(full, left(), gap)
        return choices, outcome

    def solve_diverse(
        self,
        exclusions: Sequence[tuple[Sequence[int], int]],
        tighten: Sequence[float],
        time_limit: float | None,
        gap: float,
        node_limit: int | None,
        moves: int,
    ) -> tuple[list[int] | None, str]:
        """One diverse solve (see the section comment above _Dense): (choices or None, outcome)
        with outcome "optimal" (proven within ``gap`` of the LP bound), "limit" (best found
        within ``moves`` local-search moves and ``node_limit`` branch-and-bound nodes),
        "timeout" or "infeasible". ``node_limit=None`` runs HiGHS until the gap is proven."""
        n = self.n_layers
        protected, kept, model = self._restricted(exclusions, tighten)
        left = _countdown(time_limit)

        def stop() -> bool:
            remaining = left()
            return remaining is not None and remaining <= 0

        self.last_bound = None
        lp = self.run_lp(model, left())
        if lp == "infeasible":
            return None, "infeasible"
        if lp is None or isinstance(lp, str):
            return self._full(model, left, gap, node_limit)
        bound, rc, x_lp = lp
        # A tightened budget row excludes some feasible architectures, so its LP bound is
        # not a bound on the real problem; only untightened ones are reported.
        self.last_bound = None if any(tighten) else bound

        def good_enough(f: float) -> bool:
            return f - bound <= gap * abs(f)

        # Any architecture using op j scores at least bound + rc[j], and one good enough to
        # stop at scores at most bound / (1 - gap): only ops with rc[j] below the difference
        # can be part of it. Searching among those first is several times faster; the full
        # set is searched only when they do not reach the gap.
        within = gap / (1.0 - gap) * max(bound, 0.0) + 1e-9 * (1.0 + abs(bound))
        lp_pick = [int(kept[i][np.argmax(x_lp[model.offsets[i]:model.offsets[i + 1]])])
                   for i in range(n)]
        promising = [np.union1d(kept[i][rc[model.offsets[i]:model.offsets[i + 1]] <= within],
                                [lp_pick[i]]).astype(np.int64) for i in range(n)]
        if node_limit is None:
            moves = 0  # HiGHS will prove the gap anyway; the descent only gives it a start
        found: list[int] | None = None
        for ops in (promising, kept):
            stage = self.build(ops, exclusions, tighten) if ops is promising else model
            begin = found if found is not None else lp_pick
            slots = _local_search(
                _Dense.of(stage),
                np.array([int(np.searchsorted(ops[i], c)) for i, c in enumerate(begin)]),
                moves, good_enough, stop)
            if slots is not None:
                better = [int(ops[i][t]) for i, t in enumerate(slots)]
                if found is None or self.objective(better) < self.objective(found):
                    found = better
            if (found is not None and good_enough(self.objective(found))) or stop():
                break
        if found is not None:
            if good_enough(self.objective(found)):
                return found, "optimal"
            if stop():
                return found, "timeout"
            if node_limit == 0:
                return found, "limit"
            # Only ops whose reduced cost leaves room below the local search's answer can
            # improve on it (margin for LP tolerances), so HiGHS gets a much smaller model.
            slack = self.objective(found) - bound + 1e-6 * (1.0 + abs(self.objective(found)))
            reduced = []
            for i in range(n):
                r_i = rc[model.offsets[i]:model.offsets[i + 1]]
                reduced.append(np.union1d(kept[i][r_i <= slack], [found[i]]).astype(np.int64))
            model = self.build(reduced, exclusions, tighten)
        elif stop():
            return None, "timeout"
        # Without a feasible point (rare) HiGHS must decide, whatever the node limit.
        limit = None if found is None or node_limit == 0 else node_limit
        better, outcome = self.run_milp(model, left(), gap, limit)
        if found is None and better is None and outcome == "limit":
            better, outcome = self.run_milp(model, left(), gap)
        if better is None or (found is not None
                              and self.objective(better) >= self.objective(found)):
            if found is None:
                return None, outcome
            # HiGHS found nothing better; if it proved its gap, the local search's answer (no
            # worse than HiGHS's) is within the gap too.
            return found, outcome
        return better, outcome

    def objective(self, choices: Sequence[int]) -> float:
        """Scaled objective of an architecture (what HiGHS minimises)."""
        return float(sum(self.obj[i][c] for i, c in enumerate(choices)))


@dataclass
class _Model:
    kept: list[np.ndarray]
    offsets: np.ndarray
    c: np.ndarray
    a: csr_matrix
    lb: np.ndarray
    ub: np.ndarray

    def choices(self, x: np.ndarray) -> list[int]:
        # argmax is robust to HiGHS returning 0.9999999 instead of 1.
        return [
            int(k[int(np.argmax(x[self.offsets[i]:self.offsets[i + 1]]))])
            for i, k in enumerate(self.kept)
        ]


# ---------------------------------------------------------------------------------------------
# Diverse solutions: LP bound + local search
# ---------------------------------------------------------------------------------------------
#
# Every diverse re-solve adds one overlap row per earlier solution. Those rows make the LP
# bound weak (the LP spreads each layer over several ops), so proving even a 1% gap by branch
# and bound took HiGHS seconds per solve at the paper's scale (K = 100 in 80 s) and minutes
# on libraries whose scores and latencies are unrelated. Good diverse architectures are far
# easier to find than to prove good. So each diverse solve
#   1. solves the LP relaxation once: a valid lower bound on the score, and a guide;
#   2. rounds the LP solution and improves it by local search (below);
#   3. stops when the answer is provably within ``diverse_gap`` of the LP bound, or after
#      ``diverse_moves`` tabu moves, or ``_PATIENCE`` moves without a better answer
#      (deterministic effort, unlike a clock);
#   4. only if asked to (``diverse_node_limit``), lets HiGHS branch and bound over the ops
#      whose LP reduced cost leaves room to beat the local search's answer.

_TOL = 1e-9  # slack allowed on the scaled rows; the exact float check has the last word
_PAIR_STARTS = 8  # one-layer moves tried as the first half of a two-layer move
_TENURE = 7  # tabu search: moves before a layer may return to an op it just left
_PENALTY_STEP = 1.5  # tabu search: growth (shrink) of a row's penalty while (not) violated
_PATIENCE = 100  # tabu search: moves without a new best feasible point before giving up


@dataclass
class _Dense:
    """A model as padded (layer, slot) arrays for the local search.

    ``c[i, t]`` is the scaled score of layer ``i``'s ``t``-th kept op (``inf`` past its last
    op, so padding is never chosen); side row ``r`` (a budget or an overlap row) requires
    ``lo[r] <= sum_i a[r, i, x[i]] <= hi[r]``; ``span[r]`` bounds how far one layer's change
    can move row ``r``, so rows far from their bounds can be skipped.
    """

    c: np.ndarray
    a: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    span: np.ndarray

    @classmethod
    def of(cls, model: _Model) -> _Dense:
        n = len(model.kept)
        sizes = np.diff(model.offsets)
        layer = np.repeat(np.arange(n), sizes)
        slot = np.arange(len(model.c)) - model.offsets[layer]
        c = np.full((n, int(sizes.max())), np.inf)
        c[layer, slot] = model.c
        side = model.a[n:].toarray()
        a = np.zeros((side.shape[0], n, c.shape[1]))
        a[:, layer, slot] = side
        valid = np.isfinite(c)[None]
        span = (np.where(valid, a, -np.inf).max(axis=2)
                - np.where(valid, a, np.inf).min(axis=2)).max(axis=1, initial=0.0)
        return cls(c, a, model.lb[n:], model.ub[n:], span)

    def objective(self, x: np.ndarray) -> float:
        return float(self.c[np.arange(len(x)), x].sum())

    def violation(self, x: np.ndarray) -> float:
        """Total excess of all side rows at ``x`` (0 when feasible)."""
        return float(_excess(self.a[:, np.arange(len(x)), x].sum(axis=1), self.lo,
                             self.hi).sum())

    def rows_near_bounds(self, x: np.ndarray, reach: int) -> tuple[np.ndarray, np.ndarray]:
        """(mask of the rows that ``reach`` one-layer changes could leave violated, row sums)."""
        sums = self.a[:, np.arange(len(x)), x].sum(axis=1)
        near = (sums + reach * self.span > self.hi + _TOL) | (sums - reach * self.span
                                                              < self.lo - _TOL)
        return near, sums

    def after_one_change(self, x: np.ndarray, reach: int) -> tuple[np.ndarray, np.ndarray]:
        """(mask of rows near their bounds, excess of each such row after changing layer ``i``
        to slot ``t``, shape (rows, layers, slots)); rows not in the mask stay satisfied."""
        near, sums = self.rows_near_bounds(x, reach)
        a = self.a[near]
        after = sums[near][:, None, None] + a - a[:, np.arange(len(x)), x][:, :, None]
        return near, _excess(after, self.lo[near], self.hi[near])


def _excess(sums: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How far row sums (rows on axis 0) lie outside [lo, hi], elementwise."""
    shape = (-1,) + (1,) * (sums.ndim - 1)
    return np.maximum(sums - hi.reshape(shape), 0.0) + np.maximum(lo.reshape(shape) - sums, 0.0)


def _descend(d: _Dense, x: np.ndarray, good_enough: Callable[[float], bool],
             stop: Callable[[], bool]) -> np.ndarray | None:
    """Repair ``x`` and improve it until no one- or two-layer change helps.

    Repair: while some row is violated, make the change that removes the most violation per
    unit of score added (free when the score does not rise). Descent: the best change of one
    layer that keeps every row satisfied; failing that, the best change of two layers, which
    is how a tight budget is traded between layers (one gets faster, another better). The
    two-layer moves cost most, so they are skipped once the point is ``good_enough``. Returns
    a feasible slot vector or None when repair gets stuck.
    """
    n = len(x)
    layers = np.arange(n)
    x = x.copy()
    while not stop():
        now = d.violation(x)
        exc = d.after_one_change(x, reach=1)[1].sum(axis=0)
        df = d.c - d.c[layers, x][:, None]
        if now > _TOL:
            gain = now - exc
            helps = (gain > _TOL) & np.isfinite(d.c)  # never into a padding slot
            if not helps.any():
                return None
            free = helps & (df <= 0)
            key = (np.where(free, -gain, np.inf) if free.any()
                   else np.where(helps, df / np.where(helps, gain, 1.0), np.inf))
            i, t = np.unravel_index(int(np.argmin(key)), key.shape)
            x[i] = t
            continue
        one = np.where(exc <= _TOL, df, np.inf)
        i, t = np.unravel_index(int(np.argmin(one)), one.shape)
        if one[i, t] < -1e-12:
            x[i] = t
            continue
        if good_enough(d.objective(x)):
            return x
        # Two-layer moves: complete each of the most improving (infeasible) one-layer changes
        # with the best second change that makes the pair feasible.
        best_gain, best_pair = -1e-12, None
        for flat in np.argsort(df, axis=None, kind="stable")[:_PAIR_STARTS]:
            i, t = np.unravel_index(int(flat), df.shape)
            if not df[i, t] < 0:
                break
            y = x.copy()
            y[i] = t
            _, exc2 = d.after_one_change(y, reach=1)
            total = df[i, t] + (d.c - d.c[layers, y][:, None])
            total[i] = np.inf
            total = np.where(exc2.sum(axis=0) <= _TOL, total, np.inf)
            j, u = np.unravel_index(int(np.argmin(total)), total.shape)
            if total[j, u] < best_gain:
                best_gain, best_pair = total[j, u], (i, t, j, u)
        if best_pair is None:
            return x
        i, t, j, u = best_pair
        x[i], x[j] = t, u
    return x if d.violation(x) <= _TOL else None


def _tabu(d: _Dense, x: np.ndarray, moves: int, good_enough: Callable[[float], bool],
          stop: Callable[[], bool]) -> np.ndarray | None:
    """Tabu search from ``x`` for ``moves`` one-layer changes; the best feasible point seen.

    Descent stops at the first local optimum. Here every move is the best one-layer change by
    score plus penalised row excess, even when that is worse, and a layer may not return to an
    op it left within ``_TENURE`` moves, so the search walks out of local optima. A row's
    penalty weight grows while the row is violated and shrinks while it is not, so the walk
    crosses briefly into infeasible space and back (strategic oscillation), which is how it
    trades budget and overlap between layers.
    """
    n, slots = d.c.shape
    layers = np.arange(n)
    x = x.copy()
    weight = np.ones(len(d.lo))
    tabu_until = np.zeros((n, slots), dtype=np.int64)
    best, best_f = None, math.inf
    if d.violation(x) <= _TOL:
        best, best_f = x.copy(), d.objective(x)
    last_gain = 0
    for move in range(1, moves + 1):
        if stop() or best is not None and (good_enough(best_f) or move - last_gain > _PATIENCE):
            break
        near, exc = d.after_one_change(x, reach=1)
        f_after = d.objective(x) + d.c - d.c[layers, x][:, None]
        feasible_after = exc.sum(axis=0) <= _TOL
        value = f_after + (weight[near][:, None, None] * exc).sum(axis=0)
        value[layers, x] = np.inf
        # Aspiration: a tabu move is still allowed if it gives a new best feasible point.
        allowed = (tabu_until <= move) | (feasible_after & (f_after < best_f - 1e-12))
        value = np.where(allowed, value, np.inf)
        i, t = np.unravel_index(int(np.argmin(value)), value.shape)
        if not np.isfinite(value[i, t]):
            break
        tabu_until[i, x[i]] = move + _TENURE
        x[i] = t
        violated = np.zeros(len(weight), dtype=bool)
        violated[near] = exc[:, i, t] > _TOL
        weight = np.clip(np.where(violated, weight * _PENALTY_STEP, weight / _PENALTY_STEP),
                         1e-3, 1e3)
        if feasible_after[i, t] and f_after[i, t] < best_f:
            best, best_f, last_gain = x.copy(), float(f_after[i, t]), move
    return best


def _local_search(d: _Dense, x: np.ndarray, moves: int, good_enough: Callable[[float], bool],
                  stop: Callable[[], bool]) -> np.ndarray | None:
    """Descent from ``x``; if that is not good enough, tabu search and descent from its best.
    Returns the best feasible slot vector found, or None."""
    best = _descend(d, x, good_enough, stop)
    if best is not None and good_enough(d.objective(best)):
        return best
    walked = _tabu(d, best if best is not None else x, moves, good_enough, stop)
    if walked is not None:
        walked = _descend(d, walked, good_enough, stop)
    if walked is not None and (best is None or d.objective(walked) < d.objective(best)):
        best = walked
    return best


_SHORTLIST = 3
# Measured on 46-layer libraries: HiGHS alone wins below ~2000 variables, staging above.
_STAGE_MIN_VARS = 2000
_MAX_EXACT_CUTS = 3


def _solve_feasible(
    prob: _Ilp,
    exclusions: list[tuple[list[int], int]],
    deadline: float | None,
    gap: float = 0.0,
    node_limit: int | None = None,
    staged: bool | None = False,
    moves: int | None = None,
) -> tuple[list[int] | None, str]:
    """Solve until the answer meets every budget in exact float arithmetic.

    ``deadline`` is the overall one (perf_counter time). With ``moves`` set this is a diverse
    solve (``solve_diverse``), otherwise an exact one (``solve_once``). Returns (choices or
    None, outcome) with outcome "optimal", "limit", "infeasible" or "timeout".
    """
    n = prob.n_layers
    cuts: list[tuple[list[int], int]] = []
    tighten = [0.0] * len(prob.rows)
    row_of_budget = {b: r for r, (b, _, _, _) in enumerate(prob.rows)}
    while True:
        remaining = None if deadline is None else deadline - time.perf_counter()
        if remaining is not None and remaining <= 0:
            return None, "timeout"
        if moves is None:
            choices, outcome = prob.solve_once(exclusions + cuts, tighten, remaining, gap,
                                               staged, node_limit)
        else:
            choices, outcome = prob.solve_diverse(exclusions + cuts, tighten, remaining, gap,
                                                  node_limit, moves)
        if choices is None:
            return None, outcome
        bad = prob.problem.violations(choices)
        if not bad:
            return choices, outcome
        if outcome == "timeout":
            return None, "timeout"
        # HiGHS accepts rows violated by ~1e-6 (scaled), so a solution can overshoot a budget
        # by a hair. Cutting off exactly that architecture keeps the optimum exact; if many
        # architectures sit in that hair-width band, tighten the budget instead, which is
        # guaranteed to make progress (at the cost of excluding that band).
        if len(cuts) < _MAX_EXACT_CUTS:
            cuts.append((choices, n - 1))
        else:
            for b, excess in bad:
                r = row_of_budget.get(b)
                if r is None:  # cannot happen: only budgets met by everything are dropped
                    raise LanaError(f"internal error: budget {prob.budgets[b]} was dropped")
                # One HiGHS feasibility tolerance (1e-6 of the row's scale) beyond the excess
                # makes the next answer land inside the budget in one step.
                tighten[r] += excess + 1e-6 * prob.rows[r][3]


def solve(
    library: Library,
    budgets: Sequence[Budget | str],
    k: int = 1,
    overlap: float = 0.7,
    time_limit: float | None = None,
    *,
    diverse_gap: float = 1e-2,
    diverse_node_limit: int | None = 0,
    diverse_moves: int = 500,
    on_solution: Callable[[int], None] | None = None,
) -> SearchResult:
    """Find up to ``k`` diverse architectures minimising the summed score under ``budgets``.

    ``budgets`` are :class:`Budget` objects or text such as ``"latency_ms<=5.0"``. The first
    solution is the exact optimum (HiGHS, zero MIP gap). Each later one minimises the score
    among architectures sharing at most ``floor(overlap * N)`` layer choices with every
    earlier solution (``overlap >= 1`` only forbids exact repeats); the search stops early,
    returning fewer than ``k``, once no such architecture exists. Solutions come in the order
    found. Every reported solution meets every budget when its costs are summed with Python
    floats (``sum`` or ``math.fsum``).

    Proving the diverse solves optimal can take HiGHS minutes each (the diversity rows make
    the LP bound weak), so each of them is found by a local search guided by its LP
    relaxation and stops once provably within ``diverse_gap`` of optimal (relative, on the
    score above the sum of per-layer best scores) or after at most ``diverse_moves`` tabu
    moves (a deterministic effort cap, unlike a time limit), keeping the best solution found.
    Then ``diverse_node_limit`` branch-and-bound nodes of HiGHS may improve it (0, the
    default: none; None: until ``diverse_gap`` is proven). Every diverse solution meets every
    budget and the overlap bound either way; ``SearchResult.gaps`` says how near optimal
    each one is proven to be. ``diverse_gap=0, diverse_node_limit=None`` makes them exact
    (and slow). ``time_limit`` (seconds) caps the whole search: the solutions found so far
    are returned with ``timed_out=True`` (a :class:`LanaError` if not even the first was
    found). ``on_solution(n)`` is called after the n-th solution is found (progress bars).

    Raises :class:`InfeasibleBudgetError` if a budget is out of the library's reach (its
    ``minimum`` maps the cost key to the reachable bound: the minimum for ``<=``, the
    maximum for ``>=``) or if the budgets cannot all be met together, and
    :class:`ConfigError` for bad arguments or an invalid library.
    """
    t0 = time.perf_counter()
    if not isinstance(library, Library):
        raise ConfigError(f"solve() needs a Library, got {type(library).__name__}")
    library.validate()
    blist = normalize_budgets(library, budgets)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ConfigError(f"k (number of architectures) must be an integer >= 1, got {k!r}")
    if not is_real(overlap) or not math.isfinite(overlap) or overlap < 0:
        raise ConfigError(f"overlap must be a finite number >= 0, got {overlap!r}")
    if time_limit is not None and (not is_real(time_limit) or not time_limit > 0):
        raise ConfigError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if diverse_node_limit is not None and (
        isinstance(diverse_node_limit, bool)
        or not isinstance(diverse_node_limit, numbers.Integral)
        or diverse_node_limit < 0
    ):
        raise ConfigError(
            f"diverse_node_limit must be an integer >= 0 or None, got {diverse_node_limit!r}"
        )
    if (isinstance(diverse_moves, bool) or not isinstance(diverse_moves, numbers.Integral)
            or diverse_moves < 0):
        raise ConfigError(f"diverse_moves must be an integer >= 0, got {diverse_moves!r}")
    if not is_real(diverse_gap) or not 0 <= diverse_gap < 1:
        raise ConfigError(f"diverse_gap must be in [0, 1), got {diverse_gap!r}")
    _check_reachable(library, blist)

    n = len(library.layers)
    # The epsilon keeps e.g. 0.57 * 100 = 56.999999999999 from flooring to 56.
    limit = n - 1 if overlap >= 1 else min(n - 1, math.floor(overlap * n + 1e-9))
    deadline = None if time_limit is None else t0 + float(time_limit)
    problem = Problem(library, blist)
    prob = _Ilp(problem)

    solutions: list[Solution] = []
    gaps: list[float | None] = []
    exclusions: list[tuple[list[int], int]] = []
    timed_out = False
    for _ in range(int(k)):
        if exclusions:
            choices, status = _solve_feasible(prob, exclusions, deadline, float(diverse_gap),
                                              diverse_node_limit, moves=int(diverse_moves))
        else:
            choices, status = _solve_feasible(prob, exclusions, deadline, staged=None)
        if choices is None:
            if status == "timeout":
                timed_out = True
                if not solutions:
                    raise LanaError(
                        f"the search hit time_limit={time_limit} s before finding any "
                        "architecture; raise time_limit or leave it unset"
                    )
            elif not solutions:
                raise _conflict_error(problem)
            break
        solutions.append(problem.solution(choices))
        if not exclusions:
            gaps.append(0.0 if status == "optimal" else None)
        elif prob.last_bound is None:
            gaps.append(None)
        else:
            f = prob.objective(choices)
            gaps.append(max(0.0, (f - prob.last_bound) / f) if f > 0 else 0.0)
        exclusions.append((choices, limit))
        if on_solution is not None:
            on_solution(len(solutions))
        if status == "timeout":
            timed_out = True
            break

    return SearchResult(
        solutions=solutions,
        solve_seconds=time.perf_counter() - t0,
        budgets=blist,
        k_requested=int(k),
        log10_space_size=library.log10_space_size(),
        timed_out=timed_out,
        gaps=gaps,
    )


def brute_force(library: Library, budgets: Sequence[Budget | str]) -> Solution | None:
    """Exhaustive search (for tests on tiny libraries): the lowest-score architecture meeting
    every budget, or None if there is none. Refuses spaces above a million architectures."""
    library.validate()
    blist = normalize_budgets(library, budgets)
    if library.log10_space_size() > 6:
        raise ConfigError(
            f"brute_force is for tiny libraries; this one has 10^"
            f"{library.log10_space_size():.1f} architectures, use solve()"
        )
    problem = Problem(library, blist)
    best: list[int] | None = None
    best_score = math.inf
    for choices in itertools.product(*(range(len(layer.ops)) for layer in library.layers)):
        if problem.violations(choices):
            continue
        score = problem.score(choices)
        if score < best_score:
            best, best_score = list(choices), score
    return None if best is None else problem.solution(best)
