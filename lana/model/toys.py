"""Small deterministic teachers for tests and benchmarks.

They have random weights, but BatchNorm statistics calibrated on data, as a trained
teacher has them: without that, every layer's output scale is arbitrary and losses measured
against the teacher (phase 1's normalised MSE) say little. Nothing here is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

from lana.model.decompose import Chain


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of ``x`` passed through ``model``
    (one cumulative-average forward pass in training mode); return ``model`` in eval mode.

    The momentum of each BatchNorm is restored afterwards, so later training behaves as
    usual.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


def calibrated_resnet_chain(seed: int = 0) -> Chain:
    """A small Bottleneck ResNet (timm) on 1x16x16 inputs, 4 classes, decomposed.

    Random weights (``seed``), random BatchNorm affine parameters and running statistics
    calibrated on 256 synthetic images. Layers: ``layer1.0`` (16->64 channels),
    ``layer1.1`` (64->64), ``layer2.0`` (64->128, stride 2), ``layer3.0``, ``layer4.0``.
    Used by tests/distill/test_distill.py and benchmarks/inherit_init.py.
    """
    from timm.models.resnet import Bottleneck, ResNet

    from lana.model.data import synthetic_dataset
    from lana.model.decompose import decompose

    torch.manual_seed(seed)
    model = ResNet(Bottleneck, (2, 1, 1, 1), num_classes=4, in_chans=1, stem_width=16,
                   channels=(16, 32, 64, 128), zero_init_last=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    calibrate_batchnorm(model, synthetic_dataset(256, 16, seed=99).tensors[0])
    return decompose(model, torch.zeros(2, 1, 16, 16)).eval()
