"""Phase 1 with candidates initialised from the teacher (lana/space/inherit.py) vs fresh weights.

A small Bottleneck ResNet teacher (random weights, BatchNorm statistics calibrated on data,
1x16x16 synthetic images) and six narrower/grouped/split-attention bottleneck candidates
over three layers. For each step count, phase 1 runs with ``distill.inherit`` on and off;
the table gives the mean normalised MSE to the teacher's layer outputs: at step 0 in
training mode (what phase 1 starts from), after training on held-out images (eval mode).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/inherit_init.py [--steps 0 25 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section  # noqa: E402

import lana.distill.phase1 as D  # noqa: E402
from lana.config import DataConfig, DistillConfig  # noqa: E402
from lana.model.data import load_data  # noqa: E402
from lana.model.toys import calibrated_resnet_chain  # noqa: E402

CANDIDATES = [["rb_w0.5_g1_r1", "rb_w0.25_g1_r1"],
              ["rb_w0.5_g1_r1", "rb_w0.5_g2_r1", "rb_w1_g1_r2"],
              ["rb_w0.5_g1_r1"]]


def nmse(chain, module, i: int, x: torch.Tensor, train: bool) -> float:
    module.train(train)
    with torch.no_grad():
        f = chain.features(x)
        return D._nmse(module(f[i]), f[i + 1]).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[0, 25, 100])
    args = p.parse_args()
    torch.set_num_threads(1)
    chain = calibrated_resnet_chain()  # also the teacher of tests/distill/test_distill.py
    splits = load_data(DataConfig(name="synthetic", image_size=16, train_samples=512,
                                  val_samples=64, test_samples=32), seed=0)
    x = next(splits.val.batches(64))[0]
    rows = []
    for steps in args.steps:
        row = {"steps": steps}
        for inherit in (False, True):
            start = time.time()
            losses = []
            if steps == 0:
                for i, specs in enumerate(CANDIDATES):
                    for s in specs:
                        m = D.build_candidate(chain, i, s, 0, inherit=inherit)
                        losses.append(nmse(chain, m, i, x, train=True))
            else:
                out = Path(tempfile.mkdtemp(prefix="lana-inherit-"))
                cfg = DistillConfig(steps=steps, batch_size=32, lr=3e-3, inherit=inherit)
                D.distill(chain, CANDIDATES, splits.train, cfg, out, seed=0)
                for i, specs in enumerate(CANDIDATES):
                    for s in specs:
                        m = D.load_candidate(chain, out, i, s)
                        losses.append(nmse(chain, m, i, x, train=False))
            row["inherit" if inherit else "fresh"] = sum(losses) / len(losses)
            row[f"s_{inherit}"] = time.time() - start
        rows.append(row)
        print(f"steps {steps:4d}: fresh {row['fresh']:.3f}  inherited {row['inherit']:.3f}")
    lines = ["## Candidate initialisation from the teacher (families issue)", "",
             f"Command: `PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/inherit_init.py "
             f"--steps {' '.join(map(str, args.steps))}`", f"Machine: {machine()} (shared "
             "by other jobs: timings noisy, losses deterministic).", "",
             "Teacher: a small Bottleneck ResNet with random weights and BatchNorm statistics "
             "calibrated on data (not trained), 1x16x16 synthetic images; 6 candidates "
             "(narrower, grouped and split-attention bottlenecks) over 3 layers. Mean "
             "normalised MSE to the teacher's layer outputs (step 0: training mode, as phase "
             "1 starts; after training: 64 held-out images, eval mode).", "",
             "| phase-1 steps | fresh init | from the teacher (`distill.inherit`) |",
             "|---|---|---|"]
    lines += [f"| {r['steps']} | {r['fresh']:.3f} | {r['inherit']:.3f} |" for r in rows]
    write_section("## Candidate initialisation from the teacher", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
