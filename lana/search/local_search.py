"""Local search for the diverse solves: repair/descent and tabu search on padded arrays.

It sees only a :class:`Dense` view (scaled scores and side rows per (layer, slot)), so it
knows nothing of libraries, budgets or HiGHS. Needs only numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Dense", "descend", "local_search", "tabu"]

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
class Dense:
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


def descend(d: Dense, x: np.ndarray, good_enough: Callable[[float], bool],
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


def tabu(d: Dense, x: np.ndarray, moves: int, good_enough: Callable[[float], bool],
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


def local_search(d: Dense, x: np.ndarray, moves: int, good_enough: Callable[[float], bool],
                  stop: Callable[[], bool]) -> np.ndarray | None:
    """Descent from ``x``; if that is not good enough, tabu search and descent from its best.
    Returns the best feasible slot vector found, or None."""
    best = descend(d, x, good_enough, stop)
    if best is not None and good_enough(d.objective(best)):
        return best
    walked = tabu(d, best if best is not None else x, moves, good_enough, stop)
    if walked is not None:
        walked = descend(d, walked, good_enough, stop)
    if walked is not None and (best is None or d.objective(walked) < d.objective(best)):
        best = walked
    return best
