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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lana.errors import ConfigError, LanaError
from lana.search.budget import Budget, is_real
from lana.search.library import Layer, Library, Op, Solution
from lana.search.milp import Ilp, solve_feasible
from lana.search.problem import Problem, normalize_budgets
from lana.search.reach import (
    check_reachable,
    conflict_error,
    dominated,
    minimum_reachable,
    score_optimum_cost,
)

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
    "score_optimum_cost",
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



def _check_solve_args(k: int, overlap: float, time_limit: float | None, diverse_gap: float,
                      diverse_node_limit: int | None, diverse_moves: int) -> None:
    """Raise :class:`ConfigError` for the first of :func:`solve`'s numeric arguments that is
    out of range."""
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
    _check_solve_args(k, overlap, time_limit, diverse_gap, diverse_node_limit, diverse_moves)
    check_reachable(library, blist)

    limit = _overlap_limit(len(library.layers), overlap)
    deadline = None if time_limit is None else t0 + float(time_limit)
    problem = Problem(library, blist)
    diverse = {"gap": float(diverse_gap), "node_limit": diverse_node_limit,
               "moves": int(diverse_moves)}
    solutions, gaps, timed_out = _solve_in_turn(problem, int(k), limit, deadline, diverse,
                                                on_solution)
    if not solutions:
        if timed_out:
            raise LanaError(
                f"the search hit time_limit={time_limit} s before finding any "
                "architecture; raise time_limit or leave it unset"
            )
        raise conflict_error(problem)
    return SearchResult(
        solutions=solutions,
        solve_seconds=time.perf_counter() - t0,
        budgets=blist,
        k_requested=int(k),
        log10_space_size=library.log10_space_size(),
        timed_out=timed_out,
        gaps=gaps,
    )


def _overlap_limit(n: int, overlap: float) -> int:
    """How many layer choices a diverse solution may share with each earlier one."""
    # The epsilon keeps e.g. 0.57 * 100 = 56.999999999999 from flooring to 56.
    return n - 1 if overlap >= 1 else min(n - 1, math.floor(overlap * n + 1e-9))


def _solve_in_turn(
    problem: Problem,
    k: int,
    limit: int,
    deadline: float | None,
    diverse: dict[str, Any],
    on_solution: Callable[[int], None] | None,
) -> tuple[list[Solution], list[float | None], bool]:
    """(solutions, their proven gaps, timed out) of up to ``k`` solves in turn.

    The first solve is exact (staged as the model's size asks); each later one is a diverse
    solve (``diverse``: its gap, node limit and moves) that shares at most ``limit`` layer
    choices with every earlier solution. Stops early when no such architecture is left
    (no solution at all: the budgets conflict) or at ``deadline``.
    """
    prob = Ilp(problem)
    solutions: list[Solution] = []
    gaps: list[float | None] = []
    exclusions: list[tuple[list[int], int]] = []
    timed_out = False
    for _ in range(k):
        if exclusions:
            choices, status = solve_feasible(prob, exclusions, deadline, **diverse)
        else:
            choices, status = solve_feasible(prob, exclusions, deadline, staged=None)
        if choices is None:
            timed_out = status == "timeout"
            break
        solutions.append(problem.solution(choices))
        gaps.append(_proven_gap(prob, choices, status, diverse=bool(exclusions)))
        exclusions.append((choices, limit))
        if on_solution is not None:
            on_solution(len(solutions))
        if status == "timeout":
            timed_out = True
            break
    return solutions, gaps, timed_out


def _proven_gap(prob: Ilp, choices: list[int], status: str, diverse: bool) -> float | None:
    """What the search proved about one solution (see :class:`SearchResult`): 0 for the
    exact first solve's optimum, a diverse solve's relative distance above its LP bound,
    None when nothing was proven (a timeout, or an LP bound of tightened budgets)."""
    if not diverse:
        return 0.0 if status == "optimal" else None
    if prob.last_bound is None:
        return None
    f = prob.objective(choices)
    return max(0.0, (f - prob.last_bound) / f) if f > 0 else 0.0


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
