"""The one problem model every search sees: a library under budgets as plain arrays.

The ILP (:mod:`lana.search.solver`) and the baselines (:mod:`lana.search.baselines`) both work on a
:class:`Problem`: per-layer scores and budget cost columns, dense padded tables for moves
that look at every (layer, op) pair at once, and the exact checks every reported solution
passes. Keeping them in one place means a baseline and the ILP cannot disagree on what
"meets the budget" or "the score of an architecture" means.

Needs only numpy, so that searching never needs torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lana.errors import ConfigError
from lana.search.budget import Budget
from lana.search.library import Library, Solution

__all__ = ["Problem", "normalize_budgets", "worst_total"]


def normalize_budgets(library: Library, budgets: Sequence[Budget | str]) -> list[Budget]:
    """Parse budgets (one or many) and check that each names a cost key of the library."""
    if isinstance(budgets, str | Budget):
        budgets = [budgets]
    out = [Budget.parse(b) for b in budgets]
    keys = library.cost_keys()
    for b in out:
        if b.key not in keys:
            raise ConfigError(
                f"budget {b} is on cost {b.key!r}, which the library does not have; "
                f"available cost keys: {', '.join(keys) if keys else '(none)'}"
            )
    return out


def worst_total(values: Sequence[float], op: str) -> float:
    """The sum of ``values`` least favourable to a budget with operator ``op``.

    Callers may recompute a cost with a plain left-to-right ``sum()`` or with ``math.fsum``;
    they can differ in the last bits, so a budget must hold for both: the larger of the two
    for ``"<="``, the smaller for ``">="``.
    """
    seq, exact = sum(values, 0.0), math.fsum(values)
    return max(seq, exact) if op == "<=" else min(seq, exact)


class Problem:
    """A validated library under parsed budgets, as the data a search works on.

    Ragged, per layer (what the ILP builds its rows from): ``scores[i]`` (op scores of layer
    ``i``) and ``costs[b][i]`` (the cost of budget ``b``'s key for layer ``i``'s ops).
    Dense, padded to the widest layer (for vectorised moves): ``score_table`` (layers, ops)
    and ``cost_table`` (budgets, layers, ops), padding ``inf`` so it is never chosen, with
    ``">="`` budgets negated so that every budget reads ``total <= cap``.
    """

    def __init__(self, library: Library, budgets: Sequence[Budget | str]) -> None:
        library.validate()
        self.library = library
        self.budgets = normalize_budgets(library, budgets)
        self.keys = library.cost_keys()
        self.n_layers = len(library.layers)
        self.sizes = np.array([len(layer.ops) for layer in library.layers])
        self.scores = library.score_arrays()
        self.costs = [library.cost_arrays(budget.key) for budget in self.budgets]

        width = int(self.sizes.max())
        self.score_table = np.full((self.n_layers, width), np.inf)
        for i, row in enumerate(self.scores):
            self.score_table[i, :len(row)] = row
        self.cost_table = np.zeros((len(self.budgets), self.n_layers, width))
        for b, budget in enumerate(self.budgets):
            sign = 1.0 if budget.op == "<=" else -1.0
            for i, row in enumerate(self.costs[b]):
                self.cost_table[b, i, :len(row)] = sign * row
                self.cost_table[b, i, len(row):] = np.inf
        self.cap = np.array([b.value if b.op == "<=" else -b.value for b in self.budgets])
        self.min_cost = self.cost_table.min(axis=2)  # (budgets, layers)
        self.layer_index = np.arange(self.n_layers)

    # -- fast (numpy) measures, for search moves ----------------------------------------------

    def totals(self, choices: np.ndarray) -> np.ndarray:
        """Per budget, the signed cost total of ``choices`` (numpy's pairwise sum)."""
        return self.cost_table[:, self.layer_index, choices].sum(axis=1)

    def feasible(self, choices: np.ndarray) -> bool:
        """Fast budget check for search moves; :meth:`meets` has the last word."""
        return bool(np.all(self.totals(choices) <= self.cap))

    def table_score(self, choices: np.ndarray) -> float:
        """Summed score of ``choices`` (numpy's sum; :meth:`solution` sums as reported)."""
        return float(self.score_table[self.layer_index, choices].sum())

    # -- exact measures, as every reported solution is checked and summed ---------------------

    def violations(self, choices: Sequence[int]) -> list[tuple[int, float]]:
        """(budget index, excess in cost units) for every budget ``choices`` breaks, each
        total taken the unfavourable way of :func:`worst_total`."""
        layers = self.library.layers
        out = []
        for b, budget in enumerate(self.budgets):
            vals = [layers[i].ops[int(c)].cost[budget.key] for i, c in enumerate(choices)]
            total = worst_total(vals, budget.op)
            if not budget.satisfied_by(total):
                out.append((b, abs(total - budget.value)))
        return out

    def violated(self, choices: Sequence[int]) -> np.ndarray:
        """Per budget, whether ``choices`` breaks it (see :meth:`violations`)."""
        out = np.zeros(len(self.budgets), dtype=bool)
        for b, _ in self.violations(choices):
            out[b] = True
        return out

    def meets(self, choices: Sequence[int]) -> bool:
        """Whether ``choices`` meets every budget: the check every reported solution passes."""
        return not self.violations(choices)

    def score(self, choices: Sequence[int]) -> float:
        """Summed score of ``choices``, left to right in Python floats (as reported)."""
        ops = zip(self.library.layers, choices, strict=True)
        return float(sum((layer.ops[int(c)].score for layer, c in ops), 0.0))

    def cost_sums(self, choices: Sequence[int]) -> dict[str, float]:
        """Every cost column of the library summed over ``choices`` (as reported)."""
        ops = [layer.ops[int(c)] for layer, c in zip(self.library.layers, choices, strict=True)]
        return {k: float(sum((op.cost[k] for op in ops), 0.0)) for k in self.keys}

    def solution(self, choices: Sequence[int]) -> Solution:
        """``choices`` as a reported :class:`Solution` (scores and costs summed as reported)."""
        return Solution(
            choices=[int(c) for c in choices],
            score=self.score(choices),
            cost=self.cost_sums(choices),
            specs=self.library.specs([int(c) for c in choices]),
        )
