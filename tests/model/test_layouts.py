"""Layers lana meets in modern backbones beyond NCHW maps at "same" padding: channels-last
(H, W, C) stages, as Swin, MambaOut and PVTv2 pass them, and stems whose stride or padding
the candidates' default symmetric padding does not reproduce (patchify, 'valid' convs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lana
from lana.model.decompose import LayerInfo, channels_last_edges, decompose
from lana.space.ops import (
    ChannelsLast,
    _pad_type,
    build_op,
    check_shapes,
    fitting_candidates,
    layer_candidates,
    resolve_space,
    space_specs,
)
from tests.conftest import tiny_config_dict


class ToHWC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class HWCBlock(nn.Module):
    """A ConvNeXt/MambaOut-style block in (N, H, W, C): depthwise conv through a permute,
    then a channel MLP on the last dimension."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(self.norm(y))


class HWCDown(nn.Module):
    """Swin-style patch merging in (N, H, W, C): 2x2 neighbours to channels, then a linear."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.proj = nn.Linear(4 * c, 2 * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5)
        return self.proj(x.reshape(n, h // 2, w // 2, 4 * c))


class HWCHead(nn.Module):
    def __init__(self, c: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((1, 2)))


def hwc_net(num_classes: int = 4, in_chans: int = 1) -> nn.Module:
    """Patchify stem (4x4, stride 4) to channels-last stages, as Swin/ConvNeXt-style nets."""
    return nn.Sequential(nn.Conv2d(in_chans, 8, 4, stride=4), ToHWC(), HWCBlock(8),
                         HWCDown(8), HWCBlock(16), HWCHead(16, num_classes))


def test_decompose_finds_channels_last_maps() -> None:
    torch.manual_seed(0)
    chain = decompose(hwc_net().eval(), torch.randn(2, 1, 32, 32))
    info = {i.name: i for i in chain.info}
    # the stem: NCHW images to an (8, 8, 8) map that says nothing by itself; the maps
    # after it are (H, W, C), so it is too
    assert info["0"].hwc == (False, True) and info["0"].stride == 4
    assert info["2"].in_shape == (8, 8, 8) and info["2"].hwc == (True, True)
    assert info["3"].out_shape == (4, 4, 16) and info["3"].hwc == (True, True)
    assert info["3"].stride == 2 and info["3"].as_nchw().out_shape == (16, 4, 4)
    assert info["5"].hwc == (True, False)  # the head: logits out
    # kept with the layer (students are rebuilt from it) and in its LUT signature
    assert LayerInfo.from_dict(info["3"].to_dict()) == info["3"]
    assert info["3"].signature.endswith("-hwchwc")
    plain = LayerInfo("x", (16, 8, 8), (16, 8, 8), "relu")
    assert "hwc" not in plain.to_dict() and "hwc" not in plain.signature


@pytest.mark.parametrize("shapes, want", [
    ([(3, 32, 32), (8, 8, 24), (8, 8, 24), (4, 4, 48), (10,)],
     [False, True, True, True, False]),
    ([(3, 32, 32), (16, 16, 16), (32, 8, 8)], [False, False, False]),
    ([(3, 32, 32), (8, 8, 8), (4, 4, 16)], [False, True, True]),   # ambiguous: the next
    ([(3, 32, 32), (8, 8, 12), (8, 8, 8), (8, 8, 8)], [False, True, True, True]),
    ([(16, 16, 16), (16, 16, 16)], [False, False]),                # nothing says: NCHW
    ([(197, 192), (197, 192)], [False, False]),                    # tokens
])
def test_channels_last_edges(shapes, want) -> None:
    assert channels_last_edges(shapes) == want


def test_channels_last_candidates_compute_in_nchw() -> None:
    torch.manual_seed(0)
    info = LayerInfo("blocks.0", (8, 8, 16), (4, 4, 32), "gelu", hwc=(True, True))
    assert info.stride == 2
    assert info.as_nchw().in_shape == (16, 8, 8) and info.as_nchw().out_shape == (32, 4, 4)
    specs = space_specs(resolve_space("auto", "fx-chain"))
    cands = layer_candidates(info, specs)
    assert len(cands) > 10 and "identity" not in cands
    for spec in cands[1:]:
        op = build_op(spec, info).eval()
        assert isinstance(op, ChannelsLast)
        check_shapes(op, info)
    # the wrapped op is the op built for the NCHW view, on the permuted input
    op = build_op("ir_k3_e3", info).eval()
    x = torch.randn(2, 8, 8, 16)
    want = op.op(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert torch.equal(op(x), want)
    # an NCHW layer is built as before, unwrapped
    plain = LayerInfo("blocks.0", (16, 8, 8), (32, 4, 4), "gelu")
    assert plain.as_nchw() is plain
    assert not isinstance(build_op("ir_k3_e3", plain), ChannelsLast)


def test_a_stem_from_nchw_to_channels_last() -> None:
    """Swin's patch embedding takes NCHW images and returns (H, W, C) maps."""
    info = LayerInfo("patch_embed", (3, 32, 32), (8, 8, 24), "gelu", hwc=(False, True))
    assert info.stride == 4
    op = build_op("cb_k3", info).eval()
    check_shapes(op, info)
    assert op(torch.randn(1, 3, 32, 32)).shape == (1, 8, 8, 24)


@pytest.mark.parametrize("size, out, k, pad", [
    (32, 16, 3, ""),        # an ordinary stride-2 layer keeps the symmetric padding
    (32, 8, 3, "same"),     # a 4x4/4 patchify stem: symmetric padding would give 9
    (32, 15, 3, "valid"),   # a 3x3/2 conv without padding (Xception's stem)
    (32, 30, 3, "valid"),   # a 3x3/1 conv without padding
    (64, 9, 3, "valid"),    # ConvMixer's 7x7/7 patches at a size 7 does not divide
])
def test_padding_that_reproduces_the_layers_output_size(size: int, out: int, k: int,
                                                        pad: str) -> None:
    info = LayerInfo("stem", (3, size, size), (16, out, out), "relu")
    assert _pad_type(info, k) == pad
    for spec in (f"ir_k{k}_e3", f"ds_k{k}", f"cb_k{k}", f"cc_k{k}_w1", f"er_k{k}_e2"):
        check_shapes(build_op(spec, info).eval(), info)


def test_ordinary_layers_are_built_exactly_as_before() -> None:
    """The padding choice only applies where the symmetric one does not fit, so modules (and
    the weights phase 1 stored for them) of every layer that fitted stay the same."""
    from timm.layers import Conv2dSame

    info = LayerInfo("blocks.1", (16, 16, 16), (24, 8, 8), "relu")
    for spec in ("ir_k5_e6", "ds_k3", "cb_k3", "er_k3_e4"):
        op = build_op(spec, info)
        assert not any(isinstance(m, Conv2dSame) for m in op.modules())
        strided = [m for m in op.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
        assert strided and all(m.padding == (m.kernel_size[0] // 2,) * 2 for m in strided)


def test_fitting_candidates_on_a_patchify_channels_last_net() -> None:
    torch.manual_seed(0)
    chain = decompose(hwc_net().eval(), torch.randn(2, 1, 32, 32))
    specs = space_specs(resolve_space("auto", chain.family))
    skipped: list[str] = []
    cands = fitting_candidates(chain.info, specs,
                               lambda i, s: build_op(s, chain.info[i], chain.layers[i]),
                               on_skip=lambda info, spec, exc: skipped.append(spec))
    # the 4x4/4 stem gets its k3 candidates ('same' padding); only k1/k5 variants that no
    # padding fits are left out
    assert len(cands[0]) > 10
    assert all("_k3" not in s for s in skipped)


def test_a_channels_last_model_runs_end_to_end(tmp_path) -> None:
    """The whole pipeline on a channels-last net: phase 1 trains the wrapped candidates on
    the teacher's own (H, W, C) features and the student classifies as the teacher does."""
    torch.manual_seed(0)
    teacher = hwc_net(num_classes=4, in_chans=1)
    from lana.model.data import synthetic_dataset

    cfg = tiny_config_dict(tmp_path / "cache")
    del cfg["search"]["budget"]
    res = lana.accelerate(teacher, synthetic_dataset(128, 32, seed=0),
                          synthetic_dataset(64, 32, seed=1), budget="1000ms",
                          out=tmp_path / "run",
                          config={k: v for k, v in cfg.items() if k not in ("model", "data")},
                          space={"ops": ["teacher", "identity", "ir_k3_e3", "cb_k3"]})
    layers = [r["choices"] for r in [res.summary["students"][0]]][0]
    assert len(layers) == len(decompose(teacher.eval(), torch.zeros(1, 1, 32, 32)).layers)
    assert res.student(torch.zeros(2, 1, 32, 32)).shape == (2, 4)


def test_a_stride_1_conv_without_padding_gets_no_skip() -> None:
    """InceptionV3's second conv maps 32x149x149 to 32x147x147: same channels at stride 1,
    so timm's blocks would add the input (149) to their output (147)."""
    info = LayerInfo("Conv2d_2a_3x3", (32, 37, 37), (32, 35, 35), "relu")
    for spec in ("ir_k3_e3", "ds_k3", "er_k3_e2", "cb_k3", "cc_k3_w1"):
        check_shapes(build_op(spec, info).eval(), info)
    # a candidate that cannot run on the layer's input is a shape mismatch, dropped by
    # fitting_candidates like any other, never an error that stops the run
    from lana.errors import ConfigError

    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ x  # (5, 6) @ (5, 6): a RuntimeError

    with pytest.raises(ConfigError, match="fails on its input"):
        check_shapes(Broken(), LayerInfo("x", (4, 5, 6), (4, 5, 6), "relu"))
