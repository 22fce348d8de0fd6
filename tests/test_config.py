"""Tests of lana.config: validation, readable errors, YAML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lana.config import BudgetConfig, Config, config_from_dict, load_config
from lana.errors import ConfigError, LanaError


def test_tiny_config_is_valid(tiny_config: dict) -> None:
    cfg = config_from_dict(tiny_config)
    assert cfg.data.name == "synthetic" and cfg.distill.steps == 5
    assert cfg.search.budget == BudgetConfig(speedup=1.5)
    assert cfg.space.ops == ["teacher", "identity", "ir_k3_e{1,3}", "cb_k3"]
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_defaults() -> None:
    assert config_from_dict(None) == Config() == config_from_dict({})
    cfg = Config()
    assert cfg.search.budget.speedup == 2.0 and cfg.search.budget.latency_ms is None
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


@pytest.mark.parametrize("data,needles", [
    ({"bogus": 1}, ["bogus", "unknown key"]),
    ({"distill": {"stepz": 3}}, ["distill.stepz", "unknown key"]),
    ({"search": {"budget": {"speedup": 2, "ms": 3}}}, ["search.budget.ms"]),
    ({"distill": {"steps": 0}, "score": {"metric": "mse"}}, ["distill.steps", "score.metric"]),
    ({"data": {"name": "imagenet"}}, ["data.name"]),
    ({"search": {"budget": {"speedup": 2, "latency_ms": 3}}}, ["exactly one"]),
    ({"search": {"budget": {}}}, ["exactly one"]),
    ({"latency": {"batch_size": "big"}}, ["latency.batch_size"]),
    ({"teacher_training": {"optimizer": "rmsprop"}}, ["teacher_training.optimizer", "sgd"]),
])
def test_invalid_configs_name_every_problem(data: dict, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source="my.yaml")
    msg = str(info.value)
    assert msg.startswith("invalid configuration in my.yaml")
    for needle in needles:
        assert needle in msg
    assert isinstance(info.value, LanaError) and info.value.exit_code == 2


def test_bad_candidate_op_fails_at_validation() -> None:
    with pytest.raises(ConfigError, match="zz_k3"):
        config_from_dict({"space": {"ops": ["teacher", "zz_k3"]}})


def test_config_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        config_from_dict([1, 2], source="x.yaml")


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed)
    typo = tmp_path / "typo.yaml"
    typo.write_text("distill:\n  step: 3\n")
    with pytest.raises(ConfigError, match=r"distill\.step: unknown key") as info:
        load_config(typo)
    assert str(typo) in str(info.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == Config()


def test_load_config_reads_values(tmp_path: Path, tiny_config: dict) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    assert load_config(path) == config_from_dict(tiny_config)


def test_sections_reject_assignment_of_bad_values() -> None:
    cfg = Config()
    with pytest.raises(ValueError):
        cfg.distill.steps = -1
