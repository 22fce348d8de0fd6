"""Candidate initialisation from the teacher's weights (as Puzzle does), so phase 1 starts
closer to the teacher's layer and needs fewer steps.

A registry of :class:`InitRule` s, tried in order for each new candidate: a candidate with
the teacher block's exact structure starts as a copy; a narrower (or wider) variant of the
teacher's block type takes the teacher's most important middle channels (largest
``||filter|| * |gamma| / std`` of the expanding conv and its BatchNorm), and a different
kernel size takes the centre (or a zero-padded copy) of the teacher's kernels. Everything a
rule does not cover keeps its fresh initialisation. Rules are deterministic: the same
teacher weights give the same candidate, whatever the grouping or sharding of phase 1.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lana.space.ops import PostAct


@dataclass(frozen=True)
class InitRule:
    """How to initialise candidates of some op types from a teacher block."""

    name: str
    ops: tuple[str, ...]  # candidate op types (first token of the spec); "*" for any
    matches: Callable[[nn.Module, nn.Module], bool]  # (candidate, teacher) -> applies?
    apply: Callable[[nn.Module, nn.Module], None]  # copies teacher weights into candidate


INIT_RULES: list[InitRule] = []


def register_init(rule: InitRule) -> InitRule:
    """Add an init rule; rules are tried in registration order, the first match wins."""
    INIT_RULES.append(rule)
    return rule


def inherit(candidate: nn.Module, spec: str, teacher: nn.Module | None) -> str | None:
    """Initialise ``candidate`` (op ``spec``) from the ``teacher`` block, in place.

    Returns the name of the rule that was applied, or ``None`` (fresh weights kept).
    """
    if teacher is None:
        return None
    if isinstance(candidate, PostAct):  # an op with the activation at the end: its block
        candidate = candidate.block
    kind = spec.split("_")[0]
    for rule in INIT_RULES:
        if ("*" in rule.ops or kind in rule.ops) and rule.matches(candidate, teacher):
            with torch.no_grad():
                rule.apply(candidate, teacher)
            return rule.name
    return None


# ------------------------------------------------------------------------------ helpers

def _fit_kernel(w: torch.Tensor, k: tuple[int, int]) -> torch.Tensor:
    """Centre-crop or zero-pad the spatial dims of a conv weight to ``k``."""
    for dim, size in ((2, k[0]), (3, k[1])):
        have = w.shape[dim]
        if have > size:
            start = (have - size) // 2
            w = w.narrow(dim, start, size)
        elif have < size:
            before = (size - have) // 2
            pad = [0, 0, 0, 0]
            pad[(3 - dim) * 2:(3 - dim) * 2 + 2] = [before, size - have - before]
            w = nn.functional.pad(w, pad)
    return w


def _put(dst: torch.Tensor, src: torch.Tensor, sel: dict[int, torch.Tensor]) -> bool:
    """Copy ``src`` (indexed along dims by ``sel``) into the leading slice of ``dst``.

    Conv kernels are cropped/padded to ``dst``'s kernel size. Where ``dst`` is larger along a
    dim, only its first entries are written (the rest keep their fresh values). Returns
    whether anything was copied (ranks must agree).
    """
    if dst.dim() != src.dim():
        return False
    for dim, idx in sel.items():
        src = src.index_select(dim, idx)
    if src.dim() == 4:
        src = _fit_kernel(src, tuple(dst.shape[2:]))
    region = []
    for d in range(dst.dim()):
        n = min(dst.shape[d], src.shape[d])
        region.append(slice(0, n))
    dst[tuple(region)] = src[tuple(region)]
    return True


def _put_bn(dst: nn.Module, src: nn.Module, idx: torch.Tensor | None) -> None:
    if not (isinstance(dst, nn.modules.batchnorm._BatchNorm)
            and isinstance(src, nn.modules.batchnorm._BatchNorm)):
        return
    for name in ("weight", "bias", "running_mean", "running_var"):
        d, s = getattr(dst, name), getattr(src, name)
        if d is not None and s is not None:
            _put(d, s, {0: idx} if idx is not None else {})


def _importance(conv: nn.Conv2d, bn: nn.Module | None) -> torch.Tensor:
    """Per output channel: filter norm times the BN scale (what reaches the next conv)."""
    score = conv.weight.detach().flatten(1).norm(dim=1)
    if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.affine:
        score = score * bn.weight.detach().abs() / (bn.running_var + bn.eps).sqrt()
    return score


def _top(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in channel order (ties: lower index first)."""
    order = torch.sort(-score, stable=True).indices[:k]
    return order.sort().values


def _structure(m: nn.Module) -> str:
    # The module tree with every layer's settings, except BatchNorm's momentum (a training
    # hyper-parameter that does not change the function).
    return re.sub(r"momentum=[^,)]*", "", repr(m))


def _same_structure(candidate: nn.Module, teacher: nn.Module) -> bool:
    if type(candidate) is not type(teacher) or _structure(candidate) != _structure(teacher):
        return False
    a, b = candidate.state_dict(), teacher.state_dict()
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


def _copy(candidate: nn.Module, teacher: nn.Module) -> None:
    candidate.load_state_dict(teacher.state_dict())


def _copy_if_same(dst: nn.Module | None, src: nn.Module | None) -> None:
    if dst is not None and src is not None and _same_structure(dst, src):
        dst.load_state_dict(src.state_dict())


def _slice_middle(candidate: nn.Module, teacher: nn.Module, expand: str, bn1: str,
                  depthwise: list[tuple[str, str]], project: str, bn_out: str) -> None:
    """Shared by MBConv-like blocks: ``expand`` conv (+``bn1``) makes the middle channels,
    ``depthwise`` (conv, bn) pairs act per middle channel, ``project`` maps them back."""
    t_exp, c_exp = getattr(teacher, expand), getattr(candidate, expand)
    t_bn1 = getattr(teacher, bn1)
    k = min(c_exp.out_channels, t_exp.out_channels)
    idx = _top(_importance(t_exp, t_bn1), k)
    _put(c_exp.weight, t_exp.weight, {0: idx})
    _put_bn(getattr(candidate, bn1), t_bn1, idx)
    for conv, bn in depthwise:
        _put(getattr(candidate, conv).weight, getattr(teacher, conv).weight, {0: idx})
        _put_bn(getattr(candidate, bn), getattr(teacher, bn), idx)
    c_proj, t_proj = getattr(candidate, project), getattr(teacher, project)
    _put(c_proj.weight, t_proj.weight, {1: idx})
    if c_proj.in_channels > k:
        # Extra middle channels of a wider candidate start silent: the candidate begins
        # as the teacher's function and learns what the new channels add.
        c_proj.weight[:, k:] = 0
    _put_bn(getattr(candidate, bn_out), getattr(teacher, bn_out), None)
    _se(candidate, teacher, idx)


def _se_convs(se: nn.Module | None) -> tuple[nn.Conv2d, nn.Conv2d] | None:
    # timm names the squeeze-excite convs conv_reduce/conv_expand (EfficientNet blocks) or
    # fc1/fc2 (timm.layers.SEModule).
    for a, b in (("conv_reduce", "conv_expand"), ("fc1", "fc2")):
        if isinstance(getattr(se, a, None), nn.Conv2d) and isinstance(getattr(se, b, None),
                                                                      nn.Conv2d):
            return getattr(se, a), getattr(se, b)
    return None


def _se(candidate: nn.Module, teacher: nn.Module, idx: torch.Tensor) -> None:
    cs, ts = _se_convs(getattr(candidate, "se", None)), _se_convs(getattr(teacher, "se", None))
    if cs is None or ts is None or cs[0].out_channels != ts[0].out_channels:
        return
    (c_red, c_exp), (t_red, t_exp) = cs, ts
    _put(c_red.weight, t_red.weight, {1: idx})
    c_red.weight[:, len(idx):] = 0  # extra channels do not change the gates
    if c_red.bias is not None and t_red.bias is not None:
        _put(c_red.bias, t_red.bias, {})
    _put(c_exp.weight, t_exp.weight, {0: idx})
    if c_exp.bias is not None and t_exp.bias is not None:
        _put(c_exp.bias, t_exp.bias, {0: idx})


def _is(module_path: str, cls_name: str) -> Callable[[nn.Module], bool]:
    import importlib

    def check(m: nn.Module) -> bool:
        try:
            cls = getattr(importlib.import_module(module_path), cls_name)
        except (ImportError, AttributeError):
            return False
        return isinstance(m, cls)

    return check


_is_ir = _is("timm.models._efficientnet_blocks", "InvertedResidual")
_is_er = _is("timm.models._efficientnet_blocks", "EdgeResidual")
_is_bottleneck = _is("timm.models.resnet", "Bottleneck")
_is_resnest = _is("timm.models.resnest", "ResNestBottleneck")


def _both(pred: Callable[[nn.Module], bool]) -> Callable[[nn.Module, nn.Module], bool]:
    return lambda c, t: pred(c) and pred(t)


def _init_ir(candidate: nn.Module, teacher: nn.Module) -> None:
    _slice_middle(candidate, teacher, "conv_pw", "bn1", [("conv_dw", "bn2")], "conv_pwl", "bn3")


def _init_er(candidate: nn.Module, teacher: nn.Module) -> None:
    _slice_middle(candidate, teacher, "conv_exp", "bn1", [], "conv_pwl", "bn2")


def _bottleneck_like(c: nn.Module, t: nn.Module) -> bool:
    kinds = (_is_bottleneck, _is_resnest)
    return any(k(c) for k in kinds) and any(k(t) for k in kinds)


def _init_bottleneck(candidate: nn.Module, teacher: nn.Module) -> None:
    """1x1 reduce -> 3x3 (grouped / split-attention) -> 1x1 expand: keep the teacher's most
    important middle channels; the 3x3 conv is copied where both are plain (ungrouped)
    convs, the shortcut projection where it has the same structure."""
    k = min(candidate.conv1.out_channels, teacher.conv1.out_channels)
    idx = _top(_importance(teacher.conv1, teacher.bn1), k)
    _put(candidate.conv1.weight, teacher.conv1.weight, {0: idx})
    _put_bn(candidate.bn1, teacher.bn1, idx)
    c2, t2 = candidate.conv2, teacher.conv2
    if (isinstance(c2, nn.Conv2d) and isinstance(t2, nn.Conv2d) and c2.groups == 1
            and t2.groups == 1):
        _put(c2.weight, t2.weight, {0: idx, 1: idx})
        c2.weight[:k, k:] = 0  # extra channels of a wider candidate: no leak into the old
        _put_bn(candidate.bn2, teacher.bn2, idx)
    _put(candidate.conv3.weight, teacher.conv3.weight, {1: idx})
    if candidate.conv3.in_channels > k:
        candidate.conv3.weight[:, k:] = 0
    _put_bn(candidate.bn3, teacher.bn3, None)
    _copy_if_same(candidate.downsample, teacher.downsample)


def _same_type_resized(c: nn.Module, t: nn.Module) -> bool:
    """Same block type and parameter names; shapes may differ only in conv kernel size."""
    if type(c) is not type(t):
        return False
    a, b = c.state_dict(), t.state_dict()
    if a.keys() != b.keys():
        return False
    return all(a[n].shape == b[n].shape or (a[n].dim() == 4 and a[n].shape[:2] == b[n].shape[:2])
               for n in a)


def _init_resized(candidate: nn.Module, teacher: nn.Module) -> None:
    src = teacher.state_dict()
    for name, dst in candidate.state_dict().items():
        _put(dst, src[name], {})


register_init(InitRule("copy", ("*",), _same_structure, _copy))
register_init(InitRule("mbconv-channels", ("ir",), _both(_is_ir), _init_ir))
register_init(InitRule("fused-mbconv-channels", ("er",), _both(_is_er), _init_er))
register_init(InitRule("bottleneck-channels", ("rb",), _bottleneck_like, _init_bottleneck))
register_init(InitRule("kernel-resize", ("*",), _same_type_resized, _init_resized))
