"""Latency measurement on the target device: the stopwatch.

LANA picks, for every layer of the teacher, one candidate op out of a library. The
cost of a choice is the latency of that op *at the layer's input shape on the target
device*, so every candidate is timed once here and the result is stored in a LUT
(:mod:`lana.latency.lut`). The same machinery later times whole assembled networks end
to end.

Every time is in milliseconds.

Backends
--------
A backend (:mod:`lana.latency.backends`, registry :data:`BACKENDS`) turns an ``nn.Module`` and an
example input into a zero-argument *runner* that executes one inference: ``torch``,
``onnxruntime`` (the default), ``openvino`` and ``torch-compile`` on the CPU;
``torch-cuda``, ``torch-cuda-graphs``, ``onnxruntime-cuda``, ``onnxruntime-tensorrt`` and
``tensorrt`` on a GPU. An unavailable backend raises
:class:`~lana.errors.BackendUnavailableError`; none falls back to another.

Stopping rule
-------------
After ``warmup`` untimed runs, runs are timed one at a time with
``time.perf_counter_ns`` (or the GPU's own events) until a distribution-free ~95 %
confidence interval of the median, taken from order statistics, has a half-width of at
most ``rel_ci`` times the median; or until ``max_repeats`` runs or ``max_seconds`` of
timing have been spent, but never fewer than ``min_repeats`` runs. The median is the
reported latency.

Normalisation
-------------
A shared or virtual machine changes speed by itself: on the 2-core reference VM the same
op runs up to 1.5x slower for seconds to minutes at a time (the host's other tenants),
so an op timed now and a network timed ten minutes later disagree by more than any model
of additivity can fix. With ``Settings.normalize`` (``latency.normalize``, the
pipeline's default) a fixed reference op (:func:`reference_module`) is timed *alongside*
every measurement, between its runs, and the result is scaled by ``baseline /
reference``: the latency the op would have at the machine speed of the LUT's baseline
(:func:`lana.latency.lut.reference_baseline`, stored in the LUT). A slow phase slows both
and cancels; on that VM the spread of repeated timings fell from 7-18 % to 3-5 %
(coefficient of variation). Entries keep the raw median (``raw_median_ms``) and the reference's median
(``ref_ms``). Whole networks timed together in interleaved rounds
(:func:`measure_interleaved` with :func:`e2e_kwargs`) share one factor, the reference's
median over the whole call, so that the reference's own noise does not enter their ratios
(a speed-up is checked on such a ratio). They run back to back, as a user's timer runs
them, and the reference is timed in a slot of its own in every round: with it between a
network's runs (as for a LUT entry) a plain ONNX Runtime loop read small students up to
9 % faster beside their teacher than lana did (benchmarks/timing_gap.py, first run). The
slot costs something elsewhere, measured earlier (efficientnet_b0 and 8 students at
224 px, 3 calls each): a network's normalised timing varied more from call to call
(relative std 2.2-9.6 % against 0.3-4.1 %) and came out in other units than the LUT's
entries (the teacher 15 % slower), which the search's calibration of the LUT against the
measured networks absorbs. Normalised entries have their own settings key (suffix
``|norm``). The
reference evicts a runner small enough to live in the cache (a 0.3 ms network), whose
next run would then be up to 30 % slower: such a runner runs once untimed after every
reference run (:data:`COLD_RERUN_FACTOR`). :class:`Settings` itself defaults to a raw
stopwatch; the pipeline's ``latency.normalize`` defaults to normalised timings.

The latency lookup table (LUT) file, its drift monitor and the reference's stored baseline
are in :mod:`lana.latency.lut`; this module is the stopwatch they use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lana.errors import ArtifactError, ConfigError, LanaError
from lana.latency.backends import (
    BACKENDS,
    Backend,
    OnnxRuntimeBackend,
    Runner,
    TorchBackend,
    TorchCudaBackend,
    export_onnx,
    get_backend,
    inference_form,
)

__all__ = [
    "BACKENDS",
    "DTYPES",
    "Backend",
    "Measurement",
    "OnnxRuntimeBackend",
    "Runner",
    "Settings",
    "TorchBackend",
    "TorchCudaBackend",
    "device_fingerprint",
    "export_onnx",
    "get_backend",
    "inference_form",
    "measure",
    "measure_onnx",
    "median_ci",
    "time_runner",
]

#: Names accepted for ``Settings.dtype`` and the torch dtype each stands for.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# The clock is a module global so tests can swap in a deterministic fake.
_clock: Callable[[], int] = time.perf_counter_ns


# --------------------------------------------------------------------------- device


@functools.cache
def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    # x86 names the CPU in "model name"; many ARM kernels only give "Hardware" or the
    # implementer/part numbers, which still tell two SoCs apart.
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        if fields.get(key):
            return " ".join(fields[key].split())
    if "CPU implementer" in fields and "CPU part" in fields:
        return f"arm implementer {fields['CPU implementer']} part {fields['CPU part']}"
    return platform.processor() or "unknown"


def device_fingerprint(kind: str = "cpu") -> str:
    """Describe the device that latencies are measured on, for use in LUT keys.

    ``kind="cpu"`` gives e.g. ``"cpu:Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz|2 cores|
    x86_64"``; ``kind="cuda"`` gives ``"cuda:<GPU name>"`` for the current CUDA device, or
    ``"cuda:unavailable"`` when there is none (measuring then fails with a clear error).
    """
    if kind == "cuda":
        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(torch.cuda.current_device())}"
        return "cuda:unavailable"
    if kind != "cpu":
        raise ConfigError(f"unknown device kind {kind!r}; expected 'cpu' or 'cuda'")
    return f"cpu:{_cpu_model()}|{os.cpu_count() or 1} cores|{platform.machine() or 'unknown'}"


# ------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """How latencies are measured; every field is part of the LUT key.

    ``device`` is filled with :func:`device_fingerprint` for the backend's device kind
    when left empty; pass it explicitly only when rebuilding settings from a file.
    """

    backend: str = "onnxruntime"
    batch_size: int = 1
    threads: int = 1
    dtype: str = "float32"
    device: str = field(default="")
    #: Time the reference op alongside every measurement and scale by it (see
    #: "Normalisation" in the module docstring). Off for a raw stopwatch.
    normalize: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"threads must be a positive integer, got {self.threads!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        backend = get_backend(self.backend)  # unknown names fail here, listing known ones
        if not self.device:
            # Frozen dataclass: object.__setattr__ is the sanctioned way to fill a
            # derived field during construction.
            object.__setattr__(self, "device", device_fingerprint(backend.device_kind))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain JSON-ready dict (device included)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Rebuild settings written by :meth:`to_dict`, keeping the recorded device."""
        known = {k: data[k] for k in ("backend", "batch_size", "threads", "dtype", "device",
                                      "normalize") if k in data}
        return cls(**known)

    def key(self) -> str:
        """A string that differs whenever any setting (device included) differs."""
        return (f"{self.backend}|b{self.batch_size}|t{self.threads}|{self.dtype}"
                f"|{self.device}" + ("|norm" if self.normalize else ""))


# ---------------------------------------------------------------------- measurement


@dataclass
class Measurement:
    """Summary of repeated timings of one runner, in milliseconds."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    mean_ms: float
    std_ms: float
    count: int
    warmup: int
    rel_ci: float | None = None  # achieved CI half-width / median; None if n too small
    #: Runs slower than p75 + 3 * IQR (Tukey's far-out fence): preemption, page faults.
    #: They do not move the median, but many of them say the machine was busy.
    outliers: int = 0
    #: With normalisation: the reference op's median during this measurement (raw ms) and
    #: this op's raw median before scaling by ``baseline / ref_ms``.
    ref_ms: float | None = None
    raw_median_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The measurement as a plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Rebuild a measurement from :meth:`to_dict` output (extra keys are ignored)."""
        try:
            return cls(
                median_ms=float(data["median_ms"]),
                p25_ms=float(data["p25_ms"]),
                p75_ms=float(data["p75_ms"]),
                min_ms=float(data["min_ms"]),
                mean_ms=float(data["mean_ms"]),
                # write_json stores a NaN std (single sample) as null
                std_ms=float("nan") if data.get("std_ms") is None else float(data["std_ms"]),
                count=int(data["count"]),
                warmup=int(data.get("warmup", 0)),
                rel_ci=None if data.get("rel_ci") is None else float(data["rel_ci"]),
                outliers=int(data.get("outliers", 0)),
                ref_ms=None if data.get("ref_ms") is None else float(data["ref_ms"]),
                raw_median_ms=None if data.get("raw_median_ms") is None
                else float(data["raw_median_ms"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"not a latency measurement ({exc!r}): {data!r}") from None

    @classmethod
    def from_samples(cls, samples_ms: list[float] | np.ndarray, warmup: int = 0) -> Measurement:
        """Summarise raw per-run times (ms)."""
        x = np.asarray(samples_ms, dtype=np.float64)
        if x.size == 0:
            raise LanaError("cannot summarise zero latency samples")
        p25, med, p75 = np.percentile(x, [25, 50, 75])
        half = median_ci(x)
        return cls(
            median_ms=float(med),
            p25_ms=float(p25),
            p75_ms=float(p75),
            min_ms=float(x.min()),
            mean_ms=float(x.mean()),
            std_ms=float(x.std(ddof=1)) if x.size > 1 else float("nan"),
            count=int(x.size),
            warmup=int(warmup),
            rel_ci=None if half is None else (float(half / med) if med > 0 else 0.0),
            outliers=int(np.count_nonzero(x > p75 + 3.0 * (p75 - p25))),
        )

    def scaled(self, factor: float) -> Measurement:
        """Every time multiplied by ``factor`` (normalisation); the raw median is kept."""
        return dataclasses.replace(
            self, median_ms=self.median_ms * factor, p25_ms=self.p25_ms * factor,
            p75_ms=self.p75_ms * factor, min_ms=self.min_ms * factor,
            mean_ms=self.mean_ms * factor, std_ms=self.std_ms * factor,
            raw_median_ms=self.median_ms if self.raw_median_ms is None
            else self.raw_median_ms)


def median_ci(samples: list[float] | np.ndarray, z: float = 1.96) -> float | None:
    """Half-width of a distribution-free ~95 % confidence interval of the median.

    The number of samples below the median is Binomial(n, 1/2), so the order statistics
    of rank ``n/2 ± z·sqrt(n)/2`` bracket the median with ~95 % probability whatever the
    timing distribution (latencies are skewed, so a normal CI would be wrong). Returns
    ``None`` when there are too few samples for the interval to exist (n < 6).
    """
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = x.size
    spread = z * math.sqrt(n) / 2.0
    lo = math.floor(n / 2.0 - spread)  # 1-based ranks
    hi = math.ceil(n / 2.0 + spread)
    if lo < 1 or hi > n:
        return None
    return float(x[hi - 1] - x[lo - 1]) / 2.0


# After a reference run, a runner faster than this many reference timings runs once
# untimed (see time_runner): slower ones barely notice the reference in their caches.
COLD_RERUN_FACTOR = 4.0


def time_runner(
    runner: Runner,
    *,
    warmup: int = 10,
    min_repeats: int = 20,
    max_repeats: int = 1000,
    max_seconds: float = 1.0,
    rel_ci: float = 0.02,
    reference: Runner | None = None,
) -> Measurement:
    """Time ``runner`` with the stopping rule described in the module docstring.

    With a ``reference`` runner, the reference is timed between runs, whenever the runs
    since its last timing took as long as it does (so it costs at most about half of the
    loop, and a tiny op is not swamped by it); its median goes to ``ref_ms`` of the
    result, which is otherwise the raw timing of ``runner`` (see "Normalisation"). A
    runner faster than ``COLD_RERUN_FACTOR`` reference timings runs once untimed after
    each reference run, so that no timed run starts from caches the reference evicted.

    The garbage collector is off while timing so a collection never lands inside a run.
    ``max_seconds`` bounds the timed loop (and, separately, the warm-up) but never cuts
    it below ``min_repeats`` runs or the warm-up below one run.
    """
    if min_repeats < 1 or max_repeats < min_repeats:
        raise ConfigError(f"need 1 <= min_repeats <= max_repeats, got {min_repeats}, "
                          f"{max_repeats}")
    if warmup < 0 or max_seconds <= 0 or rel_ci <= 0:
        raise ConfigError("warmup must be >= 0 and max_seconds, rel_ci must be > 0")
    budget_ns = max_seconds * 1e9
    # Collect the young generations only: the garbage of the previous measurement (an
    # export, a session) lives there. A full collection walks every object of the process
    # (torch, timm, onnx: ~0.4 s per call on one core, more inside a large process) and
    # cost more than the timing itself on small ops; with the collector off below, an
    # older generation's garbage cannot land inside a timed run anyway.
    gc.collect(1)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        done_warmup = _warm_up(runner, warmup, budget_ns, reference)
        samples, ref_samples = _timed_runs(runner, min_repeats, max_repeats, budget_ns,
                                           rel_ci, reference)
    finally:
        if gc_was_enabled:
            gc.enable()
    m = Measurement.from_samples(samples, warmup=done_warmup)
    if ref_samples:
        m.ref_ms = float(np.median(ref_samples))
    return m


def _warm_up(runner: Runner, warmup: int, budget_ns: float,
             reference: Runner | None) -> int:
    """Run ``runner`` up to ``warmup`` times untimed; returns how many runs it took.

    A whole network can take seconds per run, so warm-up stops once ``budget_ns`` passed
    (after at least one run): it never eats hours. The reference runs before the first
    three runs, so that the warm-up ends warm, not right after a reference run.
    """
    done_warmup = 0
    start = _clock()
    while done_warmup < warmup:
        if reference is not None and done_warmup < 3:
            reference()  # before the runner: warm-up ends warm, not after a reference
        runner()
        done_warmup += 1
        if _clock() - start >= budget_ns:
            break
    return done_warmup


def _timed_runs(runner: Runner, min_repeats: int, max_repeats: int, budget_ns: float,
                rel_ci: float, reference: Runner | None) -> tuple[list[float], list[float]]:
    """(runner's timings, the reference's timings) in ms, timed until the stopping rule
    of the module docstring holds: the median's CI within ``rel_ci``, ``max_repeats``
    runs, or ``budget_ns`` spent after ``min_repeats`` runs."""
    samples: list[float] = []
    ref = _ReferenceTimer(reference) if reference is not None else None
    # Sorting every iteration would cost more than a tiny op; check on a geometric
    # schedule instead (at most ~10% more runs than strictly needed).
    next_check = min_repeats
    start = _clock()
    while True:
        t0 = _clock()
        device_ms = runner()
        t1 = _clock()
        samples.append(device_ms if device_ms is not None else (t1 - t0) / 1e6)
        if ref is not None:
            t1 = ref.after(runner, t0, t1)
        n = len(samples)
        if n >= max_repeats:
            break
        if n < min_repeats:
            continue
        if t1 - start >= budget_ns:
            break
        if n >= next_check:
            half = median_ci(samples)
            if half is not None and half <= rel_ci * float(np.median(samples)):
                break
            next_check = max(n + 1, int(n * 1.1))
    return samples, ref.samples if ref is not None else []


class _ReferenceTimer:
    """Times the reference runner between the timed runs of another (see
    :func:`time_runner`): whenever the runs since its last timing took as long as it does,
    so that it costs at most about half of the loop and a tiny op is not swamped by it."""

    def __init__(self, reference: Runner) -> None:
        self.reference = reference
        self.samples: list[float] = []  # its timings, ms
        self.since_ns = 0  # runner time since the reference last ran
        self.last_ns = 0  # the reference's last timing

    def after(self, runner: Runner, t0: int, t1: int) -> int:
        """Account for a run of ``runner`` timed from ``t0`` to ``t1`` and time the
        reference if it is due; returns the clock after all that (``t1`` if not due)."""
        self.since_ns += t1 - t0
        if self.since_ns < self.last_ns:
            return t1
        ref_device_ms = self.reference()
        t2 = _clock()
        self.last_ns = t2 - t1
        self.samples.append(ref_device_ms if ref_device_ms is not None
                            else self.last_ns / 1e6)
        self.since_ns = 0
        if t1 - t0 < COLD_RERUN_FACTOR * self.last_ns:
            # The reference evicted whatever of the runner the cache held: its next run
            # would be cold (a network of 0.3 ms measured ~30 % slow). One untimed run
            # restores the state of back-to-back runs, which every timed run (and every
            # LUT entry) then starts from.
            runner()
        return _clock()  # the time cap counts the reference's runs too


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def measure(
    module: nn.Module,
    input_shape: tuple[int, ...],
    settings: Settings,
    *,
    warmup: int = 10,
    min_repeats: int = 20,
    max_repeats: int = 1000,
    max_seconds: float = 1.0,
    rel_ci: float = 0.02,
    baseline_ms: float | None = None,
) -> Measurement:
    """Measure the latency of one inference of ``module`` at ``input_shape``.

    ``input_shape`` is the full shape including the batch dimension, which must equal
    ``settings.batch_size``. The input is random (seeded) data of ``settings.dtype``.
    Raises :class:`~lana.errors.BackendUnavailableError` if the backend cannot run here.
    See the module docstring for the stopping rule; the median is the latency. With
    ``settings.normalize``, ``baseline_ms`` is the reference's baseline to scale to (see
    :func:`lana.latency.lut.reference_baseline`; measured here when omitted).
    """
    return measure_interleaved({"module": module}, input_shape, settings, rounds=1,
                               warmup=warmup, min_repeats=min_repeats,
                               max_repeats=max_repeats, max_seconds=max_seconds,
                               rel_ci=rel_ci, baseline_ms=baseline_ms)["module"]


def measure_interleaved(
    modules: dict[str, nn.Module],
    input_shape: tuple[int, ...],
    settings: Settings,
    *,
    rounds: int = 3,
    description: str | None = None,
    baseline_ms: float | None = None,
    reference_slot: bool = False,
    **measure_kwargs: Any,
) -> dict[str, Measurement]:
    """Measure several modules in interleaved rounds; each result pools its rounds' medians.

    Every module is prepared once (one ONNX export each), then timed once per round in
    turn, so a machine that speeds up or slows down during the measurement affects all of
    them alike and their ratios stay fair. The reported median is the median of the
    per-round medians, ``min_ms`` the fastest run of all rounds and ``count`` their
    number; the other statistics come from the last round. The first round
    warms every module up with ``warmup`` runs, later rounds with one run (the caches the
    other modules evicted). With a ``description``, a progress bar of that name follows
    the exports and the rounds. Many short rounds compare better than a few long ones:
    see :data:`E2E_ROUNDS`.

    With ``settings.normalize`` every timing is scaled by ``baseline_ms`` over the
    reference op's median (module docstring, "Normalisation"), one factor for every module
    (the reference's median over the whole call): the ratios between the modules are those
    of their raw timings, and the reference's own noise does not enter them. By default
    the reference runs between the runs of every module, as it does for a LUT entry; with
    ``reference_slot`` it is timed as a module of its own at the start of every round and
    the modules run back to back, as a user's timer runs them (whole networks, see
    :func:`e2e_kwargs`). Without a ``baseline_ms`` the reference is timed here first
    (median of 3 sessions), which keeps this call's results comparable with each other but
    not with a LUT's.
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or shape[0] != settings.batch_size:
        raise ConfigError(f"input_shape {shape} must start with the batch size "
                          f"{settings.batch_size} of the settings")
    backend = get_backend(settings.backend)
    backend.check_available()
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(shape, generator=gen).to(DTYPES[settings.dtype])
    from lana.core.progress import progress

    bars = progress() if description else contextlib.nullcontext()
    # torch's thread pool is pinned even for non-torch backends: it is idle then, and
    # pinning keeps a stray torch op from taking every core.
    with _torch_threads(settings.threads), bars as bar:
        task = bar.add_task(description, total=len(modules) * (1 + max(1, rounds)),
                            info=settings.backend) if bar is not None else None

        def step() -> None:
            if bar is not None:
                bar.advance(task)

        # Preparing happens outside inference mode: ONNX export traces the module, and
        # tracing inference tensors fails.
        runners = {}
        for name, m in modules.items():
            runners[name] = backend.prepare(m, example, settings.threads)
            step()
        ref = _reference_runner(backend, settings) if settings.normalize else None
        if ref is not None and baseline_ms is None:
            baseline_ms = reference_ms(settings, **measure_kwargs)
        warmup = measure_kwargs.pop("warmup", 10)
        out, refs = _timed_rounds(runners, ref, max(1, rounds), warmup, step, measure_kwargs,
                                  reference_slot)
    if ref is None:
        return out
    pooled = float(np.median(refs))
    return {name: dataclasses.replace(m.scaled(baseline_ms / pooled), ref_ms=pooled,
                                      raw_median_ms=m.median_ms) for name, m in out.items()}


def _timed_rounds(runners: dict[str, Runner], ref: Runner | None, rounds: int, warmup: int,
                  step: Callable[[], None], measure_kwargs: dict[str, Any],
                  reference_slot: bool = False,
                  ) -> tuple[dict[str, Measurement], list[float]]:
    """(each runner's result pooled over ``rounds`` interleaved rounds, the reference's
    medians of every timing) for :func:`measure_interleaved`.

    A result is the last round's measurement with the median of the rounds' medians, the
    fastest run of all rounds and their number of runs. Only the first round warms up with
    ``warmup`` runs; later ones with one run (the caches the other runners evicted).
    ``step`` is called after each timing (the progress bar). With ``reference_slot`` the
    reference is timed on its own at the start of each round (same rules as a runner) and
    the runners without it between their runs.
    """
    medians: dict[str, list[float]] = {name: [] for name in runners}
    last: dict[str, Measurement] = {}
    refs: list[float] = []
    mins: dict[str, list[float]] = {name: [] for name in runners}
    counts = dict.fromkeys(runners, 0)
    with torch.inference_mode():
        for n in range(rounds):
            warm = warmup if n == 0 else min(warmup, 1)
            if ref is not None and reference_slot:
                refs.append(time_runner(ref, warmup=warm, **measure_kwargs).median_ms)
            for name, runner in runners.items():
                m = time_runner(runner, reference=None if reference_slot else ref,
                                warmup=warm, **measure_kwargs)
                if m.ref_ms is not None:
                    refs.append(m.ref_ms)
                last[name] = m
                medians[name].append(m.median_ms)
                mins[name].append(m.min_ms)
                counts[name] += m.count
                step()
    out = {name: dataclasses.replace(last[name], median_ms=float(np.median(medians[name])),
                                     min_ms=min(mins[name]), count=counts[name])
           for name in runners}
    return out, refs


#: Whole networks (students against their teacher) are timed in this many interleaved
#: rounds. A shared machine's slow phases last seconds, about as long as a long round, so
#: many short rounds follow them better: on the 2-core reference VM, efficientnet_b0 and
#: 8 students at 224 px (ONNX Runtime, benchmarks/e2e_timing.py) varied from call to call
#: by 2.5 % / 4.9 % (median / max relative std per network) in 24 rounds against
#: 2.9 % / 7.3 % in 3 rounds of 8x the time each, a student's speed-up by 2.2 % / 6.4 %
#: against 3.0 % / 10.3 %. Sub-ms networks (the demo's) varied by 6-20 % either way at a
#: noisy hour, which is why a budget is decided by the median of several timings
#: (``search.confirm``).
E2E_ROUNDS = 24


def e2e_kwargs(max_seconds: float, warmup: int, rounds: int = E2E_ROUNDS) -> dict[str, Any]:
    """Keyword arguments of :func:`measure_interleaved` for whole networks: ``rounds``
    rounds sharing ``12 * max_seconds`` per network (``max_seconds``: the per-op time cap
    of the LUT, ``latency.max_seconds``), at least 3 runs each, the reference op (when
    normalised) in a slot of its own (why: module docstring, "Normalisation")."""
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    return {"rounds": rounds, "warmup": warmup, "max_seconds": 12.0 * max_seconds / rounds,
            "min_repeats": 3, "reference_slot": True}


def _reference_runner(backend: Backend, settings: Settings) -> Runner:
    """The reference op prepared for one measurement. Prepared afresh each time, like
    the op it is timed beside: a runtime's speed differs a little from one session to the
    next, and a session kept for a whole process would skew all of its timings alike."""
    x = torch.randn((settings.batch_size, *REFERENCE_SHAPE),
                    generator=torch.Generator().manual_seed(0))
    return backend.prepare(reference_module(), x.to(DTYPES[settings.dtype]), settings.threads)


def measure_onnx(model: bytes, input_shape: tuple[int, ...], settings: Settings,
                 baseline_ms: float | None = None, **measure_kwargs: Any) -> Measurement:
    """Measure an ONNX model (one float input of ``input_shape``) on an ONNX backend.

    This is how a candidate bundle is profiled on a target machine without the teacher's
    code. With ``settings.normalize`` the timing is scaled to ``baseline_ms`` (required
    then) by the reference op timed alongside. Raises :class:`~lana.errors.ConfigError` for a backend that runs only PyTorch
    modules.
    """
    backend = get_backend(settings.backend)
    if not hasattr(backend, "prepare_onnx"):
        onnx_ok = sorted(n for n in BACKENDS if hasattr(get_backend(n), "prepare_onnx"))
        raise ConfigError(f"backend {settings.backend!r} runs PyTorch modules, but this "
                          f"bundle holds ONNX models; use one of {', '.join(onnx_ok)}, or "
                          "profile the run directory itself on the target")
    backend.check_available()
    if settings.dtype != "float32":
        raise ConfigError("ONNX bundles are float32; use dtype 'float32'")
    shape = tuple(int(s) for s in input_shape)
    example = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with _torch_threads(settings.threads):
        runner = backend.prepare_onnx(model, example, settings.threads)
        ref = None
        if settings.normalize:
            if baseline_ms is None:
                raise LanaError("a normalised ONNX measurement needs the reference "
                                "baseline (reference_baseline)")
            ref = _reference_runner(backend, settings)
        with torch.inference_mode():
            m = time_runner(runner, reference=ref, **measure_kwargs)
        return m.scaled(baseline_ms / m.ref_ms) if ref is not None else m


# ---------------------------------------------------------------- the reference op


def reference_module() -> nn.Module:
    """The fixed reference op timed again and again to detect drift (seeded weights).

    A 3x3 conv + BN + ReLU with 32 channels at 56x56 (~58 MFLOP, ~0.7 ms on one core with
    ONNX Runtime): long enough that one session's timing varies by a few percent (at 28x28
    it varied by 25 % from session to session), short enough to re-time often.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False),
                             nn.BatchNorm2d(32), nn.ReLU())


REFERENCE_OP = "reference:conv3x3_c32"
REFERENCE_SHAPE = (32, 56, 56)  # C, H, W; the batch size comes from the settings


def reference_ms(settings: Settings, repeats: int = 3, **measure_kwargs: Any) -> float:
    """The reference op's raw median ms: the median of ``repeats`` separately prepared
    timings (one session's speed differs from the next by a few percent)."""
    raw = dataclasses.replace(settings, normalize=False)
    shape = (settings.batch_size, *REFERENCE_SHAPE)
    return float(np.median([measure(reference_module(), shape, raw, **measure_kwargs).median_ms
                            for _ in range(repeats)]))
