"""Classifier training and evaluation, shared by teacher training and phase 3 fine-tuning."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lana.data import Data
from lana.progress import progress


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, batch_size: int = 256,
             batch_stats: bool = False) -> dict[str, float]:
    """Top-1 accuracy (fraction) and mean cross-entropy of ``model`` on ``data``.

    ``batch_stats=True`` evaluates with BatchNorm in batch-statistics mode (as LANA does to
    rank freshly assembled students) without changing the stored running statistics.
    """
    was = model.training
    model.eval()
    saved = None
    if batch_stats:
        saved = _bn_batch_stats(model)
    correct, total, loss = 0, 0, 0.0
    try:
        for x, y in data.batches(batch_size):
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
    finally:
        if saved is not None:
            for m, state in saved:
                m.train(False)
                m.track_running_stats = state
        model.train(was)
    return {"accuracy": correct / max(total, 1), "loss": loss / max(total, 1)}


def _bn_batch_stats(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            # train mode + track_running_stats=False: normalise by batch statistics and
            # leave running_mean/var untouched.
            saved.append((m, m.track_running_stats))
            m.track_running_stats = False
            m.train(True)
    return saved


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """Hinton KD: KL(teacher || student) at temperature T, scaled by T^2."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    log_target=True, reduction="batchmean") * t * t


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))


def train_classifier(model: nn.Module, data: Data, *, epochs: float, batch_size: int,
                     lr: float, seed: int = 0, teacher: nn.Module | None = None,
                     kd_weight: float = 0.0, temperature: float = 2.0,
                     description: str = "train") -> dict[str, float]:
    """Train ``model`` with cross-entropy (+ KD from ``teacher``); AdamW, cosine schedule.

    Returns the mean training loss of the last 10% of steps.
    """
    steps = max(1, math.ceil(epochs * len(data) / batch_size))
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, steps, max(1, steps // 20)))
    model.train()
    if teacher is not None:
        teacher.eval()
    tail: list[float] = []
    stream = data.stream(batch_size, seed=seed, augment=True)
    with progress() as bar:
        task = bar.add_task(description, total=steps, info="")
        for step in range(steps):
            x, y = next(stream)
            out = model(x)
            loss = F.cross_entropy(out, y)
            if teacher is not None and kd_weight > 0:
                with torch.no_grad():
                    t_out = teacher(x)
                loss = loss + kd_weight * kd_loss(out, t_out, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step >= steps * 0.9:
                tail.append(loss.item())
            bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
    model.eval()
    return {"train_loss": sum(tail) / max(1, len(tail)), "steps": steps}
