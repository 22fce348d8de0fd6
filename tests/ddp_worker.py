"""Run by tests/test_scale.py under ``torch.distributed.run``: phase-3 style training of a
small BatchNorm-free classifier with :func:`lana.train.train_classifier` (DDP), written by
rank 0 to ``OUT/ddp.safetensors``. Not a test module itself."""

from __future__ import annotations

import sys

import torch
from torch import nn


def model() -> nn.Module:
    """A tiny conv classifier without BatchNorm (BN statistics are per rank on CPUs)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, 2, 1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def data():
    from lana.data import Data, synthetic_dataset

    return Data(synthetic_dataset(96, 16, seed=5))


def train(net: nn.Module) -> dict:
    from lana.train import train_classifier

    teacher = model()  # a fixed "teacher" for the KD term
    return train_classifier(net, data(), epochs=2, batch_size=16, lr=1e-2, seed=3,
                            teacher=teacher, kd_weight=1.0, description="ddp test")


if __name__ == "__main__":
    from lana import dist
    from lana.io import save_tensors, write_json

    rank, world = dist.init_from_env()
    net = model()
    seen = []  # images this rank trained on, batch by batch
    net.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    stats = train(net)
    write_json(f"{sys.argv[1]}/seen{rank}.json", seen)
    if rank == 0:
        save_tensors(f"{sys.argv[1]}/ddp.safetensors", net.state_dict())
        write_json(f"{sys.argv[1]}/ddp.json", {**stats, "world": world})
    dist.shutdown()
