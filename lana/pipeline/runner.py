"""The LANA pipeline over a run directory: every stage reads and writes plain files there.

The stages, their files and what their keys depend on are declared once in
:mod:`lana.pipeline.stages`; docs/run-directory.md describes every file. A stage whose output exists
is skipped, so an interrupted ``lana run`` resumes, and a new budget re-runs only the
search, fine-tuning and export for that budget.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from lana.config import BudgetConfig, Config, config_from_dict, load_config
from lana.core import dist as D
from lana.core.io import atomic_write_bytes, read_json, write_json
from lana.core.layout import (
    CONFIG,
    COSTS,
    EXPORT,
    FINETUNE,
    LATENCY,
    LUT,
    MEMORY,
    SCORES,
    SEARCH,
    SUMMARY,
    TEACHER_ONNX,
    TIMINGS,
    student_dir,
)
from lana.core.progress import log
from lana.errors import ArtifactError, ConfigError, InfeasibleBudgetError
from lana.model.data import Splits, load_data
from lana.model.decompose import Chain, decompose
from lana.model.zoo import SOURCES
from lana.pipeline import phases
from lana.pipeline import teacher as teacher_source
from lana.pipeline.keys import (
    budget_tag,
    locked_section,
    score_inputs,
    stage_inputs,
    without,
)
from lana.pipeline.stages import KEY_FIELD, LOCKED_SECTIONS, STEPS, key_hash
from lana.search.library import op_costs


class Run:
    """One LANA run bound to a directory. Stages are methods; each is resumable.

    ``config`` defaults to the directory's ``config.yaml``. ``teacher`` is an already trained
    model to accelerate (its current weights are used; ``model.name`` is then only a label),
    and ``splits`` replaces the configured dataset: together they let the Python API run on
    any model and data.

    Each stage method is a few lines: its key (:mod:`lana.pipeline.keys`), its file
    (:mod:`lana.core.layout`) and what computes it (:mod:`lana.pipeline.phases`, the teacher
    in :mod:`lana.pipeline.teacher`), handed to :meth:`_stage`, which skips a stage whose
    file holds the same key. :meth:`all` runs the steps of :data:`lana.pipeline.stages.STEPS`
    in their order.
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
                if locked_section(old, section) != locked_section(config, section):
                    raise ConfigError(
                        f"{self.dir} was made with a different '{section}' section; its "
                        "results would not match this config. Use a new --out directory "
                        "(search, latency and fine-tuning settings may change freely).")
        self.config = config
        self.dir.mkdir(parents=True, exist_ok=True)
        if D.is_main():  # under torchrun, rank 0 alone writes shared artifacts
            atomic_write_bytes(cfg_path, config.to_yaml().encode())
        #: The Python API's trained model, used as it is (None: built from ``model``).
        self.given_teacher = teacher
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
        see :func:`lana.core.dist.resolve_device`)."""
        dev = D.resolve_device(self.config.device)
        if dev.type == "cuda" and D.is_main():
            log(f"training and evaluation on {dev} ({torch.cuda.get_device_name(dev)})")
        return dev

    def lut(self):
        """The latency LUT this run reads and extends (``latency.lut`` or ``DIR/lut.json``);
        its reference baseline is the unit of every normalised timing of the run."""
        from lana.latency.lut import LatencyTable

        return LatencyTable(self.config.latency.lut or self.dir / LUT)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        s = self.splits
        return (s.in_chans, s.image_size, s.image_size)

    def model_kwargs(self) -> dict:
        """``model.kwargs``, with the data's classes and channels for the model zoos."""
        kw = dict(self.config.model.kwargs)
        if self.config.model.name.partition(":")[0] in SOURCES:
            kw.setdefault("num_classes", self.splits.num_classes)
            kw.setdefault("in_chans", self.splits.in_chans)
        return kw

    @cached_property
    def teacher(self) -> nn.Module:
        """The trained teacher (loaded from the run, the config's weights, or trained)."""
        return teacher_source.load(self)

    @cached_property
    def teacher_eval(self) -> dict:
        """Teacher accuracy on the test split (cached in teacher.json)."""
        return teacher_source.evaluate(self)

    @cached_property
    def chain(self) -> Chain:
        return decompose(self.teacher, torch.zeros(2, *self.input_shape),
                         layers=self.config.model.layers)

    @cached_property
    def candidates(self) -> list[list[str]]:
        """Per layer, the op specs that fit it (``candidates.json``, written once)."""
        return phases.candidates(self)

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
        from lana.pipeline.student import assemble

        return assemble(self.chain, choices, self.load_candidate)

    def budget_ms(self, budget: BudgetConfig) -> float:
        """The latency budget in ms (a speed-up is relative to the measured teacher)."""
        if budget.latency_ms is not None:
            return budget.latency_ms
        return self.profile()["teacher_measured_ms"] / budget.speedup

    def student_dir(self, budget: BudgetConfig) -> Path:
        return student_dir(self.dir, budget_tag(budget))

    # ---------------------------------------------------------------- bookkeeping
    def _stage(self, name: str, path: Path, inputs: dict, compute) -> dict:
        """Return ``path``'s content if made from the same ``inputs``; else compute it,
        stamp it with the inputs' hash, write it atomically and record the stage's time."""
        if path.exists():
            data = read_json(path)
            if data.get(KEY_FIELD) == key_hash(inputs):
                return data
            log(f"{path.name}: settings changed since it was written; recomputing")
        start = time.time()
        D.reset_peak_rss()
        res = compute()
        res[KEY_FIELD] = key_hash(inputs)
        D.maybe_kill(name.split("_")[0], "computed")
        if D.is_main():
            write_json(path, res)
        self.record_time(name, start)
        return res

    def timings(self) -> dict:
        """``timings.json``: seconds per stage (``<stage>_s``, per budget ``<stage>_<tag>_s``)."""
        p = self.dir / TIMINGS
        return read_json(p) if p.exists() else {}

    def record_time(self, name: str, start: float, memory_plan: dict | None = None) -> None:
        """Record a stage's duration (timings.json) and peak resident memory since
        ``D.reset_peak_rss()`` (memory.json, MiB), plus ``memory_plan`` (e.g. phase 1's
        groups and their estimated memory) in memory.json; rank 0 writes."""
        if not D.is_main():
            return
        write_json(self.dir / TIMINGS, {**self.timings(), f"{name}_s": time.time() - start})
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
        return phases.distill(self, rank, world)

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

    def profile(self) -> dict:
        """Phase 2b: latency of stem, head, every candidate and the teacher end to end."""
        return self._stage("profile", self.dir / LATENCY,
                           stage_inputs(self.config, "profile"),
                           lambda: phases.profile(self))

    def costs(self) -> dict:
        """Parameters and FLOPs of stem, head and every candidate (``costs.json``)."""
        from lana.latency.profile import static_costs

        return self._stage("costs", self.dir / COSTS, {"specs": self.candidates},
                           lambda: static_costs(self.chain, self.candidates,
                                                self.build_candidate, self.input_shape))

    def score(self) -> dict:
        """Phase 2a: replace-one scores on held-out data."""
        left_out = self.left_out("score")
        return self._stage("score", self.dir / SCORES, score_inputs(self.config, left_out),
                           lambda: phases.score(self, left_out))

    def library(self) -> dict:
        """Write ``library.json``: per layer and op, its score and its cost (ms)."""
        return phases.library(self)

    def search(self, budget: BudgetConfig | None = None) -> dict:
        """Phase 2c: ILP with K diverse solutions, measured and ranked (resumable)."""
        budget = budget or self.config.search.budget
        return self._stage(f"search_{budget_tag(budget)}",
                           self.student_dir(budget) / SEARCH,
                           stage_inputs(self.config, "search"),
                           lambda: phases.search(self, budget))

    def finetune(self, budget: BudgetConfig | None = None) -> dict:
        """Phase 3: fine-tune the selected student with cross-entropy + KD from the teacher."""
        budget = budget or self.config.search.budget
        chosen = self.search(budget)["chosen"]
        inputs = {**stage_inputs(self.config, "finetune"), "choices": chosen}
        return self._stage(f"finetune_{budget_tag(budget)}",
                           self.student_dir(budget) / FINETUNE, inputs,
                           lambda: phases.finetune(self, budget, chosen))

    def export(self, budget: BudgetConfig | None = None) -> dict:
        """Save the fine-tuned student (ONNX, safetensors, arch JSON), verify its latency."""
        budget = budget or self.config.search.budget
        ft = self.finetune(budget)
        res = self._stage(f"export_{budget_tag(budget)}",
                          self.student_dir(budget) / EXPORT,
                          {"finetune": ft.get("inputs")},
                          lambda: phases.export(self, budget, ft))
        # Outside the cached stage: a run exported before the teacher's file existed, or
        # one whose file was deleted, gets it on the next `lana export`.
        self.teacher_onnx()
        self.write_summary()
        return res

    def teacher_onnx(self) -> Path:
        """``teacher/model.onnx``: the teacher exported exactly as the students'
        ``model/model.onnx`` (:func:`lana.pipeline.student.onnx_bytes`), written once per run,
        atomically, and again only when missing. Returns its path."""
        from lana.pipeline.student import onnx_bytes

        path = self.dir / TEACHER_ONNX
        if not path.exists() and D.is_main():
            atomic_write_bytes(path, onnx_bytes(self.teacher, self.input_shape))
        return path

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
        :func:`lana.search.verdict.pool_timings`) and ``meets_budget``.
        """
        return phases.verify(self, budget or self.config.search.budget, sessions, gap_s,
                             on_session)

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
        windows and their distribution (:func:`lana.pipeline.verify.verify_independent`)."""
        from lana.pipeline.verify import verify_independent

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
        return phases.summary(self)


def run(config: Config | dict | str | os.PathLike, out: str | Path,
        budget: BudgetConfig | None = None) -> dict:
    """Run the whole pipeline on ``config`` into ``out`` and return the summary."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    elif not isinstance(config, Config):
        config = load_config(config)
    from lana.core.io import run_lock

    with run_lock(out):
        return Run(out, config).all(budget)


__all__ = ["Run", "run", "InfeasibleBudgetError"]
