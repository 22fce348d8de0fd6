"""Shared fixtures: one thread, tiny configs, a tiny teacher chain and one end-to-end run.

Every test must be fast on a 2-core machine that other work shares, so torch is pinned to a
single thread here (run pytest with ``OMP_NUM_THREADS=1`` as well).
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("LANA_PROGRESS", "0")
torch.set_num_threads(1)

# The tiny end-to-end configuration of the brief (cache_dir is filled in per test).
TINY_CONFIG: dict = {
    "seed": 0,
    "threads": 1,
    # The CPU, also where a GPU is: the tests compare exact results (GPU runs: test_gpu.py).
    "device": "cpu",
    "model": {"name": "lana:tiny_effnet"},
    "data": {"name": "synthetic", "image_size": 16, "train_samples": 256, "val_samples": 64,
             "test_samples": 64},
    "teacher_training": {"epochs": 1, "batch_size": 32, "cache_dir": None},
    "space": {"ops": ["teacher", "identity", "ir_k3_e{1,3}", "cb_k3"]},
    "distill": {"steps": 5, "batch_size": 16},
    # Drift detection off: on a busy machine it re-measures at random (tested on its own in
    # test_profile_drift.py and test_latency_trust.py).
    "latency": {"backend": "onnxruntime", "max_seconds": 0.02, "warmup": 2, "drift_every": 0},
    "score": {"samples": 32},
    # Leaving out the candidates no cheaper than the teacher's layer depends on measured
    # latency, which on a busy machine flips for ops of near-equal cost; tests compare exact
    # results, so it is off here and tested with a deterministic clock (test_dominated.py).
    # Time windows back to back: waiting between them is tested with fakes
    # (tests/search/test_select.py).
    "search": {"k": 2, "eval_samples": 32, "budget": {"speedup": 1.5},
               "skip_dominated": False, "window_gap_s": 0},
    "finetune": {"epochs": 1, "batch_size": 32},
}


def fake_backend(prepare, name: str = "fake") -> type:
    """A latency backend class for tests: ``prepare(module, example)`` returns the runner
    (register it with ``monkeypatch.setitem(lana.latency.backends.BACKENDS, name, cls)``)."""

    class FakeBackend:
        device_kind = "cpu"

        def check_available(self) -> None:
            pass

        def prepare(self, module: nn.Module, example: torch.Tensor, threads: int):
            return prepare(module, example)

    FakeBackend.name = name
    return FakeBackend


def tiny_config_dict(cache_dir: str | Path) -> dict:
    """A deep copy of :data:`TINY_CONFIG` whose teacher cache lives in ``cache_dir``."""
    d = copy.deepcopy(TINY_CONFIG)
    d["teacher_training"]["cache_dir"] = str(cache_dir)
    return d


@pytest.fixture(autouse=True)
def _single_thread():
    # Run() sets torch's thread count from the config; keep every test at one thread.
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture
def tiny_config(tmp_path: Path) -> dict:
    """The tiny synthetic configuration as a plain dict (teacher cache under tmp_path)."""
    return tiny_config_dict(tmp_path / "teacher-cache")


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                if m.affine:
                    m.weight.copy_(0.5 + 0.5 * torch.rand(n, generator=g))
                    m.bias.copy_(0.1 * torch.randn(n, generator=g))
    return model


@pytest.fixture
def randomize_bn():
    return _randomize_bn


def small_sequential_teacher(seed: int = 0) -> nn.Sequential:
    """A 4-layer conv chain on 1x16x16 inputs (stride 2 in layer 0, channels 8 -> 16)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU()),   # 1x16 -> 8x8
        nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU()),   # 8x8 -> 8x8
        nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU()),  # -> 16x4
        nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU()),
    )
    _randomize_bn(model, seed)
    # Calibrate the BatchNorm statistics on data, as a trained teacher would have them, so
    # that every layer's output has a realistic (about unit) scale.
    from lana.model.data import synthetic_dataset

    x = synthetic_dataset(256, 16, seed=99).tensors[0]
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.fixture
def seq_chain():
    """A decomposed :func:`small_sequential_teacher` (eval mode)."""
    from lana.model.decompose import decompose

    chain = decompose(small_sequential_teacher(), torch.zeros(2, 1, 16, 16))
    return chain.eval()


@pytest.fixture(scope="session")
def synthetic_splits():
    """Deterministic synthetic splits (1x16x16 images, 4 classes)."""
    from lana.config import DataConfig
    from lana.model.data import load_data

    cfg = DataConfig(name="synthetic", image_size=16, train_samples=128, val_samples=32,
                     test_samples=32)
    return load_data(cfg, seed=0)


# ------------------------------------------------------------------ one end-to-end run


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory):
    """One finished ``Run(dir, tiny config).all()`` (~30-45 s), shared by several modules.

    Returns ``(run_dir, config_dict)``. Tests that change the directory must work on a copy
    (see ``run_copy``).
    """
    from lana.config import config_from_dict
    from lana.pipeline.runner import Run

    base = tmp_path_factory.mktemp("pipeline")
    cfg_dict = tiny_config_dict(base / "teacher-cache")
    run_dir = base / "run"
    Run(run_dir, config_from_dict(cfg_dict)).all()
    torch.set_num_threads(1)
    return run_dir, cfg_dict


@pytest.fixture
def run_copy(pipeline_run, tmp_path: Path):
    """A private copy of the finished run directory: ``(run_dir, config_dict)``."""
    src, cfg_dict = pipeline_run
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst, copy.deepcopy(cfg_dict)


def budgets_met(library, choices: list[int], budgets) -> bool:
    """Independent exact check of a search result: plain sum() and math.fsum() of every
    chosen op's cost must both satisfy every budget."""
    import math

    for b in budgets:
        vals = [layer.ops[c].cost[b.key] for layer, c in zip(library.layers, choices, strict=True)]
        for total in (sum(vals), math.fsum(vals)):
            if (b.op == "<=" and total > b.value) or (b.op == ">=" and total < b.value):
                return False
    return True
