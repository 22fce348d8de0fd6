"""Bad input: each a one-paragraph LanaError naming what and how to fix, exit code 2 in the
CLI, and nothing already computed lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lana.cli.commands import main
from lana.config import config_from_dict
from lana.core.io import load_tensors
from lana.errors import ArtifactError, ConfigError


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lana: error: ") and "Traceback" not in err
    return err


def test_mistyped_keys_get_suggestions(tmp_path: Path, capsys, tiny_config: dict) -> None:
    tiny_config["distill"]["stepz"] = 3
    tiny_config["serach"] = {}
    tiny_config["search"]["budget"] = {"speedupp": 2}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    err = _cli(["run", str(path), "--out", str(tmp_path / "run")], capsys)
    assert "distill.stepz: unknown key (did you mean 'steps'?)" in err
    assert "serach: unknown key (did you mean 'search'?)" in err
    assert "(did you mean 'speedup'?)" in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="unknown key \\(check"):  # nothing close: no guess
        config_from_dict({"distill": {"zzzzzz": 1}})


@pytest.mark.parametrize("name", ["image-folder", "fashion-mnist"])
def test_missing_dataset_path(tmp_path: Path, capsys, tiny_config: dict, name: str) -> None:
    tiny_config["data"] = {"name": name, "path": str(tmp_path / "no-such-data")}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    err = _cli(["run", str(path), "--out", str(tmp_path / "run")], capsys)
    assert "no-such-data" in err and "not found (no such folder)" in err


def test_unsupported_model(tmp_path: Path, capsys, tiny_config: dict) -> None:
    for name, needle in [("timm:no_such_net", "timm has no model"),
                         ("torchvision:no_such_net", "torchvision has no model"),
                         ("keras:resnet", "is unknown")]:
        tiny_config["model"]["name"] = name
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(tiny_config))
        assert needle in _cli(["run", str(path), "--out", str(tmp_path / name)], capsys)


def test_nonfinite_library_values(tmp_path: Path, capsys) -> None:
    ok = {"spec": "teacher", "score": 0.0, "cost": {"latency_ms": 1.0}}
    for bad, needle in [({"score": float("nan")}, "score is NaN"),
                        ({"cost": {"latency_ms": float("inf")}}, "latency_ms is")]:
        lib = {"layers": [{"name": "a", "ops": [ok, {**ok, "spec": "x", **bad}]}]}
        path = tmp_path / "lib.json"
        path.write_text(json.dumps(lib))  # json writes NaN/Infinity literals
        err = _cli(["search", str(path), "--budget", "latency_ms<=5"], capsys)
        assert "lib.json" in err and "layers[0].ops[1]" in err and needle in err


def test_budget_below_minimum(tmp_path: Path, capsys) -> None:
    lib = {"layers": [{"name": "a", "ops": [
        {"spec": "teacher", "score": 0.0, "cost": {"latency_ms": 1.0}},
        {"spec": "x", "score": 0.1, "cost": {"latency_ms": 0.5}}]}]}
    path = tmp_path / "lib.json"
    path.write_text(json.dumps(lib))
    err = _cli(["search", str(path), "--budget", "latency_ms<=0.1"], capsys)
    assert "minimum reachable" in err and "0.5" in err


def test_pickle_where_safetensors_is_expected(tmp_path: Path, capsys, tiny_config: dict
                                             ) -> None:
    weights = tmp_path / "teacher.pt"
    torch.save({"w": torch.zeros(2)}, weights)
    with pytest.raises(ArtifactError, match="zip archive .*torch.save.*never unpickles"):
        load_tensors(weights)
    old = tmp_path / "old.pt"
    torch.save({"w": torch.zeros(2)}, old, _use_new_zipfile_serialization=False)
    with pytest.raises(ArtifactError, match="Python pickle"):
        load_tensors(old)
    tiny_config["model"]["weights"] = str(weights)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    # as model.weights a torch.save file is read with weights_only=True; these weights
    # belong to no layer of the model, which the error says
    err = _cli(["run", str(path), "--out", str(tmp_path / "run")], capsys)
    assert "teacher.pt" in err and "No name matches" in err
