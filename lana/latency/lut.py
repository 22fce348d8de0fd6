"""The latency lookup table (LUT): every candidate's timing, kept in one JSON file, and the
drift monitor that watches the machine while the table is built.

The stopwatch that fills it (settings, the stopping rule, normalisation by the reference op)
is :mod:`lana.latency.timing`.

LUT file format (``lana-lut/1``)
--------------------------------
A JSON object::

    {
      "format": "lana-lut/1",
      "entries": {
        "<op>|<N>x<C>x<H>x<W>|<settings key>": {
          "op": "<op key>",
          "input_shape": [N, C, H, W],
          "settings": {"backend": "onnxruntime", "batch_size": 1, "threads": 1,
                       "dtype": "float32", "device": "cpu:<model>|2 cores|x86_64",
                       "normalize": true},
          "median_ms": 0.0123, "p25_ms": ..., "p75_ms": ..., "min_ms": ...,
          "mean_ms": ..., "std_ms": ..., "count": 57, "warmup": 10,
          "rel_ci": 0.012, "outliers": 1, "ref_ms": 0.71, "raw_median_ms": 0.0131
        },
        ...
      },
      "reference": {"<settings key>": {"op": "reference:conv3x3_c32",
                    "input_shape": [1, 32, 56, 56], "baseline_ms": ...,
                    "checks": [{"time", "median_ms", "ratio", "reason", "entries"}]}}
    }

``outliers`` counts runs slower than p75 + 3 IQR. ``reference`` (optional) holds, per
settings key, the reference op's baseline (normalisation scales to it) and the drift
checks of :class:`DriftMonitor`; an entry measured while the machine had
drifted, and not recovered by re-measuring, also has ``"flagged": true, "drift": ratio``.

The op key of a candidate is its spec plus the layer's shape contract
(``"cb_k3@in64x56x56-out64x56x56-relu"``); the stem, head, teacher layers and
teacher-dependent candidates are keyed by a digest of their structure
(``"stem:<sha256>"``, see :func:`lana.latency.profile.module_structure`): class names,
hyper-parameters and tensor shapes, never ``repr``, so the keys do not change with the
torch or timm version. The entry key is :meth:`LatencyTable.key`; the settings key
(:meth:`Settings.key`) contains every setting including the device fingerprint, so a
LUT measured on one machine or with other settings is never silently reused. ``rel_ci``
is the achieved relative half-width of the median's confidence interval (``null`` when
too few runs were taken to form one).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from lana.core.io import read_json, write_json
from lana.errors import ArtifactError, ConfigError, LanaError
from lana.latency.timing import (
    REFERENCE_OP,
    REFERENCE_SHAPE,
    Measurement,
    Settings,
    measure,
    reference_ms,
)

__all__ = ["LUT_FORMAT", "DriftMonitor", "LatencyTable", "reference_baseline"]

LUT_FORMAT = "lana-lut/1"


class LatencyTable:
    """The latency lookup table, stored as a ``lana-lut/1`` JSON file (see module doc)."""

    def __init__(self, path: str | Path | None = None) -> None:
        """Open the LUT at ``path``, loading it if the file exists; ``None``: in memory."""
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, dict[str, Any]] = {}
        self._reference: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != LUT_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ArtifactError(f"{path} is not a latency table (format {found!r}, expected "
                                f"{LUT_FORMAT!r}); delete it or point to the right file")
        entries = data.get("entries")
        if not isinstance(entries, dict):
            raise ArtifactError(f"{path} has no 'entries' object; delete it and re-measure")
        for key, entry in entries.items():
            try:
                Measurement.from_dict(entry)
            except ArtifactError as exc:
                raise ArtifactError(f"{path}: entry {key!r} is corrupt: {exc}") from None
        self._entries = dict(entries)
        reference = data.get("reference", {})
        if not isinstance(reference, dict):
            raise ArtifactError(f"{path}: 'reference' must be an object; delete it")
        self._reference = dict(reference)

    @staticmethod
    def key(op_key: str, input_shape: tuple[int, ...], settings: Settings) -> str:
        """The entry key: op, full input shape and every setting (device included)."""
        shape = "x".join(str(int(s)) for s in input_shape)
        return f"{op_key}|{shape}|{settings.key()}"

    def get(self, op_key: str, input_shape: tuple[int, ...],
            settings: Settings) -> Measurement | None:
        """The stored measurement, or ``None`` if this op/shape/settings was never measured."""
        entry = self._entries.get(self.key(op_key, input_shape, settings))
        return None if entry is None else Measurement.from_dict(entry)

    def put(self, op_key: str, input_shape: tuple[int, ...], settings: Settings,
            m: Measurement) -> None:
        """Store (or replace) a measurement; call :meth:`save` to write the file."""
        self._entries[self.key(op_key, input_shape, settings)] = {
            "op": op_key,
            "input_shape": [int(s) for s in input_shape],
            "settings": settings.to_dict(),
            **m.to_dict(),
        }

    def save(self) -> None:
        """Atomically write the table to its path."""
        if self.path is None:
            raise LanaError("this LatencyTable has no path; pass one to LatencyTable(path)")
        data: dict[str, Any] = {"format": LUT_FORMAT, "entries": self._entries}
        if self._reference:
            data["reference"] = self._reference
        write_json(self.path, data)

    def reference(self, settings: Settings) -> dict[str, Any] | None:
        """The drift reference record of these settings (see :class:`DriftMonitor`)."""
        ref = self._reference.get(settings.key())
        return None if ref is None else copy.deepcopy(ref)

    def set_reference(self, settings: Settings, record: dict[str, Any]) -> None:
        """Store the drift reference record of these settings."""
        self._reference[settings.key()] = copy.deepcopy(record)

    def devices(self, settings: Settings) -> list[str]:
        """Devices with entries measured like ``settings`` (same backend, batch, threads,
        dtype), e.g. the target machine of a LUT built with ``lana profile BUNDLE``."""
        want = {k: v for k, v in settings.to_dict().items() if k != "device"}
        found = set()
        for entry in self._entries.values():
            got = {"normalize": False, **entry.get("settings", {})}  # older files lack it
            device = got.pop("device", None)
            if got == want and device:
                found.add(device)
        return sorted(found)

    def annotate(self, key: str, **fields: Any) -> None:
        """Add fields (e.g. a drift flag) to the stored entry ``key``."""
        if key not in self._entries:
            raise LanaError(f"no LUT entry {key!r} to annotate")
        self._entries[key].update(fields)

    def measure_or_get(self, op_key: str, module: nn.Module, input_shape: tuple[int, ...],
                       settings: Settings, **measure_kwargs: Any) -> Measurement:
        """Return the stored measurement, measuring and storing it first on a miss."""
        found = self.get(op_key, input_shape, settings)
        if found is not None:
            return found
        m = measure(module, input_shape, settings, **measure_kwargs)
        self.put(op_key, input_shape, settings, m)
        return m

    def entries(self) -> dict[str, dict[str, Any]]:
        """A copy of the raw entries (key -> JSON entry), e.g. for reports."""
        return copy.deepcopy(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def reference_baseline(lut: LatencyTable, settings: Settings, **measure_kwargs: Any) -> float:
    """The reference op's baseline ms for ``settings``, kept in the LUT's ``reference``
    section (the drift monitor's baseline): read, or measured once and stored.

    Normalised timings are scaled to it, so every entry of a LUT and every end-to-end
    timing checked against that LUT are in the same units however the machine's speed
    moved in between. Delete the LUT's ``reference`` section to start a new baseline.
    """
    record = lut.reference(settings)
    if record is not None and record.get("baseline_ms"):
        return float(record["baseline_ms"])
    record = record or {"op": REFERENCE_OP,
                        "input_shape": [settings.batch_size, *REFERENCE_SHAPE],
                        "checks": []}
    record["baseline_ms"] = reference_ms(settings, **measure_kwargs)
    lut.set_reference(settings, record)
    if lut.path is not None:
        lut.save()
    return float(record["baseline_ms"])


class DriftMonitor:
    """Detect a machine that gets faster or slower while a LUT is being built.

    The reference op (:func:`reference_module`) is timed once at the start (its
    *baseline*, stored in the LUT's ``reference`` section, so that a later session on the
    same LUT compares against the same baseline) and again after every ``every`` new
    measurements. When the reference's median differs from the baseline by more than
    ``threshold`` (relative), every entry measured since the last good check is measured
    again and the reference re-checked; entries that still fall in a drifted window are
    kept but annotated with ``"drift": <reference ratio>`` and ``"flagged": true``, and
    the run says so. Every check is recorded with its ratio.

    Each check is the median of ``repeats`` separately prepared timings of the reference:
    a runtime's speed differs from one session to the next (buffer placement, allocator
    state), and a single session would report that as drift.

    With ``settings.normalize`` the monitor is off (``every`` is taken as 0): normalised
    timings cancel drift as they are taken.

    Use :meth:`measured` after each new LUT entry and :meth:`finish` at the end.
    """

    def __init__(self, lut: LatencyTable, settings: Settings, *, every: int = 25,
                 threshold: float = 0.10, repeats: int = 3,
                 log: Callable[[str], None] | None = None,
                 measure_fn: Callable[[Any, tuple[int, ...]], Measurement] | None = None,
                 **measure_kwargs: Any) -> None:
        if every < 0 or threshold <= 0 or repeats < 1:
            raise ConfigError("drift check: every must be >= 0, threshold > 0 and "
                              "repeats >= 1")
        self.repeats = repeats
        self.lut, self.settings = lut, settings
        if settings.normalize:  # normalised timings cancel drift as they go: no check
            every = 0
        self.every, self.threshold = every, threshold
        self.kwargs = measure_kwargs
        self.log = log or (lambda msg: None)
        # How an entry is re-measured: a module by default; an ONNX model for bundles.
        self.measure_fn = measure_fn or (
            lambda module, shape: measure(module, shape, settings, **measure_kwargs))
        self.shape = (settings.batch_size, *REFERENCE_SHAPE)
        self.pending: list[tuple[str, Any, tuple[int, ...]]] = []
        self.remeasured = 0
        self.flagged: list[str] = []
        record = lut.reference(settings) if every else None
        self.record: dict[str, Any] = record or {"op": REFERENCE_OP,
                                                 "input_shape": list(self.shape),
                                                 "baseline_ms": None, "checks": []}

    @property
    def enabled(self) -> bool:
        """False when ``every == 0`` (drift detection off)."""
        return self.every > 0

    def _reference_ms(self) -> float:
        return reference_ms(self.settings, self.repeats, **self.kwargs)

    def _check(self, reason: str) -> float:
        ms = self._reference_ms()
        if self.record["baseline_ms"] is None:
            self.record["baseline_ms"] = ms
        ratio = ms / self.record["baseline_ms"]
        self.record["checks"].append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                            time.gmtime()),
                                      "median_ms": ms, "ratio": ratio, "reason": reason,
                                      "entries": len(self.lut)})
        self.lut.set_reference(self.settings, self.record)
        return ratio

    def _drifted(self, ratio: float) -> bool:
        return abs(ratio - 1.0) > self.threshold

    def start(self) -> None:
        """Time the reference (sets the baseline on a LUT that has none)."""
        if self.enabled:
            ratio = self._check("start")
            if self._drifted(ratio):
                self.log(f"latency drift: the reference op runs at {ratio:.2f}x its "
                         "baseline in this LUT; the machine differs from when the LUT was "
                         "started (load, clock, thermal state); new entries are measured "
                         "under these conditions")

    def measured(self, op_key: str, module: Any, input_shape: tuple[int, ...]) -> None:
        """Record a new entry (``module`` as ``measure_fn`` takes it); every ``every``
        entries the reference is re-checked."""
        if not self.enabled:
            return
        self.pending.append((op_key, module, tuple(input_shape)))
        if len(self.pending) >= self.every:
            self._settle("periodic")

    def finish(self) -> dict[str, Any]:
        """Check the last entries and return a summary for ``latency.json``."""
        if self.enabled and self.pending:
            self._settle("final")
        return {"enabled": self.enabled, "every": self.every, "threshold": self.threshold,
                "baseline_ms": self.record["baseline_ms"], "checks": self.record["checks"],
                "remeasured": self.remeasured, "flagged": list(self.flagged)}

    def _settle(self, reason: str) -> None:
        ratio = self._check(reason)
        if self._drifted(ratio):
            self.log(f"latency drift: reference op at {ratio:.2f}x its baseline; "
                     f"re-measuring the last {len(self.pending)} entries")
            for op_key, module, shape in self.pending:
                m = self.measure_fn(module, shape)
                self.lut.put(op_key, shape, self.settings, m)
                self.remeasured += 1
            ratio = self._check("after re-measure")
            if self._drifted(ratio):
                keys = [LatencyTable.key(k, s, self.settings) for k, _, s in self.pending]
                for key in keys:
                    self.lut.annotate(key, drift=ratio, flagged=True)
                self.flagged.extend(keys)
                self.log(f"latency drift persists (reference at {ratio:.2f}x baseline): "
                         f"{len(keys)} entries flagged in the LUT; re-run on a quiet "
                         "machine, or delete the LUT to start a new baseline")
        self.pending.clear()
