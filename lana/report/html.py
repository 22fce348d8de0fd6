"""The run report: one self-contained HTML page and a Markdown twin, with plots.

``write_report(run_dir)`` reads only the plain files of a run directory (no torch, no
model weights) and writes ``run_dir/report/``:

    report.html     every plot embedded as a base64 PNG: no external files, no network
    report.md       the same content; plots as the PNG files next to it
    *.png           the plots

Sections: teacher vs students; the students timed independently (``lana verify
--independent``); accuracy vs measured latency; the budget sweep (Pareto
front of the ILP); per-layer teacher op vs chosen op with their latencies; predicted vs
measured latency; additive score vs held-out loss (Kendall tau); phase timings. A section
whose stage has not run yet is replaced by a note saying which command produces it, so a
report can be written at any point of a run.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lana.core.io import atomic_write_bytes, read_json
from lana.core.layout import (
    CANDIDATES,
    CONFIG,
    EXPORT,
    FINETUNE,
    LATENCY,
    LIBRARY,
    REPORT_DIR,
    REPORT_HTML,
    REPORT_MD,
    SCORES,
    SEARCH,
    STUDENTS_DIR,
    TEACHER,
    TIMINGS,
    VERIFY,
)
from lana.core.progress import duration
from lana.errors import ArtifactError, LanaError
from lana.latency.spread import interval_of
from lana.search.select import explain
from lana.search.verdict import budget_allowed_ms

__all__ = ["REPORT_DIR", "RunFiles", "Section", "build_sections", "write_report"]

# Order of the phases in the timings chart (other keys follow, sorted).
_PHASE_ORDER = ("teacher_train", "distill", "profile", "score", "search", "finetune", "export")
# Budget colours: the same budget has the same colour in every plot.
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
           "tab:pink", "tab:olive", "tab:cyan")


@dataclass
class Plot:
    """One PNG plot: the file name it gets next to report.md, its bytes and alt text."""

    name: str
    png: bytes
    alt: str


@dataclass
class TableData:
    """A small table: column headers and rows of already formatted cells."""

    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    """One part of the report: a title, some text, tables, plots and notes."""

    id: str
    title: str
    text: str = ""
    nav: str = ""  # short name in the page's table of contents (default: the title)
    tables: list[TableData] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)  # the result, in a sentence each


class RunFiles:
    """Read-only, tolerant access to a run directory's JSON artifacts.

    A missing file reads as ``None``; a corrupt one also reads as ``None`` and leaves a note
    in :attr:`problems`, so a report can still be written about the rest.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(run_dir)
        self.problems: list[str] = []
        self._cache: dict[str, Any] = {}

    def json(self, rel: str) -> Any:
        """The parsed JSON file ``rel`` (relative to the run directory) or None."""
        if rel not in self._cache:
            path = self.dir / rel
            data = None
            if path.exists():
                try:
                    data = read_json(path)
                except ArtifactError as exc:
                    self.problems.append(str(exc))
            self._cache[rel] = data
        return self._cache[rel]

    def config(self) -> dict:
        """config.yaml as a plain dict ({} when absent or unreadable)."""
        path = self.dir / CONFIG
        if not path.exists():
            return {}
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            self.problems.append(f"{path} is unreadable: {exc}")
            return {}
        return data if isinstance(data, dict) else {}

    def budgets(self) -> list[str]:
        """Budget folder names under students/ that hold at least a search result."""
        root = self.dir / STUDENTS_DIR
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir()
                      if p.is_dir() and (p / SEARCH).exists())

    def student(self, tag: str, name: str) -> Any:
        """The parsed JSON file ``name`` of budget ``tag``'s folder, or None."""
        return self.json(f"{STUDENTS_DIR}/{tag}/{name}")


# ---------------------------------------------------------------- small helpers


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _budget_label(budget: dict | None, tag: str = "") -> str:
    if not budget:
        return tag
    return ", ".join(f"{v:g}x faster" if k == "speedup" else f"<= {v:g} ms"
                     for k, v in budget.items())


def _figure(width: float, height: float):
    # Figure + Agg canvas directly (no pyplot): no global state and no GUI backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig, name: str, alt: str) -> Plot:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return Plot(name=name, png=buf.getvalue(), alt=alt)


def _all_students(search: dict) -> list[tuple[int, dict]]:
    """(attempt number, student row) of every student measured in a search."""
    return [(a, row) for a, att in enumerate(search.get("attempts", []))
            for row in att.get("students", [])]


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _teacher_ms(run: RunFiles) -> float | None:
    """The teacher's measured ms: from the same session as a student's (a fair ratio) when
    one was exported, else the profile stage's."""
    for tag in run.budgets():
        exp = run.student(tag, EXPORT)
        if exp:
            return exp["teacher_latency_ms"]
    lat = run.json(LATENCY)
    return lat["teacher_measured_ms"] if lat else None


def _calibration(lat: dict | None) -> tuple[float, float]:
    """(fixed stem+head LUT ms, measured/predicted ratio) from latency.json."""
    if not lat:
        return 0.0, 1.0
    fixed = float(lat.get("stem_ms", 0.0)) + float(lat.get("head_ms", 0.0))
    pred = lat.get("teacher_predicted_ms") or 0.0
    ratio = lat["teacher_measured_ms"] / pred if pred > 0 else 1.0
    return fixed, ratio


def _calibration_text(cal: dict | float | None) -> str:
    """The search's LUT correction: ``α·LUT + β`` (a dict from lana.search.select) or an older
    run's plain measured/LUT ratio."""
    if isinstance(cal, dict):
        return f"α={cal.get('alpha', math.nan):.3f}, β={cal.get('beta', math.nan):.3g} ms"
    return "-" if cal is None else f"α={float(cal):.3f}"


# ---------------------------------------------------------------- sections


def _overview(run: RunFiles) -> Section:
    sec = Section("result", "Teacher vs students")
    teacher = run.json(TEACHER)
    lat = run.json(LATENCY)
    cfg = run.config()
    facts = []
    if teacher:
        facts.append(f"teacher **{teacher.get('name', '?')}**, "
                     f"{teacher.get('params', 0) / 1e6:.3g} M parameters, "
                     f"{len(teacher.get('layers', []))} replaceable layers")
    data = cfg.get("data", {})
    if data:
        # teacher.json names the data actually used (the Python API passes its own).
        name = (teacher or {}).get("data") or data.get("name", "?")
        facts.append(f"data {name} at {data.get('image_size', '?')} px")
    if lat:
        s = lat.get("settings", {})
        facts.append(f"latency on {s.get('backend', '?')}, batch {s.get('batch_size', '?')}, "
                     f"{s.get('threads', '?')} thread(s), device {s.get('device', '?')}")
    sec.text = "; ".join(facts) + "." if facts else ""
    if teacher is None:
        sec.notes.append(f"No teacher yet: run `lana prepare {run.dir}`.")
        return sec
    headers = ["model", "budget", "accuracy", "before fine-tune", "measured ms",
               "predicted ms", "speed-up", "budget ms", "met?"]
    rows = []
    tags = run.budgets()
    t_ms = _teacher_ms(run)
    rows.append(["teacher", "-", _pct(teacher.get("accuracy")), "-", _ms(t_ms), "-", "1.00x",
                 "-", "-"])
    for tag in tags:
        search = run.student(tag, SEARCH)
        exp = run.student(tag, EXPORT)
        ft = run.student(tag, FINETUNE)
        budget = _budget_label(search.get("budget"), tag)
        story = explain(search)
        if any(line.startswith("why under budget") for line in story):
            # A student well under its budget looks like a search that gave accuracy away.
            sec.notes.append(f"Student {tag}: " + "; ".join(story[-2:]) + ".")
        if exp:
            acc, t_acc = exp["accuracy"], teacher.get("accuracy")
            drop = "" if t_acc is None else f" ({100 * (acc - t_acc):+.2f} points)"
            span = interval_of(search, exp["speedup"])
            sec.headline.append(f"**{tag}**: {exp['speedup']:.2f}x faster than the teacher "
                                "(measured end to end" + (
                                    f"; {span[0]:.2f}-{span[1]:.2f}x by the spread of "
                                    f"the search's repeated timings" if span else "")
                                + f"), accuracy {_pct(acc)} vs "
                                f"{_pct(t_acc)}{drop}; budget "
                                + ("met." if exp["meets_budget"] else "**missed**."))
            rows.append([f"student {tag}", budget, _pct(exp["accuracy"]),
                         _pct(exp.get("accuracy_before_finetune")),
                         _ms(exp["latency_ms_measured"]), _ms(exp["latency_ms_predicted"]),
                         f"{exp['speedup']:.2f}x", _ms(budget_allowed_ms(
                             exp["budget"].get("speedup"), exp["budget_ms"],
                             exp["teacher_latency_ms"])),
                         "yes" if exp["meets_budget"] else "NO"])
            continue
        chosen = search["chosen"]
        teacher_ms = search["attempts"][-1]["teacher_ms"]
        rows.append([f"student {tag}", budget, _pct(ft["accuracy"]) if ft else "-",
                     _pct(ft["accuracy_before"]) if ft else "-",
                     _ms(chosen["latency_ms_measured"]), _ms(chosen["latency_ms_predicted"]),
                     f"{teacher_ms / chosen['latency_ms_measured']:.2f}x",
                     _ms(search["attempts"][-1]["allowed_ms"]),
                     "yes" if chosen["meets_budget"] else "NO"])
        sec.notes.append(f"Student {tag} is not exported yet (`lana export {run.dir}`); its "
                         "latency is the search stage's measurement"
                         + ("" if ft else " and it is not fine-tuned yet") + ".")
    sec.tables.append(TableData(headers, rows, "Accuracy on the test split; latency end to "
                                "end in ms (median); predicted = LUT sum corrected as measured "
                                "≈ α·LUT + β (fitted on the teacher and the measured "
                                "students, see search.json)."))
    if not tags:
        sec.notes.append(f"No student yet: run `lana search {run.dir}` (or `lana run`).")
    return sec


def _independent(run: RunFiles) -> Section:
    from lana.core.layout import TEACHER_ONNX
    from lana.pipeline.verify import independent_summary

    sec = Section("independent", "Timed independently",
                  f"`lana verify DIR --independent` times `{TEACHER_ONNX}` and each student's "
                  "`model/model.onnx` the way a user would: plain ONNX Runtime sessions, "
                  "interleaved rounds timed with time.perf_counter, each window in a fresh "
                  "process (its pid below) and none of lana's measuring code. Per window: "
                  "medians over its rounds; the range is that of the rounds' speed-ups.",
                  nav="Independent timing")
    rows = []
    for tag in run.budgets():
        exp = run.student(tag, EXPORT)
        if not exp or exp.get("meets_budget") is None:
            continue  # not exported, or timed on another machine: nothing to check here
        summary = independent_summary(run.dir, run.dir / "students" / tag)
        if summary is None:
            flag = _budget_flag(exp["budget"])
            sec.notes.append(f"Student {tag} is not timed independently yet: "
                             f"`lana verify {run.dir} {flag} --independent`.")
            continue
        n = summary["window_count"]
        sec.headline.append(f"**{tag}**: {summary['speedup_median']:.2f}x faster than the "
                            f"teacher (median of {n} window(s), "
                            f"{summary['speedup_min']:.2f}-{summary['speedup_max']:.2f}x); "
                            f"budget held in {summary['windows_held']} of {n}, median "
                            + ("met." if summary["meets_budget"] else "**missed**."))
        windows = run.student(tag, VERIFY)["independent"]["windows"]
        for w, ok in zip(windows, summary["holds"], strict=True):
            ratios = [a / b for a, b in w["rounds"]]
            rows.append([tag, time.strftime("%Y-%m-%d %H:%M", time.localtime(w["at"])),
                         str(w["pid"]), _ms(w["teacher_ms"]), _ms(w["student_ms"]),
                         f"{w['speedup']:.2f}x", f"{min(ratios):.2f}-{max(ratios):.2f}x",
                         "yes" if ok else "NO"])
    if rows:
        sec.tables.append(TableData(["student", "window", "pid", "teacher ms", "student ms",
                                     "speed-up", "rounds' range", "holds"], rows,
                                    "One row per timing window (local time)."))
    elif not sec.notes:
        sec.notes.append("No exported student timed on this machine yet.")
    return sec


def _budget_flag(budget: dict) -> str:
    return (f"--speedup {budget['speedup']:g}" if budget.get("speedup") is not None
            else f"--latency-ms {budget['latency_ms']:g}")


def _accuracy_latency(run: RunFiles) -> Section:
    sec = Section("accuracy-latency", "Accuracy vs measured latency",
                  "Every student the search assembled (K per attempt; held-out accuracy with "
                  "BatchNorm in batch-statistics mode, before fine-tuning), the selected "
                  "students after fine-tuning (test accuracy; the arrow starts at their test "
                  "accuracy before fine-tuning) and the teacher. Dashed lines: budgets.")
    teacher = run.json(TEACHER)
    tags = run.budgets()
    if not tags:
        sec.notes.append(f"No search results yet: run `lana search {run.dir}`.")
        return sec
    fig = _figure(8, 4.8)
    ax = fig.add_subplot()
    for b, tag in enumerate(tags):
        search = run.student(tag, SEARCH)
        color = _color(b)
        pts = [(r["latency_ms_measured"], r["val_accuracy"]) for _, r in _all_students(search)
               if r.get("val_accuracy") is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, s=22, color=color, alpha=0.45,
                       label=f"{tag}: {len(pts)} searched students (held-out)")
        ax.axvline(search["budget_ms"], color=color, linestyle="--", linewidth=1)
        exp = run.student(tag, EXPORT)
        if exp:
            x = exp["latency_ms_measured"]
            before = exp.get("accuracy_before_finetune")
            if before is not None:
                ax.annotate("", xy=(x, exp["accuracy"]), xytext=(x, before),
                            arrowprops={"arrowstyle": "->", "color": color, "alpha": 0.7})
            ax.scatter([x], [exp["accuracy"]], s=180, marker="*", color=color,
                       edgecolor="black", zorder=4, label=f"{tag}: fine-tuned student (test)")
    t_ms = _teacher_ms(run)
    if teacher and t_ms is not None:
        ax.scatter([t_ms], [teacher["accuracy"]], s=120, marker="D",
                   color="black", zorder=4, label="teacher (test)")
    ax.set_xlabel("measured latency, ms (end to end)")
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    sec.plots.append(_png(fig, "accuracy_latency.png", "accuracy vs measured latency"))
    return sec


def _sweep(run: RunFiles, points: int, baselines: Sequence[str]) -> Section:
    sec = Section("sweep", "What each budget buys: the ILP's Pareto front",
                  "The ILP solved at evenly spaced latency budgets on this run's library "
                  "(predicted score = sum of replace-one loss changes, lower is better). "
                  "Latency is the LUT prediction, calibrated like the search's. Crosses: the "
                  "K students of each search; diamond: the teacher (score 0).")
    lib = run.json(LIBRARY)
    if lib is None:
        sec.notes.append(f"No library yet: run `lana profile {run.dir}` and "
                         f"`lana score {run.dir}` (the search writes library.json).")
        return sec
    from lana.search.solver import Library
    from lana.search.sweep import sweep

    library = Library.from_dict(lib)
    left_out = [(layer["name"], spec) for layer in lib["layers"]
                for spec in layer.get("left_out", [])]
    if left_out:
        sec.notes.append(
            f"{len(left_out)} candidate(s) were left out, neither trained nor searched: "
            "each costs at least as much as the teacher's own layer in every cost column "
            "(search.skip_dominated), e.g. "
            + ", ".join(f"{name}:{spec}" for name, spec in left_out[:6]) + ".")
    rows = sweep(library, "latency_ms", points=points, baselines=list(baselines),
                 baseline_time_limit=0.05 if baselines else None)
    fixed, ratio = _calibration(run.json(LATENCY))
    alpha, beta = ratio, 0.0
    for tag in run.budgets():  # the search's own correction, when a search has run
        cal = (run.student(tag, SEARCH) or {}).get("calibration")
        if isinstance(cal, dict):
            alpha, beta = float(cal.get("alpha", ratio)), float(cal.get("beta", 0.0))
            break

    def pred(layer_ms: float) -> float:
        return alpha * (layer_ms + fixed) + beta

    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    markers = {"greedy": "s", "evolution": "^", "random": "x"}
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((pred(r["cost"]["latency_ms"]), r["score"]) for r in rows
                     if r["method"] == method and r["score"] is not None)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        if method == "ilp":
            ax.plot(xs, ys, marker="o", markersize=4, drawstyle="steps-post", color="black",
                    label="ILP optimum per budget", zorder=3)
        else:
            ax.plot(xs, ys, linestyle="none", marker=markers.get(method, "."), alpha=0.7,
                    label=f"{method} baseline")
    for b, tag in enumerate(run.budgets()):
        search = run.student(tag, SEARCH)
        pts = [(r["latency_ms_predicted"], r["score"]) for _, r in _all_students(search)]
        xs, ys = zip(*pts, strict=True)
        ax.scatter(xs, ys, marker="x", color=_color(b), s=40, zorder=4,
                   label=f"{tag}: searched students")
        ax.axvline(search["budget_ms"], color=_color(b), linestyle="--", linewidth=1)
    lat = run.json(LATENCY)
    if lat:
        ax.scatter([lat["teacher_measured_ms"]], [0.0], marker="D", s=80, color="black",
                   zorder=5, label="teacher")
    ax.set_xlabel("predicted latency, ms (calibrated LUT sum)" if lat
                  else "LUT latency, ms (sum over layers)")
    ax.set_ylabel("predicted score (loss increase)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    sec.plots.append(_png(fig, "sweep.png", "Pareto front: predicted score vs latency"))
    ilp = [r for r in rows if r["method"] == "ilp"]
    sec.tables.append(TableData(
        ["budget ms (predicted)", "score", "layers replaced"],
        [[_ms(pred(r["budget"])), f"{r['score']:.4g}",
          f"{sum(s != 'teacher' for s in r['specs'])}/{len(r['specs'])}"] for r in ilp],
        f"{len(ilp)} budgets, {sum(r['seconds'] for r in ilp):.2f} s of ILP solving"))
    return sec


def _layers(run: RunFiles) -> Section:
    sec = Section("layers", "Where the latency went: teacher op vs chosen op per layer",
                  "Per layer, the LUT latency of the teacher's op (grey) and of the op the "
                  "selected student uses there (orange where it was replaced, blue where the "
                  "teacher op was kept), each timed alone at the layer's input shape.")
    lat = run.json(LATENCY)
    tags = run.budgets()
    if lat is None:
        sec.notes.append(f"No latency table yet: run `lana profile {run.dir}`.")
        return sec
    if not tags:
        sec.notes.append(f"No selected student yet: run `lana search {run.dir}`.")
        return sec
    cands = run.json(CANDIDATES)
    names = ([layer["name"] for layer in cands["layers"]] if cands
             else [f"layer {i}" for i in range(len(lat["layers"]))])
    shapes = (["{}→{}".format("x".join(map(str, layer["in_shape"])),
                              "x".join(map(str, layer["out_shape"])))
               for layer in cands["layers"]] if cands else [""] * len(names))
    specs = lat["specs"]
    teacher_ms = [row[ops.index("teacher")] if "teacher" in ops else math.nan
                  for row, ops in zip(lat["layers"], specs, strict=True)]
    for tag in tags:
        search = run.student(tag, SEARCH)
        choices = search["chosen"]["choices"]
        chosen_ms = [row[ops.index(c)] for row, ops, c in zip(lat["layers"], specs, choices,
                                                             strict=True)]
        n = len(choices)
        labels = ["stem", *(f"{nm} {sh}" for nm, sh in zip(names, shapes, strict=True)),
                  "head"]
        t_vals = [lat["stem_ms"], *teacher_ms, lat["head_ms"]]
        c_vals = [lat["stem_ms"], *chosen_ms, lat["head_ms"]]
        ops_text = ["stem", *choices, "head"]
        fig = _figure(9, 1.2 + 0.36 * (n + 2))
        ax = fig.add_subplot()
        ys = list(range(n + 2))
        h = 0.38
        ax.barh([y - h / 2 for y in ys], t_vals, height=h, color="0.65", label="teacher op")
        colors = ["tab:blue" if c in ("teacher", "stem", "head") else "tab:orange"
                  for c in ops_text]
        ax.barh([y + h / 2 for y in ys], c_vals, height=h, color=colors,
                label="chosen op (orange: replaced)")
        top = max(max(t_vals), max(c_vals)) or 1.0
        for y, v, op in zip(ys, c_vals, ops_text, strict=True):
            if op in ("stem", "head"):
                continue
            ax.text(v + 0.01 * top, y + h / 2, op + (" (layer removed)" if op == "identity"
                                                      else ""),
                    va="center", fontsize=7)
        ax.set_yticks(ys, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.35)
        ax.set_xlabel("LUT latency, ms (op timed alone)")
        ax.set_title(f"{tag}: {sum(c != 'teacher' for c in choices)}/{n} layers replaced; "
                     f"LUT sum {sum(t_vals):.3g} ms → {sum(c_vals):.3g} ms", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        sec.plots.append(_png(fig, f"layers_{tag}.png", f"per-layer ops and latency, {tag}"))
        sec.tables.append(TableData(
            ["layer", "shape", "teacher ms", "chosen op", "chosen ms"],
            [[nm, sh, _ms(t), c, _ms(m)] for nm, sh, t, c, m
             in zip(names, shapes, teacher_ms, choices, chosen_ms, strict=True)],
            f"{tag}: per-layer choices"))
    return sec


def _predicted_measured(run: RunFiles) -> Section:
    sec = Section("prediction", "Predicted vs measured latency",
                  "Every student measured end to end (all K of every search attempt; stars: "
                  "the exported, fine-tuned students) against the calibrated LUT prediction. "
                  "On the line, the prediction is exact; the band is ±10%.")
    tags = run.budgets()
    if not tags:
        sec.notes.append(f"No measured students yet: run `lana search {run.dir}`.")
        return sec
    fig = _figure(6.5, 5.5)
    ax = fig.add_subplot()
    allx: list[float] = []
    ally: list[float] = []
    rows = []
    for b, tag in enumerate(tags):
        search = run.student(tag, SEARCH)
        pts = [(r["latency_ms_predicted"], r["latency_ms_measured"])
               for _, r in _all_students(search)]
        xs, ys = zip(*pts, strict=True)
        ax.scatter(xs, ys, s=24, color=_color(b), alpha=0.6, label=f"{tag}: searched")
        allx += xs
        ally += ys
        exp = run.student(tag, EXPORT)
        if exp:
            ax.scatter([exp["latency_ms_predicted"]], [exp["latency_ms_measured"]], s=160,
                       marker="*", color=_color(b), edgecolor="black", zorder=4,
                       label=f"{tag}: exported")
            allx.append(exp["latency_ms_predicted"])
            ally.append(exp["latency_ms_measured"])
        errs = [abs(m / p - 1) for p, m in pts if p > 0]
        rows.append([tag, str(len(pts)), _calibration_text(search.get("calibration")),
                     f"{100 * _median(errs):.1f}%", f"{100 * max(errs):.1f}%",
                     str(search.get("resolves", 0))])
    lo = min(allx + ally) * 0.9
    hi = max(allx + ally) * 1.1
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="y = x")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.5",
                    alpha=0.12, label="±10%")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted latency, ms (calibrated LUT sum)")
    ax.set_ylabel("measured latency, ms (end to end)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    sec.plots.append(_png(fig, "predicted_measured.png", "predicted vs measured latency"))
    sec.tables.append(TableData(["budget", "students", "correction (measured ≈ α·LUT + β)",
                                 "median |error|", "max |error|", "re-solves"], rows))
    return sec


def _median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _score_loss(run: RunFiles) -> Section:
    sec = Section("proxy", "Is the additive score a good proxy? Score vs held-out loss",
                  "The ILP minimises the sum of replace-one scores; here each searched "
                  "student's predicted score against its measured held-out loss (before "
                  "fine-tuning). Kendall tau near 1 means the score ranks students like the "
                  "real loss does (the paper reports 0.966 on 1,000 architectures).")
    tags = run.budgets()
    if not tags:
        sec.notes.append(f"No searched students yet: run `lana search {run.dir}`.")
        return sec
    from scipy.stats import kendalltau

    scores = run.json(SCORES)
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    rows = []
    for b, tag in enumerate(tags):
        search = run.student(tag, SEARCH)
        pts = [(r["score"], r["val_loss"]) for _, r in _all_students(search)
               if r.get("val_loss") is not None]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        tau = kendalltau(xs, ys).statistic if len(pts) >= 2 else math.nan
        tau_txt = "n/a" if not math.isfinite(tau) else f"{tau:.3f}"
        ax.scatter(xs, ys, s=30, color=_color(b), alpha=0.7,
                   label=f"{tag}: {len(pts)} students, tau {tau_txt}")
        chosen = search["chosen"]
        ax.scatter([chosen["score"]], [chosen["val_loss"]], s=140, facecolor="none",
                   edgecolor=_color(b), linewidth=2, zorder=4)
        rows.append([tag, str(len(pts)), tau_txt, f"{min(xs):.4g} … {max(xs):.4g}",
                     f"{min(ys):.4g} … {max(ys):.4g}"])
        if not math.isfinite(tau):
            sec.notes.append(f"{tag}: Kendall tau needs at least two students with different "
                             "scores and losses.")
    if scores and rows:
        # What the additive model predicts: the teacher's loss plus the summed score.
        lo, hi = ax.get_xlim()
        t_loss = scores["teacher_loss"]
        ax.plot([lo, hi], [t_loss + lo, t_loss + hi], color="black", linestyle=":",
                linewidth=1, label="additive prediction: teacher loss + score")
        ax.set_xlim(lo, hi)
    ax.set_xlabel("predicted score (sum of replace-one loss changes)")
    ax.set_ylabel("held-out loss (cross-entropy)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    sec.plots.append(_png(fig, "score_loss.png", "additive score vs measured loss"))
    sec.tables.append(TableData(["budget", "students", "Kendall tau", "score range",
                                 "loss range"], rows, "Circled: the selected student."))
    return sec


def _timings(run: RunFiles) -> Section:
    sec = Section("timings", "Where the time went: phase timings",
                  "Wall-clock seconds per stage of this run (a stage loaded from a cache or an "
                  "earlier run is not counted again).")
    timings = run.json(TIMINGS)
    if not timings:
        sec.notes.append("No timings recorded yet (timings.json is written by each stage).")
        return sec

    def order(key: str) -> tuple[int, str]:
        base = key.removesuffix("_s")
        for n, phase in enumerate(_PHASE_ORDER):
            if base == phase or base.startswith(phase + "_"):
                return n, base
        return len(_PHASE_ORDER), base

    keys = sorted(timings, key=order)
    vals = [float(timings[k]) for k in keys]
    labels = [k.removesuffix("_s") for k in keys]
    fig = _figure(8, 1.0 + 0.38 * len(keys))
    ax = fig.add_subplot()
    ax.barh(range(len(keys)), vals, color="tab:blue")
    top = max(vals) or 1.0
    for y, v in enumerate(vals):
        ax.text(v + 0.01 * top, y, duration(v), va="center", fontsize=8)
    ax.set_yticks(range(len(keys)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.2)
    ax.set_xlabel("seconds")
    ax.set_title(f"total {duration(sum(vals))}", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    sec.plots.append(_png(fig, "timings.png", "phase timings"))
    sec.tables.append(TableData(["stage", "time"], [[lab, duration(v)] for lab, v
                                                    in zip(labels, vals, strict=True)]))
    return sec


# ---------------------------------------------------------------- assembly


def build_sections(run_dir: str | os.PathLike[str], *, sweep_points: int = 20,
                   baselines: Sequence[str] = ("greedy",)) -> list[Section]:
    """Every section of the report for ``run_dir``; missing stages give notes, not errors."""
    run = RunFiles(run_dir)
    builders: list[tuple[str, str, Callable[[], Section]]] = [
        ("result", "Teacher vs students", lambda: _overview(run)),
        ("independent", "Timed independently", lambda: _independent(run)),
        ("accuracy-latency", "Accuracy vs measured latency", lambda: _accuracy_latency(run)),
        ("sweep", "Budget sweep", lambda: _sweep(run, sweep_points, baselines)),
        ("layers", "Per-layer choices", lambda: _layers(run)),
        ("prediction", "Predicted vs measured latency", lambda: _predicted_measured(run)),
        ("proxy", "Score vs loss", lambda: _score_loss(run)),
        ("timings", "Phase timings", lambda: _timings(run)),
    ]
    sections = []
    for sid, title, build in builders:
        try:
            sec = build()
            sec.nav = sec.nav or title
            sections.append(sec)
        except (LanaError, KeyError, ValueError, TypeError, IndexError, ZeroDivisionError,
                AttributeError) as exc:
            # A file from an older lana or a half-written run must not stop the report: the
            # section says what it could not read and the rest is still written.
            sections.append(Section(sid, title, nav=title, notes=[
                f"This section could not be drawn from the files in {run.dir}: "
                f"{type(exc).__name__}: {exc}"]))
    if run.problems:
        sections[0].notes.extend(run.problems)
    return sections


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;
max-width:1100px;padding:1.5em;color:#222;line-height:1.45}
h1{margin-bottom:.1em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
caption{caption-side:bottom;color:#666;font-size:.85em;text-align:left;padding-top:.3em}
img{max-width:100%;height:auto;display:block;margin:.8em 0}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em;margin:.5em 0}
details{margin:.5em 0}nav a{margin-right:1em}
.headline{font-size:1.15em}
.yes{color:#1a7f37;font-weight:600}.no{color:#c62828;font-weight:600}
"""


_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _md_inline(text: str) -> str:
    # Sections use **bold** and `code` in their text; HTML gets the same emphasis.
    import re

    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _html_table(t: TableData, collapsed: bool = False) -> str:
    def cell(c: str) -> str:
        cls = {"yes": ' class="yes"', "NO": ' class="no"'}.get(c, "")
        return f"<td{cls}>{html.escape(c)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in t.rows)
    cap = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    table = f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if collapsed:
        return (f"<details><summary>{html.escape(t.caption or 'table')}</summary>"
                f"{table}</details>")
    return table


def render_html(sections: Sequence[Section], title: str, subtitle: str) -> str:
    """The whole report as one HTML page; plots inline as data: URIs."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             # The page needs nothing but itself: the browser refuses any network fetch or
             # script, so a report can be opened (and mailed) safely.
             f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", f'<p class="sub">{html.escape(subtitle)}</p>',
             "<nav>" + "".join(f'<a href="#{s.id}">{html.escape(s.nav or s.title)}</a>'
                               for s in sections) + "</nav>"]
    for s in sections:
        parts.append(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>')
        for line in s.headline:
            parts.append(f'<p class="headline">{_md_inline(line)}</p>')
        if s.text:
            parts.append(f"<p>{_md_inline(s.text)}</p>")
        for note in s.notes:
            parts.append(f'<p class="note">{_md_inline(note)}</p>')
        for p in s.plots:
            data = base64.b64encode(p.png).decode()
            parts.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(p.alt)}"'
                         f' data-plot="{html.escape(p.name)}">')
        # Long per-layer tables are folded away; the plot above says the same at a glance.
        for t in s.tables:
            parts.append(_html_table(t, collapsed=len(t.rows) > 12))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_table(t: TableData) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, t.headers)) + " |",
             "|" + "|".join("---" for _ in t.headers) + "|"]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in t.rows]
    if t.caption:
        lines += ["", f"*{t.caption}*"]
    return "\n".join(lines)


def render_markdown(sections: Sequence[Section], title: str, subtitle: str) -> str:
    """The report as Markdown; plots referenced as PNG files next to it."""
    parts = [f"# {title}", "", f"*{subtitle}*", ""]
    for s in sections:
        parts += [f"## {s.title}", ""]
        for line in s.headline:
            parts += [line, ""]
        if s.text:
            parts += [s.text, ""]
        for note in s.notes:
            parts += [f"> **Note:** {note}", ""]
        for p in s.plots:
            parts += [f"![{p.alt}]({p.name})", ""]
        for t in s.tables:
            parts += [_md_table(t), ""]
    return "\n".join(parts)


def write_report(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                 *, sweep_points: int = 20, baselines: Sequence[str] = ("greedy",)) -> Path:
    """Write ``report.html`` (self-contained), ``report.md`` and the plot PNGs.

    ``out_dir`` defaults to ``run_dir/report``. Returns the path of ``report.html``.
    Raises :class:`lana.errors.ArtifactError` when ``run_dir`` is not a run directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not (run_dir / CONFIG).exists():
        raise ArtifactError(f"{run_dir} is not a lana run directory (no config.yaml); "
                            "give the --out directory of `lana run`")
    out = Path(out_dir) if out_dir is not None else run_dir / REPORT_DIR
    sections = build_sections(run_dir, sweep_points=sweep_points, baselines=baselines)
    teacher = RunFiles(run_dir).json(TEACHER) or {}
    title = f"lana report: {teacher.get('name', run_dir.name)}"
    subtitle = (f"run directory {run_dir.resolve()}; written "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    # Plots of an earlier report that this one no longer draws would mislead next to it.
    if out.is_dir():
        for old in out.glob("*.png"):
            old.unlink()
    for s in sections:
        for p in s.plots:
            atomic_write_bytes(out / p.name, p.png)
    atomic_write_bytes(out / REPORT_MD, render_markdown(sections, title, subtitle).encode())
    html_path = out / REPORT_HTML
    atomic_write_bytes(html_path, render_html(sections, title, subtitle).encode())
    return html_path
