"""Tests of lana.search.sweep (budget sweep, CSV, plot) and of `lana search` / `lana sweep` on a
library file."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from lana.cli.commands import main
from lana.errors import ConfigError
from lana.search.solver import Budget, Layer, Library, Op, minimum_reachable, solve
from lana.search.sweep import budget_range, plot, sweep, write_csv
from tests.conftest import budgets_met


def random_library(seed: int, n_layers: int = 6, n_ops: int = 6) -> Library:
    """Scores falling with latency (plus noise), as in a real library; no free op, so the
    minimum reachable latency is positive."""
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n_layers):
        lat = rng.uniform(0.1, 1.0, n_ops)
        score = (1.0 - lat) ** 2 + rng.uniform(0, 0.2, n_ops)
        par = rng.uniform(1e4, 1e6, n_ops)
        layers.append(Layer(name=f"L{i}", ops=[
            Op(spec=f"op{i}_{j}", score=float(score[j]),
               cost={"latency_ms": float(lat[j]), "params": float(par[j])})
            for j in range(n_ops)]))
    return Library(layers=layers)


meets = budgets_met


@pytest.fixture
def lib_path(tmp_path: Path) -> Path:
    path = tmp_path / "lib.json"
    random_library(0).save(path)
    return path


# --------------------------------------------------------------------------------------------
# sweep()
# --------------------------------------------------------------------------------------------


def test_sweep_is_a_pareto_front() -> None:
    lib = random_library(1)
    rows = sweep(lib, "latency_ms", points=12)
    assert [r["method"] for r in rows] == ["ilp"] * 12
    budgets = [r["budget"] for r in rows]
    assert budgets == sorted(budgets)
    assert budgets[0] == minimum_reachable(lib, "latency_ms")
    best = solve(lib, []).solutions[0]
    assert budgets[-1] == pytest.approx(best.cost["latency_ms"], rel=1e-12)
    assert rows[-1]["score"] == pytest.approx(best.score, abs=1e-9)
    for r in rows:
        assert meets(lib, r["choices"], [Budget("latency_ms", "<=", r["budget"])])
        assert r["cost"]["latency_ms"] <= r["budget"]
        assert r["specs"] == lib.specs(r["choices"])
    scores = [r["score"] for r in rows]
    assert all(b <= a + 1e-9 for a, b in zip(scores, scores[1:], strict=False))
    assert scores[-1] < scores[0]


def test_sweep_with_extra_budget_and_baselines() -> None:
    lib = random_library(2)
    params = Budget("params", "<=", 0.5 * minimum_reachable(lib, "params", "max"))
    lo, hi = budget_range(lib, "latency_ms", [params])
    # The cheapest latency that also meets the params budget can exceed the plain minimum.
    assert lo >= minimum_reachable(lib, "latency_ms") and hi >= lo
    rows = sweep(lib, "latency_ms", points=6, extra_budgets=[params],
                 baselines=["greedy", "evolution"], baseline_time_limit=0.05)
    assert {r["method"] for r in rows} == {"ilp", "greedy", "evolution"}
    ilp = {r["budget"]: r["score"] for r in rows if r["method"] == "ilp"}
    assert len(ilp) == 6 and min(ilp) == lo
    for r in rows:
        if r["score"] is None:
            assert r["method"] != "ilp"
            continue
        budgets = [Budget("latency_ms", "<=", r["budget"]), params]
        assert meets(lib, r["choices"], budgets)
        assert r["score"] >= ilp[r["budget"]] - 1e-9


def test_sweep_bad_arguments() -> None:
    lib = random_library(0)
    with pytest.raises(ConfigError, match="flops"):
        sweep(lib, "flops", 3)
    with pytest.raises(ConfigError, match="points"):
        sweep(lib, "latency_ms", 0)
    with pytest.raises(ConfigError, match="baseline"):
        sweep(lib, "latency_ms", 3, baselines=["annealing"])
    with pytest.raises(ConfigError, match="sets the latency_ms<= budget itself"):
        sweep(lib, "latency_ms", 3, extra_budgets=["latency_ms<=2"])


def test_constant_cost_gives_one_point() -> None:
    lib = Library(layers=[Layer(name=f"L{i}", ops=[
        Op(spec="a", score=0.0, cost={"latency_ms": 1.0}),
        Op(spec="b", score=1.0, cost={"latency_ms": 1.0})]) for i in range(3)])
    rows = sweep(lib, "latency_ms", 10)
    assert len(rows) == 1 and rows[0]["score"] == 0.0


def test_csv_and_plots(tmp_path: Path) -> None:
    lib = random_library(3)
    rows = sweep(lib, "latency_ms", points=5, baselines=["greedy"])
    write_csv(rows, tmp_path / "front.csv")
    with open(tmp_path / "front.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["method", "budget", "score", "latency_ms", "params", "seconds", "choices"]
    assert len(table) == 1 + len(rows)
    first = dict(zip(table[0], table[1], strict=True))
    assert first["method"] == "ilp" and float(first["budget"]) == rows[0]["budget"]
    assert float(first["score"]) == rows[0]["score"]
    assert first["choices"].split(" ") == rows[0]["specs"]

    plot(rows, "latency_ms", tmp_path / "front.png")
    png = (tmp_path / "front.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    plot(rows, "latency_ms", tmp_path / "front.svg")
    assert b"<svg" in (tmp_path / "front.svg").read_bytes()
    with pytest.raises(ConfigError, match="png or .svg"):
        plot(rows, "latency_ms", tmp_path / "front.pdf")


def test_csv_leaves_cells_empty_when_a_baseline_found_nothing(tmp_path: Path) -> None:
    rows = [{"method": "greedy", "budget": 1.0, "score": None,
             "cost": {"latency_ms": None}, "choices": None, "specs": None, "seconds": 0.1}]
    write_csv(rows, tmp_path / "x.csv")
    lines = (tmp_path / "x.csv").read_text().splitlines()
    assert lines[1] == "greedy,1.0,,,0.100000,"


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------


def test_cli_search_library(lib_path: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    lib = Library.load(lib_path)
    cap = 0.5 * (minimum_reachable(lib, "latency_ms") + minimum_reachable(lib, "latency_ms",
                                                                            "max"))
    out = tmp_path / "res" / "result.json"
    argv = ["search", str(lib_path), "--budget", f"latency_ms<={cap!r}", "--budget",
            "params<=4e6", "--k", "3", "--overlap", "0.5", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "score" in printed and "latency_ms" in printed
    res = json.loads(out.read_text())
    assert res["method"] == "ilp" and res["budgets"] == [f"latency_ms<={cap!r}", "params<=4000000.0"]
    assert isinstance(res["solve_seconds"], float)
    sols = res["solutions"]
    assert len(sols) == 3
    budgets = [Budget("latency_ms", "<=", cap), Budget("params", "<=", 4e6)]
    limit = math.floor(0.5 * len(lib.layers))
    for n, s in enumerate(sols):
        assert meets(lib, s["choices"], budgets)
        assert s["cost"]["latency_ms"] <= cap and s["specs"] == lib.specs(s["choices"])
        for earlier in sols[:n]:
            assert sum(a == b for a, b in zip(s["choices"], earlier["choices"],
                                              strict=True)) <= limit
    assert sols[0]["score"] == pytest.approx(solve(lib, budgets).solutions[0].score)


def test_cli_search_baseline(lib_path: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    lib = Library.load(lib_path)
    cap = minimum_reachable(lib, "latency_ms") + 1.0
    out = tmp_path / "greedy.json"
    assert main(["search", str(lib_path), "--budget", f"latency_ms<={cap}", "--baseline",
                 "greedy", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["method"] == "greedy" and len(res["solutions"]) == 1
    sol = res["solutions"][0]
    assert meets(lib, sol["choices"], [Budget("latency_ms", "<=", cap)])
    assert sol["score"] >= solve(lib, [f"latency_ms<={cap}"]).solutions[0].score - 1e-9
    assert "greedy" in capsys.readouterr().out


@pytest.mark.parametrize("extra", [[], ["--baseline", "random", "--time-limit", "0.05"]])
def test_cli_infeasible_budget_exits_2(extra: list[str], lib_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    low = minimum_reachable(Library.load(lib_path), "latency_ms")
    assert main(["search", str(lib_path), "--budget", f"latency_ms<={low / 2}", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lana: error:") and "minimum" in err and "Traceback" not in err
    assert f"{low!r}" in err  # the minimum reachable value itself


def test_cli_malformed_libraries_exit_2(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "nan.json"
    lib = random_library(0).to_dict()
    text = json.dumps(lib).replace(str(lib["layers"][1]["ops"][2]["score"]), "NaN", 1)
    bad.write_text(text)
    assert main(["search", str(bad), "--budget", "latency_ms<=3"]) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and "layers[1].ops[2].score" in err
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{\"layers\": [")
    assert main(["search", str(corrupt)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_bad_budget_text_and_misplaced_options(lib_path: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", str(lib_path), "--budget", "latency_ms<5"]) == 2
    assert "'<=' and '>='" in capsys.readouterr().err
    assert main(["search", str(lib_path), "--speedup", "2"]) == 2
    assert "--budget latency_ms<=" in capsys.readouterr().err
    # A run directory keeps its own budget options; library ones are refused, not ignored.
    assert main(["search", str(tmp_path), "--budget", "latency_ms<=1"]) == 2
    assert "--budget" in capsys.readouterr().err


def test_cli_sweep_defaults_next_to_library(lib_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(lib_path), "--cost", "latency_ms", "--points", "4",
                 "--baselines", "greedy"]) == 0
    csv_path = lib_path.with_name("lib.sweep.csv")
    png = lib_path.with_name("lib.sweep.png")
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["method"] for r in rows] == ["ilp"] * 4 + ["greedy"] * 4
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "lana sweep" in capsys.readouterr().out


def test_cli_sweep_outputs_and_errors(lib_path: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out_csv, out_svg = tmp_path / "o" / "f.csv", tmp_path / "o" / "f.svg"
    assert main(["sweep", str(lib_path), "--cost", "latency_ms", "--points", "3",
                 "--budget", "params<=4e6", "--csv", str(out_csv), "--plot", str(out_svg)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 3 and all(float(r["params"]) <= 4e6 for r in rows)
    assert b"<svg" in out_svg.read_bytes()
    capsys.readouterr()
    assert main(["sweep", str(lib_path), "--cost", "latency_ms", "--plot",
                 str(tmp_path / "f.pdf")]) == 2
    assert ".png or .svg" in capsys.readouterr().err
    assert main(["sweep", str(lib_path), "--cost", "flops"]) == 2
    assert "flops" in capsys.readouterr().err


def test_cli_baseline_names_are_the_registry(capsys) -> None:
    from lana.search.baselines import BASELINES

    with pytest.raises(SystemExit):
        main(["search", "lib.json", "--baseline", "nope"])
    err = capsys.readouterr().err
    assert all(repr(name) in err for name in BASELINES)
