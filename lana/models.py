"""Teacher models: a registry of builders (timm's and torchvision's models and lana's own
small ones)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from lana.errors import ConfigError

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


def _import_callable(target: str) -> Callable[..., object]:
    """``<module>:<attr>`` -> the object; ``<module>`` is a dotted name or a .py file."""
    import hashlib
    import importlib
    import importlib.util
    import os
    import sys

    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise ConfigError(f"model.name 'python:{target}' must be 'python:<module>:<callable>' "
                          "or 'python:<path/to/file.py>:<callable>', e.g. "
                          "'python:my_nets.py:Net'")
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            path = os.path.abspath(where)
            if not os.path.isfile(path):
                raise ConfigError(f"model.name 'python:{target}': there is no file {path} "
                                  "(a relative path is taken from the current directory)")
            # Named by path and content: an edited file is imported afresh (a notebook
            # need not restart), an unchanged one once.
            with open(path, "rb") as f:
                key = hashlib.sha256(path.encode() + b"\0" + f.read()).hexdigest()[:16]
            name = f"lana_user_model_{key}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module  # dataclasses and pickling look a module up
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
        else:
            # As `python -m` does: modules beside the user (the console script lacks it).
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.append(os.getcwd())
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"model.name 'python:{target}': importing {where!r} failed "
                          f"({type(exc).__name__}: {exc}); a module must be importable from "
                          "the current directory or PYTHONPATH, a file given by its "
                          "path") from exc
    if not hasattr(module, attr):
        found = sorted(k for k, v in vars(module).items() if not k.startswith("_")
                       and (isinstance(v, type) and issubclass(v, nn.Module)
                            or callable(v) and getattr(v, "__module__", None)
                            == module.__name__))
        raise ConfigError(f"model.name 'python:{target}': {where} has no {attr!r}; it "
                          f"defines {found}")
    return getattr(module, attr)


def _python_model(target: str, **kwargs) -> nn.Module:
    """Your own builder or nn.Module class, ``python:<module or file.py>:<callable>``,
    called with ``model.kwargs``; the data's ``num_classes`` and ``in_chans`` are added only
    where it takes them (by name or through ``**kwargs``)."""
    import inspect

    if ":" not in target:
        # lana.accelerate(model, ...) labels a run with the model's class this way.
        raise ConfigError(
            f"model.name 'python:{target}' labels a model that was handed to lana as an "
            f"object (lana.accelerate or Run(teacher=...)), so lana cannot build it: pass "
            f"an instance again (load_student(path, teacher={target}(...))), or name where "
            f"it is defined: 'python:<file.py or dotted.module>:{target}'")
    fn = _import_callable(target)
    if not callable(fn):
        raise ConfigError(f"model.name 'python:{target}' names a {type(fn).__name__}, not a "
                          "class or function that builds the model")
    try:
        params = inspect.signature(fn).parameters.values()
        takes = {p.name for p in params} | (
            {"num_classes", "in_chans"} if any(p.kind is p.VAR_KEYWORD for p in params)
            else set())
    except (TypeError, ValueError):  # no signature (a builtin): pass everything
        takes = {"num_classes", "in_chans"}
    for key in _DATA_KWARGS - takes:
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
    import hashlib
    import inspect

    source, _, target = name.partition(":")
    if source != "python" or ":" not in target:  # not python:, or accelerate()'s label
        return None
    try:
        path = inspect.getsourcefile(_import_callable(target))
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except (TypeError, OSError):  # defined outside a readable .py file
        return None


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
