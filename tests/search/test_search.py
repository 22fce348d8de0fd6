"""Tests of lana.search.solver: the ILP against brute force on tiny random libraries, budget safety,
diversity, infeasibility reporting, budget parsing and library (de)serialisation."""

from __future__ import annotations

import itertools
import json
import math
import random
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lana.errors import ConfigError, InfeasibleBudgetError, LanaError
from lana.search import milp
from lana.search.local_search import Dense, descend, tabu
from lana.search.milp import Ilp
from lana.search.problem import Problem
from lana.search.solver import (
    Budget,
    Layer,
    Library,
    Op,
    SearchResult,
    Solution,
    brute_force,
    minimum_reachable,
    solve,
)
from tests.conftest import budgets_met

KEYS = ("latency_ms", "params")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def make_library(table: list[list[tuple[float, dict[str, float]]]]) -> Library:
    return Library(
        layers=[
            Layer(name=f"block{i}", ops=[Op(spec=f"op{i}_{j}", score=s, cost=dict(c))
                                         for j, (s, c) in enumerate(ops)])
            for i, ops in enumerate(table)
        ]
    )


meets = budgets_met


def score_of(library: Library, choices: list[int]) -> float:
    return sum(layer.ops[c].score for layer, c in zip(library.layers, choices, strict=True))


def shared(a: list[int], b: list[int]) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


def overlap_limit(n: int, overlap: float) -> int:
    return n - 1 if overlap >= 1 else min(n - 1, math.floor(overlap * n + 1e-9))


def best_diverse(library: Library, budgets: list[Budget], previous: list[list[int]],
                 limit: int) -> float | None:
    """Brute-force optimum among architectures sharing <= limit layers with each previous."""
    best = None
    for ch in itertools.product(*(range(len(layer.ops)) for layer in library.layers)):
        ch = list(ch)
        if any(shared(ch, p) > limit for p in previous) or not meets(library, ch, budgets):
            continue
        s = score_of(library, ch)
        if best is None or s < best:
            best = s
    return best


def tolerance(library: Library) -> float:
    # HiGHS's absolute gap/feasibility tolerances are ~1e-6 of the scaled objective.
    spread = max(max(op.score for op in layer.ops) - min(op.score for op in layer.ops)
                 for layer in library.layers)
    return 1e-6 * max(spread, 1e-300) * len(library.layers) + 1e-12


# A few discrete values make ties and exact-boundary budgets common; the magnitudes check
# that scaling copes with units from 1e-6 (tiny losses) to 1e7 (parameter counts).
_values = st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 7.0])


@st.composite
def libraries(draw: st.DrawFn) -> Library:
    n_layers = draw(st.integers(2, 4))
    keys = KEYS[: draw(st.integers(1, 2))]
    score_scale = draw(st.sampled_from([1.0, 1e-6, 1e3]))
    cost_scale = {k: draw(st.sampled_from([1.0, 1e-3, 1e7])) for k in keys}
    table = []
    for _ in range(n_layers):
        n_ops = draw(st.integers(1, 5))
        ops = []
        for _ in range(n_ops):
            score = draw(_values) * score_scale * draw(st.sampled_from([1.0, -1.0, 1.0]))
            ops.append((score, {k: draw(_values) * cost_scale[k] for k in keys}))
        table.append(ops)
    return make_library(table)


@st.composite
def library_and_budgets(draw: st.DrawFn) -> tuple[Library, list[Budget]]:
    lib = draw(libraries())
    budgets = []
    for key in lib.cost_keys():
        if draw(st.integers(0, 3)) == 3:  # mostly budgeted (hypothesis shrinks towards 0)
            continue
        lo = minimum_reachable(lib, key, "min")
        hi = minimum_reachable(lib, key, "max")
        op = draw(st.sampled_from(["<=", "<=", ">="]))
        # Mostly between the extremes, sometimes exactly on them or just outside.
        frac = draw(st.sampled_from([-0.1, 0.0, 0.2, 0.5, 0.8, 1.0, 1.1]))
        value = lo + frac * (hi - lo) if hi > lo else lo + frac
        budgets.append(Budget(key, op, value))
    return lib, budgets


# --------------------------------------------------------------------------------------------
# ILP vs brute force
# --------------------------------------------------------------------------------------------


@settings(derandomize=True, max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(library_and_budgets())
def test_first_solution_is_optimal_or_both_infeasible(case):
    lib, budgets = case
    expected = brute_force(lib, budgets)
    if expected is None:
        with pytest.raises(InfeasibleBudgetError):
            solve(lib, budgets)
        return
    result = solve(lib, budgets)
    best = result.solutions[0]
    assert meets(lib, best.choices, budgets)
    assert abs(best.score - expected.score) <= tolerance(lib)
    # Large libraries go through the LP-guided reduction first; it must be just as exact.
    with mock.patch.object(milp, "_STAGE_MIN_VARS", 0):
        staged = solve(lib, budgets).solutions[0]
    assert meets(lib, staged.choices, budgets)
    assert abs(staged.score - expected.score) <= tolerance(lib)
    # The reported numbers are the plain sums of the chosen ops.
    assert best.score == score_of(lib, best.choices)
    assert best.specs == lib.specs(best.choices)
    for key in lib.cost_keys():
        assert best.cost[key] == sum(layer.ops[c].cost[key]
                                     for layer, c in zip(lib.layers, best.choices, strict=True))


@settings(derandomize=True, max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(library_and_budgets(), st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
def test_diverse_solutions_are_exact_with_zero_gap(case, overlap):
    lib, budgets = case
    if brute_force(lib, budgets) is None:
        return
    result = solve(lib, budgets, k=4, overlap=overlap, diverse_gap=0.0, diverse_node_limit=None)
    limit = overlap_limit(len(lib.layers), overlap)
    previous: list[list[int]] = []
    for sol in result.solutions:
        assert meets(lib, sol.choices, budgets)
        for p in previous:
            assert shared(sol.choices, p) <= limit
        expected = best_diverse(lib, budgets, previous, limit)
        assert expected is not None
        assert abs(sol.score - expected) <= tolerance(lib)
        previous.append(sol.choices)
    if len(result.solutions) < 4:
        # Stopping early is only allowed when no further diverse architecture exists.
        assert best_diverse(lib, budgets, previous, limit) is None
    assert not result.timed_out


@settings(derandomize=True, max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(library_and_budgets(), st.sampled_from([0.0, 0.5, 0.7, 1.0]))
def test_diverse_solutions_respect_overlap_and_budgets_with_default_gap(case, overlap):
    lib, budgets = case
    if brute_force(lib, budgets) is None:
        return
    result = solve(lib, budgets, k=5, overlap=overlap)
    limit = overlap_limit(len(lib.layers), overlap)
    found = [s.choices for s in result.solutions]
    for a, b in itertools.combinations(found, 2):
        assert shared(a, b) <= limit
    for sol in result.solutions:
        assert meets(lib, sol.choices, budgets)
    if len(found) < 5:
        assert best_diverse(lib, budgets, found, limit) is None


def base_score(library: Library) -> float:
    return sum(min(op.score for op in layer.ops) for layer in library.layers)


@settings(derandomize=True, max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(library_and_budgets(), st.sampled_from([0.0, 0.5, 0.7]), st.sampled_from([0, 3]))
def test_reported_gaps_are_proven(case, overlap, node_limit):
    # gaps[n] promises: nothing meeting the budgets and the overlap bound against the earlier
    # solutions scores below score - gap * (score - base). Check it against brute force,
    # with and without the HiGHS branch and bound after the local search.
    lib, budgets = case
    if brute_force(lib, budgets) is None:
        return
    result = solve(lib, budgets, k=4, overlap=overlap, diverse_node_limit=node_limit)
    limit = overlap_limit(len(lib.layers), overlap)
    assert len(result.gaps) == len(result.solutions)
    assert result.gaps[0] == 0.0
    base = base_score(lib)
    previous: list[list[int]] = []
    for sol, gap in zip(result.solutions, result.gaps, strict=True):
        assert meets(lib, sol.choices, budgets)
        assert all(shared(sol.choices, p) <= limit for p in previous)
        assert gap is not None and 0.0 <= gap < 1.0
        expected = best_diverse(lib, budgets, previous, limit)
        assert expected is not None
        assert sol.score - expected <= gap * (sol.score - base) + tolerance(lib)
        previous.append(sol.choices)


def random_table(rng: random.Random, n_layers: int, n_ops: int, related: bool = True) -> list:
    """Score falling with latency plus noise (or unrelated to it: the hard case for the
    diverse search), and an unrelated parameter count."""
    table = []
    for _ in range(n_layers):
        full = rng.uniform(0.5, 2.0)
        ops = []
        for _ in range(n_ops):
            rel = rng.uniform(0.05, 1.0)
            score = (1 - rel) ** 2 + rng.uniform(0, 0.3) if related else rng.random()
            ops.append((score, {"latency_ms": full * rel,
                                "params": float(rng.randrange(1, 10**6))}))
        table.append(ops)
    return table


@pytest.mark.parametrize("seed", [0, 1])
def test_diverse_solutions_match_exact_ilp_with_zero_gap(seed):
    # Larger than brute force allows: each diverse solution with diverse_gap=0 must score
    # what HiGHS alone (the plain ILP, no local search, no reduced model) proves optimal
    # given the same earlier solutions.
    rng = random.Random(seed)
    lib = make_library(random_table(rng, 8, 10))
    teacher = sum(max(op.cost["latency_ms"] for op in layer.ops) for layer in lib.layers)
    budgets = [Budget("latency_ms", "<=", 0.5 * teacher), Budget("params", "<=", 5e6)]
    result = solve(lib, budgets, k=5, overlap=0.7, diverse_gap=0.0, diverse_node_limit=None)
    assert len(result.solutions) == 5
    prob = Ilp(Problem(lib, budgets))
    every = [list(range(len(layer.ops))) for layer in lib.layers]
    limit = overlap_limit(8, 0.7)
    exclusions: list = []
    for sol in result.solutions:
        assert meets(lib, sol.choices, budgets)
        model = prob.build([np.array(e) for e in every], exclusions,
                           [0.0] * len(prob.rows))
        ref, outcome = prob.run_milp(model, None, 0.0)
        assert outcome == "optimal" and ref is not None
        ref_score = score_of(lib, ref)
        assert sol.score == pytest.approx(ref_score, rel=1e-7, abs=1e-9)
        exclusions.append((sol.choices, limit))


@pytest.mark.parametrize(("related", "node_limit"), [(True, 0), (False, 0), (False, 5)])
def test_local_search_meets_budgets_and_overlap_at_moderate_scale(related, node_limit):
    # Unrelated scores and latencies leave the LP bound far below what diversity costs, so
    # the tabu search and (with a node limit) HiGHS's branch and bound both get to work.
    rng = random.Random(7)
    lib = make_library(random_table(rng, 20, 30, related))
    teacher = sum(max(op.cost["latency_ms"] for op in layer.ops) for layer in lib.layers)
    budgets = [Budget("latency_ms", "<=", 0.4 * teacher), Budget("params", "<=", 8e6)]
    k = 4 if node_limit else 8  # HiGHS's root node alone takes a while on the hard case
    result = solve(lib, budgets, k=k, overlap=0.5, diverse_node_limit=node_limit)
    assert len(result.solutions) == k and not result.timed_out
    limit = overlap_limit(20, 0.5)
    for a, b in itertools.combinations([s.choices for s in result.solutions], 2):
        assert shared(a, b) <= limit
    for sol, gap in zip(result.solutions, result.gaps, strict=True):
        assert meets(lib, sol.choices, budgets)
        assert gap is not None and 0.0 <= gap < 0.5


def test_descend_never_moves_into_padding():
    # Layer 0 has one op, so its other slots are padding with zero cost coefficients, which
    # would "repair" the budget row; the only real repair is layer 1's slot 2.
    inf = math.inf
    dense = Dense(
        c=np.array([[0.0, inf, inf], [1.0, 0.0, 2.0]]),
        a=np.array([[[1.0, 0.0, 0.0], [1.0, 2.0, 0.5]]]),
        lo=np.array([-inf]),
        hi=np.array([1.6]),
        span=np.array([1.5]),
    )
    calls = iter(range(1000))
    got = descend(dense, np.array([0, 1]), lambda f: False,
                          lambda: next(calls) >= 999)
    assert got is not None and got.tolist() == [0, 2]


def test_tabu_finds_feasible_point_from_infeasible_start():
    # Two layers, one row "shared with (0, 0) <= 0" and a budget: the walk from (0, 0) has
    # to leave both layers' cheapest op and find the best feasible pair.
    inf = math.inf
    dense = Dense(
        c=np.array([[0.0, 1.0, 3.0], [0.0, 2.0, 2.5]]),
        a=np.array([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
                           [[0.0, 0.5, 1.0], [0.0, 1.0, 0.2]]]),
        lo=np.array([-inf, -inf]),
        hi=np.array([0.0, 1.2]),
        span=np.array([1.0, 1.0]),
    )
    got = tabu(dense, np.array([0, 0]), 50, lambda f: False, lambda: False)
    # Feasible: (1, 2) scoring 3.5 and (2, 2) scoring 5.5.
    assert got is not None and got.tolist() == [1, 2]


# --------------------------------------------------------------------------------------------
# numerical safety
# --------------------------------------------------------------------------------------------


def test_tolerance_trap_never_exceeds_budget():
    # op2 is 1e-8 more expensive than op1 but much better; ten op2s overshoot the budget by
    # 1e-7, which HiGHS's feasibility tolerance would let through. The true optimum puts op2
    # in nine layers (score 9 * -1 + 11 * 1 = 2).
    table = [[(1.0, {"latency_ms": 0.0}), (0.0, {"latency_ms": 1.0}),
              (-1.0, {"latency_ms": 1.0 + 1e-8})] for _ in range(20)]
    lib = make_library(table)
    budgets = [Budget.parse("latency_ms<=10")]
    result = solve(lib, budgets, k=3)
    for sol in result.solutions:
        assert meets(lib, sol.choices, budgets)
    assert result.solutions[0].score == pytest.approx(2.0, abs=1e-9)


@settings(derandomize=True, max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(5, 12), st.integers(0, 2**32 - 1))
def test_budget_on_exact_float_boundary_is_never_exceeded(n_layers, seed):
    # Costs like 0.1 are not exact in binary; a budget equal to some architecture's float sum
    # sits right on the boundary, where rounding and solver tolerances both bite.
    rng = random.Random(seed)
    table = [[(rng.choice([0.0, 0.5, 1.0, 2.0]) - 0.3 * j,
               {"latency_ms": round(0.1 * j + rng.choice([0.0, 1e-9, 1e-12]), 12)})
              for j in range(4)] for _ in range(n_layers)]
    lib = make_library(table)
    target = [rng.randrange(4) for _ in range(n_layers)]
    value = sum(lib.layers[i].ops[c].cost["latency_ms"] for i, c in enumerate(target))
    budgets = [Budget("latency_ms", "<=", value)]
    result = solve(lib, budgets, k=3)
    for sol in result.solutions:
        assert meets(lib, sol.choices, budgets)
    assert result.solutions[0].score <= score_of(lib, target) + tolerance(lib)


@pytest.mark.parametrize("two_keys", [False, True])
def test_staged_first_solve_matches_plain_on_a_larger_library(two_keys):
    # Every op on the score/latency trade-off curve, so dominance pruning removes little and
    # the staged (LP-guided) path does real work.
    rng = random.Random(1)
    table = []
    for _ in range(20):
        full = rng.uniform(0.5, 2.0)
        ops = []
        for j in range(60):
            lat = full * j / 59
            cost = {"latency_ms": lat}
            if two_keys:
                cost["params"] = float(rng.randrange(10**6))
            ops.append(((1 - j / 59) ** 2 * rng.uniform(0.9, 1.1), cost))
        table.append(ops)
    lib = make_library(table)
    teacher = sum(layer.ops[-1].cost["latency_ms"] for layer in lib.layers)
    budgets = [Budget("latency_ms", "<=", 0.4 * teacher)]
    if two_keys:
        budgets.append(Budget("params", "<=", 8e6))
    with mock.patch.object(milp, "_STAGE_MIN_VARS", 10**9):
        plain = solve(lib, budgets).solutions[0]
    with mock.patch.object(milp, "_STAGE_MIN_VARS", 0):
        staged = solve(lib, budgets).solutions[0]
    assert meets(lib, plain.choices, budgets) and meets(lib, staged.choices, budgets)
    assert staged.score == pytest.approx(plain.score, rel=1e-6, abs=1e-9)


def test_huge_and_tiny_magnitudes():
    lib = make_library([
        [(1e-9, {"params": 3e7, "latency_ms": 1e-4}), (5e-9, {"params": 1e6, "latency_ms": 3e-5}),
         (0.0, {"params": 5e7, "latency_ms": 2e-4})],
        [(2e-9, {"params": 2e7, "latency_ms": 1e-4}), (0.0, {"params": 4e7, "latency_ms": 1e-4})],
        [(0.0, {"params": 1e7, "latency_ms": 5e-5}), (7e-9, {"params": 1.0, "latency_ms": 1e-6})],
    ])
    budgets = [Budget.parse("params<=6.1e7"), Budget.parse("latency_ms<=3e-4")]
    expected = brute_force(lib, budgets)
    got = solve(lib, budgets).solutions[0]
    assert expected is not None
    assert got.score == pytest.approx(expected.score, rel=1e-9, abs=1e-18)
    assert meets(lib, got.choices, budgets)


# --------------------------------------------------------------------------------------------
# infeasibility
# --------------------------------------------------------------------------------------------


def test_infeasible_budget_reports_minimum_and_culprits():
    lib = make_library([
        [(0.0, {"latency_ms": 2.0}), (1.0, {"latency_ms": 1.5})],
        [(0.0, {"latency_ms": 5.0}), (1.0, {"latency_ms": 4.0})],
        [(0.0, {"latency_ms": 1.0}), (1.0, {"latency_ms": 0.25})],
        [(0.0, {"latency_ms": 3.0}), (1.0, {"latency_ms": 2.5})],
    ])
    minimum = 1.5 + 4.0 + 0.25 + 2.5
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(lib, ["latency_ms<=5.0"])
    err = info.value
    assert err.minimum == {"latency_ms": minimum}
    msg = str(err)
    assert repr(minimum) in msg and "5.0" in msg
    assert f"at least {minimum!r}" in msg
    # The three layers with the largest cheapest-op latency, with that op's spec.
    for name, spec in (("block1", "op1_1"), ("block3", "op3_1"), ("block0", "op0_1")):
        assert name in msg and spec in msg
    assert "block2" not in msg
    assert "identity" in msg
    assert minimum_reachable(lib, "latency_ms") == minimum
    # Exactly at the minimum is reachable.
    assert solve(lib, [f"latency_ms<={minimum!r}"]).solutions[0].cost["latency_ms"] == minimum


def test_infeasible_lower_bound_budget():
    lib = make_library([[(0.0, {"flops": 1.0}), (1.0, {"flops": 2.0})]] * 2)
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(lib, ["flops>=5"])
    assert info.value.minimum == {"flops": 4.0}
    assert "4.0" in str(info.value) and "at most" in str(info.value)


def test_conflicting_budgets_each_reachable_alone():
    # Cheap latency means many params and vice versa.
    lib = make_library([
        [(0.0, {"latency_ms": 1.0, "params": 10.0}), (0.0, {"latency_ms": 10.0, "params": 1.0})],
        [(0.0, {"latency_ms": 1.0, "params": 10.0}), (0.0, {"latency_ms": 10.0, "params": 1.0})],
    ])
    budgets = ["latency_ms<=5", "params<=5"]
    assert brute_force(lib, budgets) is None
    with pytest.raises(InfeasibleBudgetError) as info:
        solve(lib, budgets)
    msg = str(info.value)
    assert "conflict" in msg
    assert "latency_ms<=5.0" in msg and "params<=5.0" in msg
    assert info.value.minimum == {"latency_ms": 2.0, "params": 2.0}


def test_unknown_budget_key():
    lib = make_library([[(0.0, {"latency_ms": 1.0})]])
    with pytest.raises(ConfigError, match="latency_ms"):
        solve(lib, ["flops<=1"])


# --------------------------------------------------------------------------------------------
# Budget.parse
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("latency_ms<=5.0", Budget("latency_ms", "<=", 5.0)),
        ("params <= 2e6", Budget("params", "<=", 2e6)),
        ("flops>=1e6", Budget("flops", ">=", 1e6)),
        ("  latency_ms   >=  -1.5 ", Budget("latency_ms", ">=", -1.5)),
        ("lat.gpu-fp16<=3", Budget("lat.gpu-fp16", "<=", 3.0)),
    ],
)
def test_budget_parse_accepts(text, expected):
    assert Budget.parse(text) == expected
    assert Budget.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "text",
    ["", "latency_ms", "latency_ms<5", "latency_ms=5", "latency_ms<=", "<=5",
     "latency_ms<=abc", "latency_ms<=nan", "latency_ms<=inf", "latency ms<=5",
     "latency_ms=<5", "latency_ms<=5 6"],
)
def test_budget_parse_rejects(text):
    with pytest.raises(ConfigError):
        Budget.parse(text)


def test_budget_str_and_validation():
    assert str(Budget.parse("latency_ms<=5")) == "latency_ms<=5.0"
    with pytest.raises(ConfigError):
        Budget("latency_ms", "<", 1.0)
    with pytest.raises(ConfigError):
        Budget("latency_ms", "<=", float("nan"))


# --------------------------------------------------------------------------------------------
# Library: JSON round trip and validation
# --------------------------------------------------------------------------------------------


def sample_dict() -> dict:
    return {
        "device": "cpu",
        "layers": [
            {"name": "blocks.0", "stride": 2, "ops": [
                {"spec": "teacher", "score": 0, "cost": {"latency_ms": 1.5, "params": 1000},
                 "weights": "ops/0_0.safetensors", "note": {"k": [1, 2]}},
                {"spec": "identity", "score": 0.7, "cost": {"latency_ms": 0.0, "params": 0}},
            ]},
            {"name": "blocks.1", "ops": [
                {"spec": "teacher", "score": 0.0, "cost": {"latency_ms": 2.0, "params": 5}},
            ]},
        ],
    }


def test_library_round_trip_keeps_extra_fields(tmp_path):
    d = sample_dict()
    lib = Library.from_dict(d)
    assert lib.cost_keys() == ["latency_ms", "params"]
    assert lib.layers[0].ops[0].extra == {"weights": "ops/0_0.safetensors", "note": {"k": [1, 2]}}
    assert math.isclose(lib.log10_space_size(), math.log10(2))
    path = tmp_path / "library.json"
    lib.save(path)
    again = Library.load(path)
    assert again == lib
    assert again.to_dict() == lib.to_dict()
    raw = json.loads(path.read_text())
    assert raw["device"] == "cpu"
    assert raw["layers"][0]["stride"] == 2
    assert raw["layers"][0]["ops"][0]["weights"] == "ops/0_0.safetensors"
    assert raw["layers"][0]["ops"][0]["note"] == {"k": [1, 2]}


def _broken(mutate) -> dict:
    d = sample_dict()
    mutate(d)
    return d


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d["layers"][0]["ops"][1].__setitem__("score", float("nan")),
         r"layers\[0\]\.ops\[1\]\.score is NaN"),
        (lambda d: d["layers"][1]["ops"][0]["cost"].__setitem__("latency_ms", float("nan")),
         r"layers\[1\]\.ops\[0\]\.cost\.latency_ms is NaN"),
        (lambda d: d["layers"][0]["ops"][0]["cost"].__setitem__("params", float("inf")),
         r"layers\[0\]\.ops\[0\]\.cost\.params is \+inf"),
        (lambda d: d["layers"][1]["ops"][0]["cost"].pop("params"),
         r"layers\[1\]\.ops\[0\]\.cost is missing 'params'.*layers\[0\]\.ops\[0\]"),
        (lambda d: d.__setitem__("layers", []), "no layers"),
        (lambda d: d.pop("layers"), "layers"),
        (lambda d: d["layers"][1].__setitem__("ops", []), r"layers\[1\].*no candidate ops"),
        (lambda d: d["layers"][0]["ops"][0].__setitem__("score", "0.1"),
         r"layers\[0\]\.ops\[0\]\.score must be a number"),
        (lambda d: d["layers"][0]["ops"][0].__setitem__("score", True),
         r"layers\[0\]\.ops\[0\]\.score must be a number"),
        (lambda d: d["layers"][0]["ops"][0]["cost"].__setitem__("params", "big"),
         r"layers\[0\]\.ops\[0\]\.cost\.params must be a number"),
        (lambda d: d["layers"][0]["ops"][0].pop("spec"), r"layers\[0\]\.ops\[0\] has no 'spec'"),
        (lambda d: d["layers"][0]["ops"][0].__setitem__("cost", [1.0]),
         r"layers\[0\]\.ops\[0\]\.cost must be"),
        (lambda d: d["layers"][1].__setitem__("name", "blocks.0"), "unique"),
        (lambda d: d["layers"].__setitem__(0, "oops"), r"layers\[0\] must be an object"),
    ],
)
def test_library_validation_errors(mutate, pattern):
    with pytest.raises(ConfigError, match=pattern):
        Library.from_dict(_broken(mutate))


def test_validation_of_directly_built_library():
    lib = make_library([[(0.0, {"latency_ms": 1.0}), (0.0, {"params": 1.0})]])
    with pytest.raises(ConfigError, match="missing"):
        solve(lib, [])
    lib = make_library([[(float("nan"), {"latency_ms": 1.0})]])
    with pytest.raises(ConfigError, match="NaN"):
        solve(lib, [])


def test_load_missing_and_corrupt_files(tmp_path):
    from lana.errors import ArtifactError

    with pytest.raises(ArtifactError):
        Library.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"layers": [{"name": "a", "ops": []}]}')
    with pytest.raises(ConfigError, match=r"bad\.json.*no candidate ops"):
        Library.load(bad)


# --------------------------------------------------------------------------------------------
# solve(): arguments, result format, time limit
# --------------------------------------------------------------------------------------------


def test_no_budgets_picks_best_op_per_layer():
    lib = make_library([[(0.5, {"c": 1.0}), (0.1, {"c": 9.0})], [(0.0, {"c": 0.0})]])
    result = solve(lib, [])
    assert result.solutions[0].choices == [1, 0]


def test_result_to_dict_format():
    lib = Library.from_dict(sample_dict())
    result = solve(lib, ["latency_ms<=4.0", Budget.parse("params>=0")], k=3)
    assert isinstance(result, SearchResult)
    assert all(isinstance(s, Solution) for s in result.solutions)
    d = result.to_dict()
    json.dumps(d)
    assert d["budgets"] == ["latency_ms<=4.0", "params>=0.0"]
    assert d["k_requested"] == 3
    assert d["log10_space_size"] == pytest.approx(math.log10(2))
    # Only two architectures exist; with overlap 0.7 of 2 layers (1 shared at most) both are
    # found, then the search stops early.
    assert [s["specs"] for s in d["solutions"]] == [["teacher", "teacher"], ["identity", "teacher"]]
    assert set(d["solutions"][0]) == {"choices", "specs", "score", "cost"}
    assert d["solutions"][0]["cost"] == {"latency_ms": 3.5, "params": 1005.0}
    assert d["solutions"][1]["score"] == 0.7
    assert d["solve_seconds"] >= 0
    assert len(d["gaps"]) == 2 and d["gaps"][0] == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [{"k": 0}, {"k": 1.5}, {"overlap": -0.1}, {"overlap": float("nan")}, {"time_limit": 0},
     {"diverse_gap": 1.0}, {"diverse_node_limit": -1}, {"diverse_moves": -1},
     {"diverse_moves": 2.5}],
)
def test_bad_arguments(kwargs):
    lib = make_library([[(0.0, {"latency_ms": 1.0})]])
    with pytest.raises(ConfigError):
        solve(lib, [], **kwargs)


def test_time_limit_caps_the_whole_search():
    import time

    rng = random.Random(0)
    table = [[(rng.random(), {"latency_ms": rng.random()}) for _ in range(60)]
             for _ in range(30)]
    lib = make_library(table)
    start = time.perf_counter()
    try:
        result = solve(lib, ["latency_ms<=5"], k=1000, overlap=0.9, time_limit=1.0)
    except LanaError:  # nothing at all found within the limit on a very slow machine
        return
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0
    assert result.timed_out
    assert 1 <= len(result.solutions) < 1000
    for sol in result.solutions:
        assert meets(lib, sol.choices, [Budget.parse("latency_ms<=5")])


def test_brute_force_refuses_large_spaces():
    lib = make_library([[(0.0, {"c": 1.0})] * 10 for _ in range(7)])
    with pytest.raises(ConfigError, match="tiny"):
        brute_force(lib, [])


def test_score_optimum_cost_takes_the_cheapest_of_equal_scores():
    from lana.search.solver import score_optimum_cost

    lib = Library.from_dict({"layers": [
        {"name": "a", "ops": [{"spec": "x", "score": 0.0, "cost": {"latency_ms": 3.0}},
                              {"spec": "y", "score": 0.0, "cost": {"latency_ms": 1.0}},
                              {"spec": "z", "score": 0.2, "cost": {"latency_ms": 0.1}}]},
        {"name": "b", "ops": [{"spec": "x", "score": -0.1, "cost": {"latency_ms": 0.5}},
                              {"spec": "y", "score": 0.0, "cost": {"latency_ms": 2.0}}]}]})
    assert score_optimum_cost(lib, "latency_ms") == pytest.approx(1.5)
    with pytest.raises(ConfigError, match="no cost 'params'"):
        score_optimum_cost(lib, "params")
