"""Candidate operations: hashable spec strings and the builders behind them.

A spec string names one candidate op for a layer, in the style of timm's architecture
strings: ``ir_k5_e3_se`` is an inverted residual block with a 5x5 depthwise kernel,
expansion 3 and squeeze-excite. Input/output channels and stride are not part of the spec;
they come from the layer the op replaces (:class:`lana.model.decompose.LayerInfo`), so the same
spec applies at every layer and ``(spec, layer signature)`` keys every cache.

New op types are added with :func:`register_op`; the registry replaces if-chains. The
grammar (op types, parsing, expansion) is in :mod:`lana.space.specs`, which needs no torch, and is
re-exported here; this module adds the builders.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from lana.errors import ConfigError
from lana.model.decompose import LayerInfo
from lana.space.specs import (
    DEFAULT_SPACE,
    OP_TYPES,
    OpSpec,
    OpType,
    Param,
    canonical,
    expand,
    parse_spec,
    register_op,
    space_specs,
)

__all__ = [  # the grammar, re-exported from lana.space.specs, plus what is defined here
    "AUTO", "DEFAULT_SPACE", "FAMILY_SPACES", "OP_TYPES", "ChannelsLast", "OpSpec", "OpType",
    "Param", "PostAct", "RepVGGBlock", "Residual", "ResidualAct", "applicable", "build_op",
    "canonical", "check_shapes", "expand", "family_space", "fitting_candidates",
    "layer_candidates", "log10_space_size", "matches_ending", "parse_spec",
    "register_family_space", "register_op", "reparameterize", "resolve_space", "space_specs",
]

# Default spaces per teacher family (``space.ops: auto``): each family gets the ops that
# suit its blocks. Families without an entry get DEFAULT_SPACE.
FAMILY_SPACES: dict[str, tuple[str, ...]] = {}


def register_family_space(family: str, patterns: tuple[str, ...] | list[str]) -> None:
    """Set the default candidate patterns of a teacher family (see lana.decompose)."""
    FAMILY_SPACES[family] = tuple(patterns)


# EfficientNet V1/V2, MobileNetV2/V3, MnasNet: MBConv (V1 style, with/without SE), fused
# MBConv (V2 style: lower expansion, no SE), dense conv blocks and a linear RepVGG block.
_MBCONV_SPACE = (
    "teacher",
    "identity",
    "ir_k{3,5}_e{1,3,6}{,_se}",
    "er_k3_e{1,2,4}",
    "ds_k{3,5}",
    "cc_k3_w{0.5,1}",
    "bn_k3_w{0.25,0.5}",
    "cb_k{1,3}",
    "rep_k3",
)
# Generic chains (nn.Sequential, torch.fx): the default ops in both endings; each layer
# gets the form that matches how the teacher's layer ends (a conv-BN-ReLU layer the ``_a``
# one, see :func:`matches_ending`).
_GENERIC_SPACE = (
    "teacher",
    "identity",
    "ir_k{3,5}_e{1,3,6}{,_se}{,_a}",
    "er_k3_e{1,3}{,_a}",
    "ds_k{3,5}{,_a}",
    "cc_k3_w{0.5,1}{,_a}",
    "bn_k3_w{0.25,0.5}{,_a}",
    "cb_k{1,3}{,_a}",
)
# ResNet/ResNeXt/ResNeSt: bottlenecks at three widths, cardinality and radix {1,2,4}, the
# basic block, a RepVGG block with the family's activation, and the dense conv blocks
# ending with it.
_RESNET_SPACE = (
    "teacher",
    "identity",
    "rb_w{0.25,0.5,1}",
    "rb_w{0.5,1}_g{2,4}",
    "rb_w{0.5,1}_r{2,4}",
    "basic",
    "rep_k3_a",
    # With the activation at the end (a): a ResNet block's output is post-ReLU, and the
    # linear versions do not learn it (normalised MSE ~1 at resnest26d's identity-shaped
    # blocks, where the bottlenecks reach 0.001).
    "cc_k3_w{0.5,1}_a",
    "bn_k3_w{0.25,0.5}_a",
    "cb_k{1,3}_a",
)


# --------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------

def _act_layer(name: str) -> type[nn.Module]:
    from timm.layers import get_act_layer

    return get_act_layer({"hardswish": "hard_swish"}.get(name, name))


def _make_div(v: float, divisor: int = 8) -> int:
    from timm.layers import make_divisible

    return int(make_divisible(v, divisor))


def _se_layer(info: LayerInfo, mid: int, enabled: bool):
    # EfficientNet's convention: SE bottleneck width is 1/4 of the block's input channels
    # (timm rounds it to a multiple of 8, as its own EfficientNets do).
    if not enabled:
        return None
    from timm.layers import SqueezeExcite

    return partial(SqueezeExcite, rd_ratio=0.25 * info.in_shape[0] / mid)


def _has_skip(info: LayerInfo) -> bool:
    return info.in_shape == info.out_shape


class Residual(nn.Module):
    """``x + body(x)``: used by dense blocks when input and output shapes agree."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualAct(Residual):
    """``act(x + body(x))``: a residual block that ends with its activation, after the
    sum, as ResNet blocks do."""

    def __init__(self, body: nn.Module, act: nn.Module) -> None:
        super().__init__(body)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class PostAct(nn.Module):
    """``act(block(x))``: an MBConv-type block (its residual sum inside) followed by the
    family's activation, for layers whose teacher output is post-activation."""

    def __init__(self, block: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.block(x))


def _post_act(block: nn.Module, spec: OpSpec, info: LayerInfo) -> nn.Module:
    return PostAct(block, _act_layer(info.act)()) if spec.get("a") else block


def _pad_type(info: LayerInfo, k: int) -> str:
    """The timm padding with which a kernel-``k`` conv at the layer's stride maps its input
    size to its output size: ``''`` (symmetric, (s-1+k-1)//2) wherever that fits, as every
    candidate had before; else ``'same'`` (TF style, ceil(H/s): stride-4 patchify stems
    at sizes it divides) or ``'valid'`` (no padding: stems such as Xception's 3x3/2 or
    ConvMixer's 7x7/7 at sizes it does not divide). Candidates that none fits are dropped
    by :func:`fitting_candidates`."""
    h, want, s = info.in_shape[1], info.out_shape[1], info.stride
    sizes = {"": (h + 2 * ((s - 1 + k - 1) // 2) - k) // s + 1,
             "same": -(-h // s), "valid": (h - k) // s + 1}
    return next((pad for pad, out in sizes.items() if out == want), "")


def _timm_block_kw(info: LayerInfo, k: int) -> dict:
    """What timm's MBConv/fused/DS blocks take from the layer: stride, the padding that
    gives its output size, no skip unless the shapes agree, the family's activation."""
    return {"stride": info.stride, "pad_type": _pad_type(info, k),
            "noskip": not _has_skip(info), "act_layer": _act_layer(info.act)}


def _cna(cin: int, cout: int, k: int, stride: int, act: str | None, padding: str = ""
         ) -> nn.Module:
    from timm.layers import ConvNormAct

    return ConvNormAct(cin, cout, k, stride=stride, padding=padding,
                       apply_act=act is not None, act_layer=_act_layer(act or "relu"))


def _dense_block(info: LayerInfo, spec: OpSpec, make) -> nn.Module:
    """A dense block from ``make(last_act)`` (its conv-BN(-act) layers, the last one's
    activation ``last_act``): residual when the shapes agree. With the op's ``a`` flag it
    ends with the family's activation (after the sum, if residual), like the ResNet blocks
    it replaces, whose post-ReLU outputs a linear block would have to learn to clip."""
    end = spec.get("a")
    skip = _has_skip(info)
    layers = make(info.act if end and not skip else None)
    body = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
    if not skip:
        return body
    return ResidualAct(body, _act_layer(info.act)()) if end else Residual(body)


def _build_teacher(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    if teacher is None:
        raise ConfigError(f"layer {info.name}: the 'teacher' op needs the teacher's layer")
    return copy.deepcopy(teacher)


def _build_identity(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    return nn.Identity()


def _build_ir(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    from timm.models._efficientnet_blocks import InvertedResidual

    cin, cout = info.in_shape[0], info.out_shape[0]
    mid = _make_div(cin * spec.get("e"))
    return _post_act(InvertedResidual(
        cin, cout, dw_kernel_size=spec.get("k"), exp_ratio=spec.get("e"),
        se_layer=_se_layer(info, mid, spec.get("se")), **_timm_block_kw(info, spec.get("k"))),
        spec, info)


def _build_er(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    from timm.models._efficientnet_blocks import EdgeResidual

    cin, cout = info.in_shape[0], info.out_shape[0]
    mid = _make_div(cin * spec.get("e"))
    return _post_act(EdgeResidual(
        cin, cout, exp_kernel_size=spec.get("k"), exp_ratio=spec.get("e"),
        se_layer=_se_layer(info, mid, spec.get("se")), **_timm_block_kw(info, spec.get("k"))),
        spec, info)


def _build_ds(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv

    cin, cout = info.in_shape[0], info.out_shape[0]
    return _post_act(DepthwiseSeparableConv(
        cin, cout, dw_kernel_size=spec.get("k"),
        se_layer=_se_layer(info, cin, spec.get("se")), **_timm_block_kw(info, spec.get("k"))),
        spec, info)


def _build_cc(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    cin, cout, k = info.in_shape[0], info.out_shape[0], spec.get("k")
    mid = _make_div(cout * spec.get("w"))
    pad = _pad_type(info, k)
    return _dense_block(info, spec, lambda act: [_cna(cin, mid, k, info.stride, info.act, pad),
                                                 _cna(mid, cout, k, 1, act)])


def _build_bn(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    cin, cout, k = info.in_shape[0], info.out_shape[0], spec.get("k")
    mid = _make_div(cout * spec.get("w"))
    return _dense_block(info, spec, lambda act: [_cna(cin, mid, 1, 1, info.act),
                                                 _cna(mid, mid, k, info.stride, info.act,
                                                      _pad_type(info, k)),
                                                 _cna(mid, cout, 1, 1, act)])


def _build_cb(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    cin, cout, k = info.in_shape[0], info.out_shape[0], spec.get("k")
    return _dense_block(info, spec, lambda act: [_cna(cin, cout, k, info.stride, act,
                                                      _pad_type(info, k))])


# --------------------------------------------------------------------------------------
# ResNet / ResNeSt blocks (timm's own block classes, so a same-shape candidate can start as
# an exact copy of the teacher's block) and the RepVGG block
# --------------------------------------------------------------------------------------

def _resnet_downsample(info: LayerInfo, teacher: nn.Module | None) -> nn.Module | None:
    """The projection shortcut a ResNet block needs when its in/out shapes differ.

    It follows the teacher's style where the teacher is a ResNet block: ResNet-D/ResNeSt
    average-pool then 1x1 conv, plain ResNets a strided 1x1 conv.
    """
    if _has_skip(info):
        return None
    from timm.models.resnet import downsample_avg, downsample_conv

    cin, cout = info.in_shape[0], info.out_shape[0]
    down = getattr(teacher, "downsample", None)
    avg = isinstance(down, nn.Sequential) and len(down) == 3 and isinstance(
        down[0], nn.AvgPool2d | nn.Identity)
    make = downsample_avg if avg else downsample_conv
    return make(cin, cout, 1, stride=info.stride, norm_layer=nn.BatchNorm2d)


def _rb_base_width(planes: int, per_group: int) -> float:
    # timm computes the mid width as int(planes * base_width / 64) * cardinality; half a
    # channel of slack keeps float rounding from losing one.
    return (per_group + 0.5) * 64.0 / planes


def _rb_width(info: LayerInfo, spec: OpSpec) -> tuple[int, int]:
    """(planes, channels per group) of a ResNet bottleneck candidate.

    The teacher convention is mid width = out channels / 4 (ResNet-50, ResNeSt-50); ``w``
    scales that, split over ``g`` groups, each a multiple of the radix ``r``.
    """
    planes = info.out_shape[0] // 4
    g, r = spec.get("g"), spec.get("r")
    per_group = max(r, round(planes * spec.get("w") / g / r) * r)
    return planes, per_group


def _build_rb(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    from timm.models.resnest import ResNestBottleneck
    from timm.models.resnet import Bottleneck

    cin = info.in_shape[0]
    planes, per_group = _rb_width(info, spec)
    kw = dict(stride=info.stride, downsample=_resnet_downsample(info, teacher),
              cardinality=spec.get("g"), base_width=_rb_base_width(planes, per_group),
              act_layer=_act_layer(info.act))
    if spec.get("r") == 1:
        return Bottleneck(cin, planes, **kw)
    # ResNeSt: split attention over r radix groups, strided by an average pool (avd).
    return ResNestBottleneck(cin, planes, radix=spec.get("r"), avd=True, **kw)


def _build_basic(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    from timm.models.resnet import BasicBlock

    return BasicBlock(info.in_shape[0], info.out_shape[0], stride=info.stride,
                      downsample=_resnet_downsample(info, teacher),
                      act_layer=_act_layer(info.act))


def _fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of one conv equal to ``bn(conv(x))`` in eval mode."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.reshape(-1, 1, 1, 1), bias


class RepVGGBlock(nn.Module):
    """RepVGG block: kxk conv-BN + 1x1 conv-BN (+ BN identity when shapes agree), summed,
    then an optional activation. :meth:`reparameterize` folds the branches into one kxk
    conv with bias, for export and latency measurement (same output in eval mode).
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int, act: str | None) -> None:
        super().__init__()
        self.cin, self.cout, self.k, self.stride = cin, cout, k, stride
        self.conv_kxk = nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                                      nn.BatchNorm2d(cout))
        self.conv_1x1 = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False),
                                      nn.BatchNorm2d(cout))
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.act = _act_layer(act)() if act else nn.Identity()
        self.fused: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        y = self.conv_kxk(x) + self.conv_1x1(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return self.act(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one equivalent kxk conv (uses the BN running stats)."""
        if self.fused is not None:
            return
        w, b = _fuse_conv_bn(*self.conv_kxk)
        w1, b1 = _fuse_conv_bn(*self.conv_1x1)
        p = self.k // 2
        w = w + nn.functional.pad(w1, [p, p, p, p])
        b = b + b1
        if self.identity is not None:
            bn = self.identity
            scale = bn.weight / (bn.running_var + bn.eps).sqrt()
            idx = torch.arange(self.cin)
            w[idx, idx, p, p] += scale
            b = b + bn.bias - bn.running_mean * scale
        fused = nn.Conv2d(self.cin, self.cout, self.k, self.stride, p, bias=True).to(w)
        fused.weight.copy_(w)
        fused.bias.copy_(b)
        self.fused = fused
        self.conv_kxk = self.conv_1x1 = self.identity = None


def reparameterize(module: nn.Module) -> nn.Module:
    """Fold every re-parameterisable block of ``module`` (those with a ``reparameterize()``
    method, e.g. :class:`RepVGGBlock`) into its inference form, in place; returns it."""
    for m in list(module.modules()):
        if m is not module and hasattr(m, "reparameterize"):
            m.reparameterize()
    if hasattr(module, "reparameterize"):
        module.reparameterize()
    return module


def _build_rep(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    return RepVGGBlock(info.in_shape[0], info.out_shape[0], spec.get("k"), info.stride,
                       info.act if spec.get("a") else None)


# lana.space.specs declares the built-in op types without builders (it must not import torch).
for _name, _build in {"teacher": _build_teacher, "identity": _build_identity, "ir": _build_ir,
                      "er": _build_er, "ds": _build_ds, "cc": _build_cc, "bn": _build_bn,
                      "cb": _build_cb, "rb": _build_rb, "basic": _build_basic,
                      "rep": _build_rep}.items():
    register_op(dataclasses.replace(OP_TYPES[_name], build=_build))

def applicable(spec: str | OpSpec, info: LayerInfo) -> bool:
    """Whether ``spec`` can replace the layer described by ``info`` (by op type rules)."""
    op = OP_TYPES[(parse_spec(spec) if isinstance(spec, str) else spec).kind]
    if op.spatial_only and not info.spatial:
        return False
    return op.applies(info.as_nchw() if op.spatial_only else info)


class ChannelsLast(nn.Module):
    """A convolutional candidate for a layer whose input and/or output is an (N, H, W, C)
    map: it sees NCHW, as it was built for, and the chain sees the layer's own layout."""

    def __init__(self, op: nn.Module, last_in: bool, last_out: bool) -> None:
        super().__init__()
        self.op, self.last_in, self.last_out = op, last_in, last_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.op(x.permute(0, 3, 1, 2) if self.last_in else x)
        return y.permute(0, 2, 3, 1) if self.last_out else y


def build_op(spec: str | OpSpec, info: LayerInfo, teacher: nn.Module | None = None
             ) -> nn.Module:
    """Build the candidate module ``spec`` for the layer ``info`` (fresh weights)."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if not applicable(parsed, info):
        raise ConfigError(f"candidate {parsed} does not apply to layer {info.name} "
                          f"({info.signature})")
    op = OP_TYPES[parsed.kind]
    nchw = info.as_nchw()
    if op.spatial_only and nchw is not info:
        return ChannelsLast(op.build(parsed, nchw, teacher), *info.hwc)
    return op.build(parsed, info, teacher)


def check_shapes(module: nn.Module, info: LayerInfo) -> None:
    """Raise ConfigError if ``module`` does not map ``info.in_shape`` to ``info.out_shape``."""
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *info.in_shape))
    except Exception as exc:  # a candidate that cannot run on the layer's input
        raise ConfigError(f"candidate for {info.name} fails on its input {info.in_shape}: "
                          f"{type(exc).__name__}: {exc}") from None
    finally:
        module.train(was)
    if tuple(out.shape[1:]) != tuple(info.out_shape):
        raise ConfigError(f"candidate for {info.name} maps {info.in_shape} to "
                          f"{tuple(out.shape[1:])}, expected {info.out_shape}")


def _other_ending(spec: str) -> str | None:
    """The same op with its ``a`` flag (activation at the end) flipped, or None when the
    op type has no such flag."""
    parsed = parse_spec(spec)
    params = dict(parsed.params)
    if not isinstance(params.get("a"), bool):
        return None
    flipped = tuple((n, (not v) if n == "a" else v) for n, v in parsed.params)
    return str(OpSpec(parsed.kind, flipped))


def matches_ending(spec: str, info: LayerInfo, specs: list[str]) -> bool:
    """False when ``specs`` also hold ``spec`` with the other ending and that one suits the
    layer better: the ``_a`` form where the teacher's layer ends with an activation
    (``info.ends_with_act``), the linear form where it does not. A space that lists only
    one form keeps it everywhere (e.g. ResNet spaces list only ``cc_k3_w1_a``)."""
    other = _other_ending(spec)
    if other is None or other not in specs:
        return True
    return parse_spec(spec).get("a") == info.ends_with_act


def layer_candidates(info: LayerInfo, specs: list[str]) -> list[str]:
    """The subset of canonical ``specs`` that applies to the layer, teacher first; of an op
    listed with both endings, only the one that matches the layer's (see
    :func:`matches_ending`)."""
    out = [s for s in specs if applicable(s, info) and matches_ending(s, info, specs)]
    if "teacher" in out:
        out.remove("teacher")
    return ["teacher", *out]


def fitting_candidates(infos: list[LayerInfo], specs: list[str],
                       build: Callable[[int, str], nn.Module],
                       on_skip: Callable[[LayerInfo, str, ConfigError], None] | None = None,
                       ) -> list[list[str]]:
    """Per layer, the ``specs`` that apply (teacher first) and whose module, built by
    ``build(i, spec)``, really maps the layer's input shape to its output shape.

    A spec that fails the shape check is dropped (``on_skip`` is told why), so one odd layer
    never stops a run; the teacher op always fits.
    """
    out: list[list[str]] = []
    for i, info in enumerate(infos):
        ok = []
        for spec in layer_candidates(info, specs):
            if spec == "teacher":
                ok.append(spec)
                continue
            try:
                check_shapes(build(i, spec), info)
                ok.append(spec)
            except ConfigError as exc:
                if on_skip is not None:
                    on_skip(info, spec, exc)
        out.append(ok)
    return out


def log10_space_size(candidates: list[list[str]]) -> float:
    """log10 of the number of architectures: the product of per-layer choice counts."""
    import math

    return sum(math.log10(len(c)) for c in candidates)


register_family_space("timm-efficientnet", _MBCONV_SPACE)
register_family_space("timm-mobilenetv3", _MBCONV_SPACE)
register_family_space("timm-resnet", _RESNET_SPACE)
register_family_space("sequential", _GENERIC_SPACE)
register_family_space("fx-chain", _GENERIC_SPACE)

#: Values of ``space.ops`` that select the teacher family's default space.
AUTO = "auto"


def family_space(family: str | None) -> tuple[str, ...]:
    """The default candidate patterns of a teacher family (DEFAULT_SPACE if it has none)."""
    return FAMILY_SPACES.get(family or "", DEFAULT_SPACE)


def resolve_space(ops: list[str] | str | None, family: str | None) -> list[str]:
    """The spec patterns a run uses: ``ops`` itself when it is a list, else (``None`` or
    ``"auto"``) the default space of the teacher's family."""
    if ops is None or ops == AUTO:
        return list(family_space(family))
    if isinstance(ops, str):
        raise ConfigError(f"space.ops must be a list of spec patterns or 'auto', got {ops!r}")
    return list(ops)
