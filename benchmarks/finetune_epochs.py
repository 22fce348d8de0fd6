"""Benchmark (issue 6): how many fine-tuning epochs a LANA student needs to catch the
smaller family member, on a finished ``benchmarks/table3.py`` run.

Usage (after ``python benchmarks/table3.py --family F --scale S`` has finished):

    python benchmarks/finetune_epochs.py --family effnet --scale medium [--budget member]
        [--epochs 1 2 4] [--threads 2]

The table's member is trained from scratch for the teacher recipe's epochs, the LANA
student fine-tuned for the ``finetune`` section's (1 epoch at the medium scale), so the
"LANA beats the member" row compares unequal training. Here the run's LANA student at one
budget (``member``: the member's measured latency, or a speed-up such as ``2``), assembled
from its phase-1 weights as the pipeline's phase 3 starts, is fine-tuned by the same recipe
(CE + KD, optimizer, lr, batch) for each number of epochs, and its test accuracy is set
next to the teacher's and the member's. Results go to ``WORK/finetune-epochs`` (one JSON
per epoch count, so a re-run resumes) and to the "Fine-tuning epochs" section of
benchmarks/RESULTS.md; the member's budget at the member's own epochs is the table's
"as the member trains" row, so that one is read from (or stored as) the table3 step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _results import machine, write_section  # noqa: E402


def budget_step(steps_dir: Path, budget: str) -> str:
    """The table3 step name of the LANA student (seed 0) at ``budget``: ``member`` (the
    member's measured speed-up, as table3 derives it from ``member_ratio``) or a speed-up
    ("2", "3.0"). Raises FileNotFoundError naming what to run first."""
    names = sorted(p.stem for p in steps_dir.glob("lana_speedup*_s0.json"))
    if not names:
        raise FileNotFoundError(f"no LANA students in {steps_dir}: run benchmarks/table3.py "
                                "for this family and scale first")
    import table3

    from lana.core.io import read_json

    if budget == "member":
        ratio_file = steps_dir / "member_ratio.json"
        if not ratio_file.exists():
            raise FileNotFoundError(f"{ratio_file} is missing: run benchmarks/table3.py for "
                                    "this family and scale first")
        want = table3.member_speedup_of(read_json(ratio_file)["ratio"])
    else:
        want = float(budget)
    name = table3.lana_step(want, 0)
    if name in names:
        return name
    have = ", ".join(n.removeprefix("lana_speedup").removesuffix("_s0") + "x" for n in names)
    raise FileNotFoundError(f"no LANA student at {want:g}x in {steps_dir} (have: {have})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", required=True)
    ap.add_argument("--scale", default="medium")
    ap.add_argument("--work", default=None, help="the table3 work directory (default: "
                    "benchmarks/work/table3-<family>-<scale>)")
    ap.add_argument("--budget", default="member", help="'member' or a speed-up (default: "
                    "%(default)s)")
    ap.add_argument("--epochs", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = ap.parse_args(argv)
    import table3

    if args.family not in table3.FAMILIES or args.scale not in table3.SCALES:
        ap.error(f"--family one of {sorted(table3.FAMILIES)}, --scale one of "
                 f"{sorted(table3.SCALES)}")
    if any(e <= 0 for e in args.epochs):
        ap.error("--epochs must be positive")
    work = Path(args.work or HERE / "work" / f"table3-{args.family}-{args.scale}").resolve()
    from lana.core.io import read_json, run_lock
    from lana.errors import LanaError

    start = time.time()
    try:
        with run_lock(work):
            bench = table3.Table3(args.family, args.scale, work, 1, args.threads)
            name = budget_step(bench.steps.root, args.budget)
            lana0 = read_json(bench.steps.path(name))
            member = read_json(bench.steps.path("member_s0"))
            teacher = read_json(bench.steps.path("prepare"))
            steps = table3.Steps(work / "finetune-epochs")
            tag = name.removeprefix("lana_").removesuffix("_s0")
            rows = []
            equal = bench.cfg.teacher_training.epochs
            for ep in args.epochs:
                if args.budget == "member" and ep == equal:
                    # The table's own "as the member trains" row: the same training, so
                    # it is shared rather than run twice.
                    rows.append(bench.lana_equal_training(lana0))
                    continue
                rows.append(steps.get(f"{tag}_e{ep:g}", lambda ep=ep: bench.finetune_for(
                    lana0, ep, f"ftepochs_{tag}_e{ep:g}")))
    except (LanaError, FileNotFoundError) as exc:
        print(f"finetune_epochs: {exc}", file=sys.stderr)
        return 2
    cmd = (f"python benchmarks/finetune_epochs.py --family {args.family} --scale {args.scale}"
           f" --budget {args.budget} --epochs {' '.join(f'{e:g}' for e in args.epochs)}"
           + (f" --threads {args.threads}" if args.threads != 1 else "")
           + (f" --work {args.work}" if args.work else ""))
    sc = table3.SCALES[args.scale]
    ft, tt = sc["finetune"], sc["teacher_training"]
    train_n = len(bench.run.splits.train)
    t_acc, m_acc = 100 * teacher["accuracy"], 100 * member["accuracy"]
    lines = ["| training | epochs | images seen | test accuracy % | vs member | vs teacher | "
             "wall s |", "|---|---|---|---|---|---|---|",
             f"| teacher {bench.fam['teacher']} (from scratch) | {tt['epochs']:g} | "
             f"{tt['epochs'] * train_n:.0f} | {t_acc:.2f} | - | - | - |",
             f"| {bench.fam['member']} + KD (from scratch, teacher recipe) | "
             f"{tt['epochs']:g} | {tt['epochs'] * train_n:.0f} | {m_acc:.2f} | - | "
             f"{m_acc - t_acc:+.2f} | {member.get('seconds', float('nan')):.0f} |",
             f"| LANA {tag} in the table (pipeline's phase 3) | {ft['epochs']:g} | "
             f"{ft['epochs'] * train_n:.0f} | {100 * lana0['accuracy']:.2f} | "
             f"{100 * lana0['accuracy'] - m_acc:+.2f} | {100 * lana0['accuracy'] - t_acc:+.2f}"
             " | - |"]
    for r in rows:
        acc = 100 * r["accuracy"]
        lines.append(f"| LANA {tag}, fine-tuned here | {r['epochs']:g} | "
                     f"{r['epochs'] * train_n:.0f} | {acc:.2f} | {acc - m_acc:+.2f} | "
                     f"{acc - t_acc:+.2f} | {r['seconds']:.0f} |")
    heading = f"## Fine-tuning epochs: {args.family} ({args.scale} scale, issue 6)"
    body = f"""{heading}

Command: `{cmd}` (on the finished table3 run; resumable).
Machine: {machine()}; training with {args.threads} torch thread(s). Date:
{time.strftime('%Y-%m-%d')}; {time.time() - start:.0f} s for the last invocation.
The LANA student of the table at {tag} (assembled from its phase-1 weights) fine-tuned by
the table's recipe (CE + KD from the teacher, {ft['batch_size']} images per step, the run's
optimizer and lr, cosine schedule over the whole run) for each number of epochs of the
{train_n} training images, seed 0, test accuracy on the full test set. The member is trained
from scratch for the teacher recipe's {tt['epochs']:g} epochs, so the last rows compare
equal numbers of training images.

""" + "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        write_section(heading, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
