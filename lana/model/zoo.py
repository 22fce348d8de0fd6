"""Teacher models: a registry of builders (timm's and torchvision's models and lana's own
small ones)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lana.errors import ConfigError
from lana.model.usercode import code_digest, import_callable, takes

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``fn`` available as model ``lana:<name>``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = fn
        return fn

    return deco


@register_model("tiny_effnet")
def tiny_effnet(num_classes: int = 10, in_chans: int = 3, **kwargs) -> nn.Module:
    """An EfficientNet-B0-shaped network for 32 px images, built by timm's EfficientNet
    builder from the arch string below: 11 MBConv/DS layers, SiLU, SE in later stages.
    Small enough to train on a 2-core CPU in a couple of minutes."""
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet

    arch = [["ds_r1_k3_s1_e1_c16"], ["ir_r2_k3_s2_e4_c24"], ["ir_r3_k5_s1_e4_c32_se0.25"],
            ["ir_r3_k3_s2_e4_c64_se0.25"], ["ir_r2_k5_s1_e4_c96_se0.25"]]
    return EfficientNet(decode_arch_def(arch), num_classes=num_classes, in_chans=in_chans,
                        stem_size=16, num_features=256, act_layer=nn.SiLU, **kwargs)


def _torchvision_model(model_name: str, in_chans: int = 3, **kwargs) -> nn.Module:
    """torchvision's ``model_name`` (random weights). torchvision models take RGB only;
    for ``in_chans`` other than 3 the first convolution is rebuilt for that many channels,
    as timm's ``in_chans`` does (nothing is lost: the weights are random or loaded after)."""
    import torchvision

    if model_name not in torchvision.models.list_models():
        raise ConfigError(f"model.name 'torchvision:{model_name}': torchvision has no model "
                          f"{model_name!r} (see torchvision.models.list_models())")
    # weights=None: never download; weights come from model.weights or lana's training.
    model = torchvision.models.get_model(model_name, weights=None, **kwargs)
    if in_chans != 3:
        parent, attr, conv = next(
            ((p, a, m) for p in model.modules() for a, m in p.named_children()
             if isinstance(m, nn.Conv2d) and m.in_channels == 3), (None, None, None))
        if conv is None:
            raise ConfigError(f"torchvision:{model_name} has no 3-channel convolution to "
                              f"adapt to {in_chans} input channels")
        setattr(parent, attr, nn.Conv2d(
            in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode))
    return model


def _timm_model(model_name: str, **kwargs) -> nn.Module:
    import timm

    if model_name not in timm.list_models():
        raise ConfigError(f"model.name 'timm:{model_name}': timm has no model {model_name!r} "
                          "(see timm.list_models())")
    # Never download: weights come from model.weights or lana's own training.
    return timm.create_model(model_name, pretrained=False, **kwargs)


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"model.name {name!r} is unknown: use 'timm:<model>' (e.g. "
                       f"'timm:efficientnet_b0'), 'torchvision:<model>' (e.g. "
                       f"'torchvision:resnet18'), 'python:<module or file.py>:<callable>' "
                       f"(your own, e.g. 'python:my_nets.py:Net') or one of "
                       f"{['lana:' + n for n in sorted(MODELS)]}")


def _python_model(target: str, **kwargs) -> nn.Module:
    """Your own builder or nn.Module class, ``python:<module or file.py>:<callable>``,
    called with ``model.kwargs``; the data's ``num_classes`` and ``in_chans`` are added only
    where it takes them (by name or through ``**kwargs``)."""
    if ":" not in target:
        # lana.accelerate(model, ...) labels a run with the model's class this way.
        raise ConfigError(
            f"model.name 'python:{target}' labels a model that was handed to lana as an "
            f"object (lana.accelerate or Run(teacher=...)), so lana cannot build it: pass "
            f"an instance again (load_student(path, teacher={target}(...))), or name where "
            f"it is defined: 'python:<file.py or dotted.module>:{target}'")
    fn = import_callable(target, "model.name", (nn.Module,))
    if not callable(fn):
        raise ConfigError(f"model.name 'python:{target}' names a {type(fn).__name__}, not a "
                          "class or function that builds the model")
    for key in _DATA_KWARGS - takes(fn, _DATA_KWARGS):
        kwargs.pop(key, None)
    try:
        model = fn(**kwargs)
    except Exception as exc:
        raise ConfigError(f"model.name 'python:{target}': calling it with {kwargs} raised "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name 'python:{target}' returned a {type(model).__name__}, "
                          "not a torch.nn.Module")
    return model


def source_digest(name: str) -> str | None:
    """For ``python:`` models, the SHA-256 of the file that defines the callable, so that a
    teacher trained from an earlier version of your code is not reused; else None."""
    return code_digest(name, "model.name")


#: What the pipeline adds to ``model.kwargs`` from the data (see :data:`SOURCES`).
_DATA_KWARGS = frozenset({"num_classes", "in_chans"})


def _lana_model(model_name: str, **kwargs) -> nn.Module:
    if model_name not in MODELS:
        raise _unknown(f"lana:{model_name}")
    return MODELS[model_name](**kwargs)


#: ``model.name`` is ``<source>:<model>``; each source builds its models with
#: ``num_classes`` and ``in_chans`` (the pipeline passes the data's).
SOURCES: dict[str, Callable[..., nn.Module]] = {
    "timm": _timm_model, "torchvision": _torchvision_model, "lana": _lana_model,
    "python": _python_model}


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a teacher architecture (random weights): ``timm:<name>``,
    ``torchvision:<name>``, ``lana:<name>`` or your own, ``python:<module>:<callable>``."""
    source, _, model_name = name.partition(":")
    if source not in SOURCES or not model_name:
        raise _unknown(name)
    return SOURCES[source](model_name, **kwargs)
