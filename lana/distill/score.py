"""Phase 2a: replace-one scores.

``a_ij`` is the change of the loss on held-out data when candidate ``j`` replaces layer ``i``
in the otherwise unchanged teacher. The teacher op scores exactly 0. Metrics: cross-entropy
on the labels (the paper) or KL divergence to the teacher's outputs (Puzzle's finding).

Work is streamed batch by batch (teacher features for one batch at a time), so memory does
not grow with the number of held-out images.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lana.core.progress import progress
from lana.distill.train import placed
from lana.model.data import Data
from lana.model.decompose import Chain

LoadFn = Callable[[int, str], nn.Module]


def _loss(logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor,
          metric: str) -> torch.Tensor:
    # A float64 scalar on the logits' device: sums stay there (no GPU sync per candidate).
    if metric == "kl":
        return F.kl_div(F.log_softmax(logits, 1), F.log_softmax(teacher_logits, 1),
                        log_target=True, reduction="sum").double()
    return F.cross_entropy(logits, y, reduction="sum").double()


@torch.no_grad()
def replace_one_scores(chain: Chain, candidates: list[list[str]], load: LoadFn, data: Data,
                       metric: str = "ce", batch_size: int = 256,
                       device: torch.device | str | None = None,
                       skip: Sequence[Collection[str]] | None = None) -> dict:
    """Score every candidate; returns ``{"teacher_loss", "scores": [[a_ij]], ...}``.

    ``load(i, spec)`` returns candidate ``spec`` of layer ``i`` with its phase-1 weights.
    ``device`` (default the CPU) runs the passes there; the chain is back on the CPU after.
    ``skip[i]`` names candidates of layer ``i`` that are neither loaded nor scored (their
    score is None).
    """
    chain.eval()
    dev = torch.device(device or "cpu")
    # Per candidate: its module, None for the teacher op, False for a skipped one.
    mods: list[list[nn.Module | None | bool]] = []
    for i, specs in enumerate(candidates):
        row: list[nn.Module | None | bool] = []
        for spec in specs:
            if skip is not None and spec in skip[i] and spec != "teacher":
                row.append(False)
                continue
            m = None if spec == "teacher" else load(i, spec)
            if m is not None:
                m.eval().to(dev)
            row.append(m)
        mods.append(row)
    n_cands = sum(m is not False for r in mods for m in r)
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    sums = [[zero.clone() for _ in r] for r in mods]
    teacher_sum, teacher_correct, count = zero.clone(), zero.clone(), 0
    n_batches = -(-len(data) // batch_size)
    with progress() as bar, placed(dev, chain):
        task = bar.add_task("phase 2a score", total=n_batches * n_cands, info="")
        for x, y in data.batches(batch_size):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            feats = chain.features(x)
            t_logits = chain.head(feats[-1])
            teacher_sum += _loss(t_logits, y, t_logits, metric)
            teacher_correct += (t_logits.argmax(1) == y).sum()
            count += len(y)
            for i, row in enumerate(mods):
                for j, m in enumerate(row):
                    if m is False:
                        continue
                    if m is None:  # the teacher op: its loss is the teacher's
                        sums[i][j] += _loss(t_logits, y, t_logits, metric)
                    else:
                        out = chain.forward_from(i + 1, m(feats[i]))
                        sums[i][j] += _loss(out, y, t_logits, metric)
                    bar.advance(task)
    teacher_loss = teacher_sum.item() / count
    scores = [[None if m is False else s.item() / count - teacher_loss
               for s, m in zip(srow, mrow, strict=True)]
              for srow, mrow in zip(sums, mods, strict=True)]
    for i, specs in enumerate(candidates):
        for j, spec in enumerate(specs):
            if spec == "teacher":
                scores[i][j] = 0.0  # exact by definition; avoids float noise
    return {"metric": metric, "samples": count, "teacher_loss": teacher_loss,
            "teacher_accuracy": int(teacher_correct.item()) / count, "scores": scores}
