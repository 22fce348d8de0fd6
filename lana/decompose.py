"""Teacher -> chain of replaceable layers (``stem -> layers[0..N-1] -> head``).

A model family is described once, as a :class:`Family` in the :data:`FAMILIES` registry:
how to recognise the model and how to split it into stem, layers and head. ``decompose``
asks every family in turn; no if-chains elsewhere in the code know about model classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lana.errors import UnsupportedModelError


@dataclass(frozen=True)
class LayerInfo:
    """What a candidate op for one layer must satisfy: its input and output shapes."""

    name: str
    in_shape: tuple[int, ...]  # without batch dimension, e.g. (C, H, W)
    out_shape: tuple[int, ...]
    act: str  # activation of the teacher family, used by candidate builders

    @property
    def spatial(self) -> bool:
        """True for NCHW feature maps, where convolutional candidates apply."""
        return len(self.in_shape) == 3 and len(self.out_shape) == 3

    @property
    def stride(self) -> int:
        """Spatial down-sampling factor of the layer (1 when it keeps the resolution)."""
        if not self.spatial:
            return 1
        h_in, h_out = self.in_shape[1], self.out_shape[1]
        return max(1, round(h_in / h_out))

    @property
    def signature(self) -> str:
        """Short, stable description of the layer's shape contract (part of cache keys)."""
        fmt = "x".join
        return (f"in{fmt(map(str, self.in_shape))}-out{fmt(map(str, self.out_shape))}"
                f"-{self.act}")

    def to_dict(self) -> dict:
        return {"name": self.name, "in_shape": list(self.in_shape),
                "out_shape": list(self.out_shape), "act": self.act}

    @classmethod
    def from_dict(cls, d: dict) -> LayerInfo:
        return cls(d["name"], tuple(d["in_shape"]), tuple(d["out_shape"]), d["act"])


class Chain(nn.Module):
    """A network written as ``head(layers[N-1](...layers[0](stem(x))))``.

    The modules are shared with the model that was decomposed (nothing is copied), so a
    chain of a teacher computes exactly what the teacher computes.
    """

    def __init__(self, stem: nn.Module, layers: Sequence[nn.Module], head: nn.Module,
                 names: Sequence[str] | None = None, info: Sequence[LayerInfo] = ()) -> None:
        super().__init__()
        self.stem = stem
        self.layers = nn.ModuleList(layers)
        self.head = head
        self.names = list(names) if names is not None else [f"layers.{i}" for i in
                                                             range(len(layers))]
        self.info = list(info)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``[x_0, ..., x_N]``: the stem output and every layer's output."""
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(feats[-1]))
        return feats

    def forward_from(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Run layers ``i..N-1`` and the head on ``x`` (the input of layer ``i``)."""
        for layer in self.layers[i:]:
            x = layer(x)
        return self.head(x)


@dataclass(frozen=True)
class Family:
    """How to split one family of models into stem, layers and head."""

    name: str
    description: str
    matches: Callable[[nn.Module], bool]
    split: Callable[[nn.Module], tuple[nn.Module, list[tuple[str, nn.Module]], nn.Module]]
    act: Callable[[nn.Module], str]


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a model family to the registry (later registrations are tried first)."""
    FAMILIES[family.name] = family
    return family


def _act_name(model: nn.Module, default: str = "relu") -> str:
    # The teacher's activation is what candidates should use, so the student stays in the
    # same numeric regime as the teacher's features they learn to reproduce.
    names = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish",
             nn.GELU: "gelu"}
    for m in model.modules():
        for cls, name in names.items():
            if type(m) is cls:
                return name
    return default


def _is_timm_efficientnet(model: nn.Module) -> bool:
    try:
        from timm.models.efficientnet import EfficientNet
    except ImportError:  # timm is a dependency, but keep decompose usable without it
        return False
    return isinstance(model, EfficientNet)


class _TimmEfficientNetHead(nn.Module):
    """conv_head -> bn2 -> global pool -> dropout -> classifier, as timm's forward_head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.conv_head = model.conv_head
        self.bn2 = model.bn2
        self.global_pool = model.global_pool
        self.drop = nn.Dropout(model.drop_rate)
        self.classifier = model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv_head(x))
        return self.classifier(self.drop(self.global_pool(x)))


def _split_timm_efficientnet(model: nn.Module):
    stem = nn.Sequential(model.conv_stem, model.bn1)
    layers = [(f"blocks.{s}.{b}", block) for s, stage in enumerate(model.blocks)
              for b, block in enumerate(stage)]
    return stem, layers, _TimmEfficientNetHead(model)


def _isinstance_of(module_path: str, cls_name: str) -> Callable[[nn.Module], bool]:
    def check(model: nn.Module) -> bool:
        import importlib

        try:
            cls = getattr(importlib.import_module(module_path), cls_name)
        except (ImportError, AttributeError):
            return False
        return isinstance(model, cls)

    return check


class _Pipe(nn.Module):
    """Named parts of a model applied in order (a Sequential that keeps timm's names)."""

    def __init__(self, parts: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        for name, part in parts:
            self.add_module(name, part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.children():
            x = part(x)
        return x


def _split_timm_resnet(model: nn.Module):
    # timm's ResNet class covers ResNet, ResNeXt, SE-ResNet and ResNeSt (ResNestBottleneck).
    stem = _Pipe([(n, getattr(model, n)) for n in ("conv1", "bn1", "act1", "maxpool")])
    layers = [(f"layer{s}.{b}", block) for s in range(1, 5)
              for b, block in enumerate(getattr(model, f"layer{s}"))]
    head = _Pipe([("global_pool", model.global_pool),
                  ("drop", nn.Dropout(float(model.drop_rate or 0.0))), ("fc", model.fc)])
    return stem, layers, head


def _split_timm_mobilenetv3(model: nn.Module):
    stem = _Pipe([("conv_stem", model.conv_stem), ("bn1", model.bn1)])
    layers = [(f"blocks.{s}.{b}", block) for s, stage in enumerate(model.blocks)
              for b, block in enumerate(stage)]
    head = _Pipe([(n, getattr(model, n)) for n in ("global_pool", "conv_head", "norm_head",
                                                    "act2", "flatten")]
                 + [("drop", nn.Dropout(model.drop_rate)), ("classifier", model.classifier)])
    return stem, layers, head


def _split_sequential(model: nn.Module):
    layers = [(name, m) for name, m in model.named_children()]
    return nn.Identity(), layers, nn.Identity()


register_family(Family(
    name="sequential",
    description="plain nn.Sequential: every child is one layer",
    matches=lambda m: type(m) is nn.Sequential,
    split=_split_sequential,
    act=_act_name,
))
register_family(Family(
    name="timm-efficientnet",
    description="timm EfficientNet class: efficientnet_b0..b7, tf_efficientnet_lite0..4, "
                "tf_efficientnetv2_*, efficientnetv2_rw_*, mobilenetv2_*, mnasnet_*, ... "
                "(one MBConv/fused/DS block per layer)",
    matches=_is_timm_efficientnet,
    split=_split_timm_efficientnet,
    act=_act_name,
))


register_family(Family(
    name="timm-resnet",
    description="timm ResNet class: resnet18/34/50…, resnext*, resnest14d/26d/50d… "
                "(one basic/bottleneck block per layer)",
    matches=_isinstance_of("timm.models.resnet", "ResNet"),
    split=_split_timm_resnet,
    act=_act_name,
))
register_family(Family(
    name="timm-mobilenetv3",
    description="timm MobileNetV3 class: mobilenetv3_small_*/large_* (one block per layer)",
    matches=_isinstance_of("timm.models.mobilenetv3", "MobileNetV3"),
    split=_split_timm_mobilenetv3,
    act=_act_name,
))


def find_family(model: nn.Module) -> Family:
    """Return the registered family that can split ``model``, or raise a clear error."""
    for family in reversed(list(FAMILIES.values())):
        if family.matches(model):
            return family
    supported = "; ".join(f"{f.name}: {f.description}" for f in FAMILIES.values())
    raise UnsupportedModelError(
        f"lana cannot split a {type(model).__module__}.{type(model).__name__} into a chain "
        f"of replaceable layers. Supported families: {supported}. For your own model, pass "
        "an nn.Sequential(stem, *blocks, head) whose children each take and return one tensor."
    )


def decompose(model: nn.Module, example_input: torch.Tensor) -> Chain:
    """Split ``model`` into a :class:`Chain` and record every layer's input/output shape.

    ``example_input`` is a batch (any batch size) that the model accepts; it is only used to
    trace shapes. The chain shares modules with ``model``; its output equals the model's.
    """
    family = find_family(model)
    stem, named_layers, head = family.split(model)
    if not named_layers:
        raise UnsupportedModelError(f"{type(model).__name__} has no layers to replace")
    act = family.act(model)
    names = [n for n, _ in named_layers]
    chain = Chain(stem, [m for _, m in named_layers], head, names)
    was_training = model.training
    chain.eval()
    info: list[LayerInfo] = []
    with torch.no_grad():
        x = stem(example_input)
        for name, layer in named_layers:
            if not isinstance(x, torch.Tensor):
                raise UnsupportedModelError(
                    f"layer {name!r} of {type(model).__name__} receives a "
                    f"{type(x).__name__}, not one tensor; lana needs single-tensor layers")
            try:
                y = layer(x)
            except Exception as exc:
                raise UnsupportedModelError(
                    f"layer {name!r} ({type(layer).__name__}) fails on the output of the "
                    f"previous layer, shape {tuple(x.shape)}: {exc}. The model is not a plain "
                    "chain; split it by hand into nn.Sequential(stem, *blocks, head)."
                ) from None
            if not isinstance(y, torch.Tensor):
                raise UnsupportedModelError(
                    f"layer {name!r} ({type(layer).__name__}) returns a {type(y).__name__}; "
                    "lana needs layers that return one tensor")
            info.append(LayerInfo(name, tuple(x.shape[1:]), tuple(y.shape[1:]), act))
            x = y
    chain.info = info
    chain.train(was_training)
    model.train(was_training)
    return chain
