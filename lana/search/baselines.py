"""Search baselines under the same budgets as the ILP: random, regularized evolution, greedy.

They exist so that the ILP's advantage is measured, not assumed (the paper: ILP 79.3 vs
random 76.4 top-1). Each takes a :class:`lana.search.solver.Library`, budgets and a time limit and
returns the best feasible :class:`lana.search.solver.Solution` it found (or None). Like the ILP,
they need only numpy, and like the ILP every solution they report meets every budget when
its costs are summed with Python floats (``sum`` or ``math.fsum``).
"""

from __future__ import annotations

import numbers
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from lana.errors import ConfigError
from lana.search.budget import Budget
from lana.search.library import Library, Solution
from lana.search.problem import Problem

__all__ = ["BASELINES", "evolution", "greedy", "random_search"]


def _check_args(time_limit: float, max_evals: int | None) -> None:
    if not isinstance(time_limit, numbers.Real) or not time_limit > 0:
        raise ConfigError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if max_evals is not None and (isinstance(max_evals, bool)
                                  or not isinstance(max_evals, numbers.Integral)
                                  or max_evals < 1):
        raise ConfigError(f"max_evals must be a positive integer or None, got {max_evals!r}")


def _random_feasible(p: Problem, rng: np.random.Generator,
                     tries: int = 50) -> np.ndarray | None:
    """A random architecture built layer by layer, keeping room for the rest."""
    for _ in range(tries):
        choices = np.zeros(p.n_layers, dtype=int)
        used = np.zeros(len(p.budgets))
        # A random layer order, so that no layer always gets first pick of the budget.
        order = rng.permutation(p.n_layers)
        reserve = p.min_cost.sum(axis=1)
        ok = True
        for i in order:
            reserve = reserve - p.min_cost[:, i]
            room = p.cap - used - reserve
            allowed = np.flatnonzero(np.all(p.cost_table[:, i, :p.sizes[i]]
                                            <= room[:, None] + 1e-12, axis=0))
            if allowed.size == 0:
                ok = False
                break
            choices[i] = rng.choice(allowed)
            used += p.cost_table[:, i, choices[i]]
        if ok and p.feasible(choices):
            return choices
    return None


def random_search(library: Library, budgets: Sequence[Budget | str], time_limit: float = 1.0,
                  seed: int = 0, *, max_evals: int | None = None) -> Solution | None:
    """Best of random feasible architectures found within ``time_limit`` seconds.

    Uniform sampling over the whole space almost never meets a tight budget, so each
    architecture is built layer by layer in random order, the op drawn uniformly among those
    that leave the remaining layers able to meet every budget. ``max_evals`` (architectures
    sampled) makes the result independent of machine speed.
    """
    _check_args(time_limit, max_evals)
    p = Problem(library, budgets)
    rng = np.random.default_rng(seed)
    best, best_score = None, np.inf
    deadline = time.perf_counter() + time_limit
    evals = 0
    while time.perf_counter() < deadline and (max_evals is None or evals < max_evals):
        evals += 1
        c = _random_feasible(p, rng, tries=1)
        if c is not None and (s := p.table_score(c)) < best_score and p.meets(c):
            best, best_score = c, s
    return None if best is None else p.solution(best)


def evolution(library: Library, budgets: Sequence[Budget | str], time_limit: float = 1.0,
              seed: int = 0, population: int = 64, sample: int = 16, *,
              max_evals: int | None = None) -> Solution | None:
    """Regularized (aging) evolution: tournament selection, one-layer mutations.

    The population starts from random feasible architectures (as in :func:`random_search`);
    each step mutates the best of ``sample`` random members in one layer, to an op drawn
    among those that keep every budget met, and the oldest member dies. ``max_evals``
    (architectures generated, the initial population included) makes the result
    independent of machine speed.
    """
    _check_args(time_limit, max_evals)
    p = Problem(library, budgets)
    rng = np.random.default_rng(seed)
    deadline = time.perf_counter() + time_limit
    evals = 0

    def more() -> bool:
        return time.perf_counter() < deadline and (max_evals is None or evals < max_evals)

    # Members are (choices, score, totals); the totals make a constrained mutation O(ops).
    pop: deque[tuple[np.ndarray, float, np.ndarray]] = deque(maxlen=population)
    best: tuple[np.ndarray, float] | None = None
    while len(pop) < population and more():
        evals += 1
        c = _random_feasible(p, rng)
        if c is None:
            break
        entry = (c, p.table_score(c), p.totals(c))
        pop.append(entry)
        if (best is None or entry[1] < best[1]) and p.meets(c):
            best = (c, entry[1])
    if not pop:
        return None
    while more():
        evals += 1
        # Tournament with replacement: same selection pressure, far cheaper than
        # rng.choice(replace=False), which matters when wall time is what is compared.
        idx = rng.integers(len(pop), size=min(sample, len(pop)))
        parent, _, totals = min((pop[j] for j in idx), key=lambda x: x[1])
        i = int(rng.integers(p.n_layers))
        # Only ops that keep every budget met: under a tight budget, an unconstrained random
        # op would almost always be rejected and the search would stall.
        room = p.cap - totals + p.cost_table[:, i, parent[i]]
        allowed = np.flatnonzero(np.all(p.cost_table[:, i, :p.sizes[i]] <= room[:, None], axis=0))
        allowed = allowed[allowed != parent[i]]
        if allowed.size == 0:
            continue
        child = parent.copy()
        child[i] = allowed[rng.integers(allowed.size)]
        child_totals = totals - p.cost_table[:, i, parent[i]] + p.cost_table[:, i, child[i]]
        entry = (child, p.table_score(child), child_totals)
        pop.append(entry)  # maxlen drops the oldest, however good: "regularized" evolution
        if (best is None or entry[1] < best[1]) and p.meets(child):
            best = (child, entry[1])
    return None if best is None else p.solution(best[0])


def greedy(library: Library, budgets: Sequence[Budget | str], time_limit: float = 1.0,
           seed: int = 0) -> Solution | None:
    """Best score-per-cost first, as a knapsack heuristic would do.

    Start from the best-score op per layer; while over budget, take the swap that saves the
    most normalised (violated) cost per unit of score lost; once within budget, spend what
    is left on the swaps that improve the score most while staying within every budget.
    Deterministic (``seed`` is accepted for a uniform interface and ignored). Returns None
    if no feasible architecture is reached.
    """
    _check_args(time_limit, None)
    p = Problem(library, budgets)
    choices = np.argmin(p.score_table, axis=1)
    scale = np.maximum(np.abs(p.cap), 1e-12)
    deadline = time.perf_counter() + time_limit
    # Progress is measured by the normalised total excess over the budgets; each step must
    # lower it strictly, so the loop cannot cycle (a swap that fixes one budget by breaking
    # another does not count as progress). The cap on steps is only a safety net.
    for _ in range(10 * int(p.sizes.sum()) + 10):
        over = p.violated(choices)
        if not over.any():
            break
        if time.perf_counter() > deadline:
            return None
        # A budget that numpy's sum meets but exact summation does not is a hair over it;
        # aiming a hair below such budgets turns that into an ordinary excess.
        cap = p.cap - np.where(over, 1e-9 * scale, 0.0)
        cur_cost = p.cost_table[:, p.layer_index, choices]  # (budgets, layers)
        totals = cur_cost.sum(axis=1)
        excess = (np.maximum(totals - cap, 0) / scale).sum()
        new_totals = totals[:, None, None] - cur_cost[:, :, None] + p.cost_table  # (b, layers, ops)
        with np.errstate(invalid="ignore"):  # inf - inf on padded ops
            new_excess = (np.maximum(new_totals - cap[:, None, None], 0)
                          / scale[:, None, None]).sum(axis=0)
        drop = np.where(np.isfinite(new_excess), excess - new_excess, 0.0)
        # Keeping the current op "drops" the excess by rounding noise; it is no move.
        drop[p.layer_index, choices] = 0.0
        loss = p.score_table - p.score_table[p.layer_index, choices][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(drop > 0, np.maximum(loss, 0) / drop, np.inf)
        best = ratio.min()
        if not np.isfinite(best):
            return None  # stuck: no single swap reduces the excess
        # Among equally good ratios (e.g. several free swaps), the one that helps most.
        i, j = np.unravel_index(np.argmax(np.where(ratio == best, drop, -np.inf)), ratio.shape)
        choices[i] = j
    else:
        return None
    # Fill-up: the downgrades above usually leave budget unused.
    while time.perf_counter() <= deadline:
        totals = p.totals(choices)
        room = p.cap[:, None, None] - totals[:, None, None] + p.cost_table[:, p.layer_index, choices][:, :, None]
        fits = np.all(p.cost_table <= room, axis=0)  # (layers, ops)
        gain = np.where(fits, p.score_table[p.layer_index, choices][:, None] - p.score_table, -np.inf)
        moved = False
        # Best gain first; fall back to the next one if exact summation rejects it.
        for flat in np.argsort(-gain, axis=None, kind="stable")[:8]:
            i, j = np.unravel_index(flat, gain.shape)
            if not gain[i, j] > 0:
                break
            trial = choices.copy()
            trial[i] = j
            if p.meets(trial):
                choices, moved = trial, True
                break
        if not moved:
            break
    return p.solution(choices)


BASELINES: dict[str, Callable[..., Solution | None]] = {
    "random": random_search, "evolution": evolution, "greedy": greedy,
}
