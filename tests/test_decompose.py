"""Tests of lana.decompose: exact chains of timm EfficientNet-class models and Sequentials."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from lana.decompose import FAMILIES, Chain, LayerInfo, decompose, find_family
from lana.errors import LanaError, UnsupportedModelError
from lana.models import create_model

TIMM_MODELS = ["efficientnet_b0", "efficientnet_b2", "tf_efficientnet_lite0", "mobilenetv2_050",
               "mnasnet_050"]
EXPECTED_ACT = {"efficientnet_b0": "silu", "efficientnet_b2": "silu",
                "tf_efficientnet_lite0": "relu6", "mobilenetv2_050": "relu6",
                "mnasnet_050": "relu", "lana:tiny_effnet": "silu"}
EXPECTED_LAYERS = {"efficientnet_b0": 16, "efficientnet_b2": 23, "tf_efficientnet_lite0": 16,
                   "mobilenetv2_050": 17, "mnasnet_050": 17, "lana:tiny_effnet": 11}


def _build(name: str, in_chans: int, num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("lana:"):
        return create_model(name, num_classes=num_classes, in_chans=in_chans)
    return timm.create_model(name, pretrained=False, num_classes=num_classes,
                             in_chans=in_chans)


def _check_exact(model: nn.Module, x: torch.Tensor, randomize_bn) -> Chain:
    randomize_bn(model, seed=1)
    model.eval()
    chain = decompose(model, x[:1])
    with torch.no_grad():
        expected = model(x)
        got = chain(x)
        feats = chain.features(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5
    # every layer's recorded shapes are the shapes of the features it maps
    assert len(feats) == len(chain.layers) + 1 == len(chain.info) + 1
    for i, info in enumerate(chain.info):
        assert info.in_shape == tuple(feats[i].shape[1:])
        assert info.out_shape == tuple(feats[i + 1].shape[1:])
        assert info.name == chain.names[i]
        with torch.no_grad():
            tail = chain.forward_from(i, feats[i])
        assert (tail - expected).abs().max().item() <= 1e-5
    return chain


@pytest.mark.parametrize("in_chans,size", [(3, 64), (1, 32)])
@pytest.mark.parametrize("name", TIMM_MODELS + ["lana:tiny_effnet"])
def test_chain_is_exact(name: str, in_chans: int, size: int, randomize_bn) -> None:
    model = _build(name, in_chans)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, in_chans, size, size, generator=g)
    chain = _check_exact(model, x, randomize_bn)
    assert len(chain.layers) == EXPECTED_LAYERS[name]
    assert {info.act for info in chain.info} == {EXPECTED_ACT[name]}
    # The chain shares the teacher's modules (nothing is copied).
    assert chain.layers[0] is model.blocks[0][0]
    assert chain.layers[-1] is model.blocks[-1][-1]
    assert chain.names[0] == "blocks.0.0"
    # The stem and all layers together down-sample by the network's total stride.
    total = 2 * torch.prod(torch.tensor([info.stride for info in chain.info])).item()
    assert size // total == chain.info[-1].out_shape[1]


def test_decompose_keeps_training_mode() -> None:
    model = _build("mobilenetv2_050", 3)
    model.train()
    chain = decompose(model, torch.zeros(2, 3, 32, 32))
    assert model.training and chain.training
    assert all(m.training for m in model.modules())
    model.eval()
    decompose(model, torch.zeros(1, 3, 32, 32))
    assert not any(m.training for m in model.modules())


def test_decompose_does_not_touch_bn_statistics() -> None:
    model = _build("lana:tiny_effnet", 1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    decompose(model, torch.randn(4, 1, 32, 32))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_timm_strides_match_blocks() -> None:
    model = _build("efficientnet_b0", 3).eval()
    chain = decompose(model, torch.zeros(1, 3, 64, 64))
    strides = [info.stride for info in chain.info]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    assert chain.info[0].in_shape == (32, 32, 32)
    assert chain.info[0].out_shape == (16, 32, 32)
    assert chain.info[-1].out_shape == (320, 2, 2)


def test_plain_sequential(randomize_bn) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    x = torch.randn(2, 3, 15, 15)
    chain = _check_exact(model, x, randomize_bn)
    assert find_family(model).name == "sequential"
    assert chain.names == [str(i) for i in range(7)]
    assert isinstance(chain.stem, nn.Identity) and isinstance(chain.head, nn.Identity)
    info = chain.info
    assert info[0] == LayerInfo("0", (3, 15, 15), (8, 8, 8), "relu6")
    assert info[0].stride == 2 and info[0].spatial
    assert info[3].out_shape == (16, 4, 4) and info[3].stride == 2
    assert info[5].in_shape == (16, 1, 1) and info[5].out_shape == (16,)
    assert not info[5].spatial and info[5].stride == 1
    assert info[6] == LayerInfo("6", (16,), (4,), "relu6")


def test_layerinfo_properties() -> None:
    same = LayerInfo("a", (16, 8, 8), (16, 8, 8), "silu")
    down = LayerInfo("b", (16, 7, 7), (24, 4, 4), "relu")
    flat = LayerInfo("c", (64,), (10,), "relu")
    assert same.stride == 1 and same.spatial
    assert down.stride == 2 and down.spatial
    assert flat.stride == 1 and not flat.spatial
    assert same.signature == "in16x8x8-out16x8x8-silu"
    assert down.signature != LayerInfo("b", (16, 7, 7), (24, 4, 4), "silu").signature
    for info in (same, down, flat):
        assert LayerInfo.from_dict(info.to_dict()) == info
    assert down.to_dict() == {"name": "b", "in_shape": [16, 7, 7], "out_shape": [24, 4, 4],
                              "act": "relu"}


class NotAChain(nn.Module):
    """Two branches: not expressible as stem -> layers -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) * self.b(x)


class TupleOut(nn.Module):
    def forward(self, x: torch.Tensor):
        return x, x


def test_custom_module_is_unsupported() -> None:
    with pytest.raises(UnsupportedModelError, match="NotAChain") as info:
        decompose(NotAChain(), torch.zeros(1, 3, 8, 8))
    assert isinstance(info.value, LanaError) and info.value.exit_code == 2
    assert "nn.Sequential" in str(info.value)


def test_timm_vit_is_unsupported() -> None:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
                              img_size=32, patch_size=8)
    with pytest.raises(UnsupportedModelError, match="VisionTransformer"):
        decompose(model, torch.zeros(1, 3, 32, 32))


# Families beyond EfficientNet V1: (model, family, layers). EfficientNetV2 is timm's
# EfficientNet class; ResNeSt is timm's ResNet class with ResNeSt bottlenecks.
OTHER_FAMILIES = [("tf_efficientnetv2_b0", "timm-efficientnet", 21),
                  ("resnest14d", "timm-resnet", 4), ("resnest26d", "timm-resnet", 8),
                  ("resnet18", "timm-resnet", 8), ("resnet50", "timm-resnet", 16),
                  ("mobilenetv3_small_100", "timm-mobilenetv3", 12)]


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name,family,n_layers", OTHER_FAMILIES)
def test_other_families_are_exact(name: str, family: str, n_layers: int, in_chans: int,
                                  randomize_bn) -> None:
    model = timm.create_model(name, pretrained=False, num_classes=5, in_chans=in_chans)
    randomize_bn(model)
    model.eval()
    x = torch.randn(2, in_chans, 64, 64, generator=torch.Generator().manual_seed(0))
    chain = decompose(model, x)
    assert find_family(model).name == family
    assert len(chain.layers) == n_layers
    with torch.no_grad():
        assert (chain(x) - model(x)).abs().max().item() <= 1e-5


def test_sequential_subclass_and_bad_layers() -> None:
    class MySeq(nn.Sequential):
        pass

    with pytest.raises(UnsupportedModelError, match="MySeq"):
        decompose(MySeq(nn.ReLU()), torch.zeros(1, 3))
    with pytest.raises(UnsupportedModelError, match="no layers"):
        decompose(nn.Sequential(), torch.zeros(1, 3))
    with pytest.raises(UnsupportedModelError, match="tuple"):
        decompose(nn.Sequential(nn.ReLU(), TupleOut(), nn.ReLU()), torch.zeros(1, 3))
    # a layer that cannot consume the previous layer's output: not a plain chain
    bad = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(4, 8, 3))
    with pytest.raises(UnsupportedModelError, match="'1'"):
        decompose(bad, torch.zeros(1, 3, 9, 9))


def test_families_registry() -> None:
    assert {"sequential", "timm-efficientnet"} <= set(FAMILIES)
    assert find_family(_build("mnasnet_050", 3)).name == "timm-efficientnet"
    assert find_family(nn.Sequential(nn.ReLU())).name == "sequential"
