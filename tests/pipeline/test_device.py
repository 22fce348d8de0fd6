"""Where training runs (``device``): resolution and its errors on any machine; on a machine
with an NVIDIA GPU, every training stage, the CUDA latency backends and the process group
of a torchrun job (these tests skip without one; run them on a GPU with
``pytest tests/pipeline/test_device.py``)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lana.core.dist as D
from lana.config import config_from_dict
from lana.errors import ConfigError, LanaError

REPO = Path(__file__).resolve().parents[2]
GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs an NVIDIA GPU (torch.cuda)")


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has ``n`` GPUs (set_device is recorded, not called)."""
    chosen: list[int] = []

    def fake(n: int) -> list[int]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
        return chosen

    return fake


def _torchrun_env(monkeypatch, rank: int, per_node: int) -> None:
    monkeypatch.setenv("WORLD_SIZE", str(per_node))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(per_node))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


def test_cpu_and_auto_without_gpu(gpus) -> None:
    gpus(0)
    assert D.resolve_device("cpu") == torch.device("cpu")
    assert D.resolve_device("auto") == torch.device("cpu")


def test_cuda_without_gpu_says_what_to_do(gpus) -> None:
    gpus(0)
    with pytest.raises(ConfigError, match=r"device 'cuda' asks for an NVIDIA GPU.*device: cpu"):
        D.resolve_device("cuda")


def test_auto_and_cuda_pick_the_gpu(gpus) -> None:
    chosen = gpus(2)
    assert D.resolve_device("auto") == torch.device("cuda", 0)
    assert D.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert chosen == [0, 1]
    with pytest.raises(ConfigError, match=r"has 2 GPU\(s\), numbered 0 to 1"):
        D.resolve_device("cuda:2")


def test_under_torchrun_each_rank_takes_its_local_gpu(gpus, monkeypatch) -> None:
    chosen = gpus(2)
    _torchrun_env(monkeypatch, rank=1, per_node=2)
    assert D.resolve_device("cuda") == torch.device("cuda", 1)
    assert D.resolve_device("auto") == torch.device("cuda", 1)
    assert chosen == [1, 1]
    with pytest.raises(ConfigError, match="LOCAL_RANK; write device: cuda"):
        D.resolve_device("cuda:0")


def test_more_processes_than_gpus(gpus, monkeypatch) -> None:
    """NCCL needs a GPU per process: 'cuda' is an error naming the fix; 'auto' trains every
    rank on the CPUs (all ranks agree, so they still talk through gloo)."""
    gpus(1)
    _torchrun_env(monkeypatch, rank=1, per_node=2)
    with pytest.raises(ConfigError, match=r"2 processes on this node but it has 1 GPU.*"
                                          r"--nproc-per-node 1"):
        D.resolve_device("cuda")
    assert D.resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "CPU ", "cuda:"])
def test_config_rejects_unknown_devices(bad: str) -> None:
    with pytest.raises(ConfigError, match="device"):
        config_from_dict({"device": bad})


def test_cli_device_flag_is_validated(tmp_path: Path, capsys) -> None:
    from lana.cli.commands import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: synthetic}\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--device", "tpu"]) == \
        ConfigError.exit_code
    err = capsys.readouterr().err
    assert "invalid configuration in --device" in err and "device" in err
    assert not (tmp_path / "r").exists()


def test_placed_moves_back_to_the_cpu() -> None:
    from lana.distill.train import placed

    m = torch.nn.Linear(2, 2)
    with placed("cpu", m):
        assert m.weight.device.type == "cpu"
    with placed(None, m, None):
        pass
    assert m.weight.device.type == "cpu"


# ------------------------------------------------------------------ on a GPU

@needs_gpu
def test_gpu_phase1_matches_cpu(seq_chain, synthetic_splits, tmp_path) -> None:
    """Phase 1 on the GPU: same candidates, same initial weights (built on the CPU), the
    same data. The GPU computes in other orders (and its convolutions in TF32), and Adam
    turns tiny gradient differences into step-sized ones, so the weights are compared by
    how far training moved them: the CPU/GPU difference is a small part of that, and the
    distillation losses agree. The chain is back on the CPU afterwards."""
    from lana.config import DistillConfig
    from lana.core.io import load_tensors
    from lana.distill.phase1 import build_candidate, distill, weight_path

    cfg = DistillConfig(steps=20, batch_size=16, checkpoint_every=8)
    cands = [["teacher", "identity", "ir_k3_e1"] for _ in seq_chain.layers]
    cpu = distill(seq_chain, cands, synthetic_splits.train, cfg, tmp_path / "cpu")
    gpu = distill(seq_chain, cands, synthetic_splits.train, cfg, tmp_path / "gpu",
                  device="cuda")
    assert all(p.device.type == "cpu" for p in seq_chain.parameters())
    assert gpu.keys() == cpu.keys()
    for i, specs in enumerate(cands):
        s = specs[-1]
        a = load_tensors(weight_path(tmp_path / "cpu", i, s))
        b = load_tensors(weight_path(tmp_path / "gpu", i, s))
        init = build_candidate(seq_chain, i, s).state_dict()
        moved = sum((a[k].double() - init[k].double()).norm() ** 2 for k in a) ** 0.5
        apart = sum((b[k].double() - a[k].double()).norm() ** 2 for k in a) ** 0.5
        assert all(b[k].device.type == "cpu" for k in b)
        assert apart < 0.25 * moved, (i, float(apart), float(moved))
        assert gpu[str(i)][s]["nmse"] == pytest.approx(cpu[str(i)][s]["nmse"], rel=0.05)


@needs_gpu
def test_gpu_pipeline_end_to_end(tmp_path: Path, tiny_config: dict) -> None:
    """The tiny run with device: cuda; every stage finishes, the exported student is a CPU
    model measured by the CPU latency backend, and GPU memory is recorded."""
    from lana.core.io import read_json
    from lana.pipeline.runner import Run

    cfg = config_from_dict({**tiny_config, "device": "cuda"})
    run = Run(tmp_path / "run", cfg)
    summary = run.all()
    assert run.device.type == "cuda"
    assert summary["students"] and all(math.isfinite(s["accuracy"])
                                       for s in summary["students"])
    assert all(p.device.type == "cpu" for p in run.teacher.parameters())
    memory = read_json(tmp_path / "run" / "memory.json")
    assert any(k.endswith("_gpu_peak_mb") and v > 0 for k, v in memory.items()), memory


@needs_gpu
@pytest.mark.parametrize("name", ["torch-cuda", "torch-cuda-graphs"])
def test_cuda_latency_backends_time_real_ops(name: str) -> None:
    from lana.latency import timing as L

    settings = L.Settings(backend=name)
    conv = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU())
    small = L.measure(conv, (1, 16, 28, 28), settings, warmup=3, max_seconds=0.2)
    big = L.measure(torch.nn.Conv2d(16, 256, 7, padding=3), (1, 16, 112, 112), settings,
                    warmup=3, max_seconds=0.2)
    assert 0 < small.median_ms < 5 and small.count >= 5
    assert big.median_ms > small.median_ms  # times the GPU's work, not only the launch


@needs_gpu
def test_cuda_graph_runner_owns_the_memory_it_replays() -> None:
    """A graph replays at the addresses of its capture: the runner must keep the weights
    and input alive, or their memory is freed and reused (an illegal memory access in the
    latency benchmark on an H200 before this was fixed)."""
    import gc

    from lana.latency.backends import get_backend

    run = get_backend("torch-cuda-graphs").prepare(
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.randn(1, 64, 256, 256), 1)
    gc.collect()
    torch.cuda.empty_cache()  # freed blocks go back to the driver: reading them faults
    junk = torch.full((64 << 20,), 7.0, device="cuda")  # and new tensors take their place
    assert all(run() > 0 for _ in range(3))
    torch.cuda.synchronize()
    assert bool((junk == 7).all())


@needs_gpu
@pytest.mark.parametrize("name", ["onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"])
def test_optional_gpu_backends_work_or_say_how_to_install(name: str) -> None:
    from lana.latency import timing as L
    from lana.latency.backends import get_backend

    try:
        get_backend(name).check_available()
    except LanaError as exc:
        assert "install" in str(exc) or "provider" in str(exc), exc
        return
    m = L.measure(torch.nn.Conv2d(8, 8, 3, padding=1), (1, 8, 32, 32), L.Settings(backend=name),
                  warmup=3, max_seconds=0.2)
    assert m.median_ms > 0


def _torchrun(tmp_path: Path, nproc: int, *args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "LANA_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", str(nproc), "-m", "lana.cli", *args],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)


def _write_config(tmp_path: Path, tiny_config: dict, device: str) -> Path:
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**tiny_config, "device": device}))
    return cfg


@needs_gpu
def test_torchrun_with_one_gpu_per_process(tmp_path: Path, tiny_config: dict) -> None:
    """NCCL phase 1, DDP teacher training and phase 3 (SyncBatchNorm) on every GPU."""
    n = torch.cuda.device_count()
    if n < 2:
        pytest.skip("needs 2 GPUs for 2 NCCL processes")
    cfg = _write_config(tmp_path, tiny_config, "cuda")
    res = _torchrun(tmp_path, 2, "run", str(cfg), "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@needs_gpu
def test_torchrun_more_processes_than_gpus(tmp_path: Path, tiny_config: dict) -> None:
    """On a GPU machine the process group still serves CPU training (device: cpu, or auto
    with more processes than GPUs); device: cuda then is a clear error, not an NCCL hang."""
    n = torch.cuda.device_count()
    cfg = _write_config(tmp_path, tiny_config, "auto")
    res = _torchrun(tmp_path, n + 1, "run", str(cfg), "--out", str(tmp_path / "auto"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "training on the CPUs" in res.stderr
    res = _torchrun(tmp_path, n + 1, "run", str(cfg), "--out", str(tmp_path / "cuda"),
                    "--device", "cuda")
    assert res.returncode != 0
    assert "NCCL needs one GPU per process" in res.stderr, res.stderr[-3000:]
