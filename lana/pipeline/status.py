"""``lana status DIR``: what a run directory holds, stage by stage, and what re-running
``lana run`` on it would compute.

A run that crashed, was stopped, or had its settings changed resumes from its directory;
this module says how far it got without loading data or training anything: every stage's
file is checked against the settings in ``DIR/config.yaml`` (the key the stage would
recompute under) and against its checksum. The stages, their files and their order are
:data:`lana.pipeline.stages.STEPS`; what is said about each is here.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from lana.core.layout import (
    CANDIDATES,
    CONFIG,
    DISTILL_CHECKPOINTS,
    STUDENTS_DIR,
    TEACHER,
    TIMINGS,
    VERIFY,
)
from lana.core.progress import duration
from lana.errors import ArtifactError
from lana.pipeline.stages import KEY_FIELD, STAGE, STEPS, Stage, key_hash

#: The states a stage can be in, as ``run_status`` reports them.
STATES = ("done", "partial", "stale", "missing", "corrupt")


def _read(path: Path) -> tuple[str, Any]:
    """("missing" | "corrupt" | "ok", the JSON or the error message)."""
    from lana.core.io import read_json

    if not path.exists():
        return "missing", None
    try:
        return "ok", read_json(path)
    except ArtifactError as exc:
        return "corrupt", str(exc)


def _keyed(path: Path, inputs: dict | None) -> tuple[str, Any]:
    """A stage file's state against the inputs it would be computed from now; ``None``
    inputs: the stage before it is not done, so a file kept from before is stale."""
    state, data = _read(path)
    if state != "ok":
        return state, data
    if inputs is None or data.get(KEY_FIELD) != key_hash(inputs):
        return "stale", data
    return "done", data


class _Check(NamedTuple):
    """A stage's state and what to say about it; ``timed``: report its seconds."""

    state: str
    detail: str
    timed: bool = True


@dataclass
class _RunView:
    """A run directory as the checks read it: its config, the prepare stage's files and
    the state and data of every stage checked so far (by stage name and budget tag)."""

    dir: Path
    config: Any  # lana.config.Config, imported lazily
    checked: dict[tuple[str, str | None], tuple[str, Any]] = field(default_factory=dict)

    @cached_property
    def teacher(self) -> tuple[str, Any]:
        return _read(self.dir / TEACHER)

    @cached_property
    def candidate_file(self) -> tuple[str, Any]:
        return _read(self.dir / CANDIDATES)

    @cached_property
    def candidates(self) -> list[list[str]] | None:
        state, cands = self.candidate_file
        return [layer["ops"] for layer in cands["layers"]] if state == "ok" else None

    @cached_property
    def left_out(self) -> list[list[str]] | None:
        """The candidates phase 1 and the score stage leave out, judged from the latency
        and costs files as the directory holds them; None while either is not done."""
        from lana.pipeline.keys import stage_inputs
        from lana.search.library import op_costs
        from lana.search.solver import dominated

        if self.candidates is None:
            return None
        if not self.config.search.skip_dominated:
            return [[] for _ in self.candidates]
        l_state, lat = _keyed(STAGE["profile"].path(self.dir),
                              stage_inputs(self.config, "profile"))
        c_state, costs = _keyed(STAGE["costs"].path(self.dir), {"specs": self.candidates})
        if l_state != "done" or c_state != "done":
            return None
        return dominated(op_costs(self.candidates, lat, costs))

    def keyed(self, stage: Stage, tag: str | None, inputs: dict | None) -> tuple[str, Any]:
        """:func:`_keyed` for ``stage``'s file, remembered for the stages after it."""
        self.checked[stage.name, tag] = _keyed(stage.path(self.dir, tag), inputs)
        return self.checked[stage.name, tag]


def _prepare(view: _RunView, stage: Stage, tag: str | None) -> _Check:
    """Teacher weights, its test accuracy and the candidate list."""
    t_state, teacher = view.teacher
    c_state, cands = view.candidate_file
    candidates = view.candidates
    if t_state == "corrupt" or c_state == "corrupt":
        return _Check("corrupt", teacher if t_state == "corrupt" else cands)
    if t_state == "ok" and candidates is not None:
        return _Check("done", f"{teacher['name']}: test accuracy "
                      f"{100 * teacher['accuracy']:.2f} %, {len(candidates)} layers, "
                      f"{sum(map(len, candidates))} candidates")
    return _Check("partial" if t_state == "ok" or candidates else "missing",
                  "teacher trained and evaluated" if t_state == "ok" else
                  "teacher not trained or evaluated yet")


def _profile(view: _RunView, stage: Stage, tag: str | None) -> _Check:
    from lana.pipeline.keys import stage_inputs

    state, data = view.keyed(stage, tag, stage_inputs(view.config, stage.name))
    return _Check(state, f"teacher {data['teacher_measured_ms']:.4g} ms measured, "
                  f"{data['settings']['backend']}" if state in ("done", "stale") else
                  data or "candidate latencies not measured yet")


def _distill(view: _RunView, stage: Stage, tag: str | None) -> _Check:
    """One weight file per trained candidate, but for those left out (which the latency
    tells, once measured)."""
    from lana.distill.phase1 import UNTRAINED, pending
    from lana.pipeline.keys import without

    candidates, left_out = view.candidates, view.left_out
    if candidates is None:
        return _Check("missing", "waits for prepare (the candidate list)", timed=False)
    to_train = candidates if left_out is None else without(candidates, left_out)
    total = sum(s not in UNTRAINED for ops in to_train for s in ops)
    try:
        left = len(pending(to_train, view.dir))
    except ArtifactError as exc:
        return _Check("corrupt", str(exc))
    ckpts = sorted(view.dir.glob(DISTILL_CHECKPOINTS), key=lambda p: p.stat().st_mtime)
    state = "done" if left == 0 else "partial" if left < total or ckpts else "missing"
    detail = f"{total - left}/{total} candidates trained"
    if left_out is not None and (n := sum(map(len, left_out))):
        detail += f" ({n} more left out: no cheaper than the teacher's layer)"
    if ckpts and left:  # a group stopped (or running) between checkpoints
        age = time.time() - ckpts[-1].stat().st_mtime
        detail += f"; {len(ckpts)} group(s) under way, last checkpoint {duration(age)} ago"
    return _Check(state, detail)


def _score(view: _RunView, stage: Stage, tag: str | None) -> _Check:
    from lana.pipeline.keys import score_inputs

    state, data = view.keyed(stage, tag, score_inputs(
        view.config, view.left_out or [[] for _ in view.candidates or []]))
    return _Check(state, f"{data.get('samples', '?')} held-out samples, "
                  f"{data.get('metric', '')}".rstrip(", ") if state in ("done", "stale") else
                  data or "replace-one scores not computed yet")


def _search(view: _RunView, stage: Stage, tag: str | None) -> _Check:
    from lana.pipeline.keys import stage_inputs
    from lana.search.verdict import chosen_speedup

    state, srch = view.keyed(stage, tag, stage_inputs(view.config, stage.name))
    if state not in ("done", "stale"):
        return _Check(state, srch or "not searched yet")
    if not srch.get("chosen"):
        return _Check(state, "no chosen student recorded")
    ch = srch["chosen"]
    detail = f"chosen student: predicted {ch.get('latency_ms_predicted', 0):.4g} ms"
    # timed beside the teacher: the speed-up is the fair figure
    if (sp := chosen_speedup(srch)) is not None:
        detail += f", measured {sp:.2f}x faster than the teacher"
    if not ch.get("verified", True):  # a LUT from another device: predicted only
        detail += ", not measured here (the LUT is from the target device)"
    else:
        detail += ", within budget" if ch.get("meets_budget") else ", OVER budget"
    return _Check(state, detail)


def _finetune(view: _RunView, stage: Stage, tag: str | None) -> _Check:
    from lana.pipeline.keys import stage_inputs

    s_state, srch = view.checked["search", tag]
    chosen = srch.get("chosen") if s_state == "done" else None
    state, ft = view.keyed(stage, tag, None if chosen is None else {
        **stage_inputs(view.config, stage.name), "choices": chosen})
    return _Check(state, f"test accuracy {100 * ft['accuracy']:.2f} % (before: "
                  f"{100 * ft['accuracy_before']:.2f} %)" if state in ("done", "stale") else
                  ft or "not fine-tuned yet")


def _export(view: _RunView, stage: Stage, tag: str | None) -> _Check:
    """The exported student's latency, and what ``lana verify`` measured since."""
    from lana.search.verdict import median_speedup

    f_state, ft = view.checked["finetune", tag]
    state, ex = view.keyed(stage, tag, {"finetune": ft.get(KEY_FIELD)}
                           if f_state == "done" else None)
    if state in ("done", "stale"):
        sp, ok = ex.get("speedup"), ex.get("meets_budget")
        detail = ("latency not measured here (remote device)" if ok is None else
                  f"measured {ex['latency_ms_measured']:.4g} ms"
                  + (f", {sp:.2f}x the teacher" if sp else "")
                  + (", within budget" if ok else ", OVER budget"))
    else:
        detail = ex or "not exported yet"
    v_state, ver = _read(stage.root(view.dir, tag) / VERIFY)
    if v_state == "ok" and ver.get("sessions"):
        sp = median_speedup(ver["sessions"])
        detail += (f"; `lana verify`: {len(ver['sessions'])} later session(s), median "
                   f"{sp:.2f}x")
    if v_state == "ok" and (ind := (ver.get("independent") or {}).get("windows")):
        sp = statistics.median(w["speedup"] for w in ind)
        detail += (f"; independently timed: {len(ind)} window(s), median {sp:.2f}x "
                   f"({min(w['speedup'] for w in ind):.2f}-"
                   f"{max(w['speedup'] for w in ind):.2f}x)")
    return _Check(state, detail)


#: What ``lana status`` says about each step of :data:`lana.pipeline.stages.STEPS`.
_CHECKS: dict[str, Callable[[_RunView, Stage, str | None], _Check]] = {
    "prepare": _prepare, "profile": _profile, "distill": _distill, "score": _score,
    "search": _search, "finetune": _finetune, "export": _export}


def _budgets(d: Path, config) -> dict:
    """Budget tag -> budget: the configured one first, then every one the directory holds."""
    from lana.pipeline.keys import budget_from_tag, budget_tag

    tags = {budget_tag(config.search.budget): config.search.budget}
    for sdir in sorted((d / STUDENTS_DIR).glob("*")):
        if sdir.is_dir() and (b := budget_from_tag(sdir.name)) is not None:
            tags.setdefault(sdir.name, b)
    return tags


def _next(stages: list[dict], budgets: dict) -> list[str]:
    """What re-running computes: the shared stages, then each budget's (the config's budget
    is `lana run`'s; another is reached with its own --speedup/--latency-ms)."""
    nxt = [s["stage"] for s in stages if s["budget"] is None and s["state"] != "done"]
    for n, (tag, budget) in enumerate(budgets.items()):
        todo = [s["stage"] for s in stages if s["budget"] == tag and s["state"] != "done"]
        if todo:
            flag = (f"--speedup {budget.speedup:g}" if budget.speedup is not None
                    else f"--latency-ms {budget.latency_ms:g}")
            nxt.append(f"{tag} ({'the config budget' if n == 0 else flag}): "
                       + ", ".join(todo))
    return nxt


def run_status(run_dir: str | Path) -> dict:
    """The state of every stage of the run in ``run_dir`` as plain data.

    Returns ``{"dir", "model", "running": lock holder or None, "stages": [...],
    "next": [...]}``; each stage is ``{"stage", "budget" (a tag or None), "state"`` (one of
    :data:`STATES`), ``"detail", "seconds"}`` and ``next`` names the stages a re-run
    would compute, in order: the shared ones, then per budget (``"speedup3 (--speedup 3):
    finetune, export"``; the config's budget is the one ``lana run`` takes by default).
    Raises :class:`lana.errors.ConfigError` if ``run_dir`` is not a run directory.
    """
    from lana.config import load_config
    from lana.core.io import lock_holder
    from lana.errors import ConfigError

    d = Path(run_dir)
    if not (d / CONFIG).is_file():
        raise ConfigError(f"{d} is not a lana run directory (no config.yaml); start one "
                          "with `lana run CONFIG --out DIR`")
    # Read only: no Run() (which rewrites config.yaml), no data, no teacher.
    config = load_config(d / CONFIG)
    timings_state, timings = _read(d / TIMINGS)
    timings = timings if timings_state == "ok" else {}
    view = _RunView(d, config)
    budgets = _budgets(d, config)
    stages: list[dict] = []
    # The shared stages, then each budget's, every one in the table's order.
    for tag in (None, *budgets):
        for stage in STEPS:
            if stage.per_budget != (tag is not None):
                continue
            check = _CHECKS[stage.name](view, stage, tag)
            stages.append({"stage": stage.name, "budget": tag, "state": check.state,
                           "detail": check.detail, "seconds":
                           timings.get(stage.timing_key(tag)) if check.timed else None})
    return {"dir": str(d), "model": config.model.name, "running": lock_holder(d),
            "stages": stages, "next": _next(stages, budgets)}
