"""Tests of lana.decompose: exact chains of timm EfficientNet-class models and Sequentials."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from lana.errors import ConfigError, LanaError, UnsupportedModelError
from lana.model.decompose import FAMILIES, Chain, LayerInfo, decompose, find_family
from lana.model.zoo import create_model

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


def test_decompose_bad_example_input_says_what_to_pass() -> None:
    from lana.errors import ConfigError

    model = _build("lana:tiny_effnet", 1)
    with pytest.raises(ConfigError, match=r"batch tensor .*torch.zeros"):
        decompose(model, (1, 32, 32))
    with pytest.raises(ConfigError, match=r"shape \(1, 3, 32, 32\) does not fit the stem"):
        decompose(model, torch.zeros(1, 3, 32, 32))


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


def test_timm_vit_takes_the_generic_path() -> None:
    # No registered family knows ViTs, but their forward calls the blocks one after another,
    # so torch.fx splits them (optional forward arguments keep their defaults).
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
                              img_size=32, patch_size=8, depth=2).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    chain = decompose(model, x)
    assert chain.family == find_family(model).name == "fx-chain"
    assert "blocks.0" in chain.names and "blocks.1" in chain.names
    with torch.no_grad():
        assert (chain(x) - model(x)).abs().max().item() <= 1e-5


# Every model that issue 3 lists, by family. EfficientNetV2 is timm's EfficientNet class;
# ResNeSt is timm's ResNet class with ResNeSt bottlenecks.
LISTED_MODELS = {
    "timm-efficientnet": ["tf_efficientnetv2_b0", "tf_efficientnetv2_b1", "tf_efficientnetv2_b2",
                          "tf_efficientnetv2_b3", "efficientnetv2_rw_t", "efficientnetv2_rw_s",
                          "tf_efficientnetv2_s"],
    "timm-resnet": ["resnest14d", "resnest26d", "resnest50d", "resnest50d_1s4x24d", "resnet18",
                    "resnet34", "resnet50"],
    "timm-mobilenetv3": ["mobilenetv3_small_050", "mobilenetv3_small_075",
                         "mobilenetv3_small_100", "mobilenetv3_large_075",
                         "mobilenetv3_large_100", "mobilenetv3_large_150d"],
}


def _block_names(model: nn.Module, family: str) -> list[str]:
    """The blocks of a timm model, listed independently of lana's family code."""
    if family == "timm-resnet":
        return [f"layer{s}.{b}" for s in range(1, 5)
                for b in range(len(getattr(model, f"layer{s}")))]
    return [f"blocks.{s}.{b}" for s, stage in enumerate(model.blocks) for b in range(len(stage))]


@pytest.mark.parametrize("name,family", [(m, f) for f, ms in LISTED_MODELS.items() for m in ms])
def test_listed_models_are_exact(name: str, family: str, randomize_bn) -> None:
    """One block per layer, output equal to the teacher's, with 3 (odd sizes) and 1 channel."""
    for in_chans, size in ((3, 48), (1, 32)):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=5, in_chans=in_chans)
        randomize_bn(model)
        model.eval()
        x = torch.randn(2, in_chans, size, size, generator=torch.Generator().manual_seed(0))
        chain = decompose(model, x)
        assert chain.family == family
        assert chain.names == _block_names(model, family)
        assert all(layer is model.get_submodule(n)
                   for layer, n in zip(chain.layers, chain.names, strict=True))
        with torch.no_grad():
            assert (chain(x) - model(x)).abs().max().item() <= 1e-5, (name, in_chans)


def test_sequential_subclass_and_bad_layers() -> None:
    class MySeq(nn.Sequential):
        pass

    # not the sequential family (a subclass may override forward): traced by torch.fx
    chain = decompose(MySeq(nn.ReLU(), nn.Linear(3, 2)), torch.zeros(1, 3))
    assert chain.family == "fx-chain" and chain.names == ["0", "1"]
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


# ------------------------------------------------------------------ the generic (fx) path


class _Block(nn.Module):
    """A residual block: the skip connection lives inside the block, so blocks chain."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))) + x


class MyNet(nn.Module):
    """A custom model whose forward calls its blocks in order, with functional glue, a
    shared ReLU, a parameter used in the middle and a Sequential of blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.act = nn.ReLU()
        self.b1 = _Block(8)
        self.b2 = _Block(8)
        self.stage = nn.Sequential(_Block(8), _Block(8))
        self.fc = nn.Linear(8, 4)
        self.scale = nn.Parameter(torch.full((1,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.b1(x))
        x = self.b2(x) * self.scale
        x = self.stage(x)
        return self.fc(torch.flatten(x.mean((2, 3)), 1))


class SkipNet(MyNet):
    """Like MyNet, but the output of b1 skips over b2: not a chain at the top level."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b1(self.act(self.stem(x)))
        x = self.stage(self.b2(y) + y)
        return self.fc(x.mean((2, 3)))


def test_custom_module_decomposes_exactly(randomize_bn) -> None:
    torch.manual_seed(0)
    model = MyNet()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    chain = _check_exact(model, x, randomize_bn)
    assert chain.family == "fx-chain"
    # the shared parameter-free ReLU is glue; the Sequential is looked through
    assert chain.names == ["stem", "b1", "b2", "stage.0", "stage.1", "fc"]
    assert chain.layers[3] is model.stage[0]  # a single module call stays that module
    assert chain.info[0].out_shape == (8, 8, 8) and chain.info[-1].in_shape == (8,)
    # the layers share the model's parameters (nothing copied)
    assert {id(p) for p in chain.parameters()} == {id(p) for p in model.parameters()}


def test_skip_connection_gets_a_clear_error() -> None:
    with pytest.raises(UnsupportedModelError) as info:
        decompose(SkipNet(), torch.zeros(1, 3, 16, 16))
    msg = str(info.value)
    assert "SkipNet is not a chain" in msg
    assert "'add'" in msg and "'b1'" in msg and "'b2'" in msg  # the node and what it skips
    assert "model.layers" in msg and "layers=[" in msg  # how to mark layers by hand


def test_layers_named_by_hand(randomize_bn) -> None:
    torch.manual_seed(0)
    model = randomize_bn(SkipNet()).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    # the blocks inside the stage chain; the skip around b2 stays in the (fixed) stem
    chain = decompose(model, x, layers=["stage.1", "stage.0"])
    assert chain.names == ["stage.0", "stage.1"]  # in call order
    assert chain.layers[0] is model.stage[0] and chain.layers[1] is model.stage[1]
    assert [i.in_shape for i in chain.info] == [(8, 8, 8), (8, 8, 8)]
    with torch.no_grad():
        assert (chain(x) - model(x)).abs().max().item() <= 1e-6
    # also for a model a family knows: name a subset of its blocks
    res = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    chain = decompose(res, torch.zeros(1, 3, 32, 32), layers=["layer3.0", "layer3.1"])
    assert chain.names == ["layer3.0", "layer3.1"] and chain.family == "fx-chain"
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        assert (chain(x) - res(x)).abs().max().item() <= 1e-5
    # bad hand-made splits are clear errors
    with pytest.raises(UnsupportedModelError, match="'add'"):
        decompose(model, x, layers=["b1", "b2"])
    with pytest.raises(UnsupportedModelError, match="no submodule.*'zz'"):
        decompose(model, x, layers=["zz"])
    with pytest.raises(UnsupportedModelError, match="'add'.*'b1.conv'"):
        decompose(model, x, layers=["b1.conv", "stage"])  # the skip inside b1 bypasses it
    model.spare = nn.Conv2d(8, 8, 1)
    with pytest.raises(UnsupportedModelError, match="never calls"):
        decompose(model, x, layers=["spare", "stage"])


class _PadToEven(nn.Module):
    """Python control flow on a tensor's shape: fx cannot trace through it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            x = nn.functional.pad(x, (0, 1, 0, 1))
        return x


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_PadToEven(), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class _BranchyTop(_Branchy):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.mean() > 0:  # on a tensor's value, in the code that calls the layers
            x = self.blocks(x)
        return self.fc(x.mean((2, 3)))


def test_untraceable_code_outside_the_layers(randomize_bn) -> None:
    model = randomize_bn(_Branchy()).eval()
    x = torch.randn(2, 3, 15, 15, generator=torch.Generator().manual_seed(0))
    # a module that holds no named layer is one opaque call, whatever its forward does
    chain = decompose(model, x, layers=["blocks.0", "blocks.2"])
    assert chain.names == ["blocks.0", "blocks.2"]
    assert chain.info[0].in_shape == (8, 16, 16)  # the stem's padding ran
    with torch.no_grad():
        assert (chain(x) - model(x)).abs().max().item() <= 1e-6
    chain = decompose(model, x)  # the default split treats every non-container as opaque
    assert chain.names[:2] == ["stem.0", "stem.1"]
    with torch.no_grad():
        assert (chain(x) - model(x)).abs().max().item() <= 1e-6
    # untraceable code around the layers: the error points at the line and does not send
    # the user to naming layers, which would not help
    with pytest.raises(UnsupportedModelError) as info:
        decompose(_BranchyTop().eval(), x, layers=["blocks.0"])
    msg = str(info.value)
    assert "cannot trace" in msg and "test_decompose.py:" in msg
    assert "`if x.mean() > 0:" in msg and "into a submodule" in msg
    assert "Name the replaceable layers by hand" not in msg


def test_fx_rejects_modules_called_twice_and_many_inputs() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(self.conv(x))

    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(UnsupportedModelError, match="more than once"):
        decompose(Twice(), torch.zeros(1, 3, 4, 4))
    with pytest.raises(UnsupportedModelError, match="one input tensor"):
        decompose(TwoInputs(), torch.zeros(1, 3))


class _FlagHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)


class _Masked(nn.Module):
    """A conv whose forward takes an optional mask: a patch embedding (2x2/2 from RGB) or
    a block (3x3 on 8 channels)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv(x)
        return x if mask is None else x * mask


class _FlaggedEnds(nn.Module):
    """timm's newer pattern: forward_head passes pre_logits to the head, the patch
    embedding takes an optional mask."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = _Masked(nn.Conv2d(3, 8, 2, stride=2))
        self.blocks = nn.Sequential(*(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1),
                                                    nn.BatchNorm2d(8), nn.ReLU())
                                      for _ in range(3)))
        self.head = _FlagHead()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.blocks(self.patch_embed(x, mask=None))
        return self.head(x, pre_logits=pre_logits)


def test_calls_with_flags_at_the_ends_go_to_the_stem_and_head(randomize_bn) -> None:
    model = randomize_bn(_FlaggedEnds()).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    chain = decompose(model, x)
    # the default split looks through the Sequentials: conv, BN, ReLU of each block
    assert chain.names == [f"blocks.{i}.{j}" for i in range(3) for j in range(3)]
    with torch.no_grad():
        assert torch.equal(chain(x), model(x))

    class BlockWithMask(_FlaggedEnds):
        def __init__(self) -> None:
            super().__init__()
            self.mid = _Masked(nn.Conv2d(8, 8, 3, padding=1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.blocks[0](self.patch_embed(x))
            x = self.blocks[2](self.mid(self.blocks[1](x), mask=None))
            return self.head(x)

    # a flagged call between replaceable blocks still ends the split, with the usual error
    with pytest.raises(UnsupportedModelError, match="'mid' .* 1 keyword"):
        decompose(BlockWithMask().eval(), x)

    class TokenBlock(nn.Module):  # a transformer-style MLP block: four linear layers
        def __init__(self) -> None:
            super().__init__()
            self.mlp = nn.Sequential(*(nn.Linear(8, 8) for _ in range(4)))

        def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return x + scale * self.mlp(x)

    class BlocksWithFlagsLast(_FlaggedEnds):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.ModuleList(TokenBlock() for _ in range(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.blocks(self.patch_embed(x)).mean((2, 3))
            for blk in self.tokens:
                x = blk(x, scale=0.5)
            return x

    # blocks that take a flag at the very end are not a head: refused, not swallowed
    with pytest.raises(UnsupportedModelError, match="'tokens.0' .* 1 keyword"):
        decompose(BlocksWithFlagsLast().eval(), x)


def test_decompose_finds_layers_that_end_with_an_activation() -> None:
    import timm
    import torch.nn.functional as F

    class AddRelu(nn.Module):  # a functional ReLU after the residual sum
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(x + self.conv(x))

    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),                                       # linear
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)),     # linear
        AddRelu(),
        nn.Sequential(nn.Conv2d(8, 8, 1), nn.SiLU(), nn.Conv2d(8, 8, 1)),    # act inside
    ).eval()
    chain = decompose(seq, torch.randn(2, 1, 8, 8))
    assert [i.ends_with_act for i in chain.info] == [False, True, False, True, False]
    # ResNet blocks end with their ReLU, EfficientNet's MBConv blocks linear; a zero input
    # (all-zero features in a random network) decides nothing by itself
    for name, ends in (("resnet18", True), ("efficientnet_b0", False)):
        model = timm.create_model(name, num_classes=4).eval()
        for x in (torch.zeros(1, 3, 32, 32), torch.randn(2, 3, 32, 32)):
            assert {i.ends_with_act for i in decompose(model, x).info} == {ends}, name


@pytest.mark.parametrize("name,layers,first", [
    ("resnet18", 14, "conv1"), ("mobilenet_v2", 21, "features.0"),
    ("mobilenet_v3_small", 18, "features.0"), ("efficientnet_b0", 21, "features.0")])
def test_torchvision_models_take_the_generic_path(name: str, layers: int, first: str,
                                                  randomize_bn) -> None:
    """A user's "own model" is often a torchvision one: no family knows its classes, and
    the generic fx split must still cut it into an exact chain of its blocks."""
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=4)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    chain = _check_exact(model, x, randomize_bn)
    assert chain.family == "fx-chain"
    assert len(chain.layers) == layers and chain.names[0] == first
    # in-place activations that are layers of their own are found (and only those)
    inplace = {"resnet18": ["relu"], "mobilenet_v3_small": ["classifier.1"]}.get(name, [])
    assert [n for n, m in zip(chain.names, chain.mutates_input, strict=True) if m] == inplace


def test_stored_features_survive_an_in_place_layer(randomize_bn) -> None:
    """Phase 1 trains layer i's candidates on the stored x_i and scoring runs the rest of
    the teacher from it: a layer that overwrites its input (a non-idempotent in-place
    activation standing alone) must not turn x_i into its output, or its candidates learn
    the identity and score as if they were exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                          nn.Hardswish(inplace=True), nn.Conv2d(8, 8, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    chain = _check_exact(model, x, randomize_bn)  # forward_from(i, x_i) is the output
    assert chain.mutates_input == [False, False, True, False, False, False, False]
    with torch.no_grad():
        feats = chain.features(x)
        assert not torch.equal(feats[2], feats[3])  # x_2 is the BN output, not hardswish's
        assert torch.equal(feats[3], nn.functional.hardswish(feats[2]))
        kept = feats[2].clone()
        chain.forward_from(2, feats[2])
        assert torch.equal(feats[2], kept)
        assert [f.shape for f in chain.features(x, upto=3)] == [f.shape for f in feats[:4]]


def test_an_input_the_model_cannot_take_is_named_as_such() -> None:
    """A layer failing because the whole model cannot take the input (too small here) is
    not a model that is no chain: the error says to change the input size."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 5)).eval()
    with pytest.raises(ConfigError, match=r"does not run on an input of shape \(1, 3, 6, 6\) "
                       r"\(RuntimeError: .*but does at 224x224: use an input size"):
        decompose(model, torch.zeros(1, 3, 6, 6))
    assert len(decompose(model, torch.zeros(1, 3, 9, 9)).layers) == 3


class _DistilledHeads(nn.Module):
    """DeiT-style distillation heads, as timm's EfficientFormer, LeViT and SwiftFormer
    have: the pooled features feed two classifiers whose logits are averaged."""

    def __init__(self, branch_in_blocks: bool = False) -> None:
        super().__init__()
        self.branch_in_blocks = branch_in_blocks
        self.blocks = nn.Sequential(*(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1),
                                                    nn.BatchNorm2d(8), nn.ReLU())
                                      for _ in range(2)))
        self.norm = nn.LayerNorm(8)
        self.head_drop = nn.Dropout(0.0)
        self.head = nn.Linear(8, 3)
        self.head_dist = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks[0](x)
        y = self.blocks[1](y) + (y if self.branch_in_blocks else 0)
        y = self.head_drop(self.norm(y.mean((2, 3))))
        return (self.head(y) + self.head_dist(y)) / 2


def test_a_branch_among_the_classifier_calls_joins_the_head(randomize_bn) -> None:
    model = randomize_bn(_DistilledHeads()).eval()
    x = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    chain = decompose(model, x)
    assert chain.names[-2:] == ["norm", "head_drop"]  # head, head_dist: the head
    with torch.no_grad():
        assert torch.equal(chain(x), model(x))
    # a branch across convolutional blocks is still refused: blocks never join the head
    with pytest.raises(UnsupportedModelError, match="not a chain of layers"):
        decompose(_DistilledHeads(branch_in_blocks=True).eval(), x)
    # and layers named by hand are taken as named
    with pytest.raises(UnsupportedModelError, match="after layer 'head'"):
        decompose(model, x, layers=["blocks.0", "head"])
