"""The integer linear program behind :func:`lana.search.solver.solve`, on HiGHS through scipy.

:class:`Ilp` reads only a :class:`lana.search.problem.Problem`'s plain data (per-layer score and
cost arrays, the budgets' operators and values): it scales them, prunes dominated ops and
solves the exact and the diverse (overlap-bounded) programs; :func:`solve_feasible` repeats
a solve until the answer meets every budget in exact float arithmetic. Needs only
numpy/scipy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import csr_matrix, vstack

from lana.errors import LanaError
from lana.search.local_search import Dense, local_search
from lana.search.problem import Problem, worst_total

__all__ = ["Ilp", "Model", "solve_feasible"]

def _countdown(time_limit: float | None) -> Callable[[], float | None]:
    """A clock of the seconds left of ``time_limit`` from now (None: no limit)."""
    start = time.perf_counter()

    def left() -> float | None:
        return None if time_limit is None else time_limit - (time.perf_counter() - start)

    return left


def _scaled_objective(scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per layer, the scores shifted by their minimum and scaled by the largest remaining
    spread: keeps HiGHS's coefficients in [0, 1] whatever the units (ms, params, flops)."""
    shifted = [s - s.min() for s in scores]
    spread = max(float(s.max()) for s in shifted)
    return [s / (spread if spread > 0 else 1.0) for s in shifted]


def _binding_rows(problem: Problem) -> list[tuple[int, list[np.ndarray], float, float]]:
    """(budget index, scaled per-layer costs, shift, scale) of each budget that some
    architecture breaks; budgets that every architecture meets would only add numerics."""
    rows = []
    for b, budget in enumerate(problem.budgets):
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
        rows.append((b, [c / scale for c in sh], math.fsum(mins), scale))
    return rows


def _dominance(problem: Problem,
               rows: Sequence[tuple[int, list[np.ndarray], float, float]]) -> list[np.ndarray]:
    """Per layer, a matrix whose [j', j] says op j' dominates op j.

    Op j' dominates j if it is no worse in score and in every binding budget direction.
    Swapping j -> j' never breaks a budget (float sums are monotone) and never raises the
    score, so dominated ops can be dropped -- unless j' was chosen by an earlier solution,
    because then the swap could break a diversity constraint (see :meth:`Ilp.kept`).
    """
    scores = problem.scores
    directed = [problem.costs[b] for b, _, _, _ in rows]
    signs = [1.0 if problem.budgets[b].op == "<=" else -1.0 for b, _, _, _ in rows]
    dom = []
    for i in range(problem.n_layers):
        cols = [scores[i]] + [s * c[i] for s, c in zip(signs, directed, strict=True)]
        idx = np.arange(len(scores[i]))
        # Index order breaks ties between identical ops so exactly one of them survives.
        le = np.ones((len(idx), len(idx)), dtype=bool)
        lt = idx[:, None] < idx[None, :]
        for col in cols:
            le &= col[:, None] <= col[None, :]
            lt |= col[:, None] < col[None, :]
        dom.append(le & lt)
    return dom


class Ilp:
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
        self.obj = _scaled_objective(problem.scores)
        # Budgets that every architecture meets are dropped: they would only add numerics.
        self.rows: list[tuple[int, list[np.ndarray], float, float]] = _binding_rows(problem)
        # Precomputed once; each re-solve only masks the rows of protected ops (see kept()).
        self.dom: list[np.ndarray] = _dominance(problem, self.rows)

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
    ) -> Model:
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
        return Model(kept, offsets, c, a, np.array(lb), np.array(ub))

    def run_milp(
        self, model: Model, time_limit: float | None, gap: float, node_limit: int | None = None
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
        self, model: Model, time_limit: float | None
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
    ) -> tuple[list[set[int]], list[np.ndarray], Model]:
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
        short = _shortlist(full, kept, protected, rc, x)
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
        reduced = _below_slack(full, kept, rc, slack,
                               [protected[i] | {first[i]} for i in range(n)])
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
        self, full: Model, left: Callable[[], float | None], gap: float, node_limit: int | None
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
        """One diverse solve (see the comment atop :mod:`lana.search.local_search`): (choices
        or None, outcome) with outcome "optimal" (proven within ``gap`` of the LP bound), "limit" (best found
        within ``moves`` local-search moves and ``node_limit`` branch-and-bound nodes),
        "timeout" or "infeasible". ``node_limit=None`` runs HiGHS until the gap is proven."""
        _, kept, model = self._restricted(exclusions, tighten)
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

        if node_limit is None:
            moves = 0  # HiGHS will prove the gap anyway; the descent only gives it a start
        lp_pick, promising = _promising(model, kept, bound, rc, x_lp, gap)
        # Searching the promising ops first is several times faster; the full set (``model``
        # over ``kept``) is searched only when they do not reach the gap.
        stages = [(promising, self.build(promising, exclusions, tighten)), (kept, model)]
        found = self._descend(stages, lp_pick, moves, good_enough, stop)
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
            model = self.build(_improvable(model, kept, rc, slack, found), exclusions, tighten)
        elif stop():
            return None, "timeout"
        return self._improve(model, found, left, gap, node_limit)

    def _descend(
        self,
        stages: Sequence[tuple[list[np.ndarray], Model]],
        begin: list[int],
        moves: int,
        good_enough: Callable[[float], bool],
        stop: Callable[[], bool],
    ) -> list[int] | None:
        """The local search's best architecture (None: it found none), from ``begin``.

        Each stage is (ops per layer, the model over them), searched in turn from the best
        answer so far until one is good enough or time is up.
        """
        found: list[int] | None = None
        for ops, stage in stages:
            start = found if found is not None else begin
            slots = local_search(
                stage.dense(),
                np.array([int(np.searchsorted(ops[i], c)) for i, c in enumerate(start)]),
                moves, good_enough, stop)
            if slots is not None:
                better = [int(ops[i][t]) for i, t in enumerate(slots)]
                if found is None or self.objective(better) < self.objective(found):
                    found = better
            if (found is not None and good_enough(self.objective(found))) or stop():
                break
        return found

    def _improve(
        self,
        model: Model,
        found: list[int] | None,
        left: Callable[[], float | None],
        gap: float,
        node_limit: int | None,
    ) -> tuple[list[int] | None, str]:
        """HiGHS on ``model`` after the local search: its answer if better than ``found``.

        Without a feasible point (rare) HiGHS must decide, whatever the node limit.
        """
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
class Model:
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

    def dense(self) -> Dense:
        """This model as padded (layer, slot) arrays for the local search."""
        n = len(self.kept)
        sizes = np.diff(self.offsets)
        layer = np.repeat(np.arange(n), sizes)
        slot = np.arange(len(self.c)) - self.offsets[layer]
        c = np.full((n, int(sizes.max())), np.inf)
        c[layer, slot] = self.c
        side = self.a[n:].toarray()
        a = np.zeros((side.shape[0], n, c.shape[1]))
        a[:, layer, slot] = side
        valid = np.isfinite(c)[None]
        span = (np.where(valid, a, -np.inf).max(axis=2)
                - np.where(valid, a, np.inf).min(axis=2)).max(axis=1, initial=0.0)
        return Dense(c, a, self.lb[n:], self.ub[n:], span)


_SHORTLIST = 3
# Measured on 46-layer libraries: HiGHS alone wins below ~2000 variables, staging above.
_STAGE_MIN_VARS = 2000
_MAX_EXACT_CUTS = 3


def _shortlist(model: Model, kept: list[np.ndarray], protected: list[set[int]],
               rc: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """Per layer, the ops of a staged solve's first, small ILP: everything the LP (``x``)
    uses, every op an exclusion row names (so the rows can be built), and the
    ``_SHORTLIST`` ops that the LP prices closest to free (reduced costs ``rc``)."""
    short = []
    for i in range(len(kept)):
        lo_, hi_ = model.offsets[i], model.offsets[i + 1]
        r_i, x_i = rc[lo_:hi_], x[lo_:hi_]
        pick = set(np.argsort(r_i, kind="stable")[:_SHORTLIST].tolist())
        pick.update(np.flatnonzero(x_i > 1e-9).tolist())
        ops = set(kept[i][sorted(pick)].tolist()) | protected[i]
        short.append(np.array(sorted(ops), dtype=np.int64))
    return short


def _below_slack(model: Model, kept: list[np.ndarray], rc: np.ndarray, slack: float,
                 also: list[set[int]]) -> list[np.ndarray]:
    """Per layer, the ops whose reduced cost is at most ``slack`` (the only ones that can
    improve on an incumbent that far above the LP bound), plus ``also``'s."""
    reduced = []
    for i in range(len(kept)):
        lo_, hi_ = model.offsets[i], model.offsets[i + 1]
        ops = set(kept[i][rc[lo_:hi_] <= slack].tolist()) | also[i]
        reduced.append(np.array(sorted(ops), dtype=np.int64))
    return reduced


def _promising(model: Model, kept: list[np.ndarray], bound: float, rc: np.ndarray,
               x_lp: np.ndarray, gap: float) -> tuple[list[int], list[np.ndarray]]:
    """(the op the LP relaxation picks per layer, the ops per layer that can be part of an
    architecture within ``gap`` of the LP ``bound``).

    Any architecture using op j scores at least bound + rc[j], and one good enough to stop
    at scores at most bound / (1 - gap): only ops with rc[j] below the difference can be
    part of it (the LP's pick is always kept, as the local search's start).
    """
    n = len(kept)
    within = gap / (1.0 - gap) * max(bound, 0.0) + 1e-9 * (1.0 + abs(bound))
    lp_pick = [int(kept[i][np.argmax(x_lp[model.offsets[i]:model.offsets[i + 1]])])
               for i in range(n)]
    promising = [np.union1d(kept[i][rc[model.offsets[i]:model.offsets[i + 1]] <= within],
                            [lp_pick[i]]).astype(np.int64) for i in range(n)]
    return lp_pick, promising


def _improvable(model: Model, kept: list[np.ndarray], rc: np.ndarray, slack: float,
                found: list[int]) -> list[np.ndarray]:
    """Per layer, the ops whose reduced cost leaves room (``slack``) below the local
    search's answer ``found``, and ``found``'s op: the only ones that can improve on it."""
    reduced = []
    for i in range(len(kept)):
        r_i = rc[model.offsets[i]:model.offsets[i + 1]]
        reduced.append(np.union1d(kept[i][r_i <= slack], [found[i]]).astype(np.int64))
    return reduced


def solve_feasible(
    prob: Ilp,
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
