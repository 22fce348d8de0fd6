"""Benchmark (issue 6): the Table 3 runs of every family side by side.

Usage (after ``benchmarks/table3.py --family F --scale S`` has rendered its section for
one or more families):

    python benchmarks/table3_summary.py [--scale medium] [--no-write]

Each table3 run leaves ``benchmarks/table3_results/<family>-<scale>.json`` (the numbers of
its RESULTS.md section as plain data, kept in the repository) when it renders; this script
reads those of every family at one scale, trains and times nothing, and writes one section
to benchmarks/RESULTS.md (placed before the families' own sections) with a plot
``table3_summary_<scale>.png``: LANA against the teacher, the smaller member, random search
and Torch-Pruning per family, and which of the issue's targets each family met. A family
not run yet is named as such.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _results import RESULTS, replace_section  # noqa: E402

#: Short names of table3's targets, in the order its report lists them.
TARGETS = (("at the member's latency, LANA is more accurate", "LANA beats the member"),
           ("equal training images", "... at equal training images (beyond the issue)"),
           ("2x faster for", "2x faster for <= 0.5 points"),
           ("5x faster for", "5x faster for <= 1.5 points"),
           ("beats Torch-Pruning and random search", "LANA beats both baselines everywhere"))


def load(scale: str, root: Path | None = None) -> dict[str, dict | None]:
    """Every family's numbers at ``scale`` as its table3 run rendered them
    (``benchmarks/table3_results/<family>-<scale>.json``, or under ``root``); None where
    the run has not rendered."""
    import table3

    from lana.core.io import read_json

    out: dict[str, dict | None] = {}
    for fam in table3.FAMILIES:
        p = table3.summary_path(fam, scale, root)
        out[fam] = read_json(p) if p.exists() else None
    return out


def _cell(row: dict | None) -> str:
    return "-" if row is None else f"{row['accuracy']:.2f} ({row['speedup_b1']:.2f}×)"


#: A baseline whose final speed-up is off LANA's by more than this is not at equal latency.
MATCH = 0.05


def _base_cell(row: dict | None, lana: dict) -> str:
    """A baseline's cell, marked ↑ (faster) or ↓ (slower) when its final timing is more than
    ±5 % off the LANA student's: the match holds in the search's side-by-side timing, and a
    baseline that could not reach the student's latency (or drifted away since) is a
    different network, not one at equal latency."""
    if row is None:
        return "-"
    ratio = row["speedup_b1"] / lana["speedup_b1"]
    mark = " ↑" if ratio > 1 + MATCH else " ↓" if ratio < 1 - MATCH else ""
    return _cell(row) + mark


def _find(s: dict, kind: str, speedup: float | None = None) -> dict | None:
    return next((r for r in s["rows"] if r["kind"] == kind
                 and (speedup is None or r["speedup"] == speedup)), None)


def render(summaries: dict[str, dict | None], scale: str) -> tuple[str, str]:
    """(heading, body) of the RESULTS.md section."""
    import table3

    done = {f: s for f, s in summaries.items() if s is not None}
    heading = f"## Table 3 summary: all families ({scale} scale, issue 6)"
    lines = ["| family (teacher → member) | teacher % | member + KD % | LANA at the member's "
             "latency | LANA 2x | LANA 3x | LANA 5x | LANA, member's epochs |",
             "|---|---|---|---|---|---|---|---|"]
    base = ["| family | budget | LANA % | random search % | Torch-Pruning % | LANA − best "
            "baseline |", "|---|---|---|---|---|---|"]
    for fam, s in done.items():
        msp = s["member_speedup"]
        teacher = _find(s, "teacher")
        lines.append(
            f"| {fam} ({s['teacher']} → {s['member']}) | {teacher['accuracy']:.2f} | "
            f"{_cell(_find(s, 'member'))} | {_cell(_find(s, 'lana', msp))} | "
            + " | ".join(_cell(_find(s, "lana", sp)) for sp in table3.SPEEDUPS)
            + f" | {_cell(_find(s, 'lana_equal', msp))} |")
        for sp in (msp, *table3.SPEEDUPS):
            lana = _find(s, "lana", sp)
            if lana is None:
                continue
            others = [r for r in (_find(s, "random", sp), _find(s, "prune", sp)) if r]
            # round, then + 0.0: a tie prints +0.00, not -0.00
            gap = (f"{round(lana['accuracy'] - max(r['accuracy'] for r in others), 2) + 0.0:+.2f}"
                   if others else "-")
            base.append(f"| {fam} | {lana['budget']} | {lana['accuracy']:.2f} | "
                        f"{_base_cell(_find(s, 'random', sp), lana)} | "
                        f"{_base_cell(_find(s, 'prune', sp), lana)} | "
                        f"{gap} |")
    mark = {True: "met", False: "NOT met", None: "not measurable"}
    tgt = ["| target | " + " | ".join(done) + " |", "|---|" + "---|" * len(done)]
    for key, short in TARGETS:
        cells = []
        for s in done.values():
            t = next((t for t in s["targets"] if key in t["name"]), None)
            if t is None:
                cells.append("-")
            elif "beats" in key:  # its detail lists every budget: see the family's section
                cells.append(f"**{mark[t['met']]}**")
            else:
                cells.append(f"**{mark[t['met']]}** ({t['detail']})")
        tgt.append(f"| {short} | " + " | ".join(cells) + " |")
    tau = "; ".join(f"{fam} τ = {s['tau']:.3f} ({s['kendall_n']} architectures)"
                    for fam, s in done.items() if s.get("tau") is not None)
    missing = [f for f, s in summaries.items() if s is None]
    sources = "\n".join(f"- {fam}: `{s['command']}` ({s['date']}; {s['machine']}), section "
                        f"\"Table 3 on Fashion-MNIST: {fam} ({scale} scale, issue 6)\""
                        for fam, s in done.items())
    sc = table3.SCALES[scale]
    # A run may have used more fine-tuning seeds than its scale's default (--seeds).
    seeds = {fam: s.get("seeds", sc["seeds"]) for fam, s in done.items()}
    seed_text = (f"{next(iter(seeds.values()))} seed(s)" if len(set(seeds.values())) <= 1
                 else "seeds: " + ", ".join(f"{fam} {n}" for fam, n in seeds.items()))
    setup = (f"{sc['data']['train_samples'] or 'all'} training images, teacher and member "
             f"{sc['teacher_training']['epochs']:g} epochs from scratch, phase 1 "
             f"{sc['distill']['steps']} steps, fine-tuning {sc['finetune']['epochs']:g} "
             f"epoch(s), {seed_text}")
    not_run = ("\nNot run yet at this scale: " + ", ".join(missing) + ".") if missing else ""
    png = f"table3_summary_{scale}.png"
    body = f"""{heading}

Made by `python benchmarks/table3_summary.py --scale {scale}` on {time.strftime('%Y-%m-%d')}
from the runs below (it reads their stored results; nothing is trained or timed again).
Accuracy is test accuracy %; in brackets the measured speed-up over the teacher at batch 1
(ONNX Runtime, 1 thread, the median over the run's timing sessions). Baselines were
matched to the LANA student's measured latency (±5 %, the two timed side by side when
matched; the brackets are the final timing, which can differ on a shared machine) and
fine-tuned like it. Set-up at this scale: {setup}.{not_run}

{chr(10).join(lines)}

LANA against the baselines at each budget (the member's latency, 2x, 3x, 5x); ↑ marks a
baseline more than 5 % faster than the LANA student in the final timing, ↓ more than 5 %
slower (it could not reach, or no longer holds, the student's latency: compare with care):

{chr(10).join(base)}

Targets of the issue, per family (details in each family's section):

{chr(10).join(tgt)}

Kendall τ between the additive score and accuracy before fine-tuning: {tau or '-'} (the
paper: 0.966).

![accuracy drop against speed-up, every family]({png})

Sources:

{sources}
"""
    return heading, body


def plot(summaries: dict[str, dict | None], path: Path) -> None:
    """Accuracy drop from the teacher against measured speed-up, one panel per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = {f: s for f, s in summaries.items() if s is not None}
    if not done:
        return
    fig, axes = plt.subplots(1, len(done), figsize=(4.2 * len(done), 3.6), squeeze=False)
    styles = {"lana": ("LANA", "o-", "C0"), "random": ("random search", "s--", "C1"),
              "prune": ("Torch-Pruning", "v:", "C2"), "member": ("member + KD", "*", "C3"),
              "lana_equal": ("LANA, member's epochs", "D", "C0")}
    for ax, (fam, s) in zip(axes[0], done.items(), strict=True):
        teacher = next(r for r in s["rows"] if r["kind"] == "teacher")["accuracy"]
        for kind, (label, style, color) in styles.items():
            rs = sorted((r for r in s["rows"] if r["kind"] == kind),
                        key=lambda r: r["speedup_b1"])
            if rs:
                ax.plot([r["speedup_b1"] for r in rs], [teacher - r["accuracy"] for r in rs],
                        style, color=color, label=label, markersize=9 if kind == "member"
                        else 5, markerfacecolor="none" if kind == "lana_equal" else color)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{fam}: {s['teacher']}", fontsize=10)
        ax.set_xlabel("measured speed-up over the teacher (batch 1)")
        ax.set_ylabel("accuracy drop from the teacher (points)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write(heading: str, body: str, scale: str) -> None:
    """Replace the section, or put a new one before the first family section of ``scale``."""
    text = RESULTS.read_text()
    if heading not in text:
        first = text.find(f"## Table 3 on Fashion-MNIST: effnet ({scale} scale")
        if first < 0:
            first = text.find("## Table 3 on Fashion-MNIST")
        if first >= 0:
            RESULTS.write_text(text[:first] + body + "\n" + text[first:])
            return
    RESULTS.write_text(replace_section(text, heading, body))


def main(argv: list[str] | None = None) -> int:
    import table3

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="medium", choices=sorted(table3.SCALES))
    ap.add_argument("--results", default=str(HERE / "table3_results"),
                    help="folder of the rendered runs' <family>-<scale>.json files "
                    "(default: %(default)s)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    summaries = load(args.scale, Path(args.results))
    if not any(summaries.values()):
        print(f"table3_summary: no family has a rendered {args.scale} run yet; run "
              f"benchmarks/table3.py --scale {args.scale} first", file=sys.stderr)
        return 2
    heading, body = render(summaries, args.scale)
    print(body)
    if not args.no_write:
        plot(summaries, HERE / f"table3_summary_{args.scale}.png")
        write(heading, body, args.scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
