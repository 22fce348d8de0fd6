"""``lana status DIR``: what a run directory holds, stage by stage, and what re-running
``lana run`` on it would compute.

A run that crashed, was stopped, or had its settings changed resumes from its directory;
this module says how far it got without loading data or training anything: every stage's
file is checked against the settings in ``DIR/config.yaml`` (the key the stage would
recompute under) and against its checksum.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from lana.errors import ArtifactError
from lana.progress import duration

#: The states a stage can be in, as ``run_status`` reports them.
STATES = ("done", "partial", "stale", "missing", "corrupt")

def _read(path: Path) -> tuple[str, Any]:
    """("missing" | "corrupt" | "ok", the JSON or the error message)."""
    from lana.io import read_json

    if not path.exists():
        return "missing", None
    try:
        return "ok", read_json(path)
    except ArtifactError as exc:
        return "corrupt", str(exc)


def _keyed(path: Path, inputs: dict | None) -> tuple[str, Any]:
    """A stage file's state against the inputs it would be computed from now; ``None``
    inputs: the stage before it is not done, so a file kept from before is stale."""
    from lana.pipeline import _hash

    state, data = _read(path)
    if state != "ok":
        return state, data
    if inputs is None or data.get("inputs") != _hash(inputs):
        return "stale", data
    return "done", data


def _left_out(d: Path, config, candidates: list[list[str]] | None) -> list[list[str]] | None:
    """The candidates phase 1 and the score stage leave out, judged from ``latency.json``
    and ``costs.json`` as the directory holds them; None while either is not done."""
    from lana.pipeline import op_costs, stage_inputs
    from lana.search import dominated

    if candidates is None:
        return None
    if not config.search.skip_dominated:
        return [[] for _ in candidates]
    l_state, lat = _keyed(d / "latency.json", stage_inputs(config, "profile"))
    c_state, costs = _keyed(d / "costs.json", {"specs": candidates})
    if l_state != "done" or c_state != "done":
        return None
    return dominated(op_costs(candidates, lat, costs))


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
    from lana.errors import ConfigError
    from lana.io import lock_holder
    from lana.pipeline import budget_from_tag, budget_tag, score_inputs, stage_inputs, without
    from lana.select import chosen_speedup, median_speedup

    d = Path(run_dir)
    if not (d / "config.yaml").is_file():
        raise ConfigError(f"{d} is not a lana run directory (no config.yaml); start one "
                          "with `lana run CONFIG --out DIR`")
    # Read only: no Run() (which rewrites config.yaml), no data, no teacher.
    config = load_config(d / "config.yaml")
    timings_state, timings = _read(d / "timings.json")
    timings = timings if timings_state == "ok" else {}
    stages: list[dict] = []

    def add(stage: str, state: str, detail: str, seconds_key: str | None = None,
            budget: str | None = None) -> None:
        stages.append({"stage": stage, "budget": budget, "state": state, "detail": detail,
                       "seconds": timings.get(seconds_key) if seconds_key else None})

    # prepare: teacher weights, its test accuracy and the candidate list.
    t_state, teacher = _read(d / "teacher.json")
    c_state, cands = _read(d / "candidates.json")
    candidates = [layer["ops"] for layer in cands["layers"]] if c_state == "ok" else None
    if t_state == "corrupt" or c_state == "corrupt":
        add("prepare", "corrupt", teacher if t_state == "corrupt" else cands,
            "teacher_train_s")
    elif t_state == "ok" and candidates is not None:
        add("prepare", "done", f"{teacher['name']}: test accuracy "
            f"{100 * teacher['accuracy']:.2f} %, {len(candidates)} layers, "
            f"{sum(map(len, candidates))} candidates", "teacher_train_s")
    else:
        add("prepare", "partial" if t_state == "ok" or candidates else "missing",
            "teacher trained and evaluated" if t_state == "ok" else
            "teacher not trained or evaluated yet", "teacher_train_s")

    # profile: measured before phase 1, which leaves out what it shows cannot help.
    state, data = _keyed(d / "latency.json", stage_inputs(config, "profile"))
    add("profile", state, f"teacher {data['teacher_measured_ms']:.4g} ms measured, "
        f"{data['settings']['backend']}" if state in ("done", "stale") else
        data or "candidate latencies not measured yet", "profile_s")

    # distill: one weight file per trained candidate, but for those left out (which the
    # latency tells, once measured).
    left_out = _left_out(d, config, candidates)
    if candidates is None:
        add("distill", "missing", "waits for prepare (the candidate list)")
    else:
        from lana.distill import UNTRAINED, pending

        to_train = candidates if left_out is None else without(candidates, left_out)
        total = sum(s not in UNTRAINED for ops in to_train for s in ops)
        try:
            left = len(pending(to_train, d))
        except ArtifactError as exc:
            add("distill", "corrupt", str(exc), "distill_s")
        else:
            ckpts = sorted((d / "distill").glob("checkpoint-*.pt"),
                           key=lambda p: p.stat().st_mtime)
            state = ("done" if left == 0 else "partial" if left < total or ckpts
                     else "missing")
            detail = f"{total - left}/{total} candidates trained"
            if left_out is not None and (n := sum(map(len, left_out))):
                detail += f" ({n} more left out: no cheaper than the teacher's layer)"
            if ckpts and left:  # a group stopped (or running) between checkpoints
                age = time.time() - ckpts[-1].stat().st_mtime
                detail += (f"; {len(ckpts)} group(s) under way, last checkpoint "
                           f"{duration(age)} ago")
            add("distill", state, detail, "distill_s")

    state, data = _keyed(d / "scores.json", score_inputs(
        config, left_out or [[] for _ in candidates or []]))
    add("score", state, f"{data.get('samples', '?')} held-out samples, "
        f"{data.get('metric', '')}".rstrip(", ") if state in ("done", "stale") else
        data or "replace-one scores not computed yet", "score_s")

    # Per budget: the configured one and every one the directory holds.
    tags = {budget_tag(config.search.budget): config.search.budget}
    for sdir in sorted((d / "students").glob("*")):
        if sdir.is_dir() and (b := budget_from_tag(sdir.name)) is not None:
            tags.setdefault(sdir.name, b)
    for tag in tags:
        sdir = d / "students" / tag
        state, srch = _keyed(sdir / "search.json", stage_inputs(config, "search"))
        if state in ("done", "stale") and not srch.get("chosen"):
            detail = "no chosen student recorded"
        elif state in ("done", "stale"):
            ch = srch["chosen"]
            detail = f"chosen student: predicted {ch.get('latency_ms_predicted', 0):.4g} ms"
            # timed beside the teacher: the speed-up is the fair figure
            if (sp := chosen_speedup(srch)) is not None:
                detail += f", measured {sp:.2f}x faster than the teacher"
            if not ch.get("verified", True):  # a LUT from another device: predicted only
                detail += ", not measured here (the LUT is from the target device)"
            else:
                detail += ", within budget" if ch.get("meets_budget") else ", OVER budget"
        else:
            detail = srch or "not searched yet"
        add("search", state, detail, f"search_{tag}_s", tag)
        chosen = srch.get("chosen") if state == "done" else None
        f_state, ft = _keyed(sdir / "finetune.json", None if chosen is None else {
            **stage_inputs(config, "finetune"), "choices": chosen})
        add("finetune", f_state, f"test accuracy {100 * ft['accuracy']:.2f} % (before: "
            f"{100 * ft['accuracy_before']:.2f} %)" if f_state in ("done", "stale") else
            ft or "not fine-tuned yet", f"finetune_{tag}_s", tag)
        e_state, ex = _keyed(sdir / "export.json", {"finetune": ft.get("inputs")}
                             if f_state == "done" else None)
        if e_state in ("done", "stale"):
            sp, ok = ex.get("speedup"), ex.get("meets_budget")
            detail = ("latency not measured here (remote device)" if ok is None else
                      f"measured {ex['latency_ms_measured']:.4g} ms"
                      + (f", {sp:.2f}x the teacher" if sp else "")
                      + (", within budget" if ok else ", OVER budget"))
        else:
            detail = ex or "not exported yet"
        v_state, ver = _read(sdir / "verify.json")
        if v_state == "ok" and ver.get("sessions"):
            sp = median_speedup(ver["sessions"])
            detail += (f"; `lana verify`: {len(ver['sessions'])} later session(s), median "
                       f"{sp:.2f}x")
        if v_state == "ok" and (ind := (ver.get("independent") or {}).get("windows")):
            sp = statistics.median(w["speedup"] for w in ind)
            detail += (f"; independently timed: {len(ind)} window(s), median {sp:.2f}x "
                       f"({min(w['speedup'] for w in ind):.2f}-"
                       f"{max(w['speedup'] for w in ind):.2f}x)")
        add("export", e_state, detail, f"export_{tag}_s", tag)

    # What re-running computes: the shared stages, then each budget's (the config's budget
    # is `lana run`'s; another is reached with its own --speedup/--latency-ms).
    nxt = [s["stage"] for s in stages if s["budget"] is None and s["state"] != "done"]
    for n, (tag, budget) in enumerate(tags.items()):
        todo = [s["stage"] for s in stages if s["budget"] == tag and s["state"] != "done"]
        if todo:
            flag = (f"--speedup {budget.speedup:g}" if budget.speedup is not None
                    else f"--latency-ms {budget.latency_ms:g}")
            nxt.append(f"{tag} ({'the config budget' if n == 0 else flag}): "
                       + ", ".join(todo))
    return {"dir": str(d), "model": config.model.name, "running": lock_holder(d),
            "stages": stages, "next": nxt}
