"""The candidate library: every replaceable layer's scored and costed ops (the search's only
input), its JSON form, and :class:`Solution`, one architecture picked from it.

Needs only numpy, so that searching never needs torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lana.core.io import read_json, write_json
from lana.errors import ConfigError
from lana.search.budget import is_real

__all__ = ["Layer", "Library", "Op", "Solution"]


@dataclass
class Op:
    """One candidate operation for a layer.

    ``extra`` holds any further fields of the op's JSON object (e.g. a weights path); they
    are written back unchanged by :meth:`Library.to_dict` and ignored by the search.
    """

    spec: str
    score: float
    cost: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Layer:
    """A replaceable layer of the teacher and its candidate ops."""

    name: str
    ops: list[Op]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Library:
    """All layers with their scored and costed candidate ops (the search's only input)."""

    layers: list[Layer]
    extra: dict[str, Any] = field(default_factory=dict)

    # -- construction / serialisation ---------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Library:
        """Build and validate a library from its JSON form.

        ``{"layers": [{"name": str, "ops": [{"spec": str, "score": float,
        "cost": {KEY: float}, ...}]}]}``; unknown fields are kept in ``extra``.
        Raises :class:`ConfigError` naming the offending path.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"library must be a JSON object, got {type(d).__name__}")
        if "layers" not in d:
            raise ConfigError("library has no 'layers' list")
        raw_layers = d["layers"]
        if not isinstance(raw_layers, list):
            raise ConfigError(f"library.layers must be a list, got {type(raw_layers).__name__}")
        layers: list[Layer] = []
        for i, rl in enumerate(raw_layers):
            path = f"layers[{i}]"
            if not isinstance(rl, Mapping):
                raise ConfigError(f"{path} must be an object, got {type(rl).__name__}")
            for req in ("name", "ops"):
                if req not in rl:
                    raise ConfigError(f"{path} has no '{req}' field")
            if not isinstance(rl["ops"], list):
                raise ConfigError(f"{path}.ops must be a list, got {type(rl['ops']).__name__}")
            ops: list[Op] = []
            for j, ro in enumerate(rl["ops"]):
                opath = f"{path}.ops[{j}]"
                if not isinstance(ro, Mapping):
                    raise ConfigError(f"{opath} must be an object, got {type(ro).__name__}")
                for req in ("spec", "score", "cost"):
                    if req not in ro:
                        raise ConfigError(f"{opath} has no '{req}' field")
                cost = ro["cost"]
                if not isinstance(cost, Mapping):
                    raise ConfigError(f"{opath}.cost must be an object of numbers")
                extra = {k: v for k, v in ro.items() if k not in ("spec", "score", "cost")}
                ops.append(Op(spec=ro["spec"], score=ro["score"], cost=dict(cost), extra=extra))
            lextra = {k: v for k, v in rl.items() if k not in ("name", "ops")}
            layers.append(Layer(name=rl["name"], ops=ops, extra=lextra))
        lib = cls(layers=layers, extra={k: v for k, v in d.items() if k != "layers"})
        lib.validate()
        # JSON integers (e.g. parameter counts) become floats so arithmetic is uniform.
        for layer in lib.layers:
            for op in layer.ops:
                op.score = float(op.score)
                op.cost = {k: float(v) for k, v in op.cost.items()}
        return lib

    def to_dict(self) -> dict[str, Any]:
        """The JSON form read by :meth:`from_dict` (extra fields included)."""
        return {
            **self.extra,
            "layers": [
                {
                    "name": layer.name,
                    **layer.extra,
                    "ops": [
                        {"spec": op.spec, "score": op.score, "cost": dict(op.cost), **op.extra}
                        for op in layer.ops
                    ],
                }
                for layer in self.layers
            ],
        }

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Library:
        """Read and validate a library JSON file."""
        try:
            return cls.from_dict(read_json(path))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Atomically write the library as JSON."""
        write_json(path, self.to_dict())

    # -- validation ---------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`ConfigError` (naming e.g. ``layers[3].ops[7].cost.latency_ms``) if
        the library is empty, has wrong types, non-finite numbers or inconsistent cost keys."""
        if not isinstance(self.layers, list) or not self.layers:
            raise ConfigError("library has no layers; there is nothing to search over")
        names: dict[str, int] = {}
        first_with_key: dict[str, str] = {}
        for i, layer in enumerate(self.layers):
            path = f"layers[{i}]"
            if not isinstance(layer, Layer):
                raise ConfigError(f"{path} must be a Layer, got {type(layer).__name__}")
            if not isinstance(layer.name, str) or not layer.name:
                raise ConfigError(f"{path}.name must be a non-empty string, got {layer.name!r}")
            if layer.name in names:
                raise ConfigError(
                    f"{path}.name {layer.name!r} repeats layers[{names[layer.name]}].name; "
                    "layer names must be unique"
                )
            names[layer.name] = i
            if not isinstance(layer.ops, list) or not layer.ops:
                raise ConfigError(
                    f"{path} ({layer.name!r}) has no candidate ops; every layer needs at least "
                    "one (e.g. the teacher's own op)"
                )
            for j, op in enumerate(layer.ops):
                opath = f"{path}.ops[{j}]"
                if not isinstance(op, Op):
                    raise ConfigError(f"{opath} must be an Op, got {type(op).__name__}")
                if not isinstance(op.spec, str) or not op.spec:
                    raise ConfigError(f"{opath}.spec must be a non-empty string, got {op.spec!r}")
                if not is_real(op.score):
                    raise ConfigError(
                        f"{opath}.score must be a number, got {type(op.score).__name__}"
                    )
                if not math.isfinite(op.score):
                    raise ConfigError(f"{opath}.score is {_nonfinite_word(op.score)}")
                if not isinstance(op.cost, Mapping):
                    raise ConfigError(f"{opath}.cost must be a dict of numbers")
                if not isinstance(op.extra, dict):
                    raise ConfigError(f"{opath}.extra must be a dict")
                for key, value in op.cost.items():
                    if not isinstance(key, str) or not key:
                        raise ConfigError(f"{opath}.cost has a non-string key {key!r}")
                    if not is_real(value):
                        raise ConfigError(
                            f"{opath}.cost.{key} must be a number, got {type(value).__name__}"
                        )
                    if not math.isfinite(value):
                        raise ConfigError(f"{opath}.cost.{key} is {_nonfinite_word(value)}")
                    first_with_key.setdefault(key, opath)
        # Budgets sum a key over all layers, so one op lacking it would make sums meaningless.
        for i, layer in enumerate(self.layers):
            for j, op in enumerate(layer.ops):
                missing = [k for k in first_with_key if k not in op.cost]
                if missing:
                    k = missing[0]
                    raise ConfigError(
                        f"layers[{i}].ops[{j}].cost is missing {k!r} (which "
                        f"{first_with_key[k]}.cost has); every op must have every cost key "
                        f"({', '.join(sorted(first_with_key))})"
                    )

    # -- helpers ------------------------------------------------------------------------------

    def cost_keys(self) -> list[str]:
        """Sorted cost keys (every op has all of them once validated)."""
        keys: set[str] = set()
        for layer in self.layers:
            for op in layer.ops:
                keys.update(op.cost)
        return sorted(keys)

    def log10_space_size(self) -> float:
        """log10 of the number of architectures (product of per-layer op counts)."""
        return float(sum(math.log10(len(layer.ops)) for layer in self.layers))

    def score_arrays(self) -> list[np.ndarray]:
        """Per layer, the scores of its ops as a float64 array (layers may differ in length)."""
        return [np.array([op.score for op in layer.ops], dtype=np.float64) for layer in self.layers]

    def cost_arrays(self, key: str) -> list[np.ndarray]:
        """Per layer, the ``key`` cost of its ops as a float64 array."""
        return [
            np.array([op.cost[key] for op in layer.ops], dtype=np.float64) for layer in self.layers
        ]

    def specs(self, choices: Sequence[int]) -> list[str]:
        """The op specs of an architecture given by one op index per layer."""
        return [layer.ops[c].spec for layer, c in zip(self.layers, choices, strict=True)]


def _nonfinite_word(x: float) -> str:
    return "NaN" if math.isnan(x) else ("+inf" if x > 0 else "-inf")


@dataclass
class Solution:
    """One architecture: an op index per layer, its specs, summed score and costs."""

    choices: list[int]
    score: float
    cost: dict[str, float]
    specs: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: choices, specs, score, cost."""
        return {
            "choices": list(self.choices),
            "specs": list(self.specs),
            "score": self.score,
            "cost": dict(self.cost),
        }


# The cost columns a library's ops carry, from a run's latency.json and costs.json.
def latency_columns(latency: dict) -> dict[str, dict]:
    """The latency cost columns of ``latency.json``: the configured one (``latency_ms``)
    and each extra one (other backends or batch sizes), by column name."""
    return {"latency_ms": latency, **latency.get("extra", {})}


def op_costs(candidates: list[list[str]], latency: dict, costs: dict
             ) -> list[dict[str, dict[str, float]]]:
    """Per layer and op, every cost column the search can bound: the configured latency
    (``latency_ms``), each extra latency column, params and FLOPs; from the contents of
    ``latency.json`` and ``costs.json``."""
    columns = latency_columns(latency)
    return [{spec: {**{col: c["layers"][i][j] for col, c in columns.items()},
                    **costs["layers"][i][j]}
             for j, spec in enumerate(specs)}
            for i, specs in enumerate(candidates)]
