"""Phase 2b: time every candidate at its layer on the target backend (the latency LUT).

Each op is timed alone at its layer's input shape; the LUT caches by
``(op key, input shape, settings incl. device fingerprint)``, so re-runs and other models
with the same layer shapes reuse measurements. Identity costs 0 ms by definition: it adds
no node to the exported network.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from lana.config import LatencyConfig
from lana.decompose import Chain
from lana.latency import LatencyTable, Settings, measure_interleaved
from lana.progress import progress


def module_key(prefix: str, module: nn.Module) -> str:
    """A key for a fixed module's architecture (its repr and parameter shapes)."""
    shapes = [tuple(p.shape) for p in module.state_dict().values()]
    digest = hashlib.sha256((repr(module) + repr(shapes)).encode()).hexdigest()[:16]
    return f"{prefix}:{digest}"


def op_key(chain: Chain, layer: int, spec: str) -> str:
    """LUT key of candidate ``spec`` at ``layer``: the spec plus the layer's shape contract."""
    if spec == "teacher":
        return module_key("teacher", chain.layers[layer])
    return f"{spec}@{chain.info[layer].signature}"


def settings_from(cfg: LatencyConfig) -> Settings:
    """Latency settings (device fingerprint included) from the config section."""
    return Settings(backend=cfg.backend, batch_size=cfg.batch_size, threads=cfg.threads)


def _measure_kwargs(cfg: LatencyConfig, scale: float = 1.0) -> dict:
    return {"warmup": cfg.warmup, "max_seconds": cfg.max_seconds * scale}


def profile_candidates(chain: Chain, candidates: list[list[str]], build, cfg: LatencyConfig,
                       lut: LatencyTable, input_shape: tuple[int, ...]) -> dict:
    """Measure stem, head and every candidate; return per-layer milliseconds.

    ``build(i, spec)`` returns the candidate module (weights do not matter for latency).
    """
    settings = settings_from(cfg)
    bs = cfg.batch_size
    kw = _measure_kwargs(cfg)
    in_stem = (bs, *input_shape)
    with torch.no_grad():
        head_in = (bs, *chain.stem(torch.zeros(1, *input_shape)).shape[1:])
        if chain.info:
            head_in = (bs, *chain.info[-1].out_shape)
    stem_ms = lut.measure_or_get(module_key("stem", chain.stem), chain.stem, in_stem,
                                 settings, **kw).median_ms
    head_ms = lut.measure_or_get(module_key("head", chain.head), chain.head, head_in,
                                 settings, **kw).median_ms
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
                    m = lut.measure_or_get(op_key(chain, i, spec), module,
                                           (bs, *chain.info[i].in_shape), settings, **kw)
                    row.append(m.median_ms)
                bar.advance(task)
            layers.append(row)
            lut.save()  # keep what was measured if the run is interrupted
    return {"settings": settings.to_dict(), "stem_ms": stem_ms, "head_ms": head_ms,
            "layers": layers}


def measure_models(models: dict[str, nn.Module], input_shape: tuple[int, ...],
                   cfg: LatencyConfig, rounds: int = 3) -> dict[str, float]:
    """End-to-end median ms of each model, measured in interleaved rounds (fair ratios)."""
    # A bar only for the K students of a search: a teacher/student pair is over quickly.
    res = measure_interleaved(models, (cfg.batch_size, *input_shape), settings_from(cfg),
                              rounds=rounds, description=("measure end to end"
                                                          if len(models) > 2 else None),
                              **_measure_kwargs(cfg, scale=4.0))
    return {name: m.median_ms for name, m in res.items()}
