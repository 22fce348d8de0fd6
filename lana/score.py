"""Phase 2a: replace-one scores.

``a_ij`` is the change of the loss on held-out data when candidate ``j`` replaces layer ``i``
in the otherwise unchanged teacher. The teacher op scores exactly 0. Metrics: cross-entropy
on the labels (the paper) or KL divergence to the teacher's outputs (Puzzle's finding).

Work is streamed batch by batch (teacher features for one batch at a time), so memory does
not grow with the number of held-out images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lana.data import Data
from lana.decompose import Chain
from lana.progress import progress

LoadFn = Callable[[int, str], nn.Module]


def _loss(logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor,
          metric: str) -> float:
    if metric == "kl":
        return F.kl_div(F.log_softmax(logits, 1), F.log_softmax(teacher_logits, 1),
                        log_target=True, reduction="sum").item()
    return F.cross_entropy(logits, y, reduction="sum").item()


@torch.no_grad()
def replace_one_scores(chain: Chain, candidates: list[list[str]], load: LoadFn, data: Data,
                       metric: str = "ce", batch_size: int = 256) -> dict:
    """Score every candidate; returns ``{"teacher_loss", "scores": [[a_ij]], ...}``.

    ``load(i, spec)`` returns candidate ``spec`` of layer ``i`` with its phase-1 weights.
    """
    chain.eval()
    mods: list[list[nn.Module | None]] = []
    for i, specs in enumerate(candidates):
        row: list[nn.Module | None] = []
        for spec in specs:
            m = None if spec == "teacher" else load(i, spec)
            if m is not None:
                m.eval()
            row.append(m)
        mods.append(row)
    n_cands = sum(len(r) for r in mods)
    sums = [[0.0] * len(r) for r in mods]
    teacher_sum, teacher_correct, count = 0.0, 0, 0
    n_batches = -(-len(data) // batch_size)
    with progress() as bar:
        task = bar.add_task("phase 2a score", total=n_batches * n_cands, info="")
        for x, y in data.batches(batch_size):
            feats = chain.features(x)
            t_logits = chain.head(feats[-1])
            teacher_sum += _loss(t_logits, y, t_logits, metric)
            teacher_correct += (t_logits.argmax(1) == y).sum().item()
            count += len(y)
            for i, row in enumerate(mods):
                for j, m in enumerate(row):
                    if m is None:  # the teacher op: its loss is the teacher's
                        sums[i][j] += _loss(t_logits, y, t_logits, metric)
                    else:
                        out = chain.forward_from(i + 1, m(feats[i]))
                        sums[i][j] += _loss(out, y, t_logits, metric)
                    bar.advance(task)
    teacher_loss = teacher_sum / count
    scores = [[s / count - teacher_loss for s in row] for row in sums]
    for i, specs in enumerate(candidates):
        for j, spec in enumerate(specs):
            if spec == "teacher":
                scores[i][j] = 0.0  # exact by definition; avoids float noise
    return {"metric": metric, "samples": count, "teacher_loss": teacher_loss,
            "teacher_accuracy": teacher_correct / count, "scores": scores}
