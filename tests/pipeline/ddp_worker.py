"""Run by tests/pipeline/test_scale.py under ``torch.distributed.run``: phase-3 style training of a
small classifier with BatchNorm (torch's and timm's BatchNormAct2d) by
:func:`lana.distill.train.train_classifier` (DDP), written by rank 0 to ``OUT/ddp.safetensors``.
Not a test module itself."""

from __future__ import annotations

import sys

import torch
from timm.layers import BatchNormAct2d
from torch import nn


def model() -> nn.Module:
    """A tiny conv classifier with both kinds of BatchNorm a lana student holds."""
    torch.manual_seed(0)
    # No conv bias before a norm (as in real networks): its exact gradient is zero, and
    # Adam would blow the rounding noise of that zero up to full-size steps.
    return nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, 2, 1, bias=False),
                         BatchNormAct2d(8, act_layer=nn.ReLU),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def data():
    from lana.model.data import Data, synthetic_dataset

    # 91 images in batches of 16: every epoch ends with a batch of 11, split 6 + 5.
    return Data(synthetic_dataset(91, 16, seed=5))


def train(net: nn.Module) -> dict:
    from lana.distill.train import Recipe, train_classifier

    teacher = model()  # a fixed "teacher" for the KD term
    return train_classifier(net, data(),
                            Recipe(epochs=2, batch_size=16, lr=1e-2, seed=3, kd_weight=1.0),
                            teacher=teacher, description="ddp test")


if __name__ == "__main__":
    from lana.core import dist
    from lana.core.io import save_tensors, write_json

    rank, world = dist.init_from_env()
    net = model()
    seen = []  # images this rank trained on, batch by batch
    net.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    stats = train(net)
    write_json(f"{sys.argv[1]}/seen{rank}.json", seen)
    # the trained model is a plain one again (no synchronised norms left in it)
    write_json(f"{sys.argv[1]}/types{rank}.json", sorted({type(m).__name__
                                                         for m in net.modules()}))
    if rank == 0:
        save_tensors(f"{sys.argv[1]}/ddp.safetensors", net.state_dict())
        write_json(f"{sys.argv[1]}/ddp.json", {**stats, "world": world})
    dist.shutdown()
