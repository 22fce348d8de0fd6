"""Pins the search's answers on one seeded library, so that restructuring the problem model
(issue 35) provably changes no numbers: the ILP's optimum and diverse solutions and the
seeded baselines' results, captured before the redesign."""

from __future__ import annotations

import random

from lana.search.baselines import evolution, greedy, random_search
from lana.search.solver import Budget, Layer, Library, Op, solve


def _library(seed: int = 3, n_layers: int = 14, n_ops: int = 7) -> Library:
    rng = random.Random(seed)
    layers = []
    for i in range(n_layers):
        ops = [Op(spec=f"op{j}", score=0.0 if j == 0 else rng.uniform(0, 1),
                  cost={"latency_ms": rng.uniform(0.1, 2.0),
                        "params": float(rng.randint(1000, 90000))})
               for j in range(n_ops)]
        layers.append(Layer(name=f"l{i}", ops=ops))
    return Library(layers=layers)


def _budgets(lib: Library) -> list[Budget]:
    # Both budgets bind: a "<=" on latency and a ">=" on parameters.
    teacher = sum(max(op.cost["latency_ms"] for op in layer.ops) for layer in lib.layers)
    return [Budget("latency_ms", "<=", 0.45 * teacher), Budget("params", ">=", 800000.0)]


def test_ilp_answers_are_pinned() -> None:
    lib = _library()
    result = solve(lib, _budgets(lib), k=3, overlap=0.6)
    assert [s.choices for s in result.solutions] == [
        [0, 0, 1, 0, 5, 0, 0, 0, 0, 4, 4, 5, 1, 0],
        [0, 0, 1, 4, 5, 0, 0, 0, 2, 3, 0, 6, 0, 0],
        [0, 0, 1, 2, 6, 1, 0, 0, 6, 0, 0, 5, 1, 0],
    ]
    assert [s.score for s in result.solutions] == [
        0.4463804409597828, 0.6096807568734756, 0.6928964307134186]
    assert result.gaps == [0.0, 0.06494441480322759, 0.0883574141980473]


def test_baseline_answers_are_pinned() -> None:
    lib = _library()
    budgets = _budgets(lib)
    # max_evals and a generous time limit make the seeded results independent of the clock.
    got = {
        "random": random_search(lib, budgets, time_limit=60.0, seed=1, max_evals=300),
        "evolution": evolution(lib, budgets, time_limit=60.0, seed=1, max_evals=600),
        "greedy": greedy(lib, budgets, time_limit=60.0, seed=1),
    }
    want = {
        "random": ([4, 0, 0, 6, 5, 0, 4, 0, 0, 3, 2, 5, 5, 1], 2.99504069673845,
                   {"latency_ms": 11.460240749789103, "params": 804629.0}),
        "evolution": ([0, 0, 0, 0, 5, 0, 3, 0, 0, 0, 4, 5, 1, 0], 0.6398361748984932,
                      {"latency_ms": 11.776478626427595, "params": 801404.0}),
        "greedy": ([0, 0, 1, 0, 5, 0, 0, 0, 0, 4, 4, 5, 1, 0], 0.4463804409597828,
                   {"latency_ms": 11.606181361344333, "params": 820691.0}),
    }
    for name, sol in got.items():
        assert sol is not None, name
        assert (sol.choices, sol.score, sol.cost) == want[name], name
