"""Does the bigger pretrained network learn this task better? (issue 33, the sibling miss)

In ``pretrained.py`` the Lite0 and Lite1 siblings, fine-tuned with KD for 2.5 epochs, matched
or beat their 2-epoch Lite2 teacher (86.98 % / 86.93 % vs 86.82 %), so no student of that
teacher could beat them. LANA's premise is a teacher *better* than its smaller siblings.
This study fine-tunes Lite0, Lite1 and Lite2 from their ImageNet weights on the benchmark's
data (Fashion-MNIST as RGB at 64 px, the same 10k training images, the full 10k test set)
with one recipe each -- cross-entropy alone, no KD, so that no network borrows another's
accuracy -- and reports test accuracy and wall time, over:

- ``--lrs``: learning rates (the benchmark's AdamW 1e-3, a fine-tuning-sized 3e-4, a
  faster 3e-3: does the rate wash out the ImageNet features that make Lite2 better?);
- ``--epochs``: the benchmark's 2 epochs and longer (is the gap a matter of training, i.e.
  does the larger network pull ahead when the smaller ones stop gaining?);
- ``--train-samples``: fewer images for more epochs, the same number of steps (does the
  larger pretrained network transfer better when data, not steps, is short?).

Each run is one cached step in ``benchmarks/work/lite-capacity/`` (a re-run resumes);
results in ``benchmarks/results/lite_capacity.json`` and the RESULTS.md section "Lite2
against its siblings". Training tolerates other work on the machine (no timing here).

    python benchmarks/lite_capacity.py --models lite0 lite1 lite2 --lrs 1e-3 3e-4 --epochs 2
    python benchmarks/lite_capacity.py --models lite0 lite2 --lrs 3e-4 --epochs 6
    python benchmarks/lite_capacity.py --render
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _results import cached_json, machine, write_section  # noqa: E402

RESULT = HERE / "results" / "lite_capacity.json"
HEADING = "## Lite2 against its siblings: fine-tuning from ImageNet (issue 33)"
BATCH = 64
DEFAULT_IMAGES = 10000  # pretrained.py's training set
DEFAULT_PX = 64  # and its input size


def train_one(name: str, lr: float, epochs: float, seed: int, work: Path,
              threads: int, train_samples: int | None = None,
              image_size: int | None = None) -> dict:
    """Fine-tune ``tf_efficientnet_<name>`` from its ImageNet weights with CE alone; its
    test accuracy on the full test set and the wall time."""
    import torch
    from pretrained import run_config, weights_file

    from lana.config import config_from_dict
    from lana.core.io import load_matching
    from lana.distill.train import Recipe, evaluate, train_classifier
    from lana.model.data import load_data
    from lana.model.zoo import create_model

    torch.set_num_threads(threads)
    raw = run_config("full", work)
    if train_samples is not None:
        raw["data"]["train_samples"] = train_samples
    if image_size is not None:
        raw["data"]["image_size"] = image_size
    cfg = config_from_dict(raw, "lite-capacity")
    splits = load_data(cfg.data, seed=cfg.seed)
    torch.manual_seed(seed)
    model = create_model(f"timm:tf_efficientnet_{name}", num_classes=splits.num_classes,
                         in_chans=splits.in_chans)
    load_matching(model, weights_file(work, name))
    start = time.time()
    stats = train_classifier(model, splits.train,
                             Recipe(epochs=epochs, batch_size=BATCH, lr=lr, seed=seed),
                             description=f"{name} lr {lr:g} {epochs:g} ep", distributed=False)
    seconds = time.time() - start
    test = evaluate(model, splits.test)
    return {"model": name, "lr": lr, "epochs": epochs, "seed": seed, "batch_size": BATCH,
            "train_images": len(splits.train), "test_images": len(splits.test),
            "image_size": cfg.data.image_size,
            "train_loss": stats["train_loss"], "accuracy": test["accuracy"],
            "test_loss": test["loss"], "seconds": seconds, "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _px(row: dict) -> int:
    return row.get("image_size", DEFAULT_PX)  # rows made before the option: 64 px


def table(rows: list[dict]) -> str:
    lines = ["| model | px | training images | lr | epochs | test acc % | test loss | train loss "
             "| min |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (_px(r), -r["train_images"], r["epochs"], r["lr"],
                                         r["model"])):
        lines.append(f"| {r['model']} | {_px(r)} | {r['train_images']} | {r['lr']:g} | "
                     f"{r['epochs']:g} | "
                     f"{100 * r['accuracy']:.2f} | {r['test_loss']:.3f} | "
                     f"{r['train_loss']:.3f} | {r['seconds'] / 60:.1f} |")
    return "\n".join(lines)


def render() -> int:
    res = json.loads(RESULT.read_text())
    reading = HERE / "results" / "lite_capacity-reading.md"
    rows = res["rows"]
    commands = []
    for px, n in sorted({(_px(r), r["train_images"]) for r in rows},
                        key=lambda k: (k[0], -k[1])):
        some = [r for r in rows if r["train_images"] == n and _px(r) == px]
        commands.append(
            "python benchmarks/lite_capacity.py --models "
            + " ".join(sorted({r["model"] for r in some})) + " --lrs "
            + " ".join(f"{lr:g}" for lr in sorted({r["lr"] for r in some})) + " --epochs "
            + " ".join(f"{e:g}" for e in sorted({r["epochs"] for r in some}))
            + ("" if n == DEFAULT_IMAGES else f" --train-samples {n}")
            + ("" if px == DEFAULT_PX else f" --image-size {px}"))
    command = "`, `".join(commands)
    body = [HEADING, "",
            f"Commands: `{command}` (one cached run per row below, over several invocations; "
            f"{res['machine']}, 2 torch threads; the minutes are wall time on a machine "
            "shared with test suites part of the time). Each network fine-tuned from its "
            "ImageNet weights on pretrained.py's data (Fashion-MNIST as RGB at 64 px unless the "
            "row says otherwise; its "
            f"{DEFAULT_IMAGES} training images, or a seeded subset of them), cross-entropy only "
            "(no KD), AdamW, batch "
            f"{BATCH}, warm-up + cosine, seed 0; test accuracy on the full "
            f"{res['rows'][0]['test_images']}-image test set.", "",
            table(res["rows"]), ""]
    write_section(HEADING, "\n".join(body), reading=reading)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lite0", "lite1", "lite2"],
                    choices=["lite0", "lite1", "lite2"])
    ap.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-4])
    ap.add_argument("--epochs", nargs="+", type=float, default=[2.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-samples", type=int, default=None,
                    help="training images (default: pretrained.py's 10k); fewer images and "
                         "more epochs asks whether the larger network transfers better "
                         "when data, not steps, is short")
    ap.add_argument("--image-size", type=int, default=None,
                    help="input size in px (default: pretrained.py's 64); Lite2 is built for "
                         "260 px, Lite0 for 224")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=HERE / "work" / "lite-capacity")
    ap.add_argument("--render", action="store_true", help="only re-render the section")
    args = ap.parse_args(argv)
    if args.render:
        return render()
    args.work.mkdir(parents=True, exist_ok=True)
    for epochs in args.epochs:
        for lr in args.lrs:
            for name in args.models:
                size = "" if args.train_samples is None else f"_n{args.train_samples}"
                size += "" if args.image_size is None else f"_px{args.image_size}"
                path = args.work / f"{name}_lr{lr:g}_ep{epochs:g}{size}_s{args.seed}.json"
                row = cached_json(path, lambda name=name, lr=lr, epochs=epochs: train_one(
                    name, lr, epochs, args.seed, args.work, args.threads, args.train_samples,
                    args.image_size))
                print(f"{name} lr {lr:g} {epochs:g} ep: test {100 * row['accuracy']:.2f} %, "
                      f"{row['seconds'] / 60:.1f} min", flush=True)
    rows = [json.loads(p.read_text()) for p in sorted(args.work.glob("*_s*.json"))]
    RESULT.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")
    return render()


if __name__ == "__main__":
    raise SystemExit(main())
