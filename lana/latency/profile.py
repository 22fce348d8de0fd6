"""Phase 2b: time every candidate at its layer on the target backend (the latency LUT).

Each op is timed alone at its layer's input shape; the LUT caches by
``(op key, input shape, settings incl. device fingerprint)``, so re-runs and other models
with the same layer shapes reuse measurements. Identity costs 0 ms by definition: it adds
no node to the exported network.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lana.core.dist import maybe_kill
from lana.core.io import atomic_write_bytes, read_json, write_json
from lana.core.progress import log, progress
from lana.errors import ArtifactError, ConfigError
from lana.latency.lut import DriftMonitor, LatencyTable, reference_baseline
from lana.latency.timing import (
    E2E_ROUNDS,
    Settings,
    device_fingerprint,
    e2e_kwargs,
    export_onnx,
    get_backend,
    measure,
    measure_interleaved,
    measure_onnx,
)
from lana.model.decompose import Chain

if TYPE_CHECKING:
    from lana.config import LatencyConfig

BUNDLE_FORMAT = "lana-bundle/1"


def _plain(value: Any) -> Any:
    """``value`` as JSON if it is a hyper-parameter (number, string, tuple of them, a
    function's name), else ``None``: tensors, modules and objects are not structure."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list):
        items = [_plain(v) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value, strict=True)) \
            else items
    if isinstance(value, torch.dtype):
        return str(value)
    if callable(value) and not isinstance(value, nn.Module) and hasattr(value, "__name__"):
        return f"fn:{value.__name__}"  # e.g. timm's gate_fn=sigmoid or hard_sigmoid
    return None


def module_structure(module: nn.Module) -> list:
    """The architecture of ``module`` as plain data: for every submodule its path, class
    name, hyper-parameters (its public attributes) and parameter/buffer shapes.

    Not ``repr(module)``: reprs change between torch and timm versions, and a LUT measured
    on the target with another version must still match the training machine's keys.
    """
    rows = []
    for name, m in module.named_modules():
        attrs = {}
        for key, value in vars(m).items():
            if key.startswith("_") or key == "training":
                continue
            plain = _plain(value)
            if plain is not None or value is None:
                attrs[key] = plain
        shapes = {k: list(t.shape) for k, t in [*m.named_parameters(recurse=False),
                                                *m.named_buffers(recurse=False)]}
        rows.append([name, type(m).__name__, attrs, shapes])
    return rows


def module_key(prefix: str, module: nn.Module) -> str:
    """A key for a fixed module's architecture (see :func:`module_structure`)."""
    text = json.dumps(module_structure(module), sort_keys=True, separators=(",", ":"))
    return f"{prefix}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def op_key(chain: Chain, layer: int, spec: str, module: nn.Module | None = None) -> str:
    """LUT key of candidate ``spec`` at ``layer``: the spec plus the layer's shape contract
    (plus the built ``module``'s structure for op types that follow the teacher's block)."""
    if spec == "teacher":
        return module_key("teacher", chain.layers[layer])
    key = f"{spec}@{chain.info[layer].signature}"
    from lana.space.ops import OP_TYPES, parse_spec

    if OP_TYPES[parse_spec(spec).kind].teacher_dependent:
        if module is None:  # its structure (not its weights) is part of the key
            from lana.space.ops import build_op

            module = build_op(spec, chain.info[layer], chain.layers[layer])
        key = module_key(key, module)
    return key


def settings_from(cfg: LatencyConfig, lut: LatencyTable | None = None) -> Settings:
    """Latency settings (device fingerprint included) from the config section.

    ``cfg.device`` unset: this machine. ``"lut"``: the one device the LUT holds entries
    for with these settings (a LUT measured on the target with ``lana profile BUNDLE``);
    any other string: that device fingerprint.
    """
    local = Settings(backend=cfg.backend, batch_size=cfg.batch_size, threads=cfg.threads,
                     normalize=cfg.normalize)
    if cfg.device is None:
        return local
    device = cfg.device
    if device == "lut":
        found = lut.devices(local) if lut is not None else []
        if len(found) != 1:
            raise ConfigError(
                f"latency.device is 'lut', but the LUT {getattr(lut, 'path', None)} holds "
                f"{'no' if not found else len(found)} device(s) measured with backend "
                f"{cfg.backend}, batch {cfg.batch_size}, {cfg.threads} thread(s), "
                f"normalize {str(cfg.normalize).lower()}"
                + (f": {found}" if found else "") + "; set latency.lut to the LUT made by "
                "`lana profile BUNDLE` with the same backend/threads/normalize, or name the "
                "device")
        device = found[0]
    return Settings(backend=cfg.backend, batch_size=cfg.batch_size, threads=cfg.threads,
                    device=device, normalize=cfg.normalize)


def is_remote(settings: Settings) -> bool:
    """True when the settings name a device other than this machine (no local timing)."""
    return settings.device != device_fingerprint(get_backend(settings.backend).device_kind)


def _measure_kwargs(cfg: LatencyConfig, scale: float = 1.0) -> dict:
    return {"warmup": cfg.warmup, "max_seconds": cfg.max_seconds * scale}


def profile_candidates(chain: Chain, candidates: list[list[str]], build, cfg: LatencyConfig,
                       lut: LatencyTable, input_shape: tuple[int, ...]) -> dict:
    """Measure stem, head and every candidate; return per-layer milliseconds.

    ``build(i, spec)`` returns the candidate module (weights do not matter for latency).
    When the settings name another machine (``latency.device``), nothing is measured:
    every entry must be in the LUT, and a missing one is an error that says how to get it.
    """
    settings = settings_from(cfg, lut)
    if is_remote(settings):
        return _from_remote_lut(chain, candidates, lut, settings, input_shape)
    others = [d for d in lut.devices(settings) if d != settings.device]
    if others and len(lut) and lut.path is not None:
        log(f"[yellow]{lut.path} also holds entries measured on {others}; they are not used "
            "for this machine. To build the library from them, set latency.device: lut "
            "(or that device string)[/yellow]")
    bs = cfg.batch_size
    kw = _measure_kwargs(cfg)
    in_stem = (bs, *input_shape)
    with torch.no_grad():
        head_in = (bs, *chain.stem(torch.zeros(1, *input_shape)).shape[1:])
        if chain.info:
            head_in = (bs, *chain.info[-1].out_shape)
    monitor = DriftMonitor(lut, settings, every=cfg.drift_every,
                           threshold=cfg.drift_threshold,
                           log=lambda msg: log(f"[yellow]{msg}[/yellow]"), **kw)
    started = False

    def ms(key: str, module: nn.Module, shape: tuple[int, ...]) -> float:
        nonlocal started
        found = lut.get(key, shape, settings)
        if found is not None:
            return found.median_ms
        if not started:  # only a LUT that gets new entries needs the reference
            if settings.normalize:
                kw["baseline_ms"] = reference_baseline(lut, settings, **kw)
            monitor.start()
            started = True
        m = measure(module, shape, settings, **kw)
        lut.put(key, shape, settings, m)
        monitor.measured(key, module, shape)
        return m.median_ms

    stem_ms = ms(module_key("stem", chain.stem), chain.stem, in_stem)
    head_ms = ms(module_key("head", chain.head), chain.head, head_in)
    layers: list[list[float]] = []
    total = sum(len(c) for c in candidates)
    with progress() as bar:
        task = bar.add_task("phase 2b latency", total=total, info=settings.backend)
        for i, specs in enumerate(candidates):
            row = []
            for spec in specs:
                if spec == "identity":
                    row.append(0.0)
                else:
                    module = chain.layers[i] if spec == "teacher" else build(i, spec)
                    row.append(ms(op_key(chain, i, spec, module), module,
                                  (bs, *chain.info[i].in_shape)))
                bar.advance(task)
            layers.append(row)
            lut.save()  # keep what was measured if the run is interrupted
            maybe_kill("profile", f"layer{i}")  # crash-safety tests: killed mid-profile
    drift = monitor.finish() if started else {"enabled": monitor.enabled, "checks": [],
                                              "remeasured": 0, "flagged": []}
    lut.save()
    # Re-read: a drift re-measurement may have replaced entries after they were read.
    if drift["remeasured"]:
        stem_ms = lut.get(module_key("stem", chain.stem), in_stem, settings).median_ms
        head_ms = lut.get(module_key("head", chain.head), head_in, settings).median_ms
        layers = [[0.0 if spec == "identity" else
                   lut.get(op_key(chain, i, spec), (bs, *chain.info[i].in_shape),
                           settings).median_ms for spec in specs]
                  for i, specs in enumerate(candidates)]
    return {"settings": settings.to_dict(), "stem_ms": stem_ms, "head_ms": head_ms,
            "layers": layers, "drift": drift}


def _layout(chain: Chain, candidates: list[list[str]], batch: int,
            input_shape: tuple[int, ...]) -> list[tuple[str, str, Any, tuple[int, ...]]]:
    """Every (kind, LUT op key, module, full input shape) a profile needs: stem, head, each
    non-identity candidate at its layer, and the teacher end to end ("network")."""
    with torch.no_grad():
        head_in = (batch, *chain.stem(torch.zeros(1, *input_shape)).shape[1:])
        if chain.info:
            head_in = (batch, *chain.info[-1].out_shape)
    items = [("stem", module_key("stem", chain.stem), chain.stem, (batch, *input_shape)),
             ("head", module_key("head", chain.head), chain.head, head_in)]
    for i, specs in enumerate(candidates):
        for spec in specs:
            if spec != "identity":
                items.append(("op", op_key(chain, i, spec), (i, spec),
                              (batch, *chain.info[i].in_shape)))
    items.append(("network", module_key("network", chain), chain, (batch, *input_shape)))
    return items


def lut_profile(chain: Chain, candidates: list[list[str]], lut: LatencyTable,
                settings: Settings, input_shape: tuple[int, ...], *,
                network: bool = True) -> dict:
    """Stem, head and per-candidate milliseconds (plus the teacher end to end,
    ``teacher_network_ms``, with ``network``) read from ``lut`` alone: nothing is timed.
    A missing entry is an ArtifactError that says how to get it."""
    items = [it for it in _layout(chain, candidates, settings.batch_size, input_shape)
             if network or it[0] != "network"]
    ms: dict[str, float] = {}
    missing = []
    for _, key, _, shape in items:
        m = lut.get(key, shape, settings)
        if m is None:
            missing.append(key)
        else:
            ms[key] = m.median_ms
    if missing:
        raise ArtifactError(
            f"the LUT {lut.path} lacks {len(missing)} of the entries this run needs for "
            f"device {settings.device!r} ({settings.backend}, batch {settings.batch_size}, "
            f"{settings.threads} thread(s)), e.g. {missing[:3]}. The candidates or the "
            "settings changed since the bundle was exported: run `lana export-candidates "
            "DIR --out BUNDLE` again and `lana profile BUNDLE --backend "
            f"{settings.backend} --threads {settings.threads} --out LUT` on the target")
    op_ms = {where: ms[key] for kind, key, where, _ in items if kind == "op"}
    res = {"settings": settings.to_dict(), "stem_ms": ms[items[0][1]],
           "head_ms": ms[items[1][1]],
           "layers": [[0.0 if spec == "identity" else op_ms[i, spec] for spec in specs]
                      for i, specs in enumerate(candidates)]}
    if network:
        res["teacher_network_ms"] = ms[items[-1][1]]
    return res


def _from_remote_lut(chain: Chain, candidates: list[list[str]], lut: LatencyTable,
                     settings: Settings, input_shape: tuple[int, ...]) -> dict:
    res = lut_profile(chain, candidates, lut, settings, input_shape)
    log(f"latency: using the LUT measured on {settings.device} (no timing on this machine)")
    return {**res, "remote": True,
            "drift": {"enabled": False, "checks": [], "remeasured": 0, "flagged": []}}


def export_bundle(chain: Chain, candidates: list[list[str]], build, batch: int,
                  input_shape: tuple[int, ...], out: str | Path, source: dict) -> dict:
    """Write a self-contained candidate bundle: one ONNX model per unique (op, shape).

    ``out/manifest.json`` (format ``lana-bundle/1``) lists every entry's LUT op key, full
    input shape, kind (stem, head, op, network) and file; ``out/onnx/NNNN.onnx`` hold the
    models (random or phase-1 weights: latency does not depend on them). The teacher is
    included end to end so the target also measures the calibration point. Profiling the
    bundle needs lana and an ONNX backend, but neither the teacher's code nor its weights.
    """
    out = Path(out)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    entries, seen = [], set()
    items = _layout(chain, candidates, batch, input_shape)
    with progress() as bar:
        task = bar.add_task("export candidates", total=len(items), info=str(out))
        for kind, key, module, shape in items:
            bar.advance(task)
            if (key, shape) in seen:
                continue
            seen.add((key, shape))
            if kind == "op":
                i, spec = module
                module = chain.layers[i] if spec == "teacher" else build(i, spec)
            name = f"onnx/{len(entries):04d}.onnx"
            atomic_write_bytes(out / name, export_onnx(module, torch.zeros(shape)))
            entries.append({"kind": kind, "op": key, "input_shape": list(shape), "file": name})
    manifest = {"format": BUNDLE_FORMAT, "batch_size": batch, "dtype": "float32",
                "input_shape": list(input_shape), "source": source, "entries": entries}
    write_json(out / "manifest.json", manifest)
    return manifest


def is_bundle(path: str | Path) -> bool:
    """True if ``path`` is a directory written by :func:`export_bundle`."""
    return (Path(path) / "manifest.json").is_file()


def profile_bundle(bundle: str | Path, backend: str | None = None, threads: int | None = None,
                   out: str | Path | None = None, *, warmup: int = 10,
                   max_seconds: float = 0.3, drift_every: int = 25,
                   drift_threshold: float = 0.10, normalize: bool | None = None) -> dict:
    """Measure every ONNX model of a bundle into the LUT ``out`` (default
    ``BUNDLE/lut.json``; resumable, cached).

    ``backend``, ``threads`` and ``normalize`` default to the run's latency settings, which
    the bundle records, so that the target measures what the run's search looks up (a
    bundle from before they were recorded: onnxruntime, 1 thread, raw timings). Entries
    get this machine's device fingerprint; on the training machine the pipeline finds them
    with ``latency.lut: <out>`` and ``latency.device: lut``. With ``normalize`` every
    timing is scaled by a reference op timed alongside (see :mod:`lana.latency.timing`), and the
    periodic drift check is skipped.
    """
    bundle = Path(bundle)
    manifest = read_json(bundle / "manifest.json")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ArtifactError(f"{bundle} is not a lana candidate bundle (format "
                            f"{manifest.get('format')!r}, expected {BUNDLE_FORMAT!r})")
    run = manifest.get("source", {}).get("latency", {})
    settings = Settings(backend=backend or run.get("backend", "onnxruntime"),
                        batch_size=int(manifest["batch_size"]),
                        threads=threads or run.get("threads", 1),
                        normalize=run.get("normalize", False) if normalize is None
                        else normalize)
    out = out or bundle / "lut.json"
    lut = LatencyTable(out)
    kw = {"warmup": warmup, "max_seconds": max_seconds}
    monitor = DriftMonitor(lut, settings, every=drift_every, threshold=drift_threshold,
                           log=lambda msg: log(f"[yellow]{msg}[/yellow]"),
                           measure_fn=lambda model, shape: measure_onnx(model, shape,
                                                                        settings, **kw),
                           **kw)
    started, new = False, 0
    with progress() as bar:
        entries = manifest["entries"]
        task = bar.add_task("profile bundle", total=len(entries), info=settings.backend)
        for n, e in enumerate(entries):
            shape = tuple(int(v) for v in e["input_shape"])
            if lut.get(e["op"], shape, settings) is None:
                if not started:
                    if settings.normalize:
                        kw["baseline_ms"] = reference_baseline(lut, settings, **kw)
                    monitor.start()
                    started = True
                model = (bundle / e["file"]).read_bytes()
                # The network is timed with a longer cap: it is the calibration point.
                scale = 4.0 if e["kind"] == "network" else 1.0
                lut.put(e["op"], shape, settings,
                        measure_onnx(model, shape, settings, warmup=warmup,
                                     max_seconds=max_seconds * scale,
                                     baseline_ms=kw.get("baseline_ms")))
                monitor.measured(e["op"], model, shape)
                new += 1
            bar.advance(task)
            if n % 20 == 19:
                lut.save()  # resumable
    drift = monitor.finish() if started else {"checks": [], "remeasured": 0, "flagged": []}
    lut.save()
    return {"lut": str(out), "entries": len(manifest["entries"]), "measured": new,
            "settings": settings.to_dict(), "drift": drift}


def static_costs(chain: Chain, candidates: list[list[str]], build,
                 input_shape: tuple[int, ...]) -> dict:
    """Parameters and FLOPs (batch 1, multiply-add = 2) of stem, head and every candidate.

    Identity costs nothing. FLOPs are counted by ``torch.utils.flop_counter`` (convs and
    matmuls; elementwise ops are not counted), once per run (``costs.json``).
    """
    from torch.utils.flop_counter import FlopCounterMode

    def cost(module: nn.Module, shape: tuple[int, ...]) -> dict:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module.eval()(torch.zeros(1, *shape))
        return {"params": float(sum(p.numel() for p in module.parameters())),
                "flops": float(counter.get_total_flops())}

    with torch.no_grad():
        head_in = tuple(chain.stem(torch.zeros(1, *input_shape)).shape[1:])
    if chain.info:
        head_in = tuple(chain.info[-1].out_shape)
    layers = []
    with progress() as bar:
        task = bar.add_task("params and FLOPs", total=sum(map(len, candidates)))
        for i, specs in enumerate(candidates):
            row = []
            for spec in specs:
                if spec == "identity":
                    row.append({"params": 0.0, "flops": 0.0})
                else:
                    module = chain.layers[i] if spec == "teacher" else build(i, spec)
                    row.append(cost(copy.deepcopy(module), tuple(chain.info[i].in_shape)))
                bar.advance(task)
            layers.append(row)
    return {"stem": cost(copy.deepcopy(chain.stem), tuple(input_shape)),
            "head": cost(copy.deepcopy(chain.head), head_in), "layers": layers}


def measure_models(models: dict[str, nn.Module], input_shape: tuple[int, ...],
                   cfg: LatencyConfig, rounds: int = E2E_ROUNDS,
                   lut: LatencyTable | None = None) -> dict[str, float]:
    """End-to-end median ms of each model, measured in interleaved rounds (fair ratios;
    :func:`lana.latency.timing.e2e_kwargs`).

    With ``latency.normalize``, pass the run's ``lut``: the timings are then scaled to its
    reference baseline, the units its entries are in, so that a student's measured
    latency is comparable with the LUT's prediction and a budget in ms.
    """
    settings = settings_from(cfg)
    kw = e2e_kwargs(cfg.max_seconds, cfg.warmup, rounds)
    if settings.normalize and lut is not None:
        kw["baseline_ms"] = reference_baseline(lut, settings, **_measure_kwargs(cfg))
    # A bar only for the K students of a search: a teacher/student pair is over quickly.
    res = measure_interleaved(models, (cfg.batch_size, *input_shape), settings,
                              description=("measure end to end" if len(models) > 2
                                           else None), **kw)
    return {name: m.median_ms for name, m in res.items()}
