"""Benchmark: which timm classifiers does lana take as they are, and how does it refuse the
others?

Usage: python benchmarks/timm_coverage.py [--models resnet18 swin_tiny_patch4_window7_224]
           [--image-size 64] [--torchvision] [--no-write]

Default models: one per timm model module (the smallest-named of each: ``atto``, ``tiny``,
``b0``, ``18``, ... first), random weights, 10 classes; with ``--torchvision``, every
torchvision classification model instead (``torchvision:<name>``, its own section). Each is split by
:func:`lana.decompose` at ``--image-size`` px (models with a fixed patch-embedding size at
their own input size), and every candidate of its family's default space is built for
every layer as phase 1 builds it (:func:`lana.distill.phase1.build_candidate`, teacher weight
inheritance included) and kept only if it maps the layer's input shape to its output shape
(:func:`lana.space.ops.fitting_candidates`, as the pipeline does). Reported per model: the
family that split it, layers, channels-last layers, candidates that fit out of those that
apply, log10 of the search space; or the error lana gives. A crash (any exception that is
not one of lana's own errors) is a bug. Rewrites the "timm coverage" section of
benchmarks/RESULTS.md with the command and machine.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import torch
from _results import machine, write_section

from lana.distill.phase1 import build_candidate
from lana.errors import LanaError
from lana.model.decompose import decompose
from lana.space.ops import (
    fitting_candidates,
    layer_candidates,
    log10_space_size,
    resolve_space,
    space_specs,
)

SECTION = "## timm coverage: which models lana splits by itself"
TV_SECTION = "## torchvision coverage: which models lana splits by itself"
_SMALL = ("atto", "femto", "pico", "nano", "tiny", "small", "b0", "18", "xxs", "xs", "050",
          "100")


def default_models() -> list[str]:
    """One model per timm model module, the smallest-named first."""
    import timm
    from timm.models import _registry

    modules = collections.defaultdict(list)
    for name in timm.list_models():
        modules[str(_registry._model_to_module.get(name))].append(name)
    return [sorted(names, key=lambda n: (not any(h in n for h in _SMALL), len(n)))[0]
            for _, names in sorted(modules.items())]


def _size(model: torch.nn.Module, default: int) -> int:
    """A model that fixes its patch embedding's image size runs at that size."""
    if getattr(model, "patch_embed", None) is None:
        return default
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3, 224, 224))[-1])


def check(name: str, image_size: int, max_size: int = 320, source: str = "timm") -> dict:
    """Split ``name`` at ``image_size``; where lana says the model runs only at a larger
    size (up to ``max_size``), at that size, as a user told so would."""
    import re

    rec = _check(name, image_size, source)
    larger = re.search(r"but does at (\d+)x", rec.get("error", ""))
    if larger and int(larger.group(1)) <= max_size:
        rec = {**_check(name, int(larger.group(1)), source), "retried": True}
    return rec


def _check(name: str, image_size: int, source: str) -> dict:
    from lana.model.zoo import create_model

    t0 = time.time()
    rec: dict = {"model": name}
    try:
        # lana's own model sources: timm (pretrained=False) or torchvision (weights=None)
        model = create_model(f"{source}:{name}", num_classes=10).eval()
        size = _size(model, image_size)
        chain = decompose(model, torch.randn(2, 3, size, size))
        specs = space_specs(resolve_space("auto", chain.family))
        applicable = sum(len(layer_candidates(info, specs)) for info in chain.info)
        fits = fitting_candidates(chain.info, specs,
                                  lambda i, s: build_candidate(chain, i, s))
        rec.update(size=size, family=chain.family, layers=len(chain.layers),
                   hwc_layers=sum(any(info.hwc) for info in chain.info),
                   fit=sum(map(len, fits)), applicable=applicable,
                   log10_space=round(log10_space_size(fits), 1))
    except LanaError as exc:
        rec["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    except Exception as exc:  # a bug in lana (or timm): the table says so
        rec["crash"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    rec["seconds"] = round(time.time() - t0, 1)
    return rec


def _reason(error: str) -> str:
    """The kind of refusal, for the summary."""
    for needle, kind in (("but does at", "runs only at an input size above 320 px"),
                         ("positional and", "a layer called with extra arguments"),
                         ("not a chain of layers", "a branch or skip across layers"),
                         ("more than once", "a module called more than once"),
                         ("torch.fx cannot trace", "forward not traceable by torch.fx"),
                         ("fails on the output", "a layer fails on the previous output"),
                         ("returns a", "a layer returns more than one tensor")):
        if needle in error:
            return kind
    return "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--torchvision", action="store_true",
                    help="every torchvision classification model instead of timm's")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    source, section = ("torchvision", TV_SECTION) if args.torchvision else ("timm", SECTION)
    if args.models:
        models = args.models
    elif args.torchvision:
        import torchvision

        models = torchvision.models.list_models(module=torchvision.models)
    else:
        models = default_models()
    t0 = time.time()
    rows = []
    for name in models:
        rec = check(name, args.image_size, source=source)
        rows.append(rec)
        what = rec.get("family") or rec.get("error") or rec.get("crash")
        print(f"{name}: {what[:150]} [{rec['seconds']} s]", flush=True)
    split = [r for r in rows if "family" in r]
    refused = [r for r in rows if "error" in r]
    crashed = [r for r in rows if "crash" in r]
    reasons = collections.Counter(_reason(r["error"]) for r in refused)
    cmd = "python benchmarks/timm_coverage.py" + (
        " " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    lines = [
        section, "",
        f"Command: `{cmd}`. Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}; "
        f"{time.time() - t0:.0f} s; {source} {__import__(source).__version__}.", "",
        f"{len(models)} {source} models ("
        + ("one per model module, " if source == "timm" and not args.models else "")
        + "random weights, 10 classes, "
        f"{args.image_size} px unless the model fixes its size, or at the size lana's "
        f"error names when the model does not run at {args.image_size} px, up to 320 px: "
        f"{sum('retried' in r for r in rows)} models): **{len(split)} split by "
        f"lana itself**, {len(refused)} refused with a lana error, **{len(crashed)} "
        "crashed** (a crash is a bug). Candidates: the family's default space, built as "
        "phase 1 builds them and kept when they map the layer's shapes (the pipeline "
        "drops the others, with a log line).", "",
        "Why the refused ones were refused (each error names the module and says to name "
        "the replaceable layers by hand, `model.layers`): "
        + "; ".join(f"{k}: {v}" for k, v in reasons.most_common()) + ".", "",
        "| model | px | family | layers | (H, W, C) layers | candidates that fit / apply "
        "| log10 space |", "|---|---|---|---|---|---|---|"]
    for r in split:
        lines.append(f"| `{r['model']}` | {r['size']} | {r['family']} | {r['layers']} | "
                     f"{r['hwc_layers']} | {r['fit']} / {r['applicable']} | "
                     f"{r['log10_space']} |")
    lines += ["", "| model | refused with |", "|---|---|"]
    for r in refused + crashed:
        text = r.get("error") or f"CRASH {r['crash']}"
        lines.append(f"| `{r['model']}` | {text[:220].replace('|', '/')} |")
    body = "\n".join(lines) + "\n"
    if args.no_write:
        print(body)
    else:
        write_section(section, body)
        print(f"wrote the '{section[3:]}' section of benchmarks/RESULTS.md")
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
