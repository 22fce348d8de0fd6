"""The ``lana`` command line: ``lana run``, ``lana demo`` and one subcommand per stage.

Each subcommand is one ``@_command`` handler next to the function that adds its arguments;
the decorator registers both, in the order ``lana --help`` lists them, so a new command is
added in one place. Handlers import what they need when they run: commands that need no
torch (``lana config``, ``lana search LIBRARY.json``, ``lana status``) never load it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from lana.errors import ConfigError, LanaError

DEMO_DIR = "lana-demo"

_Handler = Callable[[argparse.Namespace], int]


class _Command(NamedTuple):
    """A subcommand: its ``--help`` line, the function adding its options, its handler."""

    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: _Handler


# Filled by @_command at import time; its order is the order of `lana --help`.
_COMMANDS: dict[str, _Command] = {}


def _command(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None]
             ) -> Callable[[_Handler], _Handler]:
    """Register the decorated handler as ``lana NAME``, its options added by ``add_args``."""
    def register(run: _Handler) -> _Handler:
        assert name not in _COMMANDS, f"lana {name} is registered twice"
        _COMMANDS[name] = _Command(help, add_args, run)
        return run

    return register


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lana", description="Latency Aware Network Acceleration: "
                                "make a trained network fast on your device.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, cmd in _COMMANDS.items():
        cmd.add_args(sub.add_parser(name, help=cmd.help))
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lana`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        from lana.core import dist

        dist.check_kill_env()
        # Under torchrun (WORLD_SIZE > 1) join the job's process group; else a no-op.
        if dist.env_world() > 1:
            dist.init_from_env()
        try:
            return _dispatch(args)
        finally:
            dist.shutdown()
    except LanaError as exc:
        print(f"lana: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("lana: interrupted; every finished step is saved, re-run the same command "
              "to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`lana status DIR --json | head`): not an error of ours.
        # stdout is pointed at devnull so the interpreter's final flush stays quiet.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    return _COMMANDS[args.cmd].run(args)


# ------------------------------------------------------------------ options shared by commands

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


def _baseline(name: str) -> str:
    """A registered baseline's name (an argparse ``type``): the registry, which needs
    numpy, is read only when the option is given, so every other command starts light."""
    from lana.search.baselines import BASELINES

    if name not in BASELINES:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {name!r} (choose from "
            f"{', '.join(repr(n) for n in sorted(BASELINES))})")
    return name


def _library_search_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("library search (when the path is a library JSON file)")
    g.add_argument("--budget", action="append", default=[], metavar="KEY<=VALUE",
                   help="e.g. latency_ms<=5.0 or params<=2e6 (repeatable; >= also works)")
    g.add_argument("--k", type=int, default=None, help="diverse architectures (default 1)")
    g.add_argument("--overlap", type=float, default=None,
                   help="max fraction of layers shared with each earlier solution (default 0.7)")
    g.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="seconds for the whole search (baselines: default 1)")
    g.add_argument("--json", metavar="OUT", help="write the result here")
    g.add_argument("--baseline", type=_baseline, metavar="NAME",
                   help="run this baseline instead of the ILP (one solution; random, "
                   "evolution or greedy)")
    g.add_argument("--seed", type=int, default=None, help="baseline random seed (default 0)")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="where training and evaluation run: auto, cpu, cuda or "
                   "cuda:N (overrides the config's device; latency is measured where "
                   "latency.backend says)")


def _with_device(config, device: str | None):
    """``config`` with its ``device`` replaced by the command line's, validated."""
    from lana.config import with_changes

    return config if device is None else with_changes(config, "--device", device=device)


def _run_dir_args(p: argparse.ArgumentParser) -> None:
    _device_arg(p)
    p.add_argument("--recompute-corrupt", action="store_true",
                   help="move files whose checksum fails aside (NAME.corrupt) and recompute "
                   "them; without it a corrupt file is an error naming it")


def _given(args: argparse.Namespace, names: tuple[str, ...], unset: tuple = (None,)
            ) -> list[str]:
    """The options among ``names`` that were given (not left at one of ``unset``)."""
    return [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) not in unset]


# ------------------------------------------------------------------ the commands, in --help order

def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML configuration file")
    p.add_argument("--out", required=True, help="run directory")
    _budget_args(p)
    _run_dir_args(p)


@_command("run", "run every stage on CONFIG into --out (resumes)", _run_args)
def _cmd_run(args: argparse.Namespace) -> int:
    from lana.config import load_config
    from lana.core import dist
    from lana.pipeline.runner import Run
    from lana.report.terminal import print_summary

    config = _with_device(load_config(args.config), args.device)
    with _dir_lock(Path(args.out), args.recompute_corrupt, create=True):
        summary = Run(args.out, config).all(_budget(args))
    if dist.is_main():
        print_summary(summary)
        _print_report(args.out)
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=DEMO_DIR, help=f"run directory (default {DEMO_DIR})")
    _budget_args(p)
    _device_arg(p)


@_command("demo", "the whole method on Fashion-MNIST with a 2x budget", _demo_args)
def _cmd_demo(args: argparse.Namespace) -> int:
    from lana.cli.demo import demo

    with _dir_lock(Path(args.out), False, create=True):
        demo(args.out, _budget(args), device=args.device)
    return 0


def _stage_args(p: argparse.ArgumentParser) -> None:
    _run_dir_args(p)
    p.add_argument("dir", help="run directory")


@_command("prepare", "teacher, decomposition and candidate list", _stage_args)
def _cmd_prepare(args: argparse.Namespace) -> int:
    from lana.core import dist

    _in_run(args, lambda run, _: dist.on_main(run.prepare))
    return 0


@_command("distill", "phase 1: layer-wise distillation of all candidates", _stage_args)
def _cmd_distill(args: argparse.Namespace) -> int:
    _in_run(args, lambda run, _: run.distill())  # every rank under torchrun
    return 0


def _profile_args(p: argparse.ArgumentParser) -> None:
    _run_dir_args(p)
    p.add_argument("dir", metavar="DIR|BUNDLE", help="run directory or bundle")
    g = p.add_argument_group("bundle profiling (on the target machine)")
    g.add_argument("--backend", help="latency backend (default: the run's, as "
                   "recorded in the bundle; else onnxruntime)")
    g.add_argument("--threads", type=int, help="threads to pin (default: the run's; "
                   "else 1)")
    g.add_argument("--out", help="LUT file to write (default BUNDLE/lut.json)")
    g.add_argument("--max-seconds", type=float, help="time cap per op (default 0.3)")
    g.add_argument("--normalize", action=argparse.BooleanOptionalAction,
                   default=None, help="scale every timing by a reference op timed "
                   "alongside (default: the run's latency.normalize, as recorded "
                   "in the bundle)")


@_command("profile", "phase 2b: latency of every candidate (LUT); given a bundle from "
          "export-candidates, measure it into --out", _profile_args)
def _cmd_profile(args: argparse.Namespace) -> int:
    from lana.core import dist
    from lana.latency.profile import is_bundle

    if is_bundle(args.dir):
        return _profile_bundle(args)
    used = _given(args, ("backend", "threads", "out", "max_seconds", "normalize"))
    if used:
        raise ConfigError(f"{', '.join(used)} apply to a candidate bundle, but {args.dir} "
                          "is not one (no manifest.json); for a run directory set them "
                          "in the latency section of its config")
    _in_run(args, lambda run, _: dist.on_main(run.profile))
    return 0


@_command("score", "phase 2a: replace-one scores", _stage_args)
def _cmd_score(args: argparse.Namespace) -> int:
    from lana.core import dist

    _in_run(args, lambda run, _: dist.on_main(run.score))
    return 0


def _export_candidates_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="run directory")
    p.add_argument("--out", required=True, help="bundle directory to write")


@_command("export-candidates", "write every candidate at its layer as ONNX plus a manifest: "
          "a bundle to profile on the target device", _export_candidates_args)
def _cmd_export_candidates(args: argparse.Namespace) -> int:
    from lana.latency.profile import export_bundle
    from lana.pipeline.runner import Run

    run = Run(Path(args.dir))
    cfg = run.config
    m = export_bundle(run.chain, run.candidates, run.build_candidate, cfg.latency.batch_size,
                      run.input_shape, args.out,
                      {"model": cfg.model.name, "run": str(Path(args.dir).resolve()),
                       "latency": cfg.latency.model_dump(include={"backend", "threads",
                                                                  "normalize"})})
    print(f"wrote {len(m['entries'])} ONNX models and {Path(args.out) / 'manifest.json'}"
          f"; on the target: lana profile {args.out} --out lut.json (backend "
          f"{cfg.latency.backend}, {cfg.latency.threads} thread(s), normalize "
          f"{str(cfg.latency.normalize).lower()}, as this run; --backend etc. to change)")
    return 0


def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR|LIBRARY",
                   help="run directory (pipeline stage) or library JSON file")
    _budget_args(p)
    _run_dir_args(p)
    _library_search_args(p)


@_command("search", "phase 2c: ILP search, K students ranked and measured; or, given a "
          "library JSON file, the search alone", _search_args)
def _cmd_search(args: argparse.Namespace) -> int:
    if _is_library(Path(args.dir)):
        return _library_search(args)
    used = _given(args, ("budget", "k", "overlap", "time_limit", "json", "baseline", "seed"),
                   unset=(None, []))
    if used:
        raise ConfigError(
            f"{', '.join(used)} apply to a library JSON file, but {args.dir} is "
            "not one; for a run directory give the budget as --speedup or --latency-ms"
        )
    from lana.core import dist

    _, result = _in_run(args, lambda run, budget: dist.on_main(lambda: run.search(budget)))
    if dist.is_main():
        from lana.report.terminal import print_search

        print_search(result)
    return 0


def _budget_stage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="run directory")
    _budget_args(p)
    _run_dir_args(p)


@_command("finetune", "phase 3: fine-tune the selected student with KD", _budget_stage_args)
def _cmd_finetune(args: argparse.Namespace) -> int:
    from lana.core import dist

    def finetune(run, budget) -> None:
        dist.on_main(lambda: run.search(budget))
        run.finetune(budget)  # DistributedDataParallel under torchrun

    _in_run(args, finetune)
    return 0


@_command("export", "ONNX + safetensors + arch JSON, latency verified", _budget_stage_args)
def _cmd_export(args: argparse.Namespace) -> int:
    from lana.core import dist

    run, _ = _in_run(args, lambda run, budget: dist.on_main(lambda: run.export(budget)))
    if dist.is_main():
        from lana.report.terminal import print_summary

        print_summary(run.write_summary())
        _print_report(run.dir)
    return 0


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="run directory")
    _budget_args(p)
    p.add_argument("--sessions", type=int, default=3,
                   help="timing sessions to add (default 3); earlier ones are kept")
    p.add_argument("--gap", type=float, default=300.0, metavar="S",
                   help="seconds at least between sessions or windows (default 300)")
    p.add_argument("--independent", action="store_true",
                   help="time DIR/teacher/model.onnx and the student's model.onnx with "
                   "plain ONNX Runtime, each window in a fresh process (no lana timing "
                   "code); exit 1 if the median speed-up over windows misses the budget")
    p.add_argument("--windows", type=int, default=None,
                   help="with --independent: timing windows to add (default 3)")
    _run_dir_args(p)


@_command("verify", "time an exported student beside the teacher again, in sessions spread "
          "out in time; exit 1 if the median misses the budget", _verify_args)
def _cmd_verify(args: argparse.Namespace) -> int:
    def verify(run, budget) -> int:
        if args.independent:
            return _verify_independent(run, budget, args.windows, args.gap)
        if args.windows is not None:
            raise ConfigError("--windows goes with --independent; lana's own timing "
                              "takes --sessions")
        return _verify(run, budget, args.sessions, args.gap)

    return _in_run(args, verify)[1]


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("library", help="library JSON file")
    p.add_argument("--cost", required=True, metavar="KEY", help="cost to sweep, e.g. latency_ms")
    p.add_argument("--points", type=int, default=30, help="number of budgets (default 30)")
    p.add_argument("--budget", action="append", default=[], metavar="KEY<=VALUE",
                   help="a further budget held at every point (repeatable)")
    p.add_argument("--csv", metavar="OUT.csv", help="default: LIBRARY.sweep.csv next to it")
    p.add_argument("--plot", metavar="OUT.png|OUT.svg",
                   help="default: LIBRARY.sweep.png next to it")
    p.add_argument("--baselines", nargs="*", type=_baseline, default=None,
                   metavar="NAME", help="also run these baselines at every budget (no names: "
                   "greedy and evolution)")
    p.add_argument("--baseline-time", type=float, default=None, metavar="S",
                   help="seconds per baseline and point (default: as long as the ILP took)")


@_command("sweep", "Pareto front of a library: the ILP at evenly spaced budgets on one cost, "
          "as CSV and a plot", _sweep_args)
def _cmd_sweep(args: argparse.Namespace) -> int:
    from lana.report.terminal import print_sweep
    from lana.search.solver import Library
    from lana.search.sweep import plot, sweep, write_csv

    path = Path(args.library)
    library = Library.load(path)
    baselines = args.baselines
    if baselines is not None and not baselines:
        baselines = ["greedy", "evolution"]
    csv_path = Path(args.csv) if args.csv else path.with_name(path.stem + ".sweep.csv")
    plot_path = Path(args.plot) if args.plot else path.with_name(path.stem + ".sweep.png")
    if plot_path.suffix.lower() not in (".png", ".svg"):
        # Checked before the sweep runs, so a typo does not cost the whole sweep.
        raise ConfigError(f"--plot must end in .png or .svg, got {plot_path.name!r}")
    rows = sweep(library, args.cost, args.points, args.budget, baselines or (),
                 baseline_time_limit=args.baseline_time)
    write_csv(rows, csv_path)
    plot(rows, args.cost, plot_path, title=f"{path.name}: predicted score vs {args.cost}")
    print_sweep(rows, args.cost)
    print(f"wrote {csv_path} and {plot_path}")
    return 0


def _list_models_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="e.g. timm:efficientnet_b0 or lana:tiny_effnet")
    p.add_argument("--input", default="3x224x224", help="input shape CxHxW (default 3x224x224)")
    p.add_argument("--config", help="YAML config whose space.ops to use (default space if "
                   "omitted)")


@_command("list-models", "supported teacher families; with --model, its layers and "
          "candidate counts", _list_models_args)
def _cmd_list_models(args: argparse.Namespace) -> int:
    from lana.report.terminal import print_families, print_model_space

    if args.model:
        print_model_space(args.model, args.input, args.config)
    else:
        print_families()
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="run directory")
    p.add_argument("--out", help="output folder (default DIR/report)")
    p.add_argument("--points", type=int, default=20,
                   help="budgets in the report's Pareto sweep (default 20)")


@_command("report", "write DIR/report/report.html (self-contained, with plots) and report.md "
          "from a run directory", _report_args)
def _cmd_report(args: argparse.Namespace) -> int:
    from lana.report.html import write_report

    print(f"report: {write_report(args.dir, args.out, sweep_points=args.points)}")
    return 0


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="run directory")
    p.add_argument("--json", action="store_true", help="print the status as JSON")


@_command("status", "what a run directory holds, stage by stage, and what re-running "
          "`lana run` on it would compute", _status_args)
def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from lana.pipeline.status import run_status
    from lana.report.terminal import print_status

    status = run_status(args.dir)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print_status(status)
    return 0


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--defaults", action="store_true", help="every option with its default, "
                   "as YAML (the default mode)")
    p.add_argument("--reference", action="store_true", help="the configuration reference "
                   "as Markdown (docs/config.md): type, default, bounds, description")


@_command("config", "print the default configuration as YAML", _config_args)
def _cmd_config(args: argparse.Namespace) -> int:
    from lana.config import Config

    if args.reference:
        from lana.cli.config_doc import config_reference

        print(config_reference(), end="")
        return 0
    print(Config().to_yaml(), end="")
    return 0


# ------------------------------------------------------------------ helpers of the commands

def _in_run(args: argparse.Namespace, work: Callable[[Any, Any], Any]) -> tuple[Any, Any]:
    """``(run, work(run, budget))`` on the existing run directory ``args.dir``, under its
    lock; --device replaces the config's, the budget is the command line's (or None)."""
    from lana.pipeline.runner import Run

    with _dir_lock(Path(args.dir), args.recompute_corrupt):
        config = None
        if args.device is not None:
            from lana.config import load_config

            if (Path(args.dir) / "config.yaml").exists():
                config = _with_device(load_config(Path(args.dir) / "config.yaml"), args.device)
        run = Run(Path(args.dir), config)
        return run, work(run, _budget(args))


@contextlib.contextmanager
def _dir_lock(run_dir: Path, recompute_corrupt: bool, create: bool = False
              ) -> Iterator[None]:
    """Hold the run directory's lock (rank 0 takes it for the whole torchrun job) and,
    with --recompute-corrupt, move corrupt files aside before any stage reads them."""
    from lana.core import dist
    from lana.core.io import run_lock, verify_tree
    from lana.core.progress import log

    def check() -> None:
        if recompute_corrupt and run_dir.is_dir():
            for path in verify_tree(run_dir, fix=True):
                log(f"[yellow]{path} failed its checksum: moved to {path.name}.corrupt; it "
                    "will be recomputed[/yellow]")

    with contextlib.ExitStack() as stack:
        # A stage command on a missing directory is not locked: Run() explains the error
        # and no empty directory is left behind.
        if create or run_dir.is_dir():
            dist.on_main(lambda: (stack.enter_context(run_lock(run_dir)), check()))
        yield


def _check_verify_args(option: str, count: int, gap: float) -> None:
    from lana.core import dist

    if count < 0 or gap < 0:
        raise ConfigError(f"{option} and --gap must be >= 0")
    if dist.world() > 1:
        raise ConfigError("lana verify times on one process; run it without torchrun")


def _verify(run, budget, sessions: int, gap: float) -> int:
    from lana.core.progress import log
    from lana.report.terminal import print_verify

    _check_verify_args("--sessions", sessions, gap)
    res = run.verify(budget, sessions, gap, on_session=lambda n, t: log(
        f"verify: session {n + 1}/{sessions}: teacher {t['teacher']:.4g} ms, student "
        f"{t['student']:.4g} ms ({t['teacher'] / t['student']:.2f}x)"))
    print_verify(res)
    return 0 if res["meets_budget"] else 1


def _verify_independent(run, budget, windows: int | None, gap: float) -> int:
    from lana.core.progress import log
    from lana.report.terminal import print_independent

    windows = 3 if windows is None else windows
    _check_verify_args("--windows", windows, gap)
    res = run.verify_independent(budget, windows, gap, on_window=lambda n, w: log(
        f"verify --independent: window {n + 1}/{windows} (pid {w['pid']}): teacher "
        f"{w['teacher_ms']:.4g} ms, student {w['student_ms']:.4g} ms ({w['speedup']:.2f}x)"))
    print_independent(res)
    return 0 if res["meets_budget"] else 1


def _profile_bundle(args: argparse.Namespace) -> int:
    from lana.latency.profile import profile_bundle

    # Unset options take the run's latency settings, which the bundle records.
    res = profile_bundle(args.dir, args.backend, args.threads, args.out,
                         max_seconds=args.max_seconds or 0.3, normalize=args.normalize)
    s = res["settings"]
    flagged = len(res["drift"]["flagged"])
    print(f"{res['lut']}: {res['entries']} entries ({res['measured']} measured now) on "
          f"{s['device']} with {s['backend']}, {s['threads']} thread(s), batch "
          f"{s['batch_size']}" + (f"; {flagged} flagged for drift" if flagged else ""))
    print("on the training machine set, in the config's latency section: "
          f"lut: <this file>, device: lut, backend: {s['backend']}, threads: {s['threads']}, "
          f"normalize: {str(s.get('normalize', False)).lower()}")
    return 0


def _print_report(run_dir: str | Path) -> None:
    """Write the HTML/Markdown report of a finished run and say where it is."""
    from lana.report.html import write_report

    print(f"report: {write_report(run_dir)}")


def _is_library(path: Path) -> bool:
    # A directory is always a run directory (the pipeline stage, as before); a file, or a
    # missing path named like one, is a library, so its error names the file.
    if path.is_dir():
        return False
    return path.is_file() or path.suffix.lower() == ".json"


def _library_search(args: argparse.Namespace) -> int:
    import time

    from lana.core.io import write_json
    from lana.report.terminal import print_library_search
    from lana.search.solver import Budget, Library, SearchResult, minimum_reachable, solve

    if args.speedup is not None or args.latency_ms is not None:
        raise ConfigError(
            "--speedup/--latency-ms are for a run directory; for a library file write the "
            "budget as --budget latency_ms<=VALUE"
        )
    library = Library.load(args.dir)
    budgets = [Budget.parse(b) for b in args.budget]
    k = 1 if args.k is None else args.k
    overlap = 0.7 if args.overlap is None else args.overlap
    if args.baseline is None:
        result = solve(library, budgets, k=k, overlap=overlap, time_limit=args.time_limit)
        out = {"method": "ilp", **result.to_dict()}
    else:
        if args.k not in (None, 1) or args.overlap is not None:
            raise ConfigError(f"--baseline {args.baseline} finds one architecture; drop "
                              "--k and --overlap")
        from lana.search.baselines import BASELINES

        for b in budgets:
            reach = minimum_reachable(library, b.key, "min" if b.op == "<=" else "max")
            if not b.satisfied_by(reach):
                # The ILP's reachability check explains the budget (minimum, culprit layers)
                # before it starts solving, so let it raise that error.
                solve(library, budgets)
        limit = 1.0 if args.time_limit is None else args.time_limit
        t0 = time.perf_counter()
        sol = BASELINES[args.baseline](library, budgets, time_limit=limit,
                                       seed=0 if args.seed is None else args.seed)
        seconds = time.perf_counter() - t0
        if sol is None:
            best = solve(library, budgets).solutions[0]
            raise LanaError(
                f"the {args.baseline} baseline found no architecture meeting "
                f"{', '.join(map(str, budgets))} in {limit:g} s, although one exists (the "
                f"ILP's optimum has score {best.score:.6g}); give it more --time-limit or "
                "use the ILP"
            )
        result = SearchResult(solutions=[sol], solve_seconds=seconds, budgets=budgets,
                              k_requested=1, log10_space_size=library.log10_space_size())
        out = {"method": args.baseline, **result.to_dict()}
    if args.json:
        write_json(args.json, out)
    print_library_search(out, library.cost_keys())
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
