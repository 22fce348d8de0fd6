"""Teacher models: a registry of builders (timm's models and lana's own small ones)."""

from __future__ import annotations

from collections.abc import Callable

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


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a teacher architecture (random weights): ``timm:<name>`` or ``lana:<name>``."""
    source, _, model_name = name.partition(":")
    if source == "timm" and model_name:
        import timm

        if model_name not in timm.list_models():
            raise ConfigError(f"model.name {name!r}: timm has no model {model_name!r} "
                              "(see timm.list_models())")
        # Never download: weights come from model.weights or lana's own training.
        return timm.create_model(model_name, pretrained=False, **kwargs)
    if source == "lana" and model_name in MODELS:
        return MODELS[model_name](**kwargs)
    raise ConfigError(f"model.name {name!r} is unknown: use 'timm:<model>' (e.g. "
                      f"'timm:efficientnet_b0') or one of "
                      f"{['lana:' + n for n in sorted(MODELS)]}")
