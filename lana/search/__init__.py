"""Phase 2c: the candidate library, the ILP over it, and the students it picks.

``library`` (the search's only input and its JSON form), ``budget`` (``latency_ms<=5``,
parsed without numpy), ``problem`` (the problem model every search sees), ``milp`` (the
integer program, HiGHS through scipy), ``local_search`` (repair, descent and tabu for the
diverse solves), ``reach`` (what budgets a library can reach), ``solver`` (:func:`solve`,
the entry point), ``baselines`` (random, evolution, greedy), ``sweep`` (a budget sweep),
``calibration`` (the LUT's correction, fit on timed students), ``verdict`` (timings
against a budget), ``select`` (in a run: solve, then measure and rank the K students; the
networks are handed in as callables).

None of them imports torch or timm. The solver's public names are
importable from here, ``from lana.search import Library, solve``, and load on first use, so
``import lana.search`` (as config validation does for budgets) imports neither scipy nor
anything else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from lana.search.solver import (
        Budget,
        Layer,
        Library,
        Op,
        SearchResult,
        Solution,
        brute_force,
        dominated,
        minimum_reachable,
        normalize_budgets,
        score_optimum_cost,
        solve,
    )

#: Public names of :mod:`lana.search.solver`, resolved at first use. None of them is the
#: name of a module of this folder, which would shadow it once that module loads.
__all__ = ["Budget", "Layer", "Library", "Op", "SearchResult", "Solution", "brute_force",
           "dominated", "minimum_reachable", "normalize_budgets", "score_optimum_cost", "solve"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lana.search import solver

        value = getattr(solver, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lana.search' has no attribute {name!r}")

