"""What a stage's result depends on: the key stamped into its file, and the names of the
budgets' folders. Plain data and pydantic (no torch), shared by the runner and ``lana status``.

A stage's key is the config sections :data:`lana.pipeline.stages.STAGES` declares for it
(less :data:`~lana.pipeline.stages.UNKEYED_SETTINGS`); a stored file whose key differs is
recomputed. The locked sections tie a run directory (and the teacher cache) to its model and
data, compared without the settings that only change how fast a run goes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from lana.config import BudgetConfig, DistillConfig
from lana.pipeline.stages import STAGE, UNKEYED_SETTINGS

if TYPE_CHECKING:
    from lana.config import Config


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
_LATER_SETTINGS = {"optimizer": "adamw", "skip_dominated": True, "init": None,
                   "windows": 1, "window_gap_s": 20.0, "calibration_students": 0}


def section_settings(section, exclude: set[str]) -> dict:
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


def locked_section(config: Config, section: str):
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
    return {name: section_settings(getattr(config, name), set(UNKEYED_SETTINGS))
            for name in sections}


def score_inputs(config: Config, left_out: list[list[str]]) -> dict:
    """The score stage's key: its settings, and the candidates it left out when any."""
    inputs = stage_inputs(config, "score")
    if any(left_out):  # keys of runs that leave nothing out stay as they were
        inputs["left_out"] = left_out
    return inputs


def without(candidates: list[list[str]], left_out: list[list[str]]) -> list[list[str]]:
    """Per layer, the candidates not in ``left_out`` (what phase 1 trains)."""
    return [[s for s in specs if s not in out]
            for specs, out in zip(candidates, left_out, strict=True)]
