"""Teacher -> chain of replaceable layers (``stem -> layers[0..N-1] -> head``).

A model family is described once, as a :class:`Family` in the :data:`FAMILIES` registry:
how to recognise the model and how to split it into stem, layers and head. ``decompose``
asks every family in turn; no if-chains elsewhere in the code know about model classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lana.errors import ConfigError, UnsupportedModelError


@dataclass(frozen=True)
class LayerInfo:
    """What a candidate op for one layer must satisfy: its input and output shapes."""

    name: str
    in_shape: tuple[int, ...]  # without batch dimension, e.g. (C, H, W)
    out_shape: tuple[int, ...]
    act: str  # activation of the teacher family, used by candidate builders
    # The layer's output comes straight out of an activation (a ResNet block's final ReLU,
    # a conv-BN-ReLU layer): candidates that end linear would have to learn to clip. Found
    # by decompose from the model; not part of the signature, to_dict or equality, so
    # cache keys and stored students do not change with it.
    ends_with_act: bool = field(default=False, compare=False)
    # Whether the input and the output are (H, W, C) maps, as Swin's, MambaOut's or PVTv2's
    # stages pass them (see :func:`channels_last_edges`); convolutional candidates see such
    # a layer through permutes. Part of the signature and to_dict only when set, so keys and
    # stored students of NCHW layers are as before.
    hwc: tuple[bool, bool] = (False, False)

    @property
    def spatial(self) -> bool:
        """True for feature maps (CHW, or HWC: see :attr:`hwc`), where convolutional
        candidates apply."""
        return len(self.in_shape) == 3 and len(self.out_shape) == 3

    def as_nchw(self) -> LayerInfo:
        """This layer with its maps as NCHW (itself when they already are)."""
        if not any(self.hwc):
            return self

        def chw(shape: tuple[int, ...], last: bool) -> tuple[int, ...]:
            return (shape[2], shape[0], shape[1]) if last else shape

        return dataclasses.replace(self, in_shape=chw(self.in_shape, self.hwc[0]),
                                   out_shape=chw(self.out_shape, self.hwc[1]),
                                   hwc=(False, False))

    @property
    def stride(self) -> int:
        """Spatial down-sampling factor of the layer (1 when it keeps the resolution)."""
        if not self.spatial:
            return 1
        nchw = self.as_nchw()
        h_in, h_out = nchw.in_shape[1], nchw.out_shape[1]
        return max(1, round(h_in / h_out))

    @property
    def signature(self) -> str:
        """Short, stable description of the layer's shape contract (part of cache keys)."""
        fmt = "x".join
        hwc = "".join("hwc" if last else "chw" for last in self.hwc)
        return (f"in{fmt(map(str, self.in_shape))}-out{fmt(map(str, self.out_shape))}"
                f"-{self.act}" + (f"-{hwc}" if any(self.hwc) else ""))

    def to_dict(self) -> dict:
        return {"name": self.name, "in_shape": list(self.in_shape),
                "out_shape": list(self.out_shape), "act": self.act,
                **({"hwc": list(self.hwc)} if any(self.hwc) else {})}

    @classmethod
    def from_dict(cls, d: dict) -> LayerInfo:
        return cls(d["name"], tuple(d["in_shape"]), tuple(d["out_shape"]), d["act"],
                   hwc=tuple(d.get("hwc", (False, False))))


def channels_last_edges(shapes: Sequence[tuple[int, ...]]) -> list[bool]:
    """Which of a chain's maps (each a shape without the batch) are (H, W, C).

    Images are square, so an NCHW map has H == W: a map whose first two sizes agree and
    whose last differs is channels-last, one whose last two agree and first differs is
    NCHW. A map with all three sizes equal says nothing by itself; it takes the layout of
    the nearest map that does, the one after it first (a backbone changes layout at its
    stem, NCHW images to (H, W, C) maps, and keeps it to the head), else NCHW. Non-map
    shapes (tokens, logits) are False."""
    def kind(shape: tuple[int, ...]) -> bool | None:
        if len(shape) != 3 or shape[0] == shape[1] == shape[2]:
            return None
        if shape[1] == shape[2]:
            return False
        return True if shape[0] == shape[1] else None

    kinds = [kind(s) for s in shapes]
    out = []
    for i, (shape, k) in enumerate(zip(shapes, kinds, strict=True)):
        if k is None and len(shape) == 3:
            before = [v for v in kinds[:i] if v is not None]
            after = [v for v in kinds[i + 1:] if v is not None]
            k = after[0] if after else (before[-1] if before else False)
        out.append(bool(k))
    return out


class Chain(nn.Module):
    """A network written as ``head(layers[N-1](...layers[0](stem(x))))``.

    The modules are shared with the model that was decomposed (nothing is copied), so a
    chain of a teacher computes exactly what the teacher computes.
    """

    #: Name of the registered family that split the model (set by :func:`decompose`).
    family: str | None = None

    def __init__(self, stem: nn.Module, layers: Sequence[nn.Module], head: nn.Module,
                 names: Sequence[str] | None = None, info: Sequence[LayerInfo] = ()) -> None:
        super().__init__()
        self.stem = stem
        self.layers = nn.ModuleList(layers)
        self.head = head
        self.names = list(names) if names is not None else [f"layers.{i}" for i in
                                                             range(len(layers))]
        self.info = list(info)
        #: Per layer: does it write into its input (an ``inplace=True`` activation that is a
        #: layer of its own, as in torchvision's ResNet stem)? Set by :func:`decompose`.
        self.mutates_input = [False] * len(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)

    def _run(self, i: int, x: torch.Tensor) -> torch.Tensor:
        # A stored feature is the input of the next layer and of every candidate for it
        # (phase 1 and scoring): a layer that overwrites its input would hand them its
        # output instead. Copy only for those layers; the others pay nothing.
        return self.layers[i](x.clone() if self.mutates_input[i] else x)

    def features(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Return ``[x_0, ..., x_N]``: the stem output and every layer's output (with
        ``upto``, only ``[x_0, ..., x_upto]``)."""
        feats = [self.stem(x)]
        for i in range(len(self.layers) if upto is None else upto):
            feats.append(self._run(i, feats[-1]))
        return feats

    def forward_from(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Run layers ``i..N-1`` and the head on ``x`` (the input of layer ``i``, left as
        it is)."""
        for j in range(i, len(self.layers)):
            x = self._run(j, x)
        return self.head(x)


@dataclass(frozen=True)
class Family:
    """How to split one family of models into stem, layers and head."""

    name: str
    description: str
    matches: Callable[[nn.Module], bool]
    split: Callable[[nn.Module], tuple[nn.Module, list[tuple[str, nn.Module]], nn.Module]]
    act: Callable[[nn.Module], str]
    priority: int = 0  # higher is tried first; equal priorities: the later registered first


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


# --------------------------------------------------------------------------------------
# The generic path: any model whose forward calls its blocks one after another (torch.fx)
# --------------------------------------------------------------------------------------

# Plain containers are looked through: their children are the layers.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

_MARK_BY_HAND = (
    "Name the replaceable layers by hand: `model.layers: [name, ...]` in the config, or "
    "lana.decompose(model, x, layers=[...]) in Python, choosing modules that the rest of "
    "the model calls one after another with one tensor in and out (e.g. the blocks inside "
    "a residual stage rather than the stages around a skip connection); or pass an "
    "nn.Sequential(stem, *blocks, head)")


class _LayerTracer(torch.fx.Tracer):
    """Traces the model's own forward; layer modules are kept as single calls."""

    def __init__(self, layers: set[str] | None) -> None:
        super().__init__()
        self.layer_names = layers
        # With named layers, only the modules that hold one need tracing through: any
        # other module is one opaque call, so its forward may do what fx cannot trace
        # (branch on a tensor's value or shape) as it may in the default mode.
        self.holders = {name.rsplit(".", k)[0] for name in layers or ()
                        for k in range(1, name.count(".") + 1)}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.layer_names is not None:
            return qualname not in self.holders
        return type(m) not in _CONTAINERS


def _inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    return list(node.all_input_nodes)


def _segment(model: nn.Module, nodes: list[torch.fx.Node], inp: torch.fx.Node,
             out: torch.fx.Node, const: set[torch.fx.Node]) -> nn.Module:
    """A module computing ``out`` from ``inp`` by the given nodes (shares the weights).

    A segment that is one module call is that module itself (it keeps its class, name and
    parameters); anything else becomes an fx GraphModule over ``model``'s submodules.
    """
    if not nodes and out is inp:
        return nn.Identity()
    if (len(nodes) == 1 and nodes[0] is out and out.op == "call_module"
            and _inputs(out) == [inp] and not out.kwargs and len(out.args) == 1):
        return model.get_submodule(out.target)
    g = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {inp: g.placeholder("x")}

    def get(n: torch.fx.Node) -> torch.fx.Node:
        if n not in env:
            if n not in const:  # cannot happen for a checked chain; fail loudly if it does
                raise UnsupportedModelError(f"node {n.name!r} is used outside its segment")
            env[n] = g.node_copy(n, get)  # constants (attributes) are copied where used
        return env[n]

    for n in nodes:
        env[n] = g.node_copy(n, get)
    g.output(get(out))
    return torch.fx.GraphModule(model, g, class_name="Segment")


def split_fx(model: nn.Module, layers: Sequence[str] | None = None):
    """Split a torch.fx-traceable model into stem, layers and head.

    Without ``layers``, the layers are the modules that the model's forward calls at its
    top level (looking through nn.Sequential/ModuleList/ModuleDict); parameter-free modules
    called several times (a shared ReLU) are glue. With ``layers``, exactly the named modules
    are layers. Operations between two layers go with the layer before them. Raises
    :class:`UnsupportedModelError` naming the node that keeps the model from being a chain.
    """
    cls = f"{type(model).__module__}.{type(model).__name__}"
    wanted = _wanted_layers(model, layers)
    graph, n_concrete = _trace(model, wanted, cls)
    flow = _flow(graph, n_concrete, cls)
    layer_nodes = _layer_calls(model, flow, wanted)
    layer_nodes = _check_chain(model, flow, layer_nodes, wanted)
    return _build_chain(model, flow, layer_nodes)


def _wanted_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str] | None:
    """The named layers in order without repeats, or None to find them in the forward.

    Checked before tracing: the names decide which modules the tracer keeps whole, so a
    typo is reported as one, not as whatever tracing through that module runs into.
    """
    if layers is None:
        return None
    wanted = list(dict.fromkeys(layers))
    if not wanted:
        raise UnsupportedModelError("model.layers is empty; name at least one module")
    names = dict(model.named_modules())
    missing = [n for n in wanted if n not in names or not n]
    if missing:
        some = ", ".join(n for n in list(names)[1:13])
        raise UnsupportedModelError(
            f"{type(model).__name__} has no submodule(s) {missing} (model.layers); its "
            f"modules include: {some}, ...")
    return wanted


def _trace(model: nn.Module, wanted: list[str] | None,
           cls: str) -> tuple[torch.fx.Graph, int]:
    """The fx graph of ``model.forward`` and how many of its arguments kept their defaults.

    Optional forward arguments (flags, masks) are fixed to their defaults, so only the
    input tensor is traced; any failure becomes one :class:`UnsupportedModelError` that
    says what part of the model must be traceable.
    """
    import inspect

    params = list(inspect.signature(model.forward).parameters.values())[1:]
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    try:
        graph = _LayerTracer(set(wanted) if wanted is not None else None).trace(
            model, concrete_args=concrete or None)
    except Exception as exc:  # fx raises many types for untraceable code
        where = _user_line(exc)
        raise UnsupportedModelError(
            f"lana cannot split {cls}: no registered family matches it and torch.fx cannot "
            f"trace it ({type(exc).__name__}: {exc}){where}. The code that calls the "
            "layers one after another must be traceable (naming layers does not change "
            "that); code inside any other submodule need not be. Move the untraceable "
            "part into a submodule of its own, keep it from depending on tensor values, "
            "or pass an nn.Sequential(stem, *blocks, head)") from None
    return graph, len(concrete)


@dataclass
class _Flow:
    """A traced forward reduced to its data flow, what grouping and cutting it work on.

    ``values`` are the nodes the input's data flows through, in execution order (the input
    first), ``pos`` their index there; ``const`` the nodes computed from attributes and
    defaulted arguments alone, which any segment may copy; ``calls`` each module's calls
    among ``values``; ``result`` the node the forward returns.
    """

    cls: str
    inp: torch.fx.Node
    out_node: torch.fx.Node
    result: torch.fx.Node
    const: set[torch.fx.Node]
    values: list[torch.fx.Node]
    pos: dict[torch.fx.Node, int]
    calls: dict[str, list[torch.fx.Node]]

    def one_tensor(self, node: torch.fx.Node) -> bool:
        """Whether a call takes exactly one tensor, as a replaceable layer must."""
        return (len(node.args) == 1 and not node.kwargs
                and len([i for i in _inputs(node) if i not in self.const]) == 1)


def _flow(graph: torch.fx.Graph, n_concrete: int, cls: str) -> _Flow:
    """The data flow of a traced forward that takes one tensor and returns one."""
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1 + n_concrete:
        raise UnsupportedModelError(
            f"{cls}.forward takes {len(placeholders)} inputs without defaults; lana needs "
            "one input tensor")
    (out_node,) = [n for n in nodes if n.op == "output"]
    result = out_node.args[0]
    if not isinstance(result, torch.fx.Node):
        raise UnsupportedModelError(
            f"{cls}.forward returns {type(result).__name__}, not one tensor; lana needs "
            "a model with one output tensor")
    # Constants: attributes and what is computed from them alone (no data flows through).
    # fx keeps a placeholder (checked by asserts) for each defaulted argument: constants.
    const: set[torch.fx.Node] = set(placeholders[1:])
    for n in nodes:
        if n.op == "get_attr" or (n.op in ("call_function", "call_method")
                                  and all(i in const for i in _inputs(n))):
            const.add(n)
    values = [n for n in nodes if n.op != "output" and n not in const]
    pos = {n: i for i, n in enumerate(values)}
    calls: dict[str, list[torch.fx.Node]] = {}
    for n in values:
        if n.op == "call_module":
            calls.setdefault(n.target, []).append(n)
    return _Flow(cls=cls, inp=placeholders[0], out_node=out_node, result=result,
                 const=const, values=values, pos=pos, calls=calls)


def _layer_calls(model: nn.Module, flow: _Flow,
                 wanted: list[str] | None) -> list[torch.fx.Node]:
    """The module calls that are layers, in order, before checking that they form a chain.

    With ``wanted``, exactly the calls of the named modules. Otherwise every module call
    except glue (a parameter-free module called several times) and, at the ends, a
    classifier-like call or a small stem that takes more than one tensor.
    """
    cls, values, calls = flow.cls, flow.values, flow.calls

    def stateless(target: str) -> bool:
        m = model.get_submodule(target)
        return not any(True for _ in m.parameters()) and not any(True for _ in m.buffers())

    if wanted is not None:
        unused = [n for n in wanted if n not in calls]
        if unused:
            raise UnsupportedModelError(
                f"model.layers names {unused}, but {cls}.forward never calls them (as a "
                "whole module); name modules that forward calls")
        layer_nodes = [n for n in values if n.op == "call_module" and n.target in wanted]
    else:
        layer_nodes = [n for n in values if n.op == "call_module"
                       and not (len(calls[n.target]) > 1 and stateless(n.target))]
    if wanted is None:
        # timm's newer heads take a flag (self.head(x, pre_logits=...)), some patch
        # embeddings a mask: such calls at the end of the chain (if classifier-like)
        # belong to the head, a small first call to the stem, which stay as they are.
        # Anywhere else they still end the split: the replaceable blocks would otherwise
        # vanish into a stem or head.
        while (layer_nodes and not flow.one_tensor(layer_nodes[-1])
               and _head_like(model.get_submodule(layer_nodes[-1].target))):
            layer_nodes.pop()
        if (layer_nodes and not flow.one_tensor(layer_nodes[0])
                and _stem_like(model.get_submodule(layer_nodes[0].target))):
            layer_nodes.pop(0)
    repeated = sorted({n.target for n in layer_nodes if len(calls[n.target]) > 1})
    if repeated:
        raise UnsupportedModelError(
            f"{cls}.forward calls module(s) {repeated} more than once; a replaceable layer "
            f"must be called once. {_MARK_BY_HAND}.")
    if not layer_nodes:
        raise UnsupportedModelError(f"{cls}.forward calls no submodule; nothing to replace")
    return layer_nodes


def _check_chain(model: nn.Module, flow: _Flow, layer_nodes: list[torch.fx.Node],
                 wanted: list[str] | None) -> list[torch.fx.Node]:
    """The layers, checked to be the only path from input to output, in order.

    A branch among the last few, classifier-like calls (a distilled second head,
    (head(x) + head_dist(x)) / 2, as DeiT-style EfficientFormer, LeViT and SwiftFormer
    have) ends the layers there: those calls join the head. Any other failed check raises.
    """
    values, pos = flow.values, flow.pos
    last_use = {n: max((pos[u] for u in n.users if u in pos), default=pos[n])
                for n in values}
    for n in values:  # the model's output stays live to the end
        if n is flow.result:
            last_use[n] = len(values)
    k = 0
    while k < len(layer_nodes):
        try:
            _check_layer(flow, last_use, layer_nodes[k])
        except UnsupportedModelError:
            # Replaceable blocks never join the head.
            tail = layer_nodes[k:]
            if wanted is not None or k == 0 or len(tail) > 4 or not all(
                    _head_like(model.get_submodule(n.target)) for n in tail):
                raise
            # The layers before k passed their checks, which do not depend on the
            # layers after them: nothing is left to check.
            layer_nodes = layer_nodes[:k]
            break
        k += 1
    return layer_nodes


def _check_layer(flow: _Flow, last_use: dict[torch.fx.Node, int],
                 L: torch.fx.Node) -> None:
    """Raise unless ``L`` takes one tensor and nothing but its input (before it) and its
    output (after it) is live: otherwise replacing it would cut a skip or a branch."""
    if not flow.one_tensor(L):
        raise UnsupportedModelError(
            f"layer {L.target!r} of {flow.cls} is called with {len(L.args)} positional and "
            f"{len(L.kwargs)} keyword arguments; a layer takes exactly one tensor. "
            f"{_MARK_BY_HAND}.")
    data_in = [i for i in _inputs(L) if i not in flow.const]
    _check_cut(flow, last_use, flow.pos[L] - 1, data_in[0], f"across layer {L.target!r}")
    _check_cut(flow, last_use, flow.pos[L], L, f"after layer {L.target!r}")


def _check_cut(flow: _Flow, last_use: dict[torch.fx.Node, int], after: int,
               expected: torch.fx.Node, where: str) -> None:
    """Raise unless only ``expected`` is live between ``values[after]`` and the next
    value, naming the first other live value and the node that uses it later."""
    values, pos = flow.values, flow.pos
    live = [v for v in values[:after + 1] if last_use[v] > after and v is not expected]
    if live:
        v = live[0]
        user = min((u for u in v.users if u in pos and pos[u] > after), key=pos.get,
                   default=flow.out_node)
        src = f"the output of {v.target!r}" if v.op == "call_module" else (
            "the model's input" if v.op == "placeholder" else f"node {v.name!r}")
        raise UnsupportedModelError(
            f"{flow.cls} is not a chain of layers: node {user.name!r} "
            f"({_describe_node(user)}) uses {src} {where}, so that layer is not the only "
            f"path from input to output (a skip connection or a branch). {_MARK_BY_HAND}.")


def _build_chain(model: nn.Module, flow: _Flow, layer_nodes: list[torch.fx.Node]):
    """Stem, named layers and head as modules over ``model``'s submodules.

    Each layer's segment runs from its call up to the next layer's call, so operations
    between two layers go with the layer before them.
    """
    values, pos, const = flow.values, flow.pos, flow.const
    firsts = [_inputs(L)[0] for L in layer_nodes]
    stem = _segment(model, values[1:pos[layer_nodes[0]]], flow.inp, firsts[0], const)
    named: list[tuple[str, nn.Module]] = []
    for k, L in enumerate(layer_nodes):
        end = pos[layer_nodes[k + 1]] if k + 1 < len(layer_nodes) else pos[L] + 1
        out = firsts[k + 1] if k + 1 < len(layer_nodes) else L
        named.append((str(L.target), _segment(model, values[pos[L]:end], firsts[k], out,
                                               const)))
    head = _segment(model, values[pos[layer_nodes[-1]] + 1:], layer_nodes[-1], flow.result,
                    const)
    return stem, named, head


#: Modules a classifier head is made of (see :func:`_head_like`).
_HEAD_PARTS = (nn.Linear, nn.Identity, nn.Flatten, nn.LayerNorm, nn.GroupNorm,
               nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
               nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
               nn.AdaptiveMaxPool2d)


def _head_like(module: nn.Module) -> bool:
    """Whether ``module`` is (part of) a classifier head: made only of linear layers (two at
    most, as timm's NormMlpClassifierHead), 1x1 convolutions (a conv_head), norms, dropout,
    pooling, flattening and activations. A spatial convolution, or a transformer or
    MLP-Mixer block (four linear layers, a layer scale), is not."""
    leaves = [m for m in module.modules() if not any(True for _ in m.children())]
    if sum(isinstance(m, nn.Linear) for m in leaves) > 2 or any(
            True for m in module.modules() if any(m.children())
            for _ in m.parameters(recurse=False)):
        return False
    return all(isinstance(m, _HEAD_PARTS) or _is_activation(m)
               or isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)  # a conv_head
               or not any(True for _ in m.parameters(recurse=False)) for m in leaves)


def _stem_like(module: nn.Module) -> bool:
    """Whether ``module`` is small enough to be (part of) a stem, e.g. a patch embedding:
    at most two modules with weights (a conv and a norm). A whole encoder is not."""
    return sum(1 for m in module.modules()
               if any(True for _ in m.parameters(recurse=False))) <= 2


def _user_line(exc: BaseException) -> str:
    """`` at FILE:LINE: `source` `` for the innermost frame of the traceback outside torch."""
    import linecache
    import os

    torch_dir = os.path.dirname(torch.__file__)
    frame = None
    tb = exc.__traceback__
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(torch_dir):
            frame = tb
        tb = tb.tb_next
    if frame is None or frame.tb_frame.f_code.co_filename == __file__:
        return ""
    name, line = frame.tb_frame.f_code.co_filename, frame.tb_lineno
    source = linecache.getline(name, line).strip()
    return f" at {name}:{line}" + (f": `{source}`" if source else "")


def _describe_node(n: torch.fx.Node) -> str:
    if n.op == "call_module":
        return f"module {n.target}"
    if n.op == "output":
        return "the model's output"
    return f"{n.op} {getattr(n.target, '__name__', n.target)}"


register_family(Family(
    name="fx-chain",
    description="any other model whose forward calls its blocks one after another "
                "(torch.fx; name the layers with model.layers otherwise)",
    matches=lambda m: True,
    split=split_fx,
    act=_act_name,
    priority=-100,  # the fallback: every specific family is tried first
))


def find_family(model: nn.Module) -> Family:
    """Return the registered family that can split ``model``, or raise a clear error."""
    ordered = reversed(list(FAMILIES.values()))
    for family in sorted(ordered, key=lambda f: -f.priority):  # stable: keeps the order
        if family.matches(model):
            return family
    supported = "; ".join(f"{f.name}: {f.description}" for f in FAMILIES.values())
    raise UnsupportedModelError(
        f"lana cannot split a {type(model).__module__}.{type(model).__name__} into a chain "
        f"of replaceable layers. Supported families: {supported}. For your own model, pass "
        "an nn.Sequential(stem, *blocks, head) whose children each take and return one tensor."
    )


# The hidden-layer activations of torch and timm (by class name, so timm's memory-efficient
# variants count too). Gates (sigmoid, tanh) and softmax are not what a block ends with.
_ACTIVATIONS = {"ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "CELU", "SELU", "SiLU",
                "Swish", "SwishMe", "GELU", "GELUTanh", "QuickGELU", "Mish", "MishMe",
                "Hardswish", "HardSwish", "HardSwishMe", "Softplus"}


def _is_activation(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ in _ACTIVATIONS and cls.__module__.startswith(("torch.nn", "timm."))


def _run_recording_end(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``layer(x)`` and whether its output is an activation's: the tensor the last
    activation module returned, or (a functional ``relu`` at the end) non-negative with
    both exact zeros and positive values, which a linear output practically never has (an
    all-zero output, as random weights give on a zero input, says nothing)."""
    produced: list[torch.Tensor] = []

    def hook(module: nn.Module, args, out) -> None:
        if isinstance(out, torch.Tensor):
            produced.append(out)

    handles = [m.register_forward_hook(hook) for m in layer.modules() if _is_activation(m)]
    try:
        y = layer(x)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(y, torch.Tensor):
        return y, False
    if produced and produced[-1] is y:
        return y, True
    return y, bool(y.numel() > 0 and y.min() >= 0 and (y == 0).any() and (y > 0).any())


def _check_input_size(model: nn.Module, example_input: torch.Tensor) -> None:
    """Raise ConfigError when the whole model fails on ``example_input`` but runs at a larger
    size: then a layer failing says nothing about the model's shape, the input is too small
    (an Inception's late convolutions) or not the size a patch embedding is fixed to."""
    def fails(x: torch.Tensor) -> BaseException | None:
        try:
            model(x)
        except Exception as exc:
            return exc
        return None

    exc = fails(example_input)
    if exc is None or example_input.dim() != 4:
        return
    cfg = getattr(model, "pretrained_cfg", None) or {}
    own = cfg.get("input_size", (0, 0, 0))[-1] if isinstance(cfg, dict) else 0
    h = example_input.shape[-1]
    for size in dict.fromkeys(s for s in (own, 224, 2 * h) if s and s > h):
        bigger = torch.zeros(*example_input.shape[:2], size, size)
        if fails(bigger) is None:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConfigError(
                f"{type(model).__name__} does not run on an input of shape "
                f"{tuple(example_input.shape)} ({type(exc).__name__}: {first}), but does at "
                f"{size}x{size}: use an input size the model takes (data.image_size in the "
                "config, --input for list-models)") from None


def decompose(model: nn.Module, example_input: torch.Tensor,
              layers: Sequence[str] | None = None) -> Chain:
    """Split ``model`` into a :class:`Chain` and record every layer's input/output shape.

    ``example_input`` is a batch (any batch size) that the model accepts; it is only used to
    trace shapes. The chain shares modules with ``model``; its output equals the model's.
    ``layers`` names the replaceable layers by hand (qualified module names, e.g.
    ``["blocks.0", "blocks.1"]``); the model is then traced with torch.fx and everything
    between the named layers must pass one tensor along (see :func:`split_fx`).
    """
    if layers is not None:
        family = FAMILIES["fx-chain"]
        stem, named_layers, head = split_fx(model, layers)
    else:
        family = find_family(model)
        stem, named_layers, head = family.split(model)
    if not named_layers:
        raise UnsupportedModelError(f"{type(model).__name__} has no layers to replace")
    act = family.act(model)
    names = [n for n, _ in named_layers]
    chain = Chain(stem, [m for _, m in named_layers], head, names)
    chain.family = family.name
    was_training = model.training
    chain.eval()
    info: list[LayerInfo] = []
    if not isinstance(example_input, torch.Tensor):
        raise ConfigError(
            f"example_input must be a batch tensor the model accepts, e.g. "
            f"torch.zeros(1, 3, 224, 224), not a {type(example_input).__name__}")
    with torch.no_grad():
        try:
            x = stem(example_input)
        except Exception as exc:
            raise ConfigError(
                f"the example input of shape {tuple(example_input.shape)} does not fit the "
                f"stem of {type(model).__name__}: {exc}. Pass a batch (N, C, H, W) with the "
                "channels and a resolution the model takes.") from None
        for name, layer in named_layers:
            if not isinstance(x, torch.Tensor):
                raise UnsupportedModelError(
                    f"layer {name!r} of {type(model).__name__} receives a "
                    f"{type(x).__name__}, not one tensor; lana needs single-tensor layers")
            version = x._version  # bumped by any in-place write, whatever the values
            try:
                y, ends = _run_recording_end(layer, x)
            except Exception as exc:
                _check_input_size(model, example_input)
                raise UnsupportedModelError(
                    f"layer {name!r} ({type(layer).__name__}) fails on the output of the "
                    f"previous layer, shape {tuple(x.shape)}: {exc}. The model is not a plain "
                    "chain; split it by hand into nn.Sequential(stem, *blocks, head)."
                ) from None
            if not isinstance(y, torch.Tensor):
                raise UnsupportedModelError(
                    f"layer {name!r} ({type(layer).__name__}) returns a {type(y).__name__}; "
                    "lana needs layers that return one tensor")
            info.append(LayerInfo(name, tuple(x.shape[1:]), tuple(y.shape[1:]), act,
                                  ends_with_act=ends))
            chain.mutates_input[len(info) - 1] = x._version != version
            x = y
    edges = channels_last_edges([info[0].in_shape, *(i.out_shape for i in info)])
    info = [dataclasses.replace(i, hwc=(edges[n], edges[n + 1])) if any(edges[n:n + 2])
            else i for n, i in enumerate(info)]
    chain.info = info
    chain.train(was_training)
    model.train(was_training)
    return chain
