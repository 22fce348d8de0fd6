"""Latency you can trust: outliers, drift detection, backends' failure messages.

A fake backend on a fake clock makes a "machine" whose speed changes on a schedule, so the
drift logic is tested deterministically.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import lana.latency.timing as L
from lana.errors import BackendUnavailableError
from lana.latency.backends import BACKENDS, get_backend
from lana.latency.lut import DriftMonitor, LatencyTable
from tests.conftest import fake_backend

FAST = {"warmup": 1, "min_repeats": 6, "max_repeats": 6, "max_seconds": 10.0}


class Machine:
    """Fake clock plus a backend whose every run takes ``speeds[k]`` ms, k = prepare count."""

    def __init__(self, speeds: list[float]) -> None:
        self.now = 0
        self.speeds = speeds
        self.prepared = 0

    def __call__(self) -> int:
        return self.now

    def backend(self):
        def prepare(module: nn.Module, example: torch.Tensor):
            ms = self.speeds[min(self.prepared, len(self.speeds) - 1)]
            self.prepared += 1

            def run() -> None:
                self.now += int(ms * 1e6)

            return run

        return fake_backend(prepare)


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    def make(speeds: list[float]) -> Machine:
        m = Machine(speeds)
        monkeypatch.setattr(L, "_clock", m)
        monkeypatch.setitem(BACKENDS, "fake", m.backend())
        return m

    return make


def build_lut(lut: LatencyTable, monitor: DriftMonitor, n: int) -> list[str]:
    settings = monitor.settings
    monitor.start()
    keys = []
    for i in range(n):
        shape = (1, 4, 4, 4)
        lut.put(f"op{i}", shape, settings, L.measure(nn.ReLU(), shape, settings, **FAST))
        monitor.measured(f"op{i}", nn.ReLU(), shape)
        keys.append(LatencyTable.key(f"op{i}", shape, settings))
    return keys


def test_outliers_are_counted() -> None:
    m = L.Measurement.from_samples([1.0] * 19 + [100.0])
    assert m.outliers == 1
    assert m.median_ms == pytest.approx(1.0)
    assert L.Measurement.from_dict(m.to_dict()).outliers == 1
    assert L.Measurement.from_samples([1.0, 1.1, 0.9, 1.05]).outliers == 0


def test_steady_machine_no_remeasure_and_reference_stored(machine, tmp_path) -> None:
    machine([1.0])
    settings = L.Settings(backend="fake")
    lut = LatencyTable(tmp_path / "lut.json")
    mon = DriftMonitor(lut, settings, every=2, threshold=0.1, repeats=1, **FAST)
    build_lut(lut, mon, 4)
    info = mon.finish()
    lut.save()
    assert info["remeasured"] == 0 and info["flagged"] == []
    assert [c["reason"] for c in info["checks"]] == ["start", "periodic", "periodic"]
    assert info["baseline_ms"] == pytest.approx(1.0)
    # The baseline is kept in the file; a new session compares against it.
    again = LatencyTable(tmp_path / "lut.json")
    assert again.reference(settings)["baseline_ms"] == pytest.approx(1.0)
    assert len(again.reference(settings)["checks"]) == 3


def test_transient_slowdown_is_remeasured(machine) -> None:
    # prepares: 0 reference(start), 1-2 ops, 3 reference, 4-5 ops (slow), 6 reference (slow)
    # -> drift: 7-8 re-measure (fast again), 9 reference (fast) -> fine.
    machine([1.0, 1.0, 1.0, 1.0, 1.5, 1.5, 1.5, 1.0])
    lut = LatencyTable()
    settings = L.Settings(backend="fake")
    mon = DriftMonitor(lut, settings, every=2, threshold=0.1, repeats=1, **FAST)
    keys = build_lut(lut, mon, 4)
    info = mon.finish()
    assert info["remeasured"] == 2
    assert info["flagged"] == []
    ratios = [round(c["ratio"], 2) for c in info["checks"]]
    assert ratios == [1.0, 1.0, 1.5, 1.0]
    for key in keys:  # the slow window's entries were replaced by fast re-measurements
        assert lut.entries()[key]["median_ms"] == pytest.approx(1.0)


def test_persistent_drift_flags_entries(machine) -> None:
    machine([1.0, 1.0, 1.0, 1.0, 1.5])  # slow from the 5th prepare on, for good
    lut = LatencyTable()
    settings = L.Settings(backend="fake")
    logs: list[str] = []
    mon = DriftMonitor(lut, settings, every=2, threshold=0.1, repeats=1, log=logs.append,
                       **FAST)
    keys = build_lut(lut, mon, 4)
    info = mon.finish()
    assert info["remeasured"] == 2
    assert info["flagged"] == keys[2:]
    entries = lut.entries()
    assert entries[keys[3]]["flagged"] and entries[keys[3]]["drift"] == pytest.approx(1.5)
    assert "flagged" not in entries[keys[0]]
    assert any("persists" in line for line in logs)


def test_one_odd_reference_session_is_not_drift(machine) -> None:
    # prepares: 0-2 reference(start) -> median 1.0; 3-4 ops; 5-7 reference with one slow
    # session (1.0, 1.3, 1.0): the median of the three is 1.0, so nothing is re-measured.
    machine([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.3, 1.0])
    lut = LatencyTable()
    settings = L.Settings(backend="fake")
    mon = DriftMonitor(lut, settings, every=2, threshold=0.1, **FAST)
    build_lut(lut, mon, 2)
    info = mon.finish()
    assert mon.repeats == 3
    assert info["remeasured"] == 0
    assert [round(c["ratio"], 2) for c in info["checks"]] == [1.0, 1.0]
    # With a single session per check the same machine is reported as drifting.
    machine([1.0, 1.0, 1.0, 1.3, 1.3, 1.3, 1.3])
    mon1 = DriftMonitor(LatencyTable(), settings, every=2, threshold=0.1, repeats=1,
                        **FAST)
    build_lut(mon1.lut, mon1, 2)
    assert mon1.finish()["remeasured"] == 2


def test_drift_detection_off() -> None:
    mon = DriftMonitor(LatencyTable(), L.Settings(backend="torch"), every=0)
    mon.start()
    mon.measured("x", nn.ReLU(), (1, 1))
    assert mon.finish()["checks"] == []


# ---------------------------------------------------------------- backends


@pytest.mark.parametrize("name", ["torch-cuda", "torch-cuda-graphs", "onnxruntime-cuda",
                                  "onnxruntime-tensorrt", "tensorrt"])
def test_gpu_backends_fail_clearly_without_gpu(name: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    backend = get_backend(name)
    assert backend.device_kind == "cuda"
    with pytest.raises(BackendUnavailableError, match="pip install|GPU"):
        backend.check_available()
    with pytest.raises(BackendUnavailableError):
        L.measure(nn.ReLU(), (1, 2, 2, 2), L.Settings(backend=name), **FAST)


def test_registry_names_match() -> None:
    for name in BACKENDS:
        assert get_backend(name).name == name


def test_openvino_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "openvino":
            raise ImportError("no openvino")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(BackendUnavailableError, match=r"pip install openvino.*lana\[openvino\]"):
        get_backend("openvino").check_available()


def test_openvino_measures_tiny_conv() -> None:
    pytest.importorskip("openvino")
    os.environ.setdefault("OPENVINO_TELEMETRY_OPTOUT", "1")
    settings = L.Settings(backend="openvino")
    conv = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    m = L.measure(conv, (1, 8, 16, 16), settings, warmup=2, min_repeats=10, max_seconds=0.2)
    assert m.median_ms > 0 and m.count >= 10
    # The ONNX path gives the same numbers' kind of result from bytes alone.
    x = torch.randn(1, 8, 16, 16)
    onnx = L.export_onnx(conv, x)
    run = get_backend("openvino").prepare_onnx(onnx, x.numpy(), 1)
    assert run() is None


def test_onnxruntime_prepare_onnx_runs_bytes() -> None:
    x = torch.randn(1, 3, 8, 8)
    onnx = L.export_onnx(nn.Conv2d(3, 4, 3), x)
    run = get_backend("onnxruntime").prepare_onnx(onnx, x.numpy(), 1)
    assert run() is None


@pytest.mark.skipif(os.environ.get("LANA_TEST_COMPILE") != "1",
                    reason="torch.compile takes minutes on 2 cores; set LANA_TEST_COMPILE=1")
def test_torch_compile_measures_tiny_conv() -> None:
    conv = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU())
    m = L.measure(conv, (1, 4, 8, 8), L.Settings(backend="torch-compile"), warmup=3,
                  min_repeats=10, max_seconds=0.2)
    assert m.median_ms > 0 and m.warmup == 3
