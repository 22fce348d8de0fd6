"""Readable terminal tables of a run's results."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from lana.latency.spread import interval_text
from lana.search.verdict import budget_allowed_ms

_out = Console()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def print_summary(summary: dict, console: Console | None = None) -> None:
    """Teacher vs students: accuracy, measured latency, speed-up, budget check."""
    console = console or _out
    lat = summary["latency"]
    t = Table(title=f"lana: {summary['teacher']['name']} vs students ({lat['backend']}, "
              f"batch {lat['batch_size']}, {lat['threads']} thread(s))")
    for col in ("model", "accuracy", "ms measured", "ms by LUT", "speed-up", "budget ms",
                "in budget"):
        t.add_column(col, justify="right" if col != "model" else "left")
    teacher = summary["teacher"]
    students = summary["students"]
    # Show the teacher timing taken in the same session as the students' (fair ratios).
    t_ms = students[0]["teacher_latency_ms_measured"] if students else teacher["latency_ms"]
    t.add_row("teacher", _pct(teacher["accuracy"]), f"{t_ms:.4g}", "-", "1.00x", "-", "-")
    for s in students:
        name = "student " + ", ".join(f"{v:g}x" if k == "speedup" else f"{v:g} ms"
                                      for k, v in s["budget"].items())
        budget_ms = budget_allowed_ms(s["budget"].get("speedup"), s["budget_ms"],
                                      s["teacher_latency_ms_measured"])
        # None: the LUT came from another machine, so nothing was measured here.
        t.add_row(name, _pct(s["accuracy"]), _num(s["latency_ms_measured"]),
                  f"{s['latency_ms_predicted']:.4g}",
                  "-" if s["speedup"] is None else f"{s['speedup']:.2f}x",
                  f"{budget_ms:.4g}",
                  "not measured" if s["meets_budget"] is None
                  else "yes" if s["meets_budget"] else "[red]no[/red]")
    console.print(t)
    if lat.get("deploy_env"):
        console.print(f"  measured with `{lat['deploy_env']}`: deploy with the same "
                      "environment to get these latencies (docs/latency.md, \"The torch backends "
                      "and malloc\")")
    for s in summary["students"]:
        changed = sum(1 for c in s["choices"] if c != "teacher")
        console.print(f"  {s['path']}: {changed}/{len(s['choices'])} layers replaced: "
                      + " ".join(s["choices"]))
        if s.get("speedup_interval") and s["speedup"] is not None:
            # Below the table, not in its speed-up cell: there it widened the column until
            # an 80-column terminal cut the numbers.
            console.print(f"    speed-up {s['speedup']:.2f}x; 90 % of repeated timings here"
                          + interval_text(s["speedup_interval"]))
        if s.get("independent_verify"):
            console.print("    timed independently (`lana verify --independent`): "
                          + independent_line(s["independent_verify"]))


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def print_search(result: dict, console: Console | None = None) -> None:
    """The K students of the last search attempt, best (chosen) marked."""
    from lana.search.select import explain

    console = console or _out
    last = result["attempts"][-1]
    t = Table(title=f"lana search: budget {result['budget_ms']:.4g} ms, "
              f"10^{result['log10_space_size']:.1f} architectures, "
              f"solved in {result['solve_seconds']:.2f} s")
    for col in ("#", "score", "predicted ms", "measured ms", "val loss", "val acc", "ok"):
        t.add_column(col, justify="right")
    for n, r in enumerate(last["students"]):
        mark = " *" if r["choices"] == result["chosen"]["choices"] else ""
        t.add_row(f"{n}{mark}", f"{r['score']:.4f}", f"{r['latency_ms_predicted']:.4g}",
                  _num(r["latency_ms_measured"]), f"{r['val_loss']:.4f}",
                  _pct(r["val_accuracy"]), "yes" if r["meets_budget"] else "no")
    console.print(t)
    if len(result["attempts"]) > 1:
        console.print("  (the table is the last solve; * marks the kept student if it is there)")
    for line in explain(result):
        console.print(f"  {line}")


def print_library_search(result: dict, cost_keys: list[str],
                         console: Console | None = None) -> None:
    """The solutions of a standalone library search (``SearchResult.to_dict()`` form)."""
    console = console or _out
    budgets = ", ".join(result["budgets"]) or "no budget"
    method = result.get("method", "ilp")
    note = " (time limit hit)" if result.get("timed_out") else ""
    t = Table(title=f"lana search ({method}): {budgets}; 10^{result['log10_space_size']:.1f} "
              f"architectures, {len(result['solutions'])}/{result['k_requested']} found in "
              f"{result['solve_seconds']:.2f} s{note}")
    for col in ("#", "score", *cost_keys):
        t.add_column(col, justify="right")
    for n, s in enumerate(result["solutions"]):
        t.add_row(str(n), f"{s['score']:.6g}", *(f"{s['cost'][k]:.6g}" for k in cost_keys))
    console.print(t)
    if result["solutions"]:
        console.print("  #0: " + " ".join(result["solutions"][0]["specs"]))


def print_sweep(rows: list[dict], cost_key: str, console: Console | None = None) -> None:
    """A budget sweep: per budget, each method's score and the cost it used."""
    console = console or _out
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["budget"]): r for r in rows}
    budgets = sorted({r["budget"] for r in rows})
    t = Table(title=f"lana sweep: predicted score (and {cost_key} used) per {cost_key} budget")
    t.add_column(f"{cost_key} <=", justify="right")
    for m in methods:
        t.add_column(m, justify="right")
    for b in budgets:
        cells = []
        for m in methods:
            r = by.get((m, b))
            cells.append("-" if r is None or r["score"] is None
                         else f"{r['score']:.5g} ({r['cost'][cost_key]:.4g})")
        t.add_row(f"{b:.5g}", *cells)
    console.print(t)


def print_families(console: Console | None = None) -> None:
    """The registered teacher families (``lana list-models``)."""
    from lana.model.decompose import FAMILIES
    from lana.space.ops import family_space, space_specs

    console = console or _out
    t = Table(title="lana: supported teacher families")
    t.add_column("family")
    t.add_column("models")
    t.add_column("default ops", justify="right")
    for fam in FAMILIES.values():
        t.add_row(fam.name, fam.description, str(len(space_specs(family_space(fam.name)))))
    console.print(t)
    console.print("Default spaces (space.ops: auto); per layer, ops whose shapes do not fit "
                  "are dropped (identity needs equal input and output shapes):")
    for fam in FAMILIES.values():
        console.print(f"  {fam.name}: " + " ".join(family_space(fam.name)), soft_wrap=True)
    console.print("model.name: timm:<name>, torchvision:<name>, lana:<name> or your own, "
                  "python:<file.py or dotted.module>:<class or function>", soft_wrap=True)
    console.print("Show one model's layers and candidates: lana list-models --model "
                  "timm:efficientnet_b0 --input 3x224x224")


def print_model_space(model: str, input_shape: str, config: str | None = None,
                      console: Console | None = None) -> dict:
    """Layers of ``model`` with their candidate counts and the search-space size."""
    import torch

    from lana.config import load_config
    from lana.errors import ConfigError
    from lana.model.decompose import decompose
    from lana.model.zoo import create_model
    from lana.space.ops import layer_candidates, log10_space_size, resolve_space, space_specs

    console = console or _out
    try:
        shape = tuple(int(v) for v in input_shape.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input {input_shape!r} must look like 3x224x224") from None
    if len(shape) != 3:
        raise ConfigError(f"--input {input_shape!r} must be CxHxW, e.g. 3x224x224")
    cfg = load_config(config) if config else None
    teacher = create_model(model, in_chans=shape[0]).eval()
    chain = decompose(teacher, torch.zeros(1, *shape),
                      layers=cfg.model.layers if cfg else None)
    patterns = resolve_space(cfg.space.ops if cfg else "auto", chain.family)
    specs = space_specs(patterns)
    cands = [layer_candidates(info, specs) for info in chain.info]
    t = Table(title=f"{model} at {input_shape} (family {chain.family}): {len(chain.layers)} "
              f"layers, {len(specs)} ops in the space, "
              f"10^{log10_space_size(cands):.1f} architectures")
    # "ends": whether the layer's output is post-activation, which picks an op's `_a` form
    # where the space lists both endings (lana.space.ops.matches_ending).
    for col in ("layer", "in", "out", "stride", "ends", "candidates"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for info, c in zip(chain.info, cands, strict=True):
        # (H, W, C) maps are marked: their candidates see them through permutes.
        t.add_row(info.name, "x".join(map(str, info.in_shape)) + " HWC" * info.hwc[0],
                  "x".join(map(str, info.out_shape)) + " HWC" * info.hwc[1],
                  str(info.stride),
                  "act" if info.ends_with_act else "linear", str(len(c)))
    console.print(t)
    console.print("space: " + " ".join(patterns), soft_wrap=True)
    return {"family": chain.family, "space": patterns, "layers": len(cands),
            "candidates": [len(c) for c in cands],
            "ends_with_act": [info.ends_with_act for info in chain.info],
            "log10_space_size": log10_space_size(cands)}


_STATE_STYLE = {"done": "green", "partial": "yellow", "stale": "yellow", "missing": "dim",
                "corrupt": "red"}


def print_status(status: dict, console: Console | None = None) -> None:
    """A run directory's stages (:func:`lana.pipeline.status.run_status`) as a table, then what a
    re-run would compute."""
    console = console or _out
    t = Table(title=f"lana status: {status['dir']} ({status['model']})")
    for col in ("stage", "budget", "state", "time", "detail"):
        t.add_column(col, justify="right" if col == "time" else "left",
                     overflow="fold" if col == "detail" else "ellipsis")
    for s in status["stages"]:
        style = _STATE_STYLE.get(s["state"], "")
        secs = s["seconds"]
        t.add_row(s["stage"], s["budget"] or "", f"[{style}]{s['state']}[/{style}]",
                  "" if secs is None else f"{secs:.0f} s", str(s["detail"]))
    console.print(t)
    run = status.get("running")
    if run:
        console.print(f"[yellow]a lana run is working in this directory now: pid "
                      f"{run.get('pid')} on {run.get('host', '?')} ({run.get('command', '?')}, "
                      f"since {run.get('since', '?')})[/yellow]")
    if any(s["state"] == "corrupt" for s in status["stages"]):
        console.print("[red]corrupt files: re-run with --recompute-corrupt to move them "
                      "aside and recompute them[/red]")
    if status["next"]:
        console.print("re-running `lana run CONFIG --out DIR` with these settings (and the "
                      "budget flag shown) computes:\n  " + "\n  ".join(status["next"]))
    else:
        console.print("every stage is done: a re-run computes nothing")


def print_verify(res: dict, console: Console | None = None) -> None:
    """The timings of :meth:`lana.pipeline.runner.Run.verify`: export's and every session's, then
    the verdict on their median."""
    import time

    console = console or _out
    b = res["budget"]
    label = f"{b['speedup']:g}x" if "speedup" in b else f"{b['latency_ms']:g} ms"
    t = Table(title=f"lana verify: student at {label} (budget {res['budget_ms']:.4g} ms)")
    for col in ("timing", "teacher ms", "student ms", "speed-up"):
        t.add_column(col, justify="right" if col != "timing" else "left")
    rows = [(f"export, #{i + 1}", s) for i, s in enumerate(res["export_timings"])]
    rows += [(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["at"])), s)
             for s in res["sessions"]]
    for name, s in rows:
        t.add_row(name, f"{s['teacher']:.4g}", f"{s['student']:.4g}",
                  f"{s['teacher'] / s['student']:.2f}x")
    console.print(t)
    p = res["pooled"]
    verdict = "[green]within budget[/green]" if res["meets_budget"] else "[red]OVER budget[/red]"
    console.print(f"median of {len(rows)} timings: student {p['latency_ms']:.4g} ms, "
                  f"{p['speedup']:.2f}x the teacher, {p['fraction']:.0%} of the budget: "
                  f"{verdict}")


def _budget_label(budget: dict) -> str:
    return f"{budget['speedup']:g}x" if "speedup" in budget else f"{budget['latency_ms']:g} ms"


def independent_line(s: dict) -> str:
    """One sentence on an ``independent_verify`` summary
    (:func:`lana.pipeline.verify.summarize`): the speed-up's median and range over
    windows and how many met the budget."""
    verdict = "within budget" if s["meets_budget"] else "OVER budget"
    return (f"speed-up over {s['window_count']} window(s): median "
            f"{s['speedup_median']:.2f}x (min {s['speedup_min']:.2f}x, max "
            f"{s['speedup_max']:.2f}x), student {s['student_ms_median']:.4g} ms; the "
            f"{_budget_label(s['budget'])} budget holds in {s['windows_held']} of "
            f"{s['window_count']} window(s); median: {verdict}")


def print_independent(res: dict, console: Console | None = None) -> None:
    """The windows of :meth:`lana.pipeline.runner.Run.verify_independent`, one row each
    (median ms over rounds, the range of the rounds' speed-ups, whether the budget holds),
    then the distribution over windows and the verdict on its median. Each window's fresh
    process id is in verify.json and the report, not here: the table fits 80 columns."""
    import time

    console = console or _out
    key = res["key"]
    # A speed-up budget is judged on each window's own ratio, never on export's ms target.
    t = Table(title=f"lana verify --independent: student at {_budget_label(res['budget'])}; "
              f"plain ONNX Runtime, a fresh process per window, batch {key['batch_size']}, "
              f"{key['threads']} thread(s)")
    for col in ("window", "rounds", "teacher ms", "student ms", "speed-up", "rounds' range",
                "holds"):
        t.add_column(col, justify="right" if col != "window" else "left")
    for w, ok in zip(res["windows"], res["holds"], strict=True):
        ratios = [a / b for a, b in w["rounds"]]
        # The time of day only (verify.json keeps the full timestamp): with the date, an
        # 80-column terminal cut this column and the rounds' range.
        t.add_row(time.strftime("%H:%M:%S", time.localtime(w["at"])),
                  f"{len(w['rounds'])}x{w['runs_per_round']}", f"{w['teacher_ms']:.4g}",
                  f"{w['student_ms']:.4g}", f"{w['speedup']:.2f}x",
                  f"{min(ratios):.2f}-{max(ratios):.2f}x", "yes" if ok else "[red]no[/red]")
    console.print(t)
    line = independent_line(res).replace("OVER budget", "[red]OVER budget[/red]")
    console.print(line.replace("median: within budget", "median: [green]within budget[/green]"))
    console.print(f"  files: {res['teacher_onnx']} and {res['student_onnx']}", soft_wrap=True)
