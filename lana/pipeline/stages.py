"""The stage graph of a LANA run, defined once, as data: each stage's files (named in
:mod:`lana.core.layout`), the stages it reads and the config sections its result depends on.

Every reader shares this table: :mod:`lana.pipeline.runner` keys its stages' files with the config
sections declared here and runs the steps in this order, :mod:`lana.pipeline.status` reports them
stage by stage, and :mod:`lana.report.html` finds their files by these names
(docs/run-directory.md says what each file holds). It is plain data, importing neither
torch nor the pipeline, so any module may read it without a cycle or a heavy import.

A stage whose file exists, stamped with the hash of the same key (:data:`KEY_FIELD`), is
skipped, so an interrupted ``lana run`` resumes, and a new budget re-runs only the stages
of that budget.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lana.core.layout import (
    CANDIDATES,
    COSTS,
    DISTILL_CHECKPOINTS,
    DISTILL_DIR,
    DISTILL_INDEX,
    DISTILL_INDEX_LOCK,
    EXPORT,
    FINETUNE,
    FINETUNE_CHECKPOINT,
    FINETUNED_WEIGHTS,
    LATENCY,
    LIBRARY,
    LUT,
    MODEL_DIR,
    SCORES,
    SEARCH,
    TEACHER,
    TEACHER_CHECKPOINT,
    TEACHER_WEIGHTS,
    VERIFY,
    student_dir,
)

#: The field of a stage's JSON file that holds the hash of its key (:func:`key_hash`).
KEY_FIELD = "inputs"

#: Config sections a run directory is tied to: its teacher, candidates and phase-1 weights
#: depend on them, so a config that changes one is refused (others may change freely).
LOCKED_SECTIONS = ("model", "data", "space", "distill", "seed")

#: Settings never part of a stage's key: the budget names the folder instead, and how
#: often a stage checkpoints does not change its result.
UNKEYED_SETTINGS = frozenset({"budget", "checkpoint_every"})

def key_hash(inputs: dict) -> str:
    """The hash of a stage's key (the settings and data it was computed from), stored in
    its file's :data:`KEY_FIELD`; it also names a cached teacher."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the stages
#: ``step``: a stage ``lana run`` runs in turn, with its own command, listed by
#: ``lana status``; ``part``: computed within the steps when one needs it; ``after``: run on
#: request once the run is done.
Role = Literal["step", "part", "after"]


@dataclass(frozen=True)
class Stage:
    """One stage of a run: what it writes, what it reads and what its result depends on."""

    name: str
    #: Files it writes, relative to the run directory, or to ``students/<budget>/`` for a
    #: per-budget stage; ``*`` patterns where the names depend on the candidates.
    files: tuple[str, ...]
    #: Stages whose results it reads.
    after: tuple[str, ...] = ()
    #: Config sections whose settings (less :data:`UNKEYED_SETTINGS`) are its key.
    sections: tuple[str, ...] = ()
    #: What else its key holds, computed from earlier results.
    key_data: tuple[str, ...] = ()
    #: The file stamped with its key's hash; None: kept as long as the directory is (its
    #: inputs are :data:`LOCKED_SECTIONS`).
    keyed_file: str | None = None
    #: Files it leaves while under way (checkpoints), removed when it ends.
    transient: tuple[str, ...] = ()
    per_budget: bool = False
    role: Role = "step"
    #: Its entry in ``timings.json`` (``<timing>_s``, per budget ``<timing>_<tag>_s``).
    timing: str = ""

    def timing_key(self, tag: str | None = None) -> str:
        """Its entry in ``timings.json`` for budget ``tag`` (None for a shared stage)."""
        name = self.timing or self.name
        return f"{name}_{tag}_s" if self.per_budget else f"{name}_s"

    def root(self, run_dir: str | Path, tag: str | None = None) -> Path:
        """The folder its files are relative to: the run directory, or the budget's."""
        if self.per_budget:
            if tag is None:
                raise ValueError(f"stage {self.name} is per budget: give the budget's tag")
            return student_dir(run_dir, tag)
        return Path(run_dir)

    def path(self, run_dir: str | Path, tag: str | None = None) -> Path:
        """Its keyed file (or its first file) for budget ``tag``."""
        return self.root(run_dir, tag) / (self.keyed_file or self.files[0])


STAGES: tuple[Stage, ...] = (
    Stage("prepare", (TEACHER_WEIGHTS, TEACHER, CANDIDATES),
          transient=(TEACHER_CHECKPOINT,), timing="teacher_train"),
    Stage("costs", (COSTS,), after=("prepare",), key_data=("specs",), keyed_file=COSTS,
          role="part"),
    # Before phase 1, which leaves out the candidates the latency shows cannot help; reads
    # the parameter counts for the weights' memory traffic (lana.latency.traffic).
    Stage("profile", (LATENCY, LUT), after=("prepare", "costs"), sections=("latency",),
          keyed_file=LATENCY),
    Stage("distill", (DISTILL_INDEX, f"{DISTILL_DIR}/L*/*.safetensors", DISTILL_INDEX_LOCK),
          after=("prepare", "profile", "costs"), transient=(DISTILL_CHECKPOINTS,)),
    Stage("score", (SCORES,), after=("prepare", "profile", "costs", "distill"),
          sections=("score",), key_data=("left_out",), keyed_file=SCORES),
    # Rewritten whenever the search reads it: its inputs are keyed files.
    Stage("library", (LIBRARY,), after=("profile", "costs", "score"), role="part"),
    Stage("search", (SEARCH,), after=("profile", "library"),
          sections=("latency", "score", "search"), keyed_file=SEARCH, per_budget=True),
    Stage("finetune", (FINETUNE, FINETUNED_WEIGHTS), after=("prepare", "distill", "search"),
          sections=("latency", "score", "search", "finetune"), key_data=("choices",),
          keyed_file=FINETUNE, transient=(FINETUNE_CHECKPOINT,), per_budget=True),
    Stage("export", (EXPORT, f"{MODEL_DIR}/*"), after=("profile", "search", "finetune"),
          key_data=("finetune",), keyed_file=EXPORT, per_budget=True),
    Stage("verify", (VERIFY,), after=("export",), per_budget=True, role="after"),
)

#: The stages by name.
STAGE: dict[str, Stage] = {s.name: s for s in STAGES}

#: The stages ``lana run`` runs in turn and ``lana status`` lists, in order.
STEPS: tuple[Stage, ...] = tuple(s for s in STAGES if s.role == "step")
