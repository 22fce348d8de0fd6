"""The ``lana`` command line: ``lana run``, ``lana demo`` and one subcommand per stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lana.errors import LanaError

DEMO_DIR = "lana-demo"


def _budget_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--speedup", type=float, help="budget as a speed-up over the teacher")
    g.add_argument("--latency-ms", type=float, help="budget in milliseconds")


def _budget(args: argparse.Namespace):
    from lana.config import BudgetConfig

    if getattr(args, "speedup", None) is not None:
        return BudgetConfig(speedup=args.speedup)
    if getattr(args, "latency_ms", None) is not None:
        return BudgetConfig(latency_ms=args.latency_ms)
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lana", description="Latency Aware Network Acceleration: "
                                "make a trained network fast on your device.")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run every stage on CONFIG into --out (resumes)")
    r.add_argument("config", help="YAML configuration file")
    r.add_argument("--out", required=True, help="run directory")
    _budget_args(r)

    d = sub.add_parser("demo", help="the whole method on Fashion-MNIST with a 2x budget")
    d.add_argument("--out", default=DEMO_DIR, help=f"run directory (default {DEMO_DIR})")
    _budget_args(d)

    for name, help_ in [("prepare", "teacher, decomposition and candidate list"),
                        ("distill", "phase 1: layer-wise distillation of all candidates"),
                        ("profile", "phase 2b: latency of every candidate (LUT)"),
                        ("score", "phase 2a: replace-one scores")]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("dir", help="run directory")
    for name, help_ in [("search", "phase 2c: ILP search, K students ranked and measured"),
                        ("finetune", "phase 3: fine-tune the selected student with KD"),
                        ("export", "ONNX + safetensors + arch JSON, latency verified")]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("dir", help="run directory")
        _budget_args(s)

    c = sub.add_parser("config", help="print the default configuration as YAML")
    c.add_argument("--defaults", action="store_true", help="(the only mode for now)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lana`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except LanaError as exc:
        print(f"lana: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lana: interrupted; every finished step is saved, re-run the same command "
              "to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from lana.pipeline import Run

    if args.cmd == "config":
        from lana.config import Config

        print(Config().to_yaml(), end="")
        return 0
    if args.cmd == "demo":
        from lana.demo import demo

        demo(args.out, _budget(args))
        return 0
    if args.cmd == "run":
        from lana.config import load_config
        from lana.report import print_summary

        summary = Run(args.out, load_config(args.config)).all(_budget(args))
        print_summary(summary)
        return 0
    run = Run(Path(args.dir))
    stage = getattr(run, args.cmd)
    budget = _budget(args)
    result = stage(budget) if args.cmd in ("search", "finetune", "export") else stage()
    if args.cmd == "export":
        from lana.report import print_summary

        print_summary(run.write_summary())
    elif args.cmd == "search":
        from lana.report import print_search

        print_search(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
