"""The LANA pipeline over a run directory: every stage reads and writes plain files there.

The stages, their files and what their keys depend on are declared once in
:mod:`lana.pipeline.stages`; docs/run-directory.md describes every file. A stage whose output exists
is skipped, so an interrupted ``lana run`` resumes, and a new budget re-runs only the
search, fine-tuning and export for that budget.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from lana.config import (
    BudgetConfig,
    Config,
    DistillConfig,
    config_from_dict,
    extra_columns,
    load_config,
)
from lana.errors import ArtifactError, ConfigError, InfeasibleBudgetError
from lana.latency.backends import deploy_env
from lana.latency.independent import independent_summary
from lana.latency.spread import interval_of
from lana.model.data import Splits, load_data
from lana.model.decompose import Chain, decompose
from lana.model.usercode import code_digest
from lana.model.zoo import SOURCES, source_digest
from lana.pipeline import dist as D
from lana.pipeline.io import (
    file_digest,
    load_state_dict,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from lana.pipeline.stages import (
    CANDIDATES,
    CONFIG,
    COSTS,
    DISTILL_INDEX,
    EXPORT,
    FINETUNE,
    FINETUNE_CHECKPOINT,
    FINETUNED_WEIGHTS,
    KEY_FIELD,
    LATENCY,
    LIBRARY,
    LOCKED_SECTIONS,
    LUT,
    MEMORY,
    MODEL_DIR,
    SCORES,
    SEARCH,
    STAGE,
    STEPS,
    STUDENTS_DIR,
    SUMMARY,
    TEACHER,
    TEACHER_CHECKPOINT,
    TEACHER_ONNX,
    TEACHER_WEIGHTS,
    TIMINGS,
    UNKEYED_SETTINGS,
    VERIFY,
    key_hash,
    student_dir,
)
from lana.report.progress import log

SUMMARY_FORMAT = "lana-summary/1"


def budget_tag(budget: BudgetConfig) -> str:
    """Folder name of a budget: ``speedup2`` or ``ms1.5``."""
    if budget.speedup is not None:
        return f"speedup{budget.speedup:g}"
    return f"ms{budget.latency_ms:g}"


def budget_from_tag(tag: str) -> BudgetConfig | None:
    """The budget a ``students/<tag>`` folder is named for (:func:`budget_tag`), or None
    when the name is not one lana makes."""
    m = re.fullmatch(r"(speedup|ms)([0-9.eE+-]+)", tag)
    if not m:
        return None
    field = "speedup" if m.group(1) == "speedup" else "latency_ms"
    try:
        return BudgetConfig(**{field: float(m.group(2))})
    except ValueError:  # also pydantic's ValidationError: a folder lana did not make
        return None


# Settings added after runs were already cached, with their defaults. At the default they
# are left out of a stage's key, so a run made before they existed still resumes instead
# of retraining; any other value changes the key.
_LATER_SETTINGS = {"optimizer": "adamw", "skip_dominated": True, "init": None}


def _settings(section, exclude: set[str]) -> dict:
    """A config section as a stage key sees it: ``exclude`` and later-added settings at
    their defaults left out."""
    out = section.model_dump(exclude=exclude)
    for name, default in _LATER_SETTINGS.items():
        if out.get(name, object()) == default:
            del out[name]
    return out


# Settings of the locked sections that change how fast a run goes (or how much memory it
# takes), never its results: changing them neither retrains the teacher nor refuses a run
# directory. They keep their default in the teacher's key, so keys made before they were
# left out still match. Phase 1's grouping is among them (tests/distill/test_distill.py:
# test_grouping_does_not_change_results), so a run short of memory can lower
# distill.max_memory_mb and resume.
_SPEED_ONLY = {
    "data": {"workers": 0},
    "distill": {name: DistillConfig.model_fields[name].default
                for name in ("group_size", "max_memory_mb", "checkpoint_every")},
}


def _locked(config: Config, section: str):
    """A section of ``config`` that a run directory or the teacher cache is tied to, as
    compared: its speed-only settings pinned to their defaults."""
    value = getattr(config, section)
    if section not in _SPEED_ONLY:
        return value
    out = {**value.model_dump(), **_SPEED_ONLY[section]}
    if section == "data" and not out["kwargs"]:
        del out["kwargs"]  # added later: keys made before it still match
    return out


def stage_inputs(config: Config, stage: str) -> dict:
    """The settings a stage's result depends on (``profile``, ``score``, ``search`` or
    ``finetune``: the config sections :data:`lana.pipeline.stages.STAGES` declares for it); their
    hash keys the stage's file, so a change recomputes it."""
    sections = STAGE[stage].sections
    if not sections:
        raise ValueError(f"stage {stage!r} is not keyed by config sections")
    return {name: _settings(getattr(config, name), set(UNKEYED_SETTINGS))
            for name in sections}


def _latency_columns(latency: dict) -> dict[str, dict]:
    """The latency cost columns of ``latency.json``: the configured one (``latency_ms``)
    and each extra one (other backends or batch sizes), by column name."""
    return {"latency_ms": latency, **latency.get("extra", {})}


def op_costs(candidates: list[list[str]], latency: dict, costs: dict
             ) -> list[dict[str, dict[str, float]]]:
    """Per layer and op, every cost column the search can bound: the configured latency
    (``latency_ms``), each extra latency column, params and FLOPs; from the contents of
    ``latency.json`` and ``costs.json``."""
    columns = _latency_columns(latency)
    return [{spec: {**{col: c["layers"][i][j] for col, c in columns.items()},
                    **costs["layers"][i][j]}
             for j, spec in enumerate(specs)}
            for i, specs in enumerate(candidates)]


def without(candidates: list[list[str]], left_out: list[list[str]]) -> list[list[str]]:
    """Per layer, the candidates not in ``left_out`` (what phase 1 trains)."""
    return [[s for s in specs if s not in out]
            for specs, out in zip(candidates, left_out, strict=True)]


def score_inputs(config: Config, left_out: list[list[str]]) -> dict:
    """The score stage's key: its settings, and the candidates it left out when any."""
    inputs = stage_inputs(config, "score")
    if any(left_out):  # keys of runs that leave nothing out stay as they were
        inputs["left_out"] = left_out
    return inputs


class Run:
    """One LANA run bound to a directory. Stages are methods; each is resumable.

    ``config`` defaults to the directory's ``config.yaml``. ``teacher`` is an already trained
    model to accelerate (its current weights are used; ``model.name`` is then only a label),
    and ``splits`` replaces the configured dataset: together they let the Python API run on
    any model and data.
    """

    def __init__(self, run_dir: str | Path, config: Config | None = None,
                 teacher: nn.Module | None = None, splits: Splits | None = None) -> None:
        self.dir = Path(run_dir)
        cfg_path = self.dir / CONFIG
        if config is None:
            if not cfg_path.exists():
                raise ConfigError(f"{self.dir} is not a lana run directory (no config.yaml); "
                                  "start one with `lana run CONFIG --out DIR`")
            config = load_config(cfg_path)
        elif cfg_path.exists():
            old = load_config(cfg_path)
            for section in LOCKED_SECTIONS:
                if _locked(old, section) != _locked(config, section):
                    raise ConfigError(
                        f"{self.dir} was made with a different '{section}' section; its "
                        "results would not match this config. Use a new --out directory "
                        "(search, latency and fine-tuning settings may change freely).")
        self.config = config
        self.dir.mkdir(parents=True, exist_ok=True)
        from lana.pipeline.io import atomic_write_bytes

        if D.is_main():  # under torchrun, rank 0 alone writes shared artifacts
            atomic_write_bytes(cfg_path, config.to_yaml().encode())
        self._teacher_override = teacher
        self._splits = splits
        if config.threads:
            torch.set_num_threads(config.threads)

    # ---------------------------------------------------------------- shared state
    @cached_property
    def splits(self) -> Splits:
        return self._splits or load_data(self.config.data, self.config.seed)

    @cached_property
    def device(self) -> torch.device:
        """Where this process trains and evaluates (the config's ``device``, resolved once:
        see :func:`lana.pipeline.dist.resolve_device`)."""
        dev = D.resolve_device(self.config.device)
        if dev.type == "cuda" and D.is_main():
            log(f"training and evaluation on {dev} ({torch.cuda.get_device_name(dev)})")
        return dev

    def lut(self):
        """The latency LUT this run reads and extends (``latency.lut`` or ``DIR/lut.json``);
        its reference baseline is the unit of every normalised timing of the run."""
        from lana.latency.timing import LatencyTable

        return LatencyTable(self.config.latency.lut or self.dir / LUT)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        s = self.splits
        return (s.in_chans, s.image_size, s.image_size)

    def _model_kwargs(self) -> dict:
        kw = dict(self.config.model.kwargs)
        if self.config.model.name.partition(":")[0] in SOURCES:
            kw.setdefault("num_classes", self.splits.num_classes)
            kw.setdefault("in_chans", self.splits.in_chans)
        return kw

    def _build_teacher(self) -> nn.Module:
        if self._teacher_override is not None:
            return self._teacher_override
        from lana.model.zoo import create_model

        # Seeded, so the teacher's initial weights (and so a trained teacher) do not depend
        # on what the process did before (a CLI run and the Python API agree).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            model = create_model(self.config.model.name, **self._model_kwargs())
        self._check_fits_data(model)
        return model

    def _check_fits_data(self, model: nn.Module) -> None:
        """Say it plainly when the model cannot take the data's images or has fewer
        outputs than it has classes, before training fails deep inside torch."""
        name, s = self.config.model.name, self.splits
        x = torch.zeros(2, *self.input_shape)
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

    @cached_property
    def teacher(self) -> nn.Module:
        """The trained teacher (loaded from the run, the config's weights, or trained)."""
        model = self._build_teacher()
        path = self.dir / TEACHER_WEIGHTS
        if not path.exists():
            self._obtain_teacher(model, path)
        _load_state(model, load_tensors(path), path)
        return model.eval()

    def _obtain_teacher(self, model: nn.Module, path: Path) -> None:
        if not self._teacher_from_files(model, path):
            # Reached on one process (under torchrun: rank 0 inside on_main); the ranks
            # train a missing teacher together in _teacher_on_every_rank.
            self._train_teacher(model, path, distributed=False)

    def _teacher_cache(self) -> tuple[str, Path]:
        """The teacher's training key (its settings) and its file in the teacher cache."""
        cfg = self.config
        # Your own model's code is part of the key (timm's and torchvision's are fixed by
        # their versions): editing it trains a new teacher instead of loading a stale one.
        code = {"code": digest} if (digest := source_digest(cfg.model.name)) else {}
        if data_code := code_digest(cfg.data.name, "data.name"):
            code["data_code"] = data_code
        train = _settings(cfg.teacher_training, {"cache_dir", "checkpoint_every"})
        if "init" in train:  # the starting weights' content, wherever the file lies
            train["init"] = file_digest(cfg.teacher_training.init, "teacher_training.init")
        key = key_hash({"model": cfg.model.name, **code, "kwargs": self._model_kwargs(),
                        "data": _locked(cfg, "data"), "train": train,
                        "seed": cfg.seed, "v": 1})
        cache_root = Path(os.environ.get("LANA_CACHE_DIR", Path.home() / ".cache" / "lana"))
        cache = Path(cfg.teacher_training.cache_dir or cache_root / "teachers"
                     ) / f"{key}.safetensors"
        return key, cache

    def _teacher_from_files(self, model: nn.Module, path: Path) -> bool:
        """Write ``path`` from given weights, the Python API's model or the teacher cache;
        False when none applies and the teacher must be trained."""
        cfg = self.config
        if cfg.model.weights:
            state = load_state_dict(cfg.model.weights)
            _load_state(model, state, Path(cfg.model.weights))
            save_tensors(path, model.state_dict())
            return True
        if self._teacher_override is not None:
            # A model handed over through the Python API is the trained teacher as it is.
            save_tensors(path, model.state_dict())
            return True
        _, cache = self._teacher_cache()
        if cache.exists():
            try:
                state = load_tensors(cache)
                _load_state(model, state, cache)
                log(f"teacher: using cached weights {cache}")
                save_tensors(path, model.state_dict())
                return True
            except ArtifactError as exc:
                log(f"[yellow]teacher cache unusable ({exc}); training again[/yellow]")
        return False

    def _train_teacher(self, model: nn.Module, path: Path, distributed: bool) -> None:
        """Train the teacher from scratch (with every rank under torchrun when
        ``distributed``: DDP, as phase 3) and write it to ``path`` and the cache."""
        from lana.distill.train import Checkpointing, Recipe, train_classifier

        cfg = self.config
        key, cache = self._teacher_cache()
        t = cfg.teacher_training
        log(f"teacher: training {cfg.model.name} for {t.epochs:g} epochs on "
            f"{len(self.splits.train)} images")
        start = time.time()
        torch.manual_seed(cfg.seed)
        if t.init:
            log(f"teacher: starting from {t.init} ({load_matching(model, t.init)})")
        D.reset_peak_rss()
        train_classifier(model, self.splits.train, Recipe.from_config(t, seed=cfg.seed),
                         description="teacher",
                         checkpointing=Checkpointing(path=self.dir / TEACHER_CHECKPOINT,
                                                     key=key, every=t.checkpoint_every,
                                                     kill_tag="teacher"),
                         distributed=distributed, device=self.device)
        self._timed(STAGE["prepare"].timing, start)
        if D.is_main() or not distributed:  # under DDP every rank holds the same weights
            save_tensors(cache, model.state_dict())
            save_tensors(path, model.state_dict())

    def _teacher_on_every_rank(self) -> None:
        """Under torchrun: make ``teacher.safetensors`` exist before any rank needs it.
        Rank 0 copies given or cached weights; a teacher that must be trained is trained
        by every rank together (DDP + sharded batches, resumable from its checkpoint:
        rank 0 writes it, every rank resumes from it). No-op in one process."""
        if D.world() <= 1 or "teacher" in self.__dict__:
            return
        path = self.dir / TEACHER_WEIGHTS
        model = self._build_teacher()
        # Rank 0 decides for everyone: the others must not look at files it is writing.
        found = D.share(D.on_main(lambda: path.exists()
                                  or self._teacher_from_files(model, path)))
        if not found:
            self._train_teacher(model, path, distributed=True)
        D.barrier()  # rank 0 has written the weights

    def _cached(self, path: Path, inputs: dict) -> dict | None:
        """A stage's stored output if it was computed from the same ``inputs``."""
        if not path.exists():
            return None
        data = read_json(path)
        if data.get(KEY_FIELD) == key_hash(inputs):
            return data
        log(f"{path.name}: settings changed since it was written; recomputing")
        return None

    def _stage_inputs(self, stage: str) -> dict:
        return stage_inputs(self.config, stage)

    def _timings(self) -> dict:
        p = self.dir / TIMINGS
        return read_json(p) if p.exists() else {}

    def _timed(self, name: str, start: float, memory_plan: dict | None = None) -> None:
        """Record a stage's duration (timings.json) and peak resident memory since
        ``D.reset_peak_rss()`` (memory.json, MiB), plus ``memory_plan`` (e.g. phase 1's
        groups and their estimated memory) in memory.json; rank 0 writes."""
        if not D.is_main():
            return
        write_json(self.dir / TIMINGS, {**self._timings(), f"{name}_s": time.time() - start})
        mem_path = self.dir / MEMORY
        memory = read_json(mem_path) if mem_path.exists() else {}
        gpu = {}
        # Only a stage that resolved the device trained on it (resolving would start CUDA).
        if "device" in self.__dict__ and self.device.type == "cuda":
            gpu = {f"{name}_gpu_peak_mb": round(
                torch.cuda.max_memory_allocated(self.device) / 2**20, 1)}
            torch.cuda.reset_peak_memory_stats(self.device)
        write_json(mem_path, {**memory, f"{name}_peak_rss_mb": round(D.peak_rss_mb(), 1),
                              **gpu, **(memory_plan or {})})

    @cached_property
    def chain(self) -> Chain:
        return decompose(self.teacher, torch.zeros(2, *self.input_shape),
                         layers=self.config.model.layers)

    @cached_property
    def candidates(self) -> list[list[str]]:
        path = self.dir / CANDIDATES
        if path.exists():
            data = read_json(path)
            return [layer["ops"] for layer in data["layers"]]
        from lana.space.ops import fitting_candidates, resolve_space, space_specs

        # space.ops 'auto' resolves to the teacher family's default space; the resolved
        # patterns are recorded next to the per-layer specs.
        patterns = resolve_space(self.config.space.ops, self.chain.family)
        out = fitting_candidates(
            self.chain.info, space_specs(patterns), self.build_candidate,
            on_skip=lambda info, spec, exc: log(f"[yellow]skipping {spec} at {info.name}: "
                                                f"{exc}[/yellow]"))
        write_json(path, {"space": {"family": self.chain.family, "ops": patterns},
                          "layers": [{"name": n, **info.to_dict(), "ops": ops} for n, info, ops
                                     in zip(self.chain.names, self.chain.info, out,
                                            strict=True)]})
        return out

    def build_candidate(self, i: int, spec: str) -> nn.Module:
        """A new candidate ``spec`` for layer ``i`` with this run's deterministic initial
        weights (see :func:`lana.distill.phase1.build_candidate`), not its phase-1 weights."""
        from lana.distill.phase1 import build_candidate

        return build_candidate(self.chain, i, spec, self.config.seed,
                               self.config.distill.inherit)

    def load_candidate(self, i: int, spec: str) -> nn.Module:
        """Candidate ``spec`` of layer ``i`` with its phase-1 weights from this run."""
        from lana.distill.phase1 import load_candidate

        return load_candidate(self.chain, self.dir, i, spec)

    def assemble(self, choices: list[str]) -> nn.Module:
        """The student of ``choices`` (one spec per layer) from this run's phase-1 weights,
        before any fine-tuning."""
        from lana.model.student import assemble

        return assemble(self.chain, choices, self.load_candidate)

    @cached_property
    def teacher_eval(self) -> dict:
        """Teacher accuracy on the test split (cached in teacher.json)."""
        path = self.dir / TEACHER
        if path.exists():
            return read_json(path)
        from lana.distill.train import evaluate

        res = evaluate(self.teacher, self.splits.test, device=self.device)
        data = {"name": self.config.model.name, "accuracy": res["accuracy"],
                "loss": res["loss"], "data": self.splits.name,
                "layers": [i.to_dict() for i in self.chain.info],
                "params": sum(p.numel() for p in self.teacher.parameters())}
        write_json(path, data)
        return data

    # ---------------------------------------------------------------- stages
    def prepare(self) -> None:
        """Teacher (trained or loaded), its decomposition and the candidate list."""
        _ = self.teacher_eval, self.candidates

    def distill(self, rank: int | None = None, world: int | None = None) -> dict:
        """Phase 1: layer-wise distillation of every candidate (resumable).

        Under torchrun every rank trains its share of the candidates from its own teacher
        passes (``rank``/``world`` default to the process group's); the ranks then meet, so
        the index is complete when this returns. Without a process group, ``rank`` and
        ``world`` shard by hand (start each shard yourself).
        """
        from lana.distill.phase1 import distill, pending

        _ = self.device  # every rank checks its device before any of them waits for another
        if D.world() > 1:
            self._teacher_on_every_rank()  # a teacher to train is trained by every rank
            # One rank evaluates it, lists the candidates and measures their latency.
            D.on_main(lambda: (self.prepare(), self.left_out("phase 1")))
        rank = D.rank() if rank is None else rank
        world = D.world() if world is None else world
        index_path = self.dir / DISTILL_INDEX
        # Every rank reads the same latency.json, so every rank shards the same list.
        to_train = self.to_train()
        todo = pending(to_train, self.dir, rank, world)
        start = time.time()
        plan: dict = {}  # groups and their estimated memory (rank 0's, under torchrun)
        if todo:
            D.reset_peak_rss()
            distill(self.chain, to_train, self.splits.train, self.config.distill,
                    self.dir, self.config.seed, rank, world, report=plan, device=self.device)
        if not D.all_ok(not todo):  # also the barrier after which every shard is saved
            self._timed("distill", start, plan)
        return read_json(index_path) if index_path.exists() else {}

    def dominated(self) -> list[list[str]]:
        """Per layer, the candidates that cost at least as much as the teacher's own layer
        in every cost column (:func:`lana.search.solver.dominated`); empty lists with
        ``search.skip_dominated`` off. Measures the latency first if it is not yet."""
        if not self.config.search.skip_dominated:
            return [[] for _ in self.candidates]
        from lana.search.solver import dominated

        return dominated(op_costs(self.candidates, self.profile(), self.costs()))

    def left_out(self, stage: str = "phase 1") -> list[list[str]]:
        """:meth:`dominated`, or none left out while the latency cannot be had yet: a run
        profiled on another machine (``latency.device``) whose LUT has not come back. Then
        ``stage`` keeps every candidate, and says so."""
        try:
            return self.dominated()
        except (ArtifactError, ConfigError) as exc:
            if self.config.latency.device is None:  # timed on this machine: a real error
                raise
            log(f"[yellow]{stage} keeps every candidate: the target's latency is not in the "
                f"LUT yet, so lana cannot tell which are no cheaper than the teacher's "
                f"layers ({exc})[/yellow]")
            return [[] for _ in self.candidates]

    def to_train(self) -> list[list[str]]:
        """Per layer, the candidates phase 1 trains: all but :meth:`left_out`."""
        out = self.left_out("phase 1")
        if any(out):
            n = sum(map(len, out))
            names = [f"{self.chain.names[i]}:{s}" for i, ops in enumerate(out) for s in ops]
            log(f"phase 1: {n} candidate(s) left out, no cheaper than the teacher's own "
                f"layer in any cost column (search.skip_dominated), e.g. "
                f"{', '.join(names[:4])}")
        return without(self.candidates, out)

    def _stage(self, name: str, path: Path, inputs: dict, compute) -> dict:
        """Return ``path``'s content if made from the same ``inputs``; else compute it,
        stamp it with the inputs' hash, write it atomically and record the stage's time."""
        if (cached := self._cached(path, inputs)) is not None:
            return cached
        start = time.time()
        D.reset_peak_rss()
        res = compute()
        res[KEY_FIELD] = key_hash(inputs)
        D.maybe_kill(name.split("_")[0], "computed")
        if D.is_main():
            write_json(path, res)
        self._timed(name, start)
        return res

    def profile(self) -> dict:
        """Phase 2b: latency of stem, head, every candidate and the teacher end to end."""
        return self._stage("profile", self.dir / LATENCY,
                           self._stage_inputs("profile"), self._profile)

    def _profile(self) -> dict:
        from lana.latency.profile import measure_models, profile_candidates

        cfg = self.config.latency
        lut = self.lut()
        res = profile_candidates(self.chain, self.candidates, self.build_candidate, cfg, lut,
                                 self.input_shape)
        if res.get("remote"):  # measured on the target from the bundle's teacher network
            res["teacher_measured_ms"] = res["teacher_network_ms"]
        else:
            res["teacher_measured_ms"] = measure_models({"teacher": self.teacher},
                                                        self.input_shape, cfg,
                                                        lut=lut)["teacher"]
        res["teacher_predicted_ms"] = res["stem_ms"] + res["head_ms"] + sum(
            row[ops.index("teacher")] for row, ops in zip(res["layers"], self.candidates,
                                                          strict=True))
        res["specs"] = self.candidates
        res["extra"] = {}
        for column, extra_cfg in extra_columns(cfg).items():
            x = profile_candidates(self.chain, self.candidates, self.build_candidate,
                                   extra_cfg, lut, self.input_shape)
            res["extra"][column] = {k: x[k] for k in ("settings", "stem_ms", "head_ms",
                                                      "layers")}
        return res

    def costs(self) -> dict:
        """Parameters and FLOPs of stem, head and every candidate (``costs.json``)."""
        from lana.latency.profile import static_costs

        return self._stage("costs", self.dir / COSTS, {"specs": self.candidates},
                           lambda: static_costs(self.chain, self.candidates,
                                                self.build_candidate, self.input_shape))

    def score(self) -> dict:
        """Phase 2a: replace-one scores on held-out data."""
        left_out = self.left_out("score")
        return self._stage("score", self.dir / SCORES,
                           score_inputs(self.config, left_out),
                           lambda: self._score(left_out))

    def _score(self, left_out: list[list[str]]) -> dict:
        from lana.distill.score import replace_one_scores

        self._require_distilled(left_out)
        cfg = self.config.score
        res = replace_one_scores(self.chain, self.candidates, self.load_candidate,
                                 self.splits.val.subset(cfg.samples, self.config.seed),
                                 cfg.metric, cfg.batch_size, device=self.device,
                                 skip=left_out)
        res["specs"] = self.candidates
        res["left_out"] = left_out
        return res

    def _require_distilled(self, left_out: list[list[str]]) -> None:
        from lana.distill.phase1 import UNTRAINED, weight_path

        missing = [f"{self.chain.names[i]}:{s}" for i, specs in enumerate(self.candidates)
                   for s in specs if s not in UNTRAINED and s not in left_out[i]
                   and not weight_path(self.dir, i, s).exists()]
        if missing:
            raise ArtifactError(f"{len(missing)} candidates have no phase-1 weights yet "
                                f"(e.g. {missing[:3]}); run `lana distill {self.dir}` first")

    def library(self) -> dict:
        """Write ``library.json``: per layer and op, its score and its cost (ms)."""
        lat, sc, costs = self.profile(), self.score(), self.costs()
        # Every cost column: the configured latency, extra latency columns (other backends
        # or batch sizes), parameters and FLOPs; the search can bound any of them.
        per_op = op_costs(self.candidates, lat, costs)
        left_out = sc.get("left_out") or [[] for _ in self.candidates]
        layers = []
        for name, specs, scores, cost, out in zip(self.chain.names, self.candidates,
                                                  sc["scores"], per_op, left_out, strict=True):
            layers.append({"name": name, "ops": [
                {"spec": s, "score": a, "cost": cost[s]}
                for s, a in zip(specs, scores, strict=True) if s not in out],
                # Not searched: no cheaper than the teacher's layer (search.skip_dominated).
                **({"left_out": out} if out else {})})
        fixed = {col: c["stem_ms"] + c["head_ms"] for col, c in _latency_columns(lat).items()}
        fixed.update({k: costs["stem"][k] + costs["head"][k] for k in ("params", "flops")})
        lib = {"layers": layers, "fixed_cost": fixed, "latency": lat["settings"]}
        write_json(self.dir / LIBRARY, lib)
        return lib

    def budget_ms(self, budget: BudgetConfig) -> float:
        """The latency budget in ms (a speed-up is relative to the measured teacher)."""
        if budget.latency_ms is not None:
            return budget.latency_ms
        return self.profile()["teacher_measured_ms"] / budget.speedup

    def student_dir(self, budget: BudgetConfig) -> Path:
        return student_dir(self.dir, budget_tag(budget))

    def search(self, budget: BudgetConfig | None = None) -> dict:
        """Phase 2c: ILP with K diverse solutions, measured and ranked (resumable)."""
        from lana.search.select import select_student

        budget = budget or self.config.search.budget
        return self._stage(f"search_{budget_tag(budget)}",
                           self.student_dir(budget) / SEARCH,
                           self._stage_inputs("search"),
                           lambda: select_student(self, self.library(), budget))

    def finetune(self, budget: BudgetConfig | None = None) -> dict:
        """Phase 3: fine-tune the selected student with cross-entropy + KD from the teacher."""
        budget = budget or self.config.search.budget
        chosen = self.search(budget)["chosen"]
        inputs = {**self._stage_inputs("finetune"), "choices": chosen}
        return self._stage(f"finetune_{budget_tag(budget)}",
                           self.student_dir(budget) / FINETUNE, inputs,
                           lambda: self._finetune(budget, chosen))

    def _finetune(self, budget: BudgetConfig, chosen: dict) -> dict:
        from lana.distill.train import Checkpointing, Recipe, evaluate, train_classifier

        student = self.assemble(chosen["choices"])
        before = evaluate(student, self.splits.test, device=self.device)
        cfg = self.config.finetune
        start = time.time()
        stats = {"steps": 0, "train_loss": math.nan}
        if cfg.epochs > 0:
            # Under torchrun every rank runs this with DistributedDataParallel.
            key = key_hash({**self._stage_inputs("finetune"), "choices": chosen["choices"]})
            stats = train_classifier(
                student, self.splits.train, Recipe.from_config(cfg, seed=self.config.seed),
                teacher=self.teacher, description="phase 3 finetune",
                checkpointing=Checkpointing(
                    path=self.student_dir(budget) / FINETUNE_CHECKPOINT, key=key,
                    every=cfg.checkpoint_every, kill_tag="finetune"),
                device=self.device)
        after = evaluate(student, self.splits.test, device=self.device)
        if D.is_main():
            save_tensors(self.student_dir(budget) / FINETUNED_WEIGHTS,
                         student.state_dict())
        return {"accuracy_before": before["accuracy"], "accuracy": after["accuracy"],
                "loss": after["loss"], **stats, "seconds": time.time() - start}

    def export(self, budget: BudgetConfig | None = None) -> dict:
        """Save the fine-tuned student (ONNX, safetensors, arch JSON), verify its latency."""
        budget = budget or self.config.search.budget
        ft = self.finetune(budget)
        res = self._stage(f"export_{budget_tag(budget)}",
                          self.student_dir(budget) / EXPORT,
                          {"finetune": ft.get("inputs")}, lambda: self._export(budget, ft))
        # Outside the cached stage: a run exported before the teacher's file existed, or
        # one whose file was deleted, gets it on the next `lana export`.
        self.teacher_onnx()
        self.write_summary()
        return res

    def teacher_onnx(self) -> Path:
        """``teacher/model.onnx``: the teacher exported exactly as the students'
        ``model/model.onnx`` (:func:`lana.model.student.onnx_bytes`), written once per run,
        atomically, and again only when missing. Returns its path."""
        from lana.model.student import onnx_bytes
        from lana.pipeline.io import atomic_write_bytes

        path = self.dir / TEACHER_ONNX
        if not path.exists() and D.is_main():
            atomic_write_bytes(path, onnx_bytes(self.teacher, self.input_shape))
        return path

    def _export(self, budget: BudgetConfig, ft: dict) -> dict:
        from lana.latency.profile import measure_models
        from lana.model.student import arch_dict, save_student
        from lana.search.select import time_until_decided

        sdir = self.student_dir(budget)
        chosen = self.search(budget)["chosen"]
        student = self._finetuned_student(budget, chosen)
        arch = arch_dict(self.config.model.name, self._model_kwargs(), self.input_shape,
                         student, chosen["choices"])
        if self.config.model.layers is not None:  # a split by hand is part of the arch
            arch["model"]["layers"] = list(self.config.model.layers)
        files = save_student(sdir / MODEL_DIR, student, arch)
        D.maybe_kill("export", "saved")  # crash-safety tests: files written, not verified
        target = self.budget_ms(budget)
        if self.profile().get("remote"):
            # The target is another machine: time model/model.onnx there with
            # `lana profile`; here only the prediction is known.
            log("[yellow]export: latency.device is another machine; the student's latency "
                "is predicted, not measured (measure model/model.onnx on the "
                "target)[/yellow]")
            return {"budget": budget.model_dump(exclude_none=True), "budget_ms": target,
                    "latency_ms_predicted": chosen["latency_ms_predicted"],
                    "latency_ms_measured": None, "teacher_latency_ms":
                    self.profile()["teacher_measured_ms"], "speedup": None,
                    "meets_budget": None, "accuracy": ft["accuracy"],
                    "accuracy_before_finetune": ft["accuracy_before"],
                    "choices": chosen["choices"],
                    "files": {k: str(Path(MODEL_DIR) / v) for k, v in files.items()}}
        # A speed-up budget is checked against the teacher timed alongside, so a machine
        # that got slower since profiling fails no student unfairly; the median of
        # separate timings decides, as in the search (lana.search.select.time_until_decided).
        lut = self.lut()  # read once: every timing is scaled to its reference baseline
        timings, pooled = time_until_decided(
            lambda: measure_models({"teacher": self.teacher, "student": student},
                                   self.input_shape, self.config.latency, lut=lut),
            "student", budget.speedup, target, 1.0, self.config.search.confirm)
        return {"budget": budget.model_dump(exclude_none=True), "budget_ms": target,
                "latency_ms_predicted": chosen["latency_ms_predicted"],
                "latency_ms_measured": pooled["latency_ms"],
                "teacher_latency_ms": pooled["teacher_ms"], "speedup": pooled["speedup"],
                "meets_budget": pooled["fraction"] <= 1 + 1e-9, "timings_ms": timings,
                "accuracy": ft["accuracy"],
                "accuracy_before_finetune": ft["accuracy_before"],
                "choices": chosen["choices"],
                "files": {k: str(Path(MODEL_DIR) / v) for k, v in files.items()}}

    def _finetuned_student(self, budget: BudgetConfig, chosen: dict) -> nn.Module:
        from lana.model.student import assemble

        path = self.student_dir(budget) / FINETUNED_WEIGHTS
        student = assemble(self.chain, chosen["choices"], self.build_candidate)
        _load_state(student, load_tensors(path), path)
        return student.eval()

    def verify(self, budget: BudgetConfig | None = None, sessions: int = 3,
               gap_s: float = 300.0, on_session=None) -> dict:
        """Time the exported student beside the teacher again, in ``sessions`` more timing
        sessions at least ``gap_s`` seconds apart, and judge the budget on the median of
        every timing so far (export's own and all earlier verifications').

        Export's check times the student a few times back to back, inside one time window;
        on a shared machine the student/teacher ratio moves from one window to the next,
        so a student that met its budget then can miss it later (docs/latency.md, "Whole
        networks").
        Sessions are stored as they end in ``students/<budget>/verify.json`` (re-running
        adds to them; Ctrl-C loses only the session under way). ``on_session(n, timing)``
        is called after each. Returns the stored record with ``pooled`` (as
        :func:`lana.search.select.pool_timings`) and ``meets_budget``.
        """
        from lana.latency.profile import measure_models
        from lana.search.select import pool_timings

        budget = budget or self.config.search.budget
        sdir = self.student_dir(budget)
        exp = self.exported(budget)
        path = sdir / VERIFY
        record = read_json(path) if path.exists() else {}
        record.setdefault("sessions", [])  # a file with only independent windows has none
        # The exported architecture, as exported: a search whose settings changed since
        # is not re-run here.
        student = self._finetuned_student(budget, {"choices": exp["choices"]})
        lut = self.lut()
        target = exp["budget_ms"]
        for n in range(sessions):
            last = max([s["at"] for s in record["sessions"]], default=0.0)
            wait = last + gap_s - time.time()
            if record["sessions"] and wait > 0:
                log(f"verify: next timing session in {wait:.0f} s (sessions are spread "
                    "out in time)")
                time.sleep(wait)
            ms = measure_models({"teacher": self.teacher, "student": student},
                                self.input_shape, self.config.latency, lut=lut)
            record["sessions"].append({"at": time.time(), **ms})
            write_json(path, record)
            if on_session is not None:
                on_session(n, record["sessions"][-1])
        exported = list(exp.get("timings_ms") or [])
        pooled = pool_timings([*exported, *record["sessions"]], "student", budget.speedup,
                              target)
        return {**record, "budget": budget.model_dump(exclude_none=True),
                "budget_ms": target, "export_timings": exported,
                "pooled": pooled, "meets_budget": pooled["fraction"] <= 1 + 1e-9}

    def exported(self, budget: BudgetConfig) -> dict:
        """The student's ``export.json``, for a verification; ArtifactError when it is not
        exported, ConfigError when its latency belongs to another machine."""
        path = self.student_dir(budget) / EXPORT
        if not path.exists():
            raise ArtifactError(f"{path} does not exist: export the student "
                                f"first (`lana export {self.dir}"
                                + (f" --speedup {budget.speedup:g}`)" if budget.speedup
                                   else f" --latency-ms {budget.latency_ms:g}`)"))
        exp = read_json(path)
        if exp.get("meets_budget") is None:
            raise ConfigError("latency.device is another machine, so nothing can be timed "
                              "here: time the student's model/model.onnx on the target "
                              "with `lana profile`")
        return exp

    def verify_independent(self, budget: BudgetConfig | None = None, windows: int = 3,
                           gap_s: float = 300.0,
                           on_window: Callable[[int, dict], None] | None = None) -> dict:
        """Check the budget the way a user with their own timer would: ``teacher/model.onnx``
        and the student's ``model/model.onnx`` timed with plain ONNX Runtime, interleaved in
        rounds, each of ``windows`` timing windows in a fresh process, windows at least
        ``gap_s`` seconds apart; none of lana's measuring code runs there. ONNX Runtime CPU
        backends only. Windows are stored under ``independent`` in
        ``students/<budget>/verify.json`` and summarised in ``summary.json``
        (``independent_verify``); ``on_window(n, record)`` is called after each. Returns the
        windows and their distribution (:func:`lana.latency.independent.verify_independent`)."""
        from lana.latency.independent import verify_independent

        return verify_independent(self, budget, windows, gap_s, on_window)

    def all(self, budget: BudgetConfig | None = None) -> dict:
        """Every stage in order, skipping what the directory already holds.

        Under torchrun, phase 1 and phase 3 run on every rank; the other stages run on
        rank 0 while the others wait. Every rank returns the summary."""
        if D.world() > 1:
            self.distill()
            D.on_main(lambda: (self.profile(), self.score(), self.search(budget)))
            self.finetune(budget)
            D.on_main(lambda: self.export(budget))
            return read_json(self.dir / SUMMARY)
        # The steps of lana.pipeline.stages, in order; each is the method of its name.
        for stage in STEPS:
            step = getattr(self, stage.name)
            if stage.per_budget:
                step(budget)
            else:
                step()
        return self.write_summary()

    def write_summary(self) -> dict:
        """Collect ``summary.json`` from the stage outputs (docs/run-directory.md)."""
        lat = self.profile()
        teacher = self.teacher_eval
        students = []
        search_info = {}
        for sdir in sorted((self.dir / STUDENTS_DIR).glob("*")):
            exp_p, s_p = sdir / EXPORT, sdir / SEARCH
            if not (exp_p.exists() and s_p.exists()):
                continue
            exp, srch = read_json(exp_p), read_json(s_p)
            students.append({"budget": exp["budget"], "budget_ms": exp["budget_ms"],
                             "latency_ms_predicted": exp["latency_ms_predicted"],
                             "latency_ms_measured": exp["latency_ms_measured"],
                             "teacher_latency_ms_measured": exp["teacher_latency_ms"],
                             "speedup": exp["speedup"], "meets_budget": exp["meets_budget"],
                             "speedup_interval": interval_of(srch, exp["speedup"]),
                             "margin": srch.get("margin"),
                             "timings_ms": exp.get("timings_ms"),
                             "accuracy": exp["accuracy"],
                             "accuracy_before_finetune": exp["accuracy_before_finetune"],
                             "choices": exp["choices"], "path": str(sdir / MODEL_DIR),
                             "independent_verify": independent_summary(self.dir, sdir)})
            search_info = {"solve_seconds": srch["solve_seconds"],
                           "log10_space_size": srch["log10_space_size"], "k": srch["k"]}
        settings = lat["settings"]
        summary = {
            "format": SUMMARY_FORMAT,
            "teacher": {"name": teacher["name"], "accuracy": teacher["accuracy"],
                        "latency_ms": lat["teacher_measured_ms"], "params": teacher["params"]},
            "latency": {"backend": settings["backend"], "batch_size": settings["batch_size"],
                        "threads": settings["threads"], "device": settings["device"],
                        "deploy_env": deploy_env(settings["backend"])},
            "students": students,
            "search": search_info,
            "timings_s": self._timings(),
            "peak_rss_mb": read_json(self.dir / MEMORY)
            if (self.dir / MEMORY).exists() else {},
        }
        write_json(self.dir / SUMMARY, summary)
        return summary


def _load_state(model: nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        why = _state_mismatch(model, state) or str(exc)
        raise ArtifactError(f"{path} does not fit the model: {why}") from None


def load_matching(model: nn.Module, path: str | Path) -> str:
    """Load every tensor of the weights file ``path`` whose name and shape match ``model``'s
    (pretrained weights for a model with another classifier or input channels); the rest of
    ``model`` keeps its initialisation. Returns what was loaded, in words; raises
    ArtifactError when nothing matches (another architecture)."""
    state = load_state_dict(path)
    own = model.state_dict()
    fits = {k: v for k, v in state.items()
            if k in own and tuple(getattr(v, "shape", ())) == tuple(own[k].shape)}
    if not fits:
        raise ArtifactError(f"teacher_training.init {path} does not fit the model: "
                            f"{_state_mismatch(model, state)}")
    model.load_state_dict(fits, strict=False)
    kept = [k for k in own if k not in fits and not k.endswith("num_batches_tracked")]
    return (f"{len(fits)} of {len(own)} tensors loaded" +
            (f"; freshly initialised: {', '.join(kept[:4])}{', ...' if len(kept) > 4 else ''}"
             if kept else ""))


def _state_mismatch(model: nn.Module, state: dict) -> str:
    """What differs between ``model``'s state dict and ``state``, in a few lines (torch's
    own message lists every key, hundreds for a real network)."""
    own = model.state_dict()

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in own.items() if k in state and hasattr(state[k], "shape")
              and tuple(state[k].shape) != tuple(v.shape)]
    parts = [f"{len(missing)} of the model's {len(own)} entries missing ({some(missing)})"
             if missing else "",
             f"{len(extra)} unexpected ({some(extra)})" if extra else "",
             f"{len(shapes)} of another shape ({some(shapes)})" if shapes else ""]
    text = "; ".join(p for p in parts if p)
    if text and shapes and not missing and not extra:
        text += (". Same layers, other sizes: build the model as it was trained "
                 "(model.kwargs, e.g. num_classes)")
    elif text and missing and len(missing) == len(own):
        text += ". No name matches: is it another architecture, or are the weights "
        text += "nested or prefixed (pick an entry with weights: FILE#key)?"
    return text


def run(config: Config | dict | str | os.PathLike, out: str | Path,
        budget: BudgetConfig | None = None) -> dict:
    """Run the whole pipeline on ``config`` into ``out`` and return the summary."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    elif not isinstance(config, Config):
        config = load_config(config)
    from lana.pipeline.io import run_lock

    with run_lock(out):
        return Run(out, config).all(budget)


__all__ = ["Run", "run", "budget_tag", "InfeasibleBudgetError"]
