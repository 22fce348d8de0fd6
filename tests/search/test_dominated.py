"""Candidates no cheaper than the teacher's own layer in any cost column are left out:
phase 1 does not train them, the score stage does not score them, the search never sees
them (``search.skip_dominated``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import lana.latency.timing as L
from lana.config import config_from_dict
from lana.distill.phase1 import weight_path
from lana.latency.backends import BACKENDS
from lana.pipeline.runner import Run
from lana.pipeline.status import run_status
from lana.report.html import build_sections
from lana.search.solver import Library, dominated
from tests.conftest import fake_backend


def test_dominated_needs_every_column_at_least_the_teachers() -> None:
    layers = [
        {"teacher": {"ms": 1.0, "params": 10.0},
         "bigger": {"ms": 2.0, "params": 20.0},      # worse everywhere: left out
         "equal": {"ms": 1.0, "params": 10.0},       # no cheaper anywhere: left out
         "slower_smaller": {"ms": 3.0, "params": 5.0},  # smaller: a params bound wants it
         "faster_bigger": {"ms": 0.5, "params": 50.0},
         "identity": {"ms": 0.0, "params": 0.0}},
        {"a": {"ms": 9.0, "params": 9.0}},  # no teacher op at this layer: nothing to compare
    ]
    assert dominated(layers) == [["bigger", "equal"], []]
    assert dominated(layers, reference="equal")[0] == ["teacher", "bigger"]


class _ParamClock:
    """A latency clock for a fake backend: one run of a module takes 1 µs plus 1 ns per
    parameter, so measured latency is exact and ranks ops by size."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def backend(self) -> type:
        def prepare(module: nn.Module, example: torch.Tensor):
            cost = 1000 + sum(p.numel() for p in module.parameters())

            def run() -> None:
                self.now += cost

            return run

        return fake_backend(prepare)


@pytest.fixture
def param_latency(monkeypatch: pytest.MonkeyPatch, tiny_config: dict) -> dict:
    clock = _ParamClock()
    monkeypatch.setattr(L, "_clock", clock)
    monkeypatch.setitem(BACKENDS, "fake", clock.backend())
    tiny_config["latency"].update(backend="fake", normalize=False)
    tiny_config["search"]["skip_dominated"] = True
    return tiny_config


# tiny_effnet's first layer is a 464-parameter depthwise-separable block; every candidate of
# the tiny space is larger there in params and FLOPs (so, with this clock, in latency too).
# Elsewhere each candidate is cheaper in at least one column.
LEFT_OUT = ["ir_k3_e1", "ir_k3_e3", "cb_k3"]


def test_left_out_candidates_are_not_trained_scored_or_searched(param_latency: dict,
                                                                tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run = Run(run_dir, config_from_dict(param_latency))
    run.prepare()
    run.profile()
    assert run.dominated() == [LEFT_OUT] + [[]] * (len(run.candidates) - 1)
    run.distill()
    for i, specs in enumerate(run.candidates):
        for spec in specs:
            if spec not in ("teacher", "identity"):
                assert weight_path(run_dir, i, spec).exists() == (
                    i > 0 or spec not in LEFT_OUT), (i, spec)

    scores = run.score()
    assert [s is None for s in scores["scores"][0]] == [
        spec in LEFT_OUT for spec in run.candidates[0]]
    assert all(isinstance(a, float) for row in scores["scores"][1:] for a in row)

    lib = run.library()
    assert [op["spec"] for op in lib["layers"][0]["ops"]] == ["teacher", "identity"]
    assert lib["layers"][0]["left_out"] == LEFT_OUT
    assert all("left_out" not in layer for layer in lib["layers"][1:])
    Library.from_dict(lib).validate()

    status = {s["stage"]: s for s in run_status(run_dir)["stages"] if s["budget"] is None}
    assert status["distill"]["state"] == "done"
    n = sum(s not in ("teacher", "identity") for ops in run.to_train() for s in ops)
    assert status["distill"]["detail"].startswith(f"{n}/{n} candidates trained")
    assert "3 more left out" in status["distill"]["detail"]
    assert status["score"]["state"] == "done"

    chosen = run.search()["chosen"]["choices"]
    assert chosen[0] in ("teacher", "identity")
    sweep = next(sec for sec in build_sections(run_dir, sweep_points=3) if sec.id == "sweep")
    assert any(note.startswith("3 candidate(s) were left out") for note in sweep.notes)

    # Turned off, the same directory trains and scores what was left out, nothing else.
    param_latency["search"]["skip_dominated"] = False
    run = Run(run_dir, config_from_dict(param_latency))
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "distill").rglob("*.safetensors")}
    run.distill()
    after = {p: p.stat().st_mtime_ns for p in (run_dir / "distill").rglob("*.safetensors")}
    assert {p for p in after if after[p] != before.get(p)} == {
        weight_path(run_dir, 0, spec) for spec in LEFT_OUT}
    assert all(a is not None for row in run.score()["scores"] for a in row)
    assert [op["spec"] for op in run.library()["layers"][0]["ops"]] == run.candidates[0]


def test_a_run_without_its_targets_latency_yet_keeps_every_candidate(
        tiny_config: dict, tmp_path: Path, capsys) -> None:
    # Profiled on another machine (latency.device) whose LUT has not come back: which
    # candidates are dominated there is unknown, so phase 1 trains them all.
    tiny_config["latency"].update(lut=str(tmp_path / "not-yet.json"), device="lut")
    tiny_config["search"]["skip_dominated"] = True
    run = Run(tmp_path / "run", config_from_dict(tiny_config))
    run.prepare()
    assert run.to_train() == run.candidates
    assert "keeps every candidate" in capsys.readouterr().err
