"""lana.accelerate: the one-call Python API on a tiny nn.Sequential and synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import lana
import lana.distill.phase1
import lana.distill.train
from lana.api import parse_budget
from lana.config import BudgetConfig
from lana.errors import ConfigError
from lana.model.data import synthetic_dataset
from lana.pipeline.student import load_student

FAST = {
    "seed": 0, "threads": 1, "device": "cpu",  # a top-level override, as a user passes it
    "space": {"ops": ["teacher", "identity", "cb_k{1,3}"]},
    "distill": {"steps": 3, "batch_size": 16},
    "latency": {"max_seconds": 0.02, "warmup": 2, "drift_every": 0},
    "score": {"samples": 32},
    "search": {"k": 2, "eval_samples": 32},
    "finetune": {"epochs": 1, "batch_size": 32},
}


class Pairs(Dataset):
    """A plain map-style Dataset of (CHW tensor, int label), as a user would write one."""

    def __init__(self, n: int, seed: int) -> None:
        self.x, self.y = synthetic_dataset(n, 16, seed=seed).tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def _model() -> nn.Sequential:
    from tests.conftest import small_sequential_teacher

    return small_sequential_teacher(seed=3).append(
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)))


def test_accelerate_end_to_end_and_resume(tmp_path: Path, monkeypatch) -> None:
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, val = Pairs(160, 0), Pairs(48, 1)
    res = lana.accelerate(model, train, val, budget="1.1x", backend="torch",
                          out=tmp_path / "run", **FAST)
    # the caller's model is the teacher, untouched (weights and mode)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training
    assert isinstance(res.student, nn.Module)
    x = torch.randn(3, 1, 16, 16)
    assert res.student(x).shape == (3, 4)
    (s,) = res.summary["students"]
    assert s["budget"] == {"speedup": 1.1} and res.export["budget"] == {"speedup": 1.1}
    assert res.summary["latency"]["backend"] == "torch"
    assert res.run.config.device == "cpu" and res.run.device.type == "cpu"
    assert res.summary["teacher"]["name"] == "python:Sequential"
    assert res.report.name == "report.html" and res.report.exists()
    assert "data Pairs at 16 px" in res.report.with_name("report.md").read_text()
    # the returned student is the exported one
    again = load_student(Path(s["path"]), teacher=_model())
    with torch.no_grad():
        assert torch.allclose(res.student(x), again(x))
    assert "speedup=" in repr(res)

    # A second call with the same out resumes: nothing is trained again.
    def forbid(*a, **k):
        raise AssertionError("must not train on resume")

    monkeypatch.setattr(lana.distill.phase1, "_train_group", forbid)
    monkeypatch.setattr(lana.distill.train, "train_classifier", forbid)
    res2 = lana.accelerate(model, train, val, budget=1.1, backend="torch",
                           out=tmp_path / "run", report=False, **FAST)
    assert res2.export == res.export


@pytest.mark.parametrize("budget,expected", [
    (2, BudgetConfig(speedup=2.0)), ("3x", BudgetConfig(speedup=3.0)),
    ("1.5 ms", BudgetConfig(latency_ms=1.5)), ({"latency_ms": 4}, BudgetConfig(latency_ms=4)),
    (BudgetConfig(speedup=1.2), BudgetConfig(speedup=1.2))])
def test_parse_budget(budget, expected) -> None:
    assert parse_budget(budget) == expected


@pytest.mark.parametrize("budget", ["fast", -1, {"speedup": 2, "latency_ms": 1}, True, None])
def test_bad_budget_is_a_config_error(budget) -> None:
    with pytest.raises(ConfigError):
        parse_budget(budget)


def test_bad_inputs_are_explained(tmp_path: Path) -> None:
    model, train, val = _model(), Pairs(32, 0), Pairs(16, 1)
    with pytest.raises(ConfigError, match="unknown key"):
        lana.accelerate(model, train, val, out=tmp_path / "a", distill={"stepz": 3})
    with pytest.raises(ConfigError, match="square"):
        lana.accelerate(model, [(torch.zeros(1, 16, 8), 0)], val, out=tmp_path / "b")
    with pytest.raises(ConfigError, match="image tensor"):
        lana.accelerate(model, [(1, 2, 3)], val, out=tmp_path / "c")
    with pytest.raises(ConfigError, match="nn.Module"):
        lana.accelerate("resnet", train, val, out=tmp_path / "d")
    with pytest.raises(ConfigError, match="different shape"):
        lana.accelerate(model, train, [(torch.zeros(1, 8, 8), 0)], out=tmp_path / "e")


@pytest.mark.parametrize("budget, want", [("1.5ms", {"latency_ms": 1.5}),
                                          ("3x", {"speedup": 3.0})])
def test_the_budget_argument_replaces_the_configs(tmp_path: Path, monkeypatch, budget,
                                                  want) -> None:
    """A millisecond budget over a config whose budget is a speed-up (the default) is
    that budget alone, not both (which the config refuses)."""
    from lana.pipeline.runner import Run

    seen = {}

    def all_stages(self, bud):
        seen["config"], seen["budget"] = self.config.search.budget, bud
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr(Run, "all", all_stages)
    for config in (None, {"search": {"budget": {"speedup": 2.0}}},
                   {"search": {"budget": {"latency_ms": 9.0}}}):
        with pytest.raises(KeyboardInterrupt):
            lana.accelerate(_model(), Pairs(32, 0), Pairs(16, 1), budget=budget,
                            out=tmp_path / str(len(seen)), config=config)
        assert seen["config"] == seen["budget"] == BudgetConfig(**want)
