"""A LUT built on another machine: export-candidates -> profile BUNDLE -> the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lana.latency.lut
import lana.latency.profile
import lana.latency.timing
from lana.cli.commands import main
from lana.config import BudgetConfig, config_from_dict
from lana.core.io import read_json, write_json
from lana.errors import ArtifactError, ConfigError
from lana.pipeline.runner import Run


def _forbid(name: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} must not be called: the target is another machine")

    return fail


def _move_to_target(lut_path: Path, device: str) -> None:
    """Pretend the LUT was measured on another machine (rewrite its device strings)."""
    data = read_json(lut_path)
    local = next(iter(data["entries"].values()))["settings"]["device"]
    text = json.dumps(data).replace(json.dumps(local)[1:-1], device)
    write_json(lut_path, json.loads(text))


def test_bundle_round_trip_into_the_pipeline(run_copy, tmp_path: Path, monkeypatch,
                                             capsys) -> None:
    run_dir, cfg = run_copy
    bundle, lut = tmp_path / "bundle", tmp_path / "lut.json"
    assert main(["export-candidates", str(run_dir), "--out", str(bundle)]) == 0
    manifest = read_json(bundle / "manifest.json")
    assert manifest["format"] == "lana-bundle/1"
    kinds = [e["kind"] for e in manifest["entries"]]
    assert kinds.count("stem") == kinds.count("head") == kinds.count("network") == 1
    keys = [(e["op"], tuple(e["input_shape"])) for e in manifest["entries"]]
    assert len(keys) == len(set(keys))  # one model per unique (op, shape)
    assert all((bundle / e["file"]).stat().st_size > 0 for e in manifest["entries"])

    # The run's latency settings travel in the bundle and are what the target measures.
    run_latency = Run(run_dir).config.latency
    assert manifest["source"]["latency"] == {"backend": run_latency.backend,
                                             "threads": run_latency.threads,
                                             "normalize": run_latency.normalize}
    assert main(["profile", str(bundle), "--out", str(lut), "--max-seconds", "0.02"]) == 0
    assert "device: lut" in capsys.readouterr().out
    table = lana.latency.lut.LatencyTable(lut)
    assert len(table) == len(keys)
    for entry in table.entries().values():  # statistics stored with every entry
        assert entry["count"] >= 1 and entry["p25_ms"] <= entry["p75_ms"]
        assert entry["settings"]["normalize"] == run_latency.normalize
        assert entry["settings"]["backend"] == run_latency.backend

    _move_to_target(lut, "cpu:target-box|4 cores|aarch64")
    cfg["latency"].update(lut=str(lut), device="lut", max_seconds=0.02)
    # Nothing may be timed here: the numbers must come from the target's LUT.
    monkeypatch.setattr(lana.latency.profile, "measure", _forbid("measure"))
    monkeypatch.setattr(lana.latency.profile, "measure_models", _forbid("measure_models"))
    monkeypatch.setattr(lana.latency.timing, "time_runner", _forbid("time_runner"))
    run = Run(run_dir, config_from_dict(cfg))
    lat = run.profile()
    assert lat["remote"] and lat["settings"]["device"].startswith("cpu:target-box")
    got = lana.latency.lut.LatencyTable(lut).entries()
    network = next(e for e in manifest["entries"] if e["kind"] == "network")
    assert lat["teacher_measured_ms"] == pytest.approx(next(
        v["median_ms"] for v in got.values() if v["op"] == network["op"]))
    res = run.search(BudgetConfig(speedup=1.2))
    chosen = res["chosen"]
    assert chosen["verified"] is False and chosen["latency_ms_measured"] is None
    assert chosen["latency_ms_predicted"] <= res["budget_ms"] * 1.0001
    from lana.pipeline.status import run_status

    search_row = next(s for s in run_status(run_dir)["stages"]
                      if s["stage"] == "search" and s["budget"] == "speedup1.2")
    assert search_row["state"] == "done"
    assert search_row["detail"].endswith("not measured here (the LUT is from the target "
                                         "device)")

    # A LUT that lacks an entry is an error naming what to do.
    data = read_json(lut)
    data["entries"].pop(next(k for k, v in data["entries"].items() if v["op"].startswith(
        "ir_")))
    write_json(lut, data)
    (run_dir / "latency.json").unlink()
    with pytest.raises(ArtifactError, match="lacks 1 of the entries.*export-candidates"):
        Run(run_dir, config_from_dict(cfg)).profile()


def test_device_lut_without_matching_entries(run_copy, tmp_path: Path) -> None:
    run_dir, cfg = run_copy
    cfg["latency"].update(lut=str(tmp_path / "empty.json"), device="lut")
    with pytest.raises(ConfigError, match="holds no device"):
        Run(run_dir, config_from_dict(cfg)).profile()


def test_profile_options_need_a_bundle(run_copy, capsys) -> None:
    run_dir, _ = run_copy
    assert main(["profile", str(run_dir), "--backend", "torch"]) == 2
    assert "apply to a candidate bundle" in capsys.readouterr().err


def test_bundle_with_a_torch_backend_is_refused(tmp_path: Path) -> None:
    import torch

    write_json(tmp_path / "manifest.json", {"format": "lana-bundle/1", "batch_size": 1,
                                            "entries": [{"kind": "op", "op": "x",
                                                         "input_shape": [1, 2],
                                                         "file": "a.onnx"}]})
    onnx = lana.latency.timing.export_onnx(torch.nn.ReLU(), torch.zeros(1, 2))
    (tmp_path / "a.onnx").write_bytes(onnx)
    with pytest.raises(ConfigError, match="runs PyTorch modules"):
        lana.latency.profile.profile_bundle(tmp_path, "torch", 1, tmp_path / "lut.json")


def test_profile_flags_override_the_runs_settings(run_copy, tmp_path: Path) -> None:
    run_dir, _ = run_copy
    bundle = tmp_path / "bundle"
    assert main(["export-candidates", str(run_dir), "--out", str(bundle)]) == 0
    normalize = read_json(bundle / "manifest.json")["source"]["latency"]["normalize"]
    flag = "--no-normalize" if normalize else "--normalize"
    lut = tmp_path / "lut.json"
    assert main(["profile", str(bundle), "--out", str(lut), "--max-seconds", "0.01",
                 flag]) == 0
    entries = lana.latency.lut.LatencyTable(lut).entries().values()
    assert entries and all(e["settings"]["normalize"] is (not normalize) for e in entries)


def test_module_key_ignores_repr_but_not_structure(monkeypatch) -> None:
    """A LUT measured on the target with other torch/timm versions keeps matching: the key
    follows hyper-parameters and shapes, not ``repr`` (whose format versions change)."""
    import torch
    from torch import nn

    from lana.latency.profile import module_key

    def block(k: int = 3, gate=torch.sigmoid) -> nn.Module:
        m = nn.Sequential(nn.Conv2d(8, 8, k, padding=k // 2, groups=8), nn.BatchNorm2d(8),
                          nn.SiLU())
        m.gate_fn = gate
        return m

    key = module_key("teacher", block())
    assert key.startswith("teacher:") and key == module_key("teacher", block().train(False))
    monkeypatch.setattr(nn.Conv2d, "extra_repr", lambda self: "formatted differently")
    monkeypatch.setattr(nn.BatchNorm2d, "__repr__", lambda self: "BN")
    assert module_key("teacher", block()) == key
    assert module_key("teacher", block(k=5)) != key
    assert module_key("teacher", block(gate=torch.nn.functional.hardsigmoid)) != key
    other = block()
    other[2] = nn.ReLU()
    assert module_key("teacher", other) != key
    assert module_key("stem", block()) != key
