"""Candidate operations: hashable spec strings and the builders behind them.

A spec string names one candidate op for a layer, in the style of timm's architecture
strings: ``ir_k5_e3_se`` is an inverted residual block with a 5x5 depthwise kernel,
expansion 3 and squeeze-excite. Input/output channels and stride are not part of the spec;
they come from the layer the op replaces (:class:`lana.decompose.LayerInfo`), so the same
spec applies at every layer and ``(spec, layer signature)`` keys every cache.

New op types are added with :func:`register_op`; the registry replaces if-chains.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from lana.decompose import LayerInfo
from lana.errors import ConfigError

# The default candidate space (brace groups expand like a shell: ``e{1,3}`` -> e1, e3).
DEFAULT_SPACE: tuple[str, ...] = (
    "teacher",
    "identity",
    "ir_k{3,5}_e{1,3,6}{,_se}",
    "er_k3_e{1,3}",
    "ds_k{3,5}",
    "cc_k3_w{0.5,1}",
    "bn_k3_w{0.25,0.5}",
    "cb_k{1,3}",
)


@dataclass(frozen=True)
class Param:
    """One parameter of an op type: a numeric token (``k3``) or a flag (``se``)."""

    name: str
    kind: type = int  # int, float or bool (flag)
    default: float | int | bool | None = None
    choices: tuple = ()


@dataclass(frozen=True)
class OpType:
    """A family of candidate ops that share a builder."""

    name: str
    build: Callable[..., nn.Module]
    params: tuple[Param, ...] = ()
    doc: str = ""
    spatial_only: bool = True  # needs NCHW feature maps
    applies: Callable[[LayerInfo], bool] = field(default=lambda info: True)


OP_TYPES: dict[str, OpType] = {}


def register_op(op: OpType) -> OpType:
    """Register a candidate op type under ``op.name`` (the first token of its specs)."""
    if not re.fullmatch(r"[a-z][a-z0-9]*", op.name):
        raise ValueError(f"op type name {op.name!r} must be lowercase letters/digits")
    OP_TYPES[op.name] = op
    return op


@dataclass(frozen=True)
class OpSpec:
    """A parsed, canonical spec: op type name plus parameter values."""

    kind: str
    params: tuple[tuple[str, float | int | bool], ...] = ()

    def __str__(self) -> str:
        parts = [self.kind]
        for name, value in self.params:
            if isinstance(value, bool):
                if value:
                    parts.append(name)
            else:
                parts.append(f"{name}{value:g}")
        return "_".join(parts)

    def get(self, name: str):
        return dict(self.params)[name]


_TOKEN = re.compile(r"([a-z]+)([0-9.]*)")


def parse_spec(text: str) -> OpSpec:
    """Parse a spec string such as ``ir_k3_e6_se`` into a canonical :class:`OpSpec`."""
    text = text.strip()
    kind, *tokens = text.split("_")
    if kind not in OP_TYPES:
        raise ConfigError(
            f"unknown candidate op {text!r}: op type {kind!r} is not one of "
            f"{sorted(OP_TYPES)}. Use e.g. 'ir_k3_e6_se' or 'cc_k3_w0.5'.")
    op = OP_TYPES[kind]
    known = {p.name: p for p in op.params}
    values: dict[str, float | int | bool] = {}
    for tok in tokens:
        m = _TOKEN.fullmatch(tok)
        if not m or m.group(1) not in known:
            raise ConfigError(
                f"bad token {tok!r} in candidate op {text!r}; {kind} takes "
                + (", ".join(_describe(p) for p in op.params) or "no parameters"))
        p = known[m.group(1)]
        raw = m.group(2)
        try:
            if p.kind is bool:
                value: float | int | bool = raw == "" or float(raw) != 0
            elif p.kind is int:
                value = int(raw)
            else:
                value = float(raw)
        except ValueError:
            raise ConfigError(f"token {tok!r} in {text!r} needs a number after "
                              f"{p.name!r}") from None
        if p.choices and value not in p.choices:
            raise ConfigError(f"{p.name}={raw} in {text!r} must be one of {list(p.choices)}")
        values[p.name] = value
    seen = [_TOKEN.fullmatch(t).group(1) for t in tokens]  # all valid: checked above
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise ConfigError(f"candidate op {text!r} repeats parameter(s) {dupes}")
    params = []
    for p in op.params:
        if p.name in values:
            params.append((p.name, values[p.name]))
        elif p.default is None:
            raise ConfigError(f"candidate op {text!r} needs parameter {_describe(p)}")
        else:
            params.append((p.name, p.default))
    return OpSpec(kind, tuple(params))


def _describe(p: Param) -> str:
    if p.kind is bool:
        return f"{p.name} (flag)"
    return f"{p.name}<{p.kind.__name__}>" + (f" in {list(p.choices)}" if p.choices else "")


def expand(pattern: str) -> list[str]:
    """Expand shell-style brace groups: ``ir_k{3,5}{,_se}`` -> four spec strings."""
    pieces = re.split(r"(\{[^{}]*\})", pattern)
    options = [p[1:-1].split(",") if p.startswith("{") else [p] for p in pieces]
    return ["".join(combo) for combo in itertools.product(*options)]


def canonical(text: str) -> str:
    """Canonical form of a spec string (defaults filled in, numbers normalised)."""
    return str(parse_spec(text))


def space_specs(patterns: tuple[str, ...] | list[str] = DEFAULT_SPACE) -> list[str]:
    """Expand and canonicalise a list of spec patterns, dropping duplicates, keeping order."""
    out: list[str] = []
    for pat in patterns:
        for text in expand(pat):
            spec = canonical(text)
            if spec not in out:
                out.append(spec)
    return out


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


def _cna(cin: int, cout: int, k: int, stride: int, act: str | None) -> nn.Module:
    from timm.layers import ConvNormAct

    return ConvNormAct(cin, cout, k, stride=stride, apply_act=act is not None,
                       act_layer=_act_layer(act or "relu"))


def _maybe_residual(info: LayerInfo, body: nn.Module) -> nn.Module:
    return Residual(body) if _has_skip(info) else body


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
    return InvertedResidual(cin, cout, dw_kernel_size=spec.get("k"), stride=info.stride,
                            exp_ratio=spec.get("e"), act_layer=_act_layer(info.act),
                            se_layer=_se_layer(info, mid, spec.get("se")))


def _build_er(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    from timm.models._efficientnet_blocks import EdgeResidual

    cin, cout = info.in_shape[0], info.out_shape[0]
    mid = _make_div(cin * spec.get("e"))
    return EdgeResidual(cin, cout, exp_kernel_size=spec.get("k"), stride=info.stride,
                        exp_ratio=spec.get("e"), act_layer=_act_layer(info.act),
                        se_layer=_se_layer(info, mid, spec.get("se")))


def _build_ds(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv

    cin, cout = info.in_shape[0], info.out_shape[0]
    return DepthwiseSeparableConv(cin, cout, dw_kernel_size=spec.get("k"), stride=info.stride,
                                  act_layer=_act_layer(info.act),
                                  se_layer=_se_layer(info, cin, spec.get("se")))


def _build_cc(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    cin, cout, k = info.in_shape[0], info.out_shape[0], spec.get("k")
    mid = _make_div(cout * spec.get("w"))
    body = nn.Sequential(_cna(cin, mid, k, info.stride, info.act), _cna(mid, cout, k, 1, None))
    return _maybe_residual(info, body)


def _build_bn(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    cin, cout, k = info.in_shape[0], info.out_shape[0], spec.get("k")
    mid = _make_div(cout * spec.get("w"))
    body = nn.Sequential(_cna(cin, mid, 1, 1, info.act), _cna(mid, mid, k, info.stride, info.act),
                         _cna(mid, cout, 1, 1, None))
    return _maybe_residual(info, body)


def _build_cb(spec: OpSpec, info: LayerInfo, teacher: nn.Module | None) -> nn.Module:
    cin, cout = info.in_shape[0], info.out_shape[0]
    return _maybe_residual(info, _cna(cin, cout, spec.get("k"), info.stride, None))


_K = Param("k", int, 3, (1, 3, 5, 7))
_SE = Param("se", bool, False)
register_op(OpType("teacher", _build_teacher, doc="the teacher's own layer (score 0)",
                   spatial_only=False))
register_op(OpType("identity", _build_identity, doc="skip the layer (needs equal shapes)",
                   spatial_only=False, applies=lambda info: info.in_shape == info.out_shape))
register_op(OpType("ir", _build_ir, (_K, Param("e", float, 6), _SE),
                   doc="inverted residual (MBConv): 1x1 expand, kxk depthwise, [SE], 1x1 project"))
register_op(OpType("er", _build_er, (_K, Param("e", float, 4), _SE),
                   doc="fused inverted residual (EfficientNetV2): kxk expand, [SE], 1x1 project"))
register_op(OpType("ds", _build_ds, (_K, _SE),
                   doc="depthwise separable: kxk depthwise, [SE], 1x1 pointwise"))
register_op(OpType("cc", _build_cc, (_K, Param("w", float, 1.0)),
                   doc="two stacked dense convs CBR-CB, middle width w x out channels"))
register_op(OpType("bn", _build_bn, (_K, Param("w", float, 0.25)),
                   doc="bottleneck CBR(1x1)-CBR(kxk)-CB(1x1), middle width w x out channels"))
register_op(OpType("cb", _build_cb, (_K,), doc="single conv-BN (residual when shapes agree)"))


def applicable(spec: str | OpSpec, info: LayerInfo) -> bool:
    """Whether ``spec`` can replace the layer described by ``info`` (by op type rules)."""
    op = OP_TYPES[(parse_spec(spec) if isinstance(spec, str) else spec).kind]
    if op.spatial_only and not info.spatial:
        return False
    return op.applies(info)


def build_op(spec: str | OpSpec, info: LayerInfo, teacher: nn.Module | None = None
             ) -> nn.Module:
    """Build the candidate module ``spec`` for the layer ``info`` (fresh weights)."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if not applicable(parsed, info):
        raise ConfigError(f"candidate {parsed} does not apply to layer {info.name} "
                          f"({info.signature})")
    return OP_TYPES[parsed.kind].build(parsed, info, teacher)


def check_shapes(module: nn.Module, info: LayerInfo) -> None:
    """Raise ConfigError if ``module`` does not map ``info.in_shape`` to ``info.out_shape``."""
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *info.in_shape))
    finally:
        module.train(was)
    if tuple(out.shape[1:]) != tuple(info.out_shape):
        raise ConfigError(f"candidate for {info.name} maps {info.in_shape} to "
                          f"{tuple(out.shape[1:])}, expected {info.out_shape}")


def layer_candidates(info: LayerInfo, specs: list[str]) -> list[str]:
    """The subset of canonical ``specs`` that applies to the layer, teacher first."""
    out = [s for s in specs if applicable(s, info)]
    if "teacher" in out:
        out.remove("teacher")
    return ["teacher", *out]


def log10_space_size(candidates: list[list[str]]) -> float:
    """log10 of the number of architectures: the product of per-layer choice counts."""
    import math

    return sum(math.log10(len(c)) for c in candidates)
