"""Tests of the ``lana`` command line: exit codes, messages, and the console script."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

import lana.distill.phase1
import lana.distill.train
import lana.pipeline.runner
from lana.cli.commands import main
from lana.config import Config, config_from_dict

REPO = Path(__file__).resolve().parents[2]


def _forbid(*args, **kwargs):
    raise AssertionError("no training may happen here")


def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_defaults_is_valid_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--defaults"]) == 0
    out = capsys.readouterr().out
    assert config_from_dict(yaml.safe_load(out)) == Config()
    assert "distill:" in out and "budget:" in out


def test_unknown_key_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 tiny_config: dict) -> None:
    tiny_config["distill"]["stepz"] = 3
    cfg = _write(tmp_path / "bad.yaml", tiny_config)
    out_dir = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lana: error:")
    assert "distill.stepz" in err and "unknown key" in err and str(cfg) in err
    assert "Traceback" not in err
    assert not out_dir.exists()  # nothing is started on a bad config


def test_bad_value_and_bad_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path / "bad.yaml", {"space": {"ops": ["teacher", "ir_k4"]}})
    assert main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "ir_k4" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {name: [\n")
    assert main(["run", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["run", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and str(missing) in err


@pytest.mark.parametrize("cmd", ["prepare", "distill", "profile", "score", "search",
                                 "finetune", "export"])
def test_stage_on_non_run_dir(cmd: str, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main([cmd, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a lana run directory" in err and "lana run" in err
    assert "Traceback" not in err


def test_usage_errors_exit_2() -> None:
    for argv in ([], ["frobnicate"], ["run", "cfg.yaml"], ["search", "d", "--speedup", "x"],
                 ["export", "d", "--speedup", "2", "--latency-ms", "3"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv


def test_interrupt_exits_130(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             tiny_config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(self, budget=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(lana.pipeline.runner.Run, "all", interrupted)
    cfg = _write(tmp_path / "cfg.yaml", tiny_config)
    assert main(["run", str(cfg), "--out", str(tmp_path / "o")]) == 130
    assert "re-run the same command" in capsys.readouterr().err


def test_commands_on_a_finished_run(run_copy, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, cfg_dict = run_copy
    monkeypatch.setattr(lana.distill.phase1, "_train_group", _forbid)
    monkeypatch.setattr(lana.distill.train, "train_classifier", _forbid)
    cfg = _write(tmp_path / "cfg.yaml", cfg_dict)
    # `lana run` on a finished directory resumes: nothing to do, the summary is printed
    assert main(["run", str(cfg), "--out", str(run_dir)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps lines to the width
    assert "vs students" in out and "/11 layers replaced" in out
    assert main(["export", str(run_dir)]) == 0
    assert "vs students" in " ".join(capsys.readouterr().out.split())
    assert main(["search", str(run_dir)]) == 0
    assert "lana search" in capsys.readouterr().out
    for cmd in ("prepare", "distill", "score"):
        assert main([cmd, str(run_dir)]) == 0, cmd
    capsys.readouterr()
    # an infeasible budget is a clear error, not a traceback
    assert main(["search", str(run_dir), "--latency-ms", "0.000001"]) == 2
    err = capsys.readouterr().err
    assert "minimum reachable" in err and "Traceback" not in err
    # a config whose results sections differ is refused
    cfg_dict["space"]["ops"] = ["teacher", "cb_k3"]
    other = _write(tmp_path / "other.yaml", cfg_dict)
    assert main(["run", str(other), "--out", str(run_dir)]) == 2
    assert "different 'space' section" in capsys.readouterr().err


def test_console_script_entry_point(tmp_path: Path) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["lana"] == "lana.cli.commands:main"
    (ep,) = entry_points(group="console_scripts", name="lana")
    assert ep.load() is main
    # the real process: exit status 2 and one line of error, no traceback
    proc = subprocess.run([sys.executable, "-m", "lana.cli", "run", str(tmp_path / "x.yaml"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("lana: error:") and "Traceback" not in proc.stderr


def test_list_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list-models"]) == 0
    out = capsys.readouterr().out
    for family in ("timm-efficientnet", "timm-resnet", "timm-mobilenetv3", "sequential",
                   "fx-chain"):
        assert family in out
    # the ResNet default space, on one line
    assert "timm-resnet: teacher identity rb_w{0.25,0.5,1}" in out
    assert main(["list-models", "--model", "lana:tiny_effnet", "--input", "1x32x32"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "11 layers" in out and "blocks.4.1" in out and "timm-efficientnet" in out
    assert "26 ops in the space" in out and "er_k3_e{1,2,4}" in out
    assert " linear " in out  # MBConv blocks end linear (the ends column)
    assert main(["list-models", "--model", "lana:tiny_effnet", "--input", "32x32"]) == 2
    assert "CxHxW" in capsys.readouterr().err
