"""The grammar of candidate op specs, without torch: op types, their parameters, parsing.

A spec string names one candidate op for a layer, in the style of timm's architecture
strings: ``ir_k5_e3_se`` is an inverted residual block with a 5x5 depthwise kernel,
expansion 3 and squeeze-excite. This module parses, expands and canonicalises specs and
holds the registry of op types (:data:`OP_TYPES`, :func:`register_op`) with the built-in
ones declared; their builders, which need torch, are bound by :mod:`lana.space.ops`. Config
validation uses only this module, so checking a YAML's ``space.ops`` imports no torch.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lana.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from lana.model.decompose import LayerInfo

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
    # (spec, info, teacher layer) -> nn.Module. lana.space.ops binds the built-in ones, whose
    # declarations below leave it None so that this module needs no torch.
    build: Callable[..., nn.Module] | None
    params: tuple[Param, ...] = ()
    doc: str = ""
    spatial_only: bool = True  # needs NCHW feature maps
    applies: Callable[[LayerInfo], bool] = field(default=lambda info: True)
    # The built module depends on the teacher's block, not only on the spec and the shapes
    # (e.g. the shortcut style of ResNet blocks): the LUT key then includes its structure.
    teacher_dependent: bool = False


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


# The built-in op types; lana.space.ops binds their builders.
_K = Param("k", int, 3, (1, 3, 5, 7))
_SE = Param("se", bool, False)
_A = Param("a", bool, False)
register_op(OpType("teacher", None, doc="the teacher's own layer (score 0)",
                   spatial_only=False))
register_op(OpType("identity", None, doc="skip the layer (needs equal shapes)",
                   spatial_only=False, applies=lambda info: info.in_shape == info.out_shape))
register_op(OpType("ir", None, (_K, Param("e", float, 6), _SE, _A),
                   doc="inverted residual (MBConv): 1x1 expand, kxk depthwise, [SE], 1x1 "
                       "project; [activation at the end, after the sum, with a]"))
register_op(OpType("er", None, (_K, Param("e", float, 4), _SE, _A),
                   doc="fused inverted residual (EfficientNetV2): kxk expand, [SE], 1x1 "
                       "project; [activation at the end with a]"))
register_op(OpType("ds", None, (_K, _SE, _A),
                   doc="depthwise separable: kxk depthwise, [SE], 1x1 pointwise; [activation "
                       "at the end with a]"))
register_op(OpType("cc", None, (_K, Param("w", float, 1.0), _A),
                   doc="two stacked dense convs CBR-CB, middle width w x out channels "
                       "(residual when shapes agree; [activation at the end with a])"))
register_op(OpType("bn", None, (_K, Param("w", float, 0.25), _A),
                   doc="bottleneck CBR(1x1)-CBR(kxk)-CB(1x1), middle width w x out channels "
                       "(residual when shapes agree; [activation at the end with a])"))
register_op(OpType("cb", None, (_K, _A), doc="single conv-BN (residual when shapes agree; "
                                             "[activation at the end with a])"))

_G = (1, 2, 4, 8, 16, 32, 64)
register_op(OpType("rb", None, (Param("w", float, 1.0), Param("g", int, 1, _G),
                                Param("r", int, 1, (1, 2, 4))),
                   doc="ResNet/ResNeXt/ResNeSt bottleneck 1x1-3x3-1x1 (timm's blocks): mid "
                       "width w x out/4, cardinality g, radix r (split attention), "
                       "projection shortcut when shapes differ",
                   applies=lambda info: info.out_shape[0] % 4 == 0, teacher_dependent=True))
register_op(OpType("basic", None, (),
                   doc="ResNet basic block 3x3-3x3 (timm's BasicBlock), projection shortcut "
                       "when shapes differ", teacher_dependent=True))
register_op(OpType("rep", None, (Param("k", int, 3, (3, 5, 7)), Param("a", bool, False)),
                   doc="RepVGG block: kxk conv-BN + 1x1 conv-BN (+ BN identity), [activation "
                       "with a]; folded into one kxk conv for export and timing"))
