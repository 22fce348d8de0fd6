"""Classifier training and evaluation, shared by teacher training and phase 3 fine-tuning."""

from __future__ import annotations

import contextlib
import io
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lana.core.io import atomic_write_bytes, checksum_path, verify_bytes
from lana.core.progress import log, progress
from lana.model.data import Data

if TYPE_CHECKING:
    from lana.config import FinetuneConfig, TeacherTrainingConfig


@contextlib.contextmanager
def placed(device: torch.device | str | None, *modules: nn.Module | None) -> Iterator[None]:
    """Within the block, ``modules`` live on ``device`` (None: where they are); afterwards
    each is back where it was (between stages: the CPU, where latency and export expect
    it). Modules already there are not touched."""
    moved = []
    if device is not None:
        target = torch.device(device)
        for m in filter(None, modules):
            where = next(itertools.chain(m.parameters(), m.buffers()), torch.empty(0)).device
            if where != target:
                m.to(target)
                moved.append((m, where))
    try:
        yield
    finally:
        for m, where in moved:
            m.to(where)


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, batch_size: int = 256,
             batch_stats: bool = False,
             device: torch.device | str | None = None) -> dict[str, float]:
    """Top-1 accuracy (fraction) and mean cross-entropy of ``model`` on ``data``.

    ``batch_stats=True`` evaluates with BatchNorm in batch-statistics mode (as LANA does to
    rank freshly assembled students) without changing the stored running statistics.
    ``device`` runs it there (a GPU); the model is back on the CPU afterwards.
    """
    was = model.training
    model.eval()
    saved = None
    if batch_stats:
        saved = _bn_batch_stats(model)
    # Sums stay on the device: one transfer at the end instead of two per batch.
    dev = torch.device(device or "cpu")
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    loss = torch.zeros((), dtype=torch.float64, device=dev)
    total = 0
    try:
        with placed(device, model):
            for x, y in data.batches(batch_size):
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                out = model(x)
                loss += F.cross_entropy(out, y, reduction="sum").double()
                correct += (out.argmax(1) == y).sum()
                total += len(y)
    finally:
        if saved is not None:
            for m, state in saved:
                m.train(False)
                m.track_running_stats = state
        model.train(was)
    return {"accuracy": int(correct.item()) / max(total, 1),
            "loss": float(loss.item()) / max(total, 1)}


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


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """The optimizer of lana's training recipes: ``adamw`` (weight decay 1e-4) or ``sgd``
    (Nesterov momentum 0.9, weight decay 5e-5)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-5)
    from lana.errors import ConfigError

    raise ConfigError(f"optimizer {name!r} is not one of: adamw, sgd")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How long and how :func:`train_classifier` trains: ``epochs`` passes over the data
    (rounded up to whole steps) or exactly ``steps`` batches (one of the two), global
    batches of ``batch_size``, ``optimizer`` (see :func:`make_optimizer`) at peak learning
    rate ``lr`` with a warm-up + cosine schedule, ``seed`` for the initial draw and the data
    order, and ``kd_weight`` times the KD loss at ``temperature`` when a teacher is given
    (0: cross-entropy alone).

    A recipe that names neither or both of ``epochs`` and ``steps`` is a ``TypeError``.
    """

    batch_size: int
    lr: float
    epochs: float | None = None
    steps: int | None = None
    optimizer: str = "adamw"
    seed: int = 0
    kd_weight: float = 0.0
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.steps is None):
            raise TypeError("Recipe: give epochs or steps, not both or neither")

    @classmethod
    def from_config(cls, section: TeacherTrainingConfig | FinetuneConfig, *, seed: int = 0,
                    **overrides) -> Recipe:
        """The recipe of a config section (``teacher_training`` or ``finetune``): its
        epochs, batch size, learning rate and optimizer, and its KD weight and temperature
        where it has them (the teacher's training has none: no KD). ``overrides`` replace
        single fields, e.g. ``epochs=`` for a longer run of the same recipe."""
        fields = {"epochs": section.epochs, "batch_size": section.batch_size,
                  "lr": section.lr, "optimizer": section.optimizer, "seed": seed}
        for name in ("kd_weight", "temperature"):
            if hasattr(section, name):
                fields[name] = getattr(section, name)
        return cls(**{**fields, **overrides})

    def total_steps(self, items: int) -> int:
        """Optimizer steps of this recipe over ``items`` training images."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * items / self.batch_size))


@dataclass(frozen=True, kw_only=True)
class Checkpointing:
    """Resumable training: the state is written to ``path`` every ``every`` steps (rank 0
    writes) and a killed run resumes from it. ``key`` ties the file to the settings it was
    written under (one written under another key is ignored), so it must stay stable for
    the same settings: cached run directories hold files written under it. ``kill_tag``
    names the test kill hook (``LANA_TEST_KILL_AT=<kill_tag>:<step>``, see
    :data:`lana.core.dist.KILL_POINTS`; empty: none)."""

    path: str | Path
    key: str = ""
    every: int = 100
    kill_tag: str = ""


def train_classifier(model: nn.Module, data: Data, recipe: Recipe, *,
                     teacher: nn.Module | None = None, description: str = "train",
                     checkpointing: Checkpointing | None = None, distributed: bool = True,
                     device: torch.device | str | None = None) -> dict[str, float]:
    """Train ``model`` on ``data`` by ``recipe``: cross-entropy, plus KD from ``teacher``
    when given and the recipe's ``kd_weight`` is above 0.

    Returns the mean training loss of the last 10% of steps and the number of steps. Under
    torchrun (a process group of ``world`` ranks) the model is wrapped in
    DistributedDataParallel and every global batch of ``recipe.batch_size`` is split across
    ranks (``Data.stream(rank, world)``), so the gradient equals the single-process one up
    to float rounding. BatchNorm layers normalise over the global batch too (lana.distill.sync_bn:
    torch's SyncBatchNorm on GPUs, an all-reduce of the statistics elsewhere) and are plain
    BatchNorm again afterwards; a global batch that does not split evenly is weighted per
    item, as in one process. With ``checkpointing`` (see :class:`Checkpointing`) a killed
    run resumes where it was saved. ``description`` labels the progress bar and errors.
    ``distributed=False`` trains in this process alone even under torchrun. ``device``
    (default the CPU) is where this process trains, e.g. its GPU from
    :func:`lana.core.dist.resolve_device`; model and teacher are back on the CPU afterwards.
    A loss that becomes NaN or infinite stops training with
    :class:`lana.errors.TrainingDivergedError`.
    """
    from lana.core import dist as D

    steps = recipe.total_steps(len(data))
    rank, world = (D.rank(), D.world()) if distributed else (0, 1)
    if world > recipe.batch_size:
        from lana.errors import ConfigError

        raise ConfigError(f"{description}: batch size {recipe.batch_size} is smaller than the "
                          f"{world} processes it is split over; raise the batch size")
    device = torch.device(device or "cpu")
    torch.manual_seed(recipe.seed)
    model.to(device)
    # Every rank's BatchNorm layers see the global batch (back to plain ones afterwards).
    from lana.distill.sync_bn import synced_batchnorm

    with synced_batchnorm(model) if world > 1 else contextlib.nullcontext():
        return _train(model, data, recipe, steps, rank, world, device, teacher=teacher,
                      description=description, checkpointing=checkpointing)


def _train(model: nn.Module, data: Data, recipe: Recipe, steps: int, rank: int, world: int,
           device: torch.device, *, teacher: nn.Module | None, description: str,
           checkpointing: Checkpointing | None) -> dict[str, float]:
    from lana.core import dist as D

    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                      else None)
    opt = make_optimizer(recipe.optimizer, model.parameters(), recipe.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, steps, max(1, steps // 20)))
    model.train()
    if teacher is not None:
        teacher.to(device).eval()
    tail: list[float] = []
    start = 0
    ckpt = Path(checkpointing.path) if checkpointing and checkpointing.path else None
    if ckpt is not None and ckpt.exists():
        start, tail = _load_checkpoint(ckpt, checkpointing.key, model, opt, sched)
    stream = data.stream(recipe.batch_size, seed=recipe.seed, augment=True, rank=rank,
                         world=world)
    for _ in range(start):  # replay the data order so a resumed run sees the same batches
        next(stream)
    with progress() as bar:
        task = bar.add_task(description, total=steps, completed=start, info="")
        for step in range(start, steps):
            x, y = next(stream)
            x, y = x.to(device), y.to(device)
            out = net(x)
            loss = F.cross_entropy(out, y)
            if teacher is not None and recipe.kd_weight > 0:
                with torch.no_grad():
                    t_out = teacher(x)
                loss = loss + recipe.kd_weight * kd_loss(out, t_out, recipe.temperature)
            if world > 1:
                # DDP averages the ranks' gradients; weighting each rank's mean by its share
                # of the global batch makes that the global batch's mean when the batch
                # does not split evenly (e.g. 11 items: 6 + 5).
                n = torch.tensor([len(y)], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(n)
                loss = loss * (len(y) * world / n.item())
            value = loss.item()
            if not math.isfinite(value):
                from lana.errors import TrainingDivergedError

                # Carrying on would only spread NaN into the weights and every later stage.
                raise TrainingDivergedError(
                    f"{description}: the training loss became {value} at step {step + 1} of "
                    f"{steps} ({recipe.optimizer}, peak lr {recipe.lr:g}); lower the learning "
                    f"rate (or try the other optimizer) and run again")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step >= math.floor(steps * 0.9):  # the last step at least, however few
                tail.append(value)
            bar.update(task, advance=1, info=f"loss {value:.3f}")
            if ckpt is not None and (step + 1) % checkpointing.every == 0 \
                    and step + 1 < steps and rank == 0:
                _save_checkpoint(ckpt, checkpointing.key, step + 1, tail, model, opt, sched)
            if checkpointing is not None and checkpointing.kill_tag:
                D.maybe_kill(checkpointing.kill_tag, step + 1)
    model.eval()
    train_loss = sum(tail) / max(1, len(tail))
    if world > 1:
        # Every rank saw its own share of each batch: report the mean over all of them.
        t = torch.tensor([train_loss], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        train_loss = t.item() / world
    model.cpu()
    if teacher is not None:
        teacher.cpu()
    if ckpt is not None and rank == 0:
        ckpt.unlink(missing_ok=True)
        checksum_path(ckpt).unlink(missing_ok=True)
    return {"train_loss": train_loss, "steps": steps}


def _save_checkpoint(path: Path, key: str, step: int, tail: list[float], model: nn.Module,
                     opt: torch.optim.Optimizer, sched) -> None:
    buf = io.BytesIO()
    torch.save({"key": key, "step": step, "tail": tail, "model": model.state_dict(),
                "optim": opt.state_dict(), "sched": sched.state_dict(),
                "rng": torch.random.get_rng_state()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: Path, key: str, model: nn.Module, opt: torch.optim.Optimizer,
                     sched) -> tuple[int, list[float]]:
    try:
        verify_bytes(path, path.read_bytes())
        # weights_only: a checkpoint is never unpickled as arbitrary Python objects.
        state = torch.load(path, weights_only=True, map_location="cpu")
        if state["key"] != key:
            raise ValueError("it was written for other settings")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        torch.random.set_rng_state(state["rng"])
        log(f"{path.name}: resuming at step {state['step']}")
        return int(state["step"]), list(state["tail"])
    except Exception as exc:
        log(f"[yellow]ignoring unusable checkpoint {path} ({exc}); starting over[/yellow]")
        return 0, []
