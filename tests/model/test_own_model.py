"""Your own model from the CLI: ``model.name: python:<module or file.py>:<callable>``."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import lana
from lana.cli.commands import main
from lana.core.io import read_json
from lana.errors import ConfigError
from lana.model.zoo import create_model, source_digest
from tests.conftest import tiny_config_dict

NETS = textwrap.dedent('''
    import torch
    from torch import nn


    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())


    class Net(nn.Module):
        """A small conv net of the user's own (the data's classes and channels by name)."""

        def __init__(self, num_classes=10, in_chans=3, width=8):
            super().__init__()
            self.stem = block(in_chans, width, 1)
            self.blocks = nn.Sequential(block(width, width, 1), block(width, 2 * width, 2),
                                        block(2 * width, 2 * width, 1))
            self.fc = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


    def fixed_head(width=8):
        """Takes neither num_classes nor in_chans: lana must not pass them."""
        return Net(num_classes=4, in_chans=3, width=width)


    def two_classes():
        return Net(num_classes=2, in_chans=1)


    def not_a_model():
        return 42


    def broken():
        raise RuntimeError("my constructor is broken")
''')


def _write_nets(folder: Path, name: str = "my_nets.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(NETS)
    return path


def test_own_model_from_a_file_end_to_end(tmp_path: Path, capsys) -> None:
    nets = _write_nets(tmp_path / "code")
    cfg = tiny_config_dict(tmp_path / "cache")
    cfg["model"] = {"name": f"python:{nets}:Net", "kwargs": {"width": 8}}
    cfg["space"]["ops"] = ["teacher", "identity", "cb_k3"]
    cfg["search"]["budget"] = {"latency_ms": 1000.0}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    teacher = read_json(tmp_path / "run" / "teacher.json")
    # the generic split looks through the nn.Sequential blocks to their modules
    names = [layer["name"] for layer in teacher["layers"]]
    assert names[:3] == ["stem.0", "stem.1", "stem.2"] and names[-1] == "fc"
    summary = read_json(tmp_path / "run" / "summary.json")
    student = summary["students"][0]
    # the student loads back with no teacher given: lana rebuilds it from the same file,
    # with the data's class and channel counts (the synthetic set: 4 classes, 1 channel)
    loaded = lana.load_student(student["path"])
    assert loaded(torch.zeros(2, 1, 16, 16)).shape == (2, 4)


def test_own_model_by_module_name(tmp_path: Path, monkeypatch) -> None:
    _write_nets(tmp_path / "my_pkg", "nets.py")
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)  # importable from the current directory, as `python -m` has
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    model = create_model("python:my_pkg.nets:Net", num_classes=5, in_chans=1)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 5)
    # a builder that takes neither is called without them
    model = create_model("python:my_pkg.nets:fixed_head", num_classes=5, in_chans=3, width=4)
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 4)
    monkeypatch.delitem(sys.modules, "my_pkg.nets")
    monkeypatch.delitem(sys.modules, "my_pkg")


def test_edited_code_is_a_new_teacher(tmp_path: Path) -> None:
    nets = _write_nets(tmp_path)
    name = f"python:{nets}:Net"
    before = source_digest(name)
    assert before and source_digest(name) == before
    assert source_digest("timm:resnet18") is None and source_digest("python:Net") is None
    nets.write_text(NETS.replace("width=8", "width=6"))
    assert source_digest(name) != before  # so the teacher cache key changes
    # and the edited file is what gets built, in the same process
    assert create_model(name).fc.in_features == 12


@pytest.mark.parametrize("target,needle", [
    ("python::Net", "must be 'python:<module>:<callable>'"),
    ("python:{dir}/missing.py:Net", "there is no file"),
    ("python:{nets}:Nett", "has no 'Nett'; it defines ['Net', 'block', 'broken', "
                           "'fixed_head', 'not_a_model', "
                           "'two_classes']"),
    ("python:{nets}:not_a_model", "returned a int, not a torch.nn.Module"),
    ("python:{nets}:broken", "raised RuntimeError: my constructor is broken"),
    ("python:{dir}/bad.py:Net", "importing"),
    ("python:no_such_module_xyz:Net", "ModuleNotFoundError"),
    # lana.accelerate's label of a model given as an object
    ("python:Net", "handed to lana as an object"),
])
def test_own_model_errors(tmp_path: Path, target: str, needle: str) -> None:
    nets = _write_nets(tmp_path)
    (tmp_path / "bad.py").write_text("def Net(:\n")
    with pytest.raises(ConfigError) as info:
        create_model(target.format(dir=tmp_path, nets=nets), num_classes=3)
    assert needle in str(info.value)


@pytest.mark.parametrize("builder,needle", [
    ("fixed_head", "cannot take the data's images, batches of shape (2, 1, 16, 16) "
                   "(1 channel(s), data.image_size 16): RuntimeError"),
    ("two_classes", "gives 2 class logits, but the data has 4 classes")])
def test_a_model_that_does_not_fit_the_data(tmp_path: Path, capsys, builder: str,
                                            needle: str) -> None:
    """Said before training starts, not as a traceback from inside torch."""
    cfg = tiny_config_dict(tmp_path / "cache")
    cfg["model"] = {"name": f"python:{_write_nets(tmp_path)}:{builder}"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert needle in capsys.readouterr().err.replace("\n", " ")


def _nets_state(tmp_path: Path, **kwargs) -> dict:
    torch.manual_seed(0)
    return create_model(f"python:{_write_nets(tmp_path)}:Net", **kwargs).state_dict()


def test_weights_from_a_training_scripts_checkpoint(tmp_path: Path) -> None:
    """model.weights takes what training scripts save: torch.save checkpoints, nested and
    DDP-prefixed, read with weights_only=True (never arbitrary unpickling)."""
    import argparse

    from lana.core.io import load_state_dict, save_tensors
    from lana.errors import ArtifactError

    state = _nets_state(tmp_path, num_classes=4, in_chans=1)

    def same(got: dict) -> bool:
        return got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in got)

    ddp = {f"module.{k}": v for k, v in state.items()}
    torch.save({"epoch": 7, "model": ddp, "best_acc": 0.9}, tmp_path / "ckpt.pth")
    assert same(load_state_dict(tmp_path / "ckpt.pth"))
    torch.save({"state_dict": {}, "ema": state}, tmp_path / "ema.pth")
    assert same(load_state_dict(f"{tmp_path / 'ema.pth'}#ema"))
    save_tensors(tmp_path / "w.safetensors", state)
    assert same(load_state_dict(tmp_path / "w.safetensors"))
    compiled = {f"_orig_mod.{k}": v for k, v in state.items()}
    torch.save(compiled, tmp_path / "compiled.pt", _use_new_zipfile_serialization=False)
    assert same(load_state_dict(tmp_path / "compiled.pt"))
    for path, needle in [
            (tmp_path / "ema.pth", "no state dict of named tensors at its top level"),
            (f"{tmp_path / 'ema.pth'}#swa", "has no entry 'swa' (it has ['ema', 'state_dict'])"),
            (tmp_path / "nope.pth", "does not exist")]:
        with pytest.raises(ArtifactError, match=None) as info:
            load_state_dict(path)
        assert needle in str(info.value)
    # an object that the restricted unpickler refuses is never loaded
    torch.save({"args": argparse.Namespace(lr=0.1), "model": state}, tmp_path / "args.pth")
    with pytest.raises(ArtifactError, match="weights_only=True. refuses.*never unpickles"):
        load_state_dict(tmp_path / "args.pth")


def test_run_loads_a_checkpoint_and_names_a_mismatch(tmp_path: Path, capsys) -> None:
    nets = _write_nets(tmp_path)
    state = _nets_state(tmp_path, num_classes=4, in_chans=1)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "t.pth")
    cfg = tiny_config_dict(tmp_path / "cache")
    cfg["model"] = {"name": f"python:{nets}:Net", "weights": str(tmp_path / "t.pth")}
    from lana.config import config_from_dict
    from lana.core.io import load_tensors
    from lana.pipeline.runner import Run

    Run(tmp_path / "run", config_from_dict(cfg)).prepare()

    got = load_tensors(tmp_path / "run" / "teacher.safetensors")
    assert all(torch.equal(got[k], v) for k, v in state.items())  # loaded, not trained
    # weights of another head size: a short message naming the difference
    torch.save(_nets_state(tmp_path, num_classes=10, in_chans=1), tmp_path / "t10.pth")
    cfg["model"]["weights"] = str(tmp_path / "t10.pth")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "run10")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "2 of another shape (fc.weight (10, 16) in the file, (4, 16) in the model" in err
    assert "Same layers, other sizes" in err
