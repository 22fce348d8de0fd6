"""Phase 1: train every candidate op by layer-wise distillation from the teacher.

Candidate ``s_ij`` learns ``t_i(x_{i-1})`` from the teacher's own input ``x_{i-1}``, with
the normalised MSE ``||t - s||^2 / ||t||^2``. One teacher forward pass per batch feeds the
candidates of all layers. All candidates of a group are trained together: their losses are
independent, so one backward of the summed loss gives each candidate its own gradient.

Every candidate sees the same batches in the same order and starts from a seed derived from
``(layer, spec)``, so its result does not depend on how candidates are grouped or sharded.
Results land in ``DIR/distill/`` (one safetensors file per candidate plus ``index.json``);
a group in progress is checkpointed, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from lana.core.dist import maybe_kill
from lana.core.io import (
    checksum_path,
    file_lock,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from lana.core.layout import (
    DISTILL_CHECKPOINTS,
    DISTILL_INDEX,
    DISTILL_INDEX_LOCK,
    distill_checkpoint,
    distill_weights,
)
from lana.core.progress import log, progress
from lana.distill.train import cosine_lr, placed
from lana.errors import ArtifactError
from lana.model.data import Data
from lana.model.decompose import Chain
from lana.space.ops import build_op

if TYPE_CHECKING:
    from lana.config import DistillConfig

# Ops whose weights are not learned in phase 1: the teacher's own layer and identity.
UNTRAINED = ("teacher", "identity")


def candidate_seed(layer: int, spec: str, seed: int) -> int:
    """A stable per-candidate seed, independent of grouping and process count."""
    digest = hashlib.sha256(f"{seed}:{layer}:{spec}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def weight_path(run_dir: Path, layer: int, spec: str) -> Path:
    """Where candidate ``spec`` of layer ``layer`` keeps its phase-1 weights."""
    return distill_weights(run_dir, layer, spec)


def build_candidate(chain: Chain, layer: int, spec: str, seed: int = 0,
                    inherit: bool = True) -> nn.Module:
    """A new candidate module with deterministic initial weights.

    With ``inherit``, weights come from the teacher's layer where an init rule of
    :mod:`lana.space.inherit` applies (same-shape copy, most important channels of a narrower
    variant, ...); everything else keeps its seeded fresh initialisation.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(candidate_seed(layer, spec, seed))
        module = build_op(spec, chain.info[layer], chain.layers[layer])
    if inherit and spec not in UNTRAINED:
        from lana.space.inherit import inherit as inherit_weights

        inherit_weights(module, spec, chain.layers[layer])
    return module


def load_candidate(chain: Chain, run_dir: Path, layer: int, spec: str) -> nn.Module:
    """The candidate with its phase-1 weights (the teacher op keeps the teacher's weights)."""
    module = build_op(spec, chain.info[layer], chain.layers[layer])
    if spec in UNTRAINED:
        return module
    state = load_tensors(weight_path(run_dir, layer, spec))
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(
            f"{weight_path(run_dir, layer, spec)} does not fit candidate {spec} of layer "
            f"{chain.names[layer]} ({exc}); delete it and re-run `lana distill`") from None
    return module


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _nmse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-8)


def _group_id(members: list[tuple[int, str]]) -> str:
    return hashlib.sha256(repr(members).encode()).hexdigest()[:12]


def distill(chain: Chain, candidates: list[list[str]], data: Data, cfg: DistillConfig,
            run_dir: str | Path, seed: int = 0, rank: int = 0, world: int = 1,
            report: dict | None = None, device: torch.device | str | None = None) -> dict:
    """Train all candidates that ``run_dir`` does not hold yet; return the index.

    ``candidates[i]`` lists the specs of layer ``i``. With ``world > 1`` this process trains
    only its share (every ``world``-th pending candidate, from ``rank``). Candidates train
    in groups (see :func:`plan_groups`); ``report``, if given, receives the number of
    groups, the largest group and its estimated memory (MiB). ``device`` (default the
    CPU; e.g. a GPU) runs the teacher's passes and the candidates' training; candidates
    are built on the CPU first, so their initial weights do not depend on it.
    """
    run_dir = Path(run_dir)
    todo = pending(candidates, run_dir, rank, world)
    if not todo:
        return _update_index(run_dir, candidates, {}, cfg.steps)
    groups, estimates = plan_groups(chain, todo, cfg)
    if report is not None:
        report.update({"distill_groups": len(groups),
                       "distill_largest_group": max(len(g) for g in groups),
                       "distill_group_estimate_mb": round(max(estimates), 1),
                       "distill_max_memory_mb": None if cfg.group_size else
                       cfg.max_memory_mb})
    if world == 1:
        # This process owns every candidate, so a checkpoint that belongs to none of the
        # groups is left by an earlier grouping (distill.group_size or max_memory_mb changed
        # since): its candidates start over in their new group.
        current = {distill_checkpoint(run_dir, _group_id(g)).name for g in groups}
        for old in sorted(run_dir.glob(DISTILL_CHECKPOINTS)):
            if old.name not in current:
                log(f"[yellow]phase 1: {old.name} belongs to an earlier grouping of the "
                    "candidates; dropped, its candidates train again in their new group"
                    "[/yellow]")
                old.unlink()
                checksum_path(old).unlink(missing_ok=True)
    log(f"phase 1: distilling {len(todo)} candidates in {len(groups)} group(s) "
        f"(largest: {max(len(g) for g in groups)} candidates, ~{max(estimates):.0f} MiB), "
        f"{cfg.steps} steps of {cfg.batch_size} images each")
    chain.eval()
    dev = torch.device(device or "cpu")
    with placed(dev, chain):
        for members in groups:
            results = _train_group(chain, members, data, cfg, run_dir, seed, dev)
            index = _update_index(run_dir, candidates, results, cfg.steps)
    return index


def candidate_memory_mb(chain: Chain, layer: int, spec: str, batch_size: int) -> float:
    """Estimated memory (MiB) of training candidate ``spec`` of ``layer`` in phase 1: its
    weights, gradients and two Adam moments, plus the activations autograd keeps for the
    backward pass at ``batch_size`` (counted on a forward of 2 images, then scaled). The
    teacher's input and target features are shared by the group and not counted."""
    # A throwaway copy: its random init must not move the global RNG.
    with torch.random.fork_rng(devices=[]):
        module = build_op(spec, chain.info[layer], chain.layers[layer]).train()
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    state = 4 * sum(p.numel() * p.element_size() for p in module.parameters())
    x = torch.zeros(2, *chain.info[layer].in_shape)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr != x.untyped_storage().data_ptr():
            saved[ptr] = max(saved.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
        _nmse(out, torch.ones_like(out))
    activations = (sum(saved.values()) + out.numel() * out.element_size()) * batch_size / 2
    return (state + activations) / 2**20


def plan_groups(chain: Chain, todo: list[tuple[int, str]], cfg: DistillConfig
                ) -> tuple[list[list[tuple[int, str]]], list[float]]:
    """Split ``todo`` into groups trained together; return them and their estimated memory
    (MiB, :func:`candidate_memory_mb` summed).

    ``cfg.group_size > 0`` fixes the group size. 0 (the default) packs consecutive
    candidates while their estimate stays within ``cfg.max_memory_mb`` (a candidate larger
    than that trains alone). Groups are consecutive runs of ``todo``, so a resumed run,
    whose ``todo`` lacks the finished groups, forms the same remaining groups and finds
    the checkpoint of the group it was training. Grouping never changes a result.
    """
    mb = [candidate_memory_mb(chain, i, s, cfg.batch_size) for i, s in todo]
    if cfg.group_size:
        cuts = list(range(0, len(todo), cfg.group_size)) + [len(todo)]
    else:
        cuts, total = [0], 0.0
        for k, m in enumerate(mb):
            if k > cuts[-1] and total + m > cfg.max_memory_mb:
                cuts.append(k)
                total = 0.0
            total += m
        cuts.append(len(todo))
    pairs = list(zip(cuts[:-1], cuts[1:], strict=True))
    return [todo[a:b] for a, b in pairs], [sum(mb[a:b]) for a, b in pairs]


def _update_index(run_dir: Path, candidates: list[list[str]],
                  results: dict[tuple[int, str], float], steps: int) -> dict:
    """Add ``results`` to ``index.json`` and return it.

    Ranks of one torchrun job (or shards started by hand) update one index: the
    read-modify-write happens under a file lock, so no rank loses another's entries.
    Entries missing for weights on disk (a process killed between writing the weights and
    the index) are restored from the weights' own metadata.
    """
    index_path = run_dir / DISTILL_INDEX
    with file_lock(run_dir / DISTILL_INDEX_LOCK):
        index: dict = read_json(index_path) if index_path.exists() else {}
        before = json.dumps(index, sort_keys=True)
        for (i, spec), loss in results.items():
            index.setdefault(str(i), {})[spec] = {"nmse": loss, "steps": steps}
        for i, specs in enumerate(candidates):
            for spec in specs:
                if spec in UNTRAINED or spec in index.get(str(i), {}):
                    continue
                entry = _entry_from_weights(run_dir, i, spec)
                if entry is not None:
                    index.setdefault(str(i), {})[spec] = entry
        if json.dumps(index, sort_keys=True) != before or not index_path.exists():
            write_json(index_path, index)
    return index


def _entry_from_weights(run_dir: Path, layer: int, spec: str) -> dict | None:
    from safetensors import safe_open

    path = weight_path(run_dir, layer, spec)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        return {"nmse": float(meta["nmse"]), "steps": int(meta["steps"])}
    except Exception:  # an older file without the metadata, or a broken one: retrain it
        return None


def pending(candidates: list[list[str]], run_dir: str | Path, rank: int = 0, world: int = 1
            ) -> list[tuple[int, str]]:
    """Candidates of this rank's shard that have no saved phase-1 weights yet."""
    run_dir = Path(run_dir)
    index_path = run_dir / DISTILL_INDEX
    index: dict = read_json(index_path) if index_path.exists() else {}
    # Shard the full candidate list before dropping finished work, so every rank owns the
    # same candidates (and group checkpoints) whenever and however often it is started.
    todo = [(i, spec) for i, specs in enumerate(candidates) for spec in specs
            if spec not in UNTRAINED]
    return [c for c in todo[rank::world] if not _done(index, run_dir, *c)]


def _done(index: dict, run_dir: Path, layer: int, spec: str) -> bool:
    if not weight_path(run_dir, layer, spec).exists():
        return False
    # Weights without an index entry count as done when they carry their own result.
    return spec in index.get(str(layer), {}) or \
        _entry_from_weights(run_dir, layer, spec) is not None


def _train_group(chain: Chain, members: list[tuple[int, str]], data: Data, cfg: DistillConfig,
                 run_dir: Path, seed: int, device: torch.device) -> dict[tuple[int, str], float]:
    # Built (and inherited from the teacher's layers) on the CPU, so the initial weights
    # are the same whatever the device; the chain is on ``device`` while training.
    with placed("cpu", chain):
        modules = nn.ModuleList(build_candidate(chain, i, s, seed, cfg.inherit)
                                for i, s in members)
    modules.to(device)
    # The fused kernel updates thousands of small candidate tensors in one call; the
    # default per-tensor loop would dominate the step time on a CPU.
    opt = torch.optim.Adam(modules.parameters(), lr=cfg.lr, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, cfg.steps, max(1, cfg.steps // 20)))
    ckpt = distill_checkpoint(run_dir, _group_id(members))
    start = 0
    ema = [math.nan] * len(members)
    if ckpt.exists():
        start, ema = _load_checkpoint(ckpt, modules, opt, sched, members)
        log(f"phase 1: resuming a group of {len(members)} candidates at step {start}")
    last_layer = max(i for i, _ in members)
    # channels_last runs the many small (depthwise) convolutions ~25% faster on CPUs.
    modules.to(memory_format=torch.channels_last)
    modules.train()
    stream = data.stream(cfg.batch_size, seed=seed, augment=True)
    for _ in range(start):  # replay the data order so a resumed run sees the same batches
        next(stream)
    with progress() as bar:
        task = bar.add_task("phase 1 distill", total=cfg.steps, completed=start, info="")
        for step in range(start, cfg.steps):
            x, _ = next(stream)
            x = x.to(device, non_blocking=True)
            with torch.no_grad():
                feats = [_channels_last(f) for f in chain.features(x, upto=last_layer + 1)]
            losses = [_nmse(m(feats[i]), feats[i + 1]) for m, (i, _) in zip(modules, members,
                                                                            strict=True)]
            total = torch.stack(losses).sum()
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            # One transfer per step (not one per candidate): a GPU waits only once.
            values = torch.stack(losses).detach().cpu().tolist()
            for c, v in enumerate(values):
                ema[c] = v if math.isnan(ema[c]) else 0.9 * ema[c] + 0.1 * v
            bar.update(task, advance=1, info=f"mean nmse {sum(values) / len(members):.3f}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                _save_checkpoint(ckpt, step + 1, ema, modules, opt, sched, members)
            maybe_kill("distill", step + 1)
    modules.eval()
    modules.cpu()
    for c, (m, (i, spec)) in enumerate(zip(modules, members, strict=True)):
        save_tensors(weight_path(run_dir, i, spec), m.state_dict(),
                     metadata={"spec": spec, "layer": chain.names[i], "nmse": repr(ema[c]),
                               "steps": str(cfg.steps)})
        if c == 0:
            maybe_kill("distill", "saved-one")
    if ckpt.exists():
        os.unlink(ckpt)
    checksum_path(ckpt).unlink(missing_ok=True)
    return {key: ema[c] for c, key in enumerate(members)}


def _save_checkpoint(path: Path, step: int, ema: list[float], modules: nn.ModuleList,
                     opt: torch.optim.Optimizer, sched, members) -> None:
    import io

    from lana.core.io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"step": step, "ema": ema, "members": [list(m) for m in members],
                "modules": modules.state_dict(), "optim": opt.state_dict(),
                "sched": sched.state_dict()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: Path, modules: nn.ModuleList, opt: torch.optim.Optimizer, sched,
                     members) -> tuple[int, list[float]]:
    try:
        # weights_only: a checkpoint is never unpickled as arbitrary Python objects.
        state = torch.load(path, weights_only=True)
        if [tuple(m) for m in state["members"]] != list(members):
            raise ValueError("checkpoint belongs to another group of candidates")
        modules.load_state_dict(state["modules"])
        opt.load_state_dict(state["optim"])
        sched.load_state_dict(state["sched"])
        return int(state["step"]), list(state["ema"])
    except Exception as exc:
        log(f"[yellow]phase 1: ignoring unreadable checkpoint {path} ({exc}); "
            "restarting that group[/yellow]")
        return 0, [math.nan] * len(members)
