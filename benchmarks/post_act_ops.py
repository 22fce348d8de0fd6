"""Phase 1 at layers that end with an activation: candidates with the activation at the end
(``_a``) against the same ops ending linear.

A VGG-like ``nn.Sequential`` teacher (conv-BN-ReLU layers, one conv-BN layer without the
ReLU, whose head applies it) is trained briefly on Fashion-MNIST; ``lana.decompose`` marks
the layers whose output is post-activation. Every op in both endings is then trained by
phase 1 at every layer, and the table gives the normalised MSE to the teacher's layer
output on held-out images (eval mode), with which ending the generic default space gives
the layer (``lana.space.ops.matches_ending``).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/post_act_ops.py [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section  # noqa: E402

import lana.distill.phase1 as D  # noqa: E402
from lana.config import DataConfig, DistillConfig  # noqa: E402
from lana.distill.train import Recipe, evaluate, train_classifier  # noqa: E402
from lana.model.data import load_data  # noqa: E402
from lana.model.decompose import decompose  # noqa: E402
from lana.space.ops import canonical, family_space, layer_candidates, space_specs  # noqa: E402

OPS = ["cc_k3_w1", "bn_k3_w0.5", "cb_k3", "ir_k3_e3", "er_k3_e1", "ds_k3"]
HEADING = "## Phase 1 at post-activation layers: ops ending with the activation"


def teacher() -> nn.Sequential:
    def cbr(cin: int, cout: int, stride: int = 1, act: bool = True) -> nn.Sequential:
        mods = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*mods, *([nn.ReLU()] if act else []))

    torch.manual_seed(0)
    return nn.Sequential(cbr(1, 32), cbr(32, 32), cbr(32, 64, 2), cbr(64, 64), cbr(64, 64),
                         cbr(64, 64, act=False),
                         nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                       nn.Linear(64, 10)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="phase-1 steps per candidate")
    p.add_argument("--teacher-epochs", type=float, default=1.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    splits = load_data(DataConfig(image_size=28, train_samples=10000, val_samples=500,
                                  test_samples=2000), seed=0)
    model = teacher()
    train_classifier(model, splits.train,
                     Recipe(epochs=args.teacher_epochs, batch_size=64, lr=1e-2),
                     description="teacher", distributed=False)
    acc = evaluate(model.eval(), splits.test)["accuracy"]
    chain = decompose(model, torch.zeros(1, 1, 28, 28)).eval()
    # Every child of a Sequential is a layer, the head too: only the spatial ones count.
    layers = [i for i, info in enumerate(chain.info) if info.spatial]
    both = [canonical(s) for op in OPS for s in (op, op + "_a")]
    out = Path(tempfile.mkdtemp(prefix="lana-post-act-"))
    cfg = DistillConfig(steps=args.steps, batch_size=64, lr=2e-3, inherit=False)
    # Both endings are trained everywhere (not filtered): compare each pair at each layer.
    todo = [list(both) if i in layers else [] for i in range(len(chain.info))]
    D.distill(chain, todo, splits.train, cfg, out, seed=0)
    x = next(splits.val.batches(500))[0]
    with torch.no_grad():
        feats = chain.features(x)
    generic = space_specs(family_space("sequential"))
    rows, ratios = [], {op: [] for op in OPS}
    for i in layers:
        info = chain.info[i]
        picked = set(layer_candidates(info, generic))
        for op in OPS:
            lin, post = canonical(op), canonical(op + "_a")
            mse = {}
            for s in (lin, post):
                m = D.load_candidate(chain, out, i, s).eval()
                with torch.no_grad():
                    mse[s] = D._nmse(m(feats[i]), feats[i + 1]).item()
            gets = post if post in picked else lin if lin in picked else "-"
            rows.append((chain.names[i], info.ends_with_act, op, mse[lin], mse[post], gets))
            if info.ends_with_act:
                ratios[op].append(mse[lin] / max(mse[post], 1e-12))
    wall = time.time() - start
    lines = [HEADING, "",
             f"Command: `PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/post_act_ops.py "
             f"--steps {args.steps} --teacher-epochs {args.teacher_epochs:g}`",
             f"Machine: {machine()}; 1 torch thread; {wall:.0f} s in all "
             "(losses deterministic, time not a result).", "",
             "Teacher: a VGG-like `nn.Sequential` of six conv-BN(-ReLU) layers (the sixth "
             "without its ReLU, which the head applies), trained "
             f"{args.teacher_epochs:g} epoch on 10000 Fashion-MNIST images at 28 px: "
             f"{100 * acc:.2f} % on 2000 test images. Every op in both endings trained by "
             f"phase 1 ({args.steps} steps, batch 64, fresh init) at every layer; normalised "
             "MSE to the teacher's layer output on 500 held-out images, eval mode. `ends "
             "with act`: what `lana.decompose` found; `generic space gives`: the form the "
             "sequential/fx-chain default space offers at the layer.", "",
             "| layer | ends with act | op | linear | `_a` | generic space gives |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {'yes' if e else 'no'} | {op} | {a:.3f} | {b:.3f} | `{g}` |"
              for n, e, op, a, b, g in rows]
    lines += ["", "Median over the post-activation layers of linear MSE / `_a` MSE: "
              + ", ".join(f"{op} {statistics.median(r):.1f}x" for op, r in ratios.items() if r)
              + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_section(HEADING, text)


if __name__ == "__main__":
    main()
