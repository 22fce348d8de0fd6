"""Why lana's timing of a student disagrees with a user's (issue 34, item 1).

Issue 33's run timed its Lite0-budget student at 1.49 ms beside a 2.39 ms teacher inside
the search (a 1.60x speed-up), while a plain ONNX Runtime loop in a fresh process gave
0.99-1.09 ms beside 2.14-2.23 ms (2.1x). This benchmark rebuilds that run's chosen
students (their architectures are in ``results/pretrained/lana-full.json``; weights do not
change a CPU timing, so fresh ones are used) and times the same networks several ways, one
hypothesis per pair of methods:

* ``plain-fresh``: ``torch.onnx.export`` + a plain ``InferenceSession`` loop in a fresh
  process (``benchmarks/ort_timing.py``, the issue-33 table's timer): the user's number;
* ``lana-export-fresh``: lana's export (``lana.pipeline.student.onnx_bytes``) under the same plain
  loop: differs from the first only by the exporter (H1: the ONNX graph);
* ``plain-here``: the plain loop on the plain files inside this process, after torch has
  built and exported every network (H2: the state of a big process);
* ``lana-norm``: lana's end-to-end measurement as the search calls it
  (``lana.latency.profile.measure_models`` with the default ``latency`` section: interleaved
  rounds, the reference op timed in a slot of its own in every round);
* ``lana-raw``: the same with ``latency.normalize: false`` (no reference op at all);
* ``lana-norm-between``: as lana measured until 2026-12-07, the reference op timed between
  a network's runs (H3: what running another network in between does to caches; the
  first runs of this benchmark found it read students slow, which the slot fixes);

and it repeats everything in ``--windows`` windows (H4: drift of the machine). A method
pair that moves a speed-up by far more than the spread between windows names the cause.
Last, the plain loop runs beside a process of our own on the other core, one that streams
64 MiB through memory and one that only computes (H5: small and large networks reacting
differently to a noisy neighbour), alternating with no neighbour.

Usage::

    python benchmarks/timing_gap.py [--windows 2] [--out benchmarks/results/timing_gap.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SHAPE = (3, 64, 64)  # issue 33's input


def students_from(path: Path) -> dict[str, list[str]]:
    """Budget name -> the chosen architecture of the LANA rows of issue 33's lana arm."""
    rows = json.loads(path.read_text())["rows"]
    return {r["budget"]: r["choices"] for r in rows
            if r["method"] == "lana" and r.get("choices")}


def build_networks(archs: dict[str, list[str]]) -> dict[str, Any]:
    import timm
    import torch

    from lana.model.decompose import decompose
    from lana.pipeline.student import assemble
    from lana.space.ops import build_op

    torch.manual_seed(0)
    teacher = timm.create_model("tf_efficientnet_lite2", num_classes=10).eval()
    chain = decompose(teacher, torch.zeros(1, *SHAPE))
    nets: dict[str, Any] = {"teacher": chain}
    for name, choices in archs.items():
        nets[name] = assemble(chain, choices,
                              lambda i, s: build_op(s, chain.info[i], chain.layers[i])).eval()
    # The siblings LANA was compared with in issue 33, timed beside its students here.
    for s in SIBLINGS:
        nets[f"sibling-{s}"] = timm.create_model(f"tf_efficientnet_{s}", num_classes=10).eval()
    return nets


SIBLINGS = ("lite0", "lite1")


def weights_check(work: Path, rounds: int, runs: int) -> dict[str, Any]:
    """The teacher with ImageNet weights against the same network freshly initialised,
    both exported and timed alike (plain loop, interleaved): do weights change a timing?"""
    import lite_weights
    import ort_timing
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite2").eval()
    files = {"random": ort_timing.export(model, work / "w" / "random.onnx", SHAPE)}
    model.load_state_dict(lite_weights.timm_state("lite2"))
    files["imagenet"] = ort_timing.export(model, work / "w" / "imagenet.onnx", SHAPE)
    return plain_here(files, rounds, runs, reference="random")


def graph_summary(path: Path) -> dict[str, Any]:
    import onnx

    g = onnx.load(str(path)).graph
    ops = collections.Counter(n.op_type for n in g.node)
    return {"nodes": len(g.node), "bytes": path.stat().st_size, "ops": dict(ops)}


def fresh_plain(folder: Path, rounds: int, runs: int) -> dict[str, float]:
    """Speed-ups by ``ort_timing.py`` in a fresh process (one window)."""
    out = folder / "timing.json"
    subprocess.run([sys.executable, str(HERE / "ort_timing.py"), str(folder), "--windows", "1",
                    "--rounds", str(rounds), "--runs", str(runs), "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    win = json.loads(out.read_text())["windows"][0]
    out.unlink()
    return {"speedup": win["speedup"], "ms": win["ms"]}


def plain_here(files: dict[str, Path], rounds: int, runs: int,
               reference: str = "teacher") -> dict[str, Any]:
    import ort_timing

    win = ort_timing.time_windows(files, windows=1, rounds=rounds, runs=runs,
                                  reference=reference, say=lambda *_: None)["windows"][0]
    return {"speedup": win["speedup"], "ms": win["ms"]}


def lana_measure(nets: dict[str, Any], normalize: bool,
                 reference_slot: bool = True) -> dict[str, Any]:
    """lana's end-to-end timing as the search calls it; ``reference_slot=False``: as lana
    did before 2026-12-07, the reference op timed between every network's runs."""
    from lana.config import LatencyConfig
    from lana.latency.profile import measure_models, settings_from
    from lana.latency.timing import e2e_kwargs, measure_interleaved

    cfg = LatencyConfig(normalize=normalize)
    if reference_slot:
        ms = measure_models(nets, SHAPE, cfg)
    else:
        kw = {**e2e_kwargs(cfg.max_seconds, cfg.warmup), "reference_slot": False}
        res = measure_interleaved(nets, (cfg.batch_size, *SHAPE), settings_from(cfg), **kw)
        ms = {n: m.median_ms for n, m in res.items()}
    return {"speedup": {n: ms["teacher"] / v for n, v in ms.items()}, "ms": ms}


NEIGHBOURS = {
    "none": None,
    "memory-stream": "import numpy as np\na = np.ones(2**23); b = np.empty_like(a)\n"
                     "while True: np.copyto(b, a)",
    "compute-only": "x = 0\nwhile True: x = (x * 1103515245 + 12345) & 0xffffffff",
}


def neighbours(files: dict[str, Path], reps: int, runs: int) -> dict[str, Any]:
    """Plain-loop rounds with each neighbour of :data:`NEIGHBOURS` running, alternated
    ``reps`` times; per neighbour the median ms and speed-up over the rounds."""
    import random

    import numpy as np
    import ort_timing

    sess = ort_timing.sessions(files)
    feeds = {n: {s.get_inputs()[0].name: np.random.default_rng(0).standard_normal(
        [1, *SHAPE]).astype(np.float32)} for n, s in sess.items()}
    rounds: dict[str, list[dict[str, float]]] = {k: [] for k in NEIGHBOURS}
    for rep in range(reps):
        for kind, code in NEIGHBOURS.items():
            proc = subprocess.Popen([sys.executable, "-c", code]) if code else None
            try:
                time.sleep(1.0)
                rounds[kind].append(ort_timing.time_round(sess, feeds, runs, 5,
                                                          random.Random(rep)))
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait()
    return {kind: {"ms": {n: statistics.median(r[n] for r in rs) for n in files},
                   "speedup": {n: statistics.median(r["teacher"] / r[n] for r in rs)
                               for n in files}}
            for kind, rs in rounds.items()}


METHODS = ("plain-fresh", "lana-export-fresh", "plain-here", "lana-norm", "lana-raw",
           "lana-norm-between")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--gap", type=float, default=60.0, help="seconds between windows")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--neighbour-reps", type=int, default=8)
    ap.add_argument("--students", type=Path,
                    default=HERE / "results" / "pretrained" / "lana-full.json")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "timing_gap.json")
    ap.add_argument("--render", action="store_true",
                    help="only write the RESULTS.md section from --out")
    args = ap.parse_args(argv)
    if args.render:
        return render(args.out)

    import ort_timing

    from lana.pipeline.student import onnx_bytes

    archs = students_from(args.students)
    nets = build_networks(archs)
    work = Path(tempfile.mkdtemp(prefix="timing-gap-"))
    plain_dir, lana_dir = work / "plain", work / "lana"
    lana_dir.mkdir(parents=True)
    graphs: dict[str, dict] = {}
    for name, net in nets.items():
        ort_timing.export(net, plain_dir / f"{name}.onnx", SHAPE)
        (lana_dir / f"{name}.onnx").write_bytes(onnx_bytes(net, SHAPE))
        graphs[name] = {"plain": graph_summary(plain_dir / f"{name}.onnx"),
                        "lana": graph_summary(lana_dir / f"{name}.onnx")}
    plain_files = {n: plain_dir / f"{n}.onnx" for n in nets}
    windows = []
    for w in range(args.windows):
        if w:
            time.sleep(args.gap)
        win: dict[str, Any] = {"at": time.time()}
        win["plain-fresh"] = fresh_plain(plain_dir, args.rounds, args.runs)
        win["lana-export-fresh"] = fresh_plain(lana_dir, args.rounds, args.runs)
        win["plain-here"] = plain_here(plain_files, args.rounds, args.runs)
        win["lana-norm"] = lana_measure(nets, normalize=True)
        win["lana-raw"] = lana_measure(nets, normalize=False)
        win["lana-norm-between"] = lana_measure(nets, normalize=True, reference_slot=False)
        windows.append(win)
        print(f"window {w + 1}/{args.windows}")
        for m in METHODS:
            print(f"  {m:18s} " + "  ".join(f"{n} {win[m]['speedup'][n]:.2f}x"
                                           for n in nets if n != "teacher")
                  + f"  (teacher {win[m]['ms']['teacher']:.3f} ms)")
    weights = weights_check(work, args.rounds, args.runs)
    print(f"  weights: ImageNet teacher {weights['ms']['imagenet']:.3f} ms, the same "
          f"network freshly initialised {weights['ms']['random']:.3f} ms")
    near = neighbours(plain_files, args.neighbour_reps, args.runs) if args.neighbour_reps else {}
    for kind, r in near.items():
        print(f"  neighbour {kind:14s} " + "  ".join(
            f"{n} {r['speedup'][n]:.2f}x" for n in nets if n != "teacher")
            + f"  (teacher {r['ms']['teacher']:.3f} ms)")
    summary = {m: {n: statistics.median(w[m]["speedup"][n] for w in windows)
                   for n in nets if n != "teacher"} for m in METHODS}
    res = {"machine": _machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "python benchmarks/timing_gap.py " + " ".join(argv or sys.argv[1:]),
           "input_shape": list(SHAPE), "students": archs, "graphs": graphs,
           "windows": windows, "median_speedup": summary, "neighbours": near,
           "weights": weights}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(summary, indent=1))
    return render(args.out)


HEADING = "## Why lana's timing and a user's disagreed (issue 34, item 1)"


def render(path: Path) -> int:
    """The RESULTS.md section from the stored JSON and the by-hand reading beside it."""
    from _results import write_section

    res = json.loads(path.read_text())
    names = [n for n in res["median_speedup"]["plain-fresh"]]
    head = "| method | " + " | ".join(names) + " |"
    lines = [head, "|---" * (len(names) + 1) + "|"]
    for m, row in res["median_speedup"].items():
        lo_hi = {n: (min(w[m]["speedup"][n] for w in res["windows"]),
                     max(w[m]["speedup"][n] for w in res["windows"])) for n in names}
        lines.append(f"| {m} | " + " | ".join(
            f"{row[n]:.2f}x ({lo_hi[n][0]:.2f}-{lo_hi[n][1]:.2f})" for n in names) + " |")
    for kind, r in res["neighbours"].items():
        lines.append(f"| plain, neighbour: {kind} | " + " | ".join(
            f"{r['speedup'][n]:.2f}x" for n in names) + " |")
    w = res["weights"]["ms"]
    body = [HEADING, "",
            f"Command: `{res['command']}` ({res['machine']}, {res['date']}). Issue 33's "
            "students (architectures from results/pretrained/lana-full.json, fresh weights), "
            "the Lite2 teacher and the Lite0/Lite1 siblings at 64 px; speed-up over the "
            f"teacher, median over {len(res['windows'])} windows (range in brackets); "
            "JSON: results/timing_gap.json.", "", *lines, "",
            f"Weights: the ImageNet Lite2 teacher {w['imagenet']:.3f} ms, the same network "
            f"freshly initialised {w['random']:.3f} ms (interleaved).", ""]
    reading = path.with_name("timing_gap-reading.md")
    write_section(HEADING, "\n".join(body), reading=reading)
    return 0


def _machine() -> str:
    import platform

    from lana.latency.timing import device_fingerprint

    return f"{device_fingerprint('cpu')}, Python {platform.python_version()}"


if __name__ == "__main__":
    raise SystemExit(main())
