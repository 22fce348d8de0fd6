"""The teacher of a run: built, checked against the data, and obtained once.

Where its weights come from, in order: ``model.weights``, the model handed to the Python
API as it is, the teacher cache (keyed by the model, its code, the data and the training
settings), or training it here (under torchrun by every rank together). The weights land
in ``teacher.safetensors`` of the run directory; :meth:`lana.pipeline.runner.Run.teacher`
loads them from there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from lana.core import dist as D
from lana.core.io import (
    file_digest,
    load_matching,
    load_state,
    load_state_dict,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from lana.core.layout import TEACHER, TEACHER_CHECKPOINT, TEACHER_WEIGHTS
from lana.core.progress import log
from lana.errors import ArtifactError, ConfigError
from lana.model.usercode import code_digest
from lana.model.zoo import source_digest
from lana.pipeline.keys import locked_section, section_settings
from lana.pipeline.stages import STAGE, key_hash

if TYPE_CHECKING:
    from lana.pipeline.runner import Run


def build(run: Run) -> nn.Module:
    """The teacher network with its initial weights (the Python API's model as it is)."""
    if run.given_teacher is not None:
        return run.given_teacher
    from lana.model.zoo import create_model

    # Seeded, so the teacher's initial weights (and so a trained teacher) do not depend
    # on what the process did before (a CLI run and the Python API agree).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.config.seed)
        model = create_model(run.config.model.name, **run.model_kwargs())
    check_fits_data(run, model)
    return model


def check_fits_data(run: Run, model: nn.Module) -> None:
    """Say it plainly when the model cannot take the data's images or has fewer
    outputs than it has classes, before training fails deep inside torch."""
    name, s = run.config.model.name, run.splits
    x = torch.zeros(2, *run.input_shape)
    was = model.training
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:
        raise ConfigError(
            f"model {name} cannot take the data's images, batches of shape "
            f"{tuple(x.shape)} ({s.in_chans} channel(s), data.image_size "
            f"{s.image_size}): {type(exc).__name__}: {exc}. Build it for the data "
            "(model.kwargs, e.g. in_chans) or change data.image_size") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model {name} returns {shape} for a batch of 2 images; lana "
                          "needs class logits of shape (batch, classes)")
    if out.shape[1] < s.num_classes:
        raise ConfigError(
            f"model {name} gives {out.shape[1]} class logits, but the data has "
            f"{s.num_classes} classes: build it with {s.num_classes} outputs "
            f"(num_classes: {s.num_classes} in model.kwargs, where its builder takes it)")


def load(run: Run) -> nn.Module:
    """The trained teacher in eval mode: obtained into the run directory first if it is
    not there yet (given weights, the cache, or trained in this process)."""
    model = build(run)
    path = run.dir / TEACHER_WEIGHTS
    if not path.exists() and not from_files(run, model, path):
        # Reached on one process (under torchrun: rank 0 inside on_main); the ranks
        # train a missing teacher together in on_every_rank.
        train(run, model, path, distributed=False)
    load_state(model, load_tensors(path), path)
    return model.eval()


def cache_entry(run: Run) -> tuple[str, Path]:
    """The teacher's training key (its settings) and its file in the teacher cache."""
    cfg = run.config
    # Your own model's code is part of the key (timm's and torchvision's are fixed by
    # their versions): editing it trains a new teacher instead of loading a stale one.
    code = {"code": digest} if (digest := source_digest(cfg.model.name)) else {}
    if data_code := code_digest(cfg.data.name, "data.name"):
        code["data_code"] = data_code
    training = section_settings(cfg.teacher_training, {"cache_dir", "checkpoint_every"})
    if "init" in training:  # the starting weights' content, wherever the file lies
        training["init"] = file_digest(cfg.teacher_training.init, "teacher_training.init")
    key = key_hash({"model": cfg.model.name, **code, "kwargs": run.model_kwargs(),
                    "data": locked_section(cfg, "data"), "train": training,
                    "seed": cfg.seed, "v": 1})
    cache_root = Path(os.environ.get("LANA_CACHE_DIR", Path.home() / ".cache" / "lana"))
    cache = Path(cfg.teacher_training.cache_dir or cache_root / "teachers"
                 ) / f"{key}.safetensors"
    return key, cache


def from_files(run: Run, model: nn.Module, path: Path) -> bool:
    """Write ``path`` from given weights, the Python API's model or the teacher cache;
    False when none applies and the teacher must be trained."""
    cfg = run.config
    if cfg.model.weights:
        state = load_state_dict(cfg.model.weights)
        load_state(model, state, Path(cfg.model.weights))
        save_tensors(path, model.state_dict())
        return True
    if run.given_teacher is not None:
        # A model handed over through the Python API is the trained teacher as it is.
        save_tensors(path, model.state_dict())
        return True
    _, cache = cache_entry(run)
    if cache.exists():
        try:
            state = load_tensors(cache)
            load_state(model, state, cache)
            log(f"teacher: using cached weights {cache}")
            save_tensors(path, model.state_dict())
            return True
        except ArtifactError as exc:
            log(f"[yellow]teacher cache unusable ({exc}); training again[/yellow]")
    return False


def train(run: Run, model: nn.Module, path: Path, distributed: bool) -> None:
    """Train the teacher from scratch (with every rank under torchrun when
    ``distributed``: DDP, as phase 3) and write it to ``path`` and the cache."""
    from lana.distill.train import Checkpointing, Recipe, train_classifier

    cfg = run.config
    key, cache = cache_entry(run)
    t = cfg.teacher_training
    log(f"teacher: training {cfg.model.name} for {t.epochs:g} epochs on "
        f"{len(run.splits.train)} images")
    start = time.time()
    torch.manual_seed(cfg.seed)
    if t.init:
        log(f"teacher: starting from {t.init} ({load_matching(model, t.init)})")
    D.reset_peak_rss()
    train_classifier(model, run.splits.train, Recipe.from_config(t, seed=cfg.seed),
                     description="teacher",
                     checkpointing=Checkpointing(path=run.dir / TEACHER_CHECKPOINT,
                                                 key=key, every=t.checkpoint_every,
                                                 kill_tag="teacher"),
                     distributed=distributed, device=run.device)
    run.record_time(STAGE["prepare"].timing, start)
    if D.is_main() or not distributed:  # under DDP every rank holds the same weights
        save_tensors(cache, model.state_dict())
        save_tensors(path, model.state_dict())


def on_every_rank(run: Run) -> None:
    """Under torchrun: make ``teacher.safetensors`` exist before any rank needs it.
    Rank 0 copies given or cached weights; a teacher that must be trained is trained
    by every rank together (DDP + sharded batches, resumable from its checkpoint:
    rank 0 writes it, every rank resumes from it). No-op in one process."""
    if D.world() <= 1 or "teacher" in run.__dict__:
        return
    path = run.dir / TEACHER_WEIGHTS
    model = build(run)
    # Rank 0 decides for everyone: the others must not look at files it is writing.
    found = D.share(D.on_main(lambda: path.exists() or from_files(run, model, path)))
    if not found:
        train(run, model, path, distributed=True)
    D.barrier()  # rank 0 has written the weights


def evaluate(run: Run) -> dict:
    """The teacher's accuracy and loss on the test split, its layers and parameter count
    (``teacher.json``, written once)."""
    path = run.dir / TEACHER
    if path.exists():
        return read_json(path)
    from lana.distill.train import evaluate as evaluate_model

    res = evaluate_model(run.teacher, run.splits.test, device=run.device)
    data = {"name": run.config.model.name, "accuracy": res["accuracy"],
            "loss": res["loss"], "data": run.splits.name,
            "layers": [i.to_dict() for i in run.chain.info],
            "params": sum(p.numel() for p in run.teacher.parameters())}
    write_json(path, data)
    return data
