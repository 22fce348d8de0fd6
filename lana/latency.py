"""Latency measurement on the target device and the latency lookup table (LUT).

LANA picks, for every layer of the teacher, one candidate op out of a library. The
cost of a choice is the latency of that op *at the layer's input shape on the target
device*, so every candidate is timed once here and the result is stored in a LUT. The
same machinery later times whole assembled networks end to end.

Every time is in milliseconds.

Backends
--------
A backend turns an ``nn.Module`` and an example input into a zero-argument *runner*
that executes one inference. Registered in :data:`BACKENDS`:

``"torch"``
    PyTorch eager on the CPU, eval mode, ``torch.inference_mode``; torch's intra-op
    thread count is pinned to ``Settings.threads`` while measuring and restored after.
``"onnxruntime"``
    The module is exported to ONNX in memory (:func:`export_onnx`) and run by an
    onnxruntime ``CPUExecutionProvider`` session: ``intra_op_num_threads=threads``,
    ``inter_op_num_threads=1``, ``ORT_SEQUENTIAL``, all graph optimisations enabled,
    inputs and outputs bound once (I/O binding) so Python feed overhead stays small.
``"torch-cuda"``
    PyTorch eager on the current CUDA GPU, timed with CUDA events and synchronised
    after every inference. On a machine without CUDA it raises
    :class:`~lana.errors.BackendUnavailableError`; it never falls back to the CPU.

Stopping rule
-------------
After ``warmup`` untimed runs, runs are timed one at a time with
``time.perf_counter_ns`` (or the GPU's own events) until a distribution-free ~95 %
confidence interval of the median, taken from order statistics, has a half-width of at
most ``rel_ci`` times the median; or until ``max_repeats`` runs or ``max_seconds`` of
timing have been spent, but never fewer than ``min_repeats`` runs. The median is the
reported latency.

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
                       "dtype": "float32", "device": "cpu:<model>|2 cores|x86_64"},
          "median_ms": 0.0123, "p25_ms": ..., "p75_ms": ..., "min_ms": ...,
          "mean_ms": ..., "std_ms": ..., "count": 57, "warmup": 10,
          "rel_ci": 0.012
        },
        ...
      }
    }

The entry key is :meth:`LatencyTable.key`; the settings key
(:meth:`Settings.key`) contains every setting including the device fingerprint, so a
LUT measured on one machine or with other settings is never silently reused. ``rel_ci``
is the achieved relative half-width of the median's confidence interval (``null`` when
too few runs were taken to form one).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import gc
import io
import logging
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from lana.errors import ArtifactError, BackendUnavailableError, ConfigError, LanaError
from lana.io import read_json, write_json

__all__ = [
    "BACKENDS",
    "DTYPES",
    "LUT_FORMAT",
    "Backend",
    "LatencyTable",
    "Measurement",
    "OnnxRuntimeBackend",
    "Runner",
    "Settings",
    "TorchBackend",
    "TorchCudaBackend",
    "device_fingerprint",
    "export_onnx",
    "get_backend",
    "measure",
    "median_ci",
    "time_runner",
]

LUT_FORMAT = "lana-lut/1"

#: Names accepted for ``Settings.dtype`` and the torch dtype each stands for.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

#: A runner executes one inference. It returns ``None`` when the caller should time it
#: with the host clock, or the elapsed milliseconds when the device timed itself (CUDA
#: events), because the host clock would then also count the synchronisation wait.
Runner = Callable[[], float | None]

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
        known = {k: data[k] for k in ("backend", "batch_size", "threads", "dtype", "device")
                 if k in data}
        return cls(**known)

    def key(self) -> str:
        """A string that differs whenever any setting (device included) differs."""
        return (f"{self.backend}|b{self.batch_size}|t{self.threads}|{self.dtype}"
                f"|{self.device}")


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
        )


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


def time_runner(
    runner: Runner,
    *,
    warmup: int = 10,
    min_repeats: int = 20,
    max_repeats: int = 1000,
    max_seconds: float = 1.0,
    rel_ci: float = 0.02,
) -> Measurement:
    """Time ``runner`` with the stopping rule described in the module docstring.

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
    samples: list[float] = []
    done_warmup = 0
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = _clock()
        while done_warmup < warmup:
            runner()
            done_warmup += 1
            # A whole network can take seconds per run; never let warm-up eat hours.
            if _clock() - start >= budget_ns:
                break
        # Sorting every iteration would cost more than a tiny op; check on a geometric
        # schedule instead (at most ~10% more runs than strictly needed).
        next_check = min_repeats
        start = _clock()
        while True:
            t0 = _clock()
            device_ms = runner()
            t1 = _clock()
            samples.append(device_ms if device_ms is not None else (t1 - t0) / 1e6)
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
    finally:
        if gc_was_enabled:
            gc.enable()
    return Measurement.from_samples(samples, warmup=done_warmup)


# -------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet_fds() -> Iterator[None]:
    # The legacy exporter dumps the whole TorchScript graph to fd 1 from C++ when an op
    # fails to convert (its log switch is always on in torch 2.x), which Python-level
    # redirection cannot catch; point fds 1 and 2 at /dev/null for the duration.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
    saved: list[tuple[int, int]] = []
    with contextlib.suppress(OSError):  # no /dev/null or a closed fd: stay noisy
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in (1, 2):
                kept = os.dup(fd)
                saved.append((fd, kept))
                os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    try:
        yield
    finally:
        for fd, kept in saved:
            os.dup2(kept, fd)
            os.close(kept)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # Both exporters chatter: the legacy one warns it is deprecated, the dynamo one
    # prints progress lines and logs through several loggers. Hundreds of ops get
    # exported, so all of that would drown the user's output.
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                              "onnxscript", "onnx_ir", "torch.fx")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), _quiet_fds():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_legacy(module: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=opset,
                      input_names=["input"], output_names=["output"],
                      do_constant_folding=True)
    return buf.getvalue()


def _export_dynamo(module: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    program = torch.onnx.export(module, (example,), dynamo=True, opset_version=max(opset, 18),
                                input_names=["input"], output_names=["output"],
                                optimize=True, verbose=False)
    if program is None:  # only when f= is given, which we never do
        raise LanaError("the dynamo ONNX exporter returned no program")
    return program.model_proto.SerializeToString()


def export_onnx(module: nn.Module, example: torch.Tensor, *, exporter: str = "auto",
                opset: int = 17) -> bytes:
    """Export ``module`` (in eval mode) for input ``example`` to an in-memory ONNX model.

    The graph has one input named ``input`` (static shape, e.g. NCHW) and its first
    output is named ``output`` (e.g. ``[N, classes]`` logits). ``exporter``:

    * ``"legacy"`` -- TorchScript exporter (``dynamo=False``): ~1-100 ms per small op
      on torch 2.14, against ~0.7-3.5 s for the dynamo exporter, so it is the default;
    * ``"dynamo"`` -- the ``torch.export`` based exporter;
    * ``"auto"`` -- legacy, falling back to dynamo when legacy fails (e.g. once torch
      removes it).

    The module's train/eval mode is restored afterwards. Exporter warnings and progress
    output are silenced. Raises :class:`~lana.errors.LanaError` if export fails.
    """
    exporters: dict[str, Callable[[nn.Module, torch.Tensor, int], bytes]] = {
        "legacy": _export_legacy, "dynamo": _export_dynamo}
    if exporter == "auto":
        order = ["legacy", "dynamo"]
    elif exporter in exporters:
        order = [exporter]
    else:
        raise ConfigError(f"exporter must be 'auto', 'legacy' or 'dynamo', got {exporter!r}")
    was_training = module.training
    errors: list[str] = []
    module.eval()
    try:
        for name in order:
            try:
                with _quiet(), torch.no_grad():
                    return exporters[name](module, example, opset)
            except Exception as exc:  # exporters raise many unrelated exception types
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        module.train(was_training)
    raise LanaError(f"cannot export {type(module).__name__} to ONNX for input shape "
                    f"{tuple(example.shape)}; " + "; ".join(errors))


# ------------------------------------------------------------------------- backends


@runtime_checkable
class Backend(Protocol):
    """A way of running a module on the target device."""

    name: str
    device_kind: str  # "cpu" or "cuda": selects the device fingerprint

    def check_available(self) -> None:
        """Raise BackendUnavailableError, saying how to fix it, if this cannot run here."""
        ...

    def prepare(self, module: nn.Module, example: torch.Tensor, threads: int) -> Runner:
        """Return a zero-argument runner that executes one inference on ``example``."""
        ...


def _frozen_copy(module: nn.Module, device: str, dtype: torch.dtype) -> nn.Module:
    # Work on a copy so measuring never changes the caller's module (mode, dtype,
    # device); no parameter needs grad, so no autograd graph even outside inference mode.
    m = copy.deepcopy(module).to(device=device, dtype=dtype).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


class TorchBackend:
    """PyTorch eager on the CPU (``"torch"``)."""

    name = "torch"
    device_kind = "cpu"

    def check_available(self) -> None:
        """Always available: torch is a dependency of lana."""

    def prepare(self, module: nn.Module, example: torch.Tensor, threads: int) -> Runner:
        """Return a runner calling an eval-mode copy of ``module`` on ``example``.

        :func:`measure` pins ``torch.set_num_threads(threads)`` and enters
        ``torch.inference_mode`` around the timed loop (entering it per run costs ~2 us,
        a sizeable share of a tiny op).
        """
        m = _frozen_copy(module, "cpu", example.dtype)
        x = example.detach().to("cpu")

        def run() -> None:
            m(x)

        return run


class TorchCudaBackend:
    """PyTorch eager on the current CUDA GPU, timed with CUDA events (``"torch-cuda"``)."""

    name = "torch-cuda"
    device_kind = "cuda"

    def check_available(self) -> None:
        """Raise unless a CUDA GPU is usable from this torch build."""
        if not torch.cuda.is_available():
            build = torch.version.cuda or "none (CPU-only build)"
            raise BackendUnavailableError(
                "backend 'torch-cuda' needs an NVIDIA GPU, but torch.cuda.is_available() is "
                f"False here (torch {torch.__version__}, CUDA build: {build}). Run on a "
                "machine with a GPU and a CUDA build of PyTorch (pip install torch from the "
                "CUDA wheels), or measure the CPU with backend 'torch' or 'onnxruntime'.")

    def prepare(self, module: nn.Module, example: torch.Tensor, threads: int) -> Runner:
        """Return a runner that times one inference with CUDA events and synchronises."""
        self.check_available()
        m = _frozen_copy(module, "cuda", example.dtype)
        x = example.detach().to("cuda")
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)

        def run() -> float:
            start.record()
            m(x)
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return run


class OnnxRuntimeBackend:
    """onnxruntime ``CPUExecutionProvider`` on an in-memory ONNX export (``"onnxruntime"``)."""

    name = "onnxruntime"
    device_kind = "cpu"

    def check_available(self) -> None:
        """Raise unless onnxruntime and an ONNX exporter can be imported."""
        missing = []
        for pkg in ("onnxruntime", "onnx"):
            try:
                __import__(pkg)
            except ImportError:
                missing.append(pkg)
        if missing:
            raise BackendUnavailableError(
                f"backend 'onnxruntime' needs the Python package(s) {', '.join(missing)}: "
                f"pip install {' '.join(missing)}  (or use backend 'torch')")

    def prepare(self, module: nn.Module, example: torch.Tensor, threads: int) -> Runner:
        """Export ``module`` to ONNX and return a runner doing one ``run_with_iobinding``."""
        self.check_available()
        import onnxruntime as ort

        if example.dtype != torch.float32:
            raise BackendUnavailableError(
                f"backend 'onnxruntime' measures float32 only, not {example.dtype}; use "
                "dtype 'float32', or backend 'torch'/'torch-cuda' for reduced precision")
        model = export_onnx(module, example.detach().cpu())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: ORT warns about unused initialisers
        try:
            session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise LanaError(f"onnxruntime cannot load the export of {type(module).__name__}: "
                            f"{exc}") from exc
        # Binding once keeps the per-run Python overhead at ~4 us instead of ~9 us with
        # session.run(feed); per-op overhead adds up across a LUT-composed network.
        x = np.ascontiguousarray(example.detach().cpu().numpy())
        binding = session.io_binding()
        binding.bind_cpu_input(session.get_inputs()[0].name, x)
        for out in session.get_outputs():
            binding.bind_output(out.name, "cpu")

        def run() -> None:
            session.run_with_iobinding(binding)

        return run


#: Registry of latency backends: name -> zero-argument factory returning a Backend.
#: Other modules may register more (e.g. an OpenVINO or TensorRT backend).
BACKENDS: dict[str, Callable[[], Backend]] = {
    "torch": TorchBackend,
    "onnxruntime": OnnxRuntimeBackend,
    "torch-cuda": TorchCudaBackend,
}


def get_backend(name: str) -> Backend:
    """Instantiate the backend registered as ``name`` (does not check availability)."""
    try:
        factory = BACKENDS[name]
    except (KeyError, TypeError):
        raise BackendUnavailableError(
            f"unknown latency backend {name!r}; known backends: "
            f"{', '.join(sorted(BACKENDS))}") from None
    return factory()


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
) -> Measurement:
    """Measure the latency of one inference of ``module`` at ``input_shape``.

    ``input_shape`` is the full shape including the batch dimension, which must equal
    ``settings.batch_size``. The input is random (seeded) data of ``settings.dtype``.
    Raises :class:`~lana.errors.BackendUnavailableError` if the backend cannot run here.
    See the module docstring for the stopping rule; the median is the latency.
    """
    return measure_interleaved({"module": module}, input_shape, settings, rounds=1,
                               warmup=warmup, min_repeats=min_repeats,
                               max_repeats=max_repeats, max_seconds=max_seconds,
                               rel_ci=rel_ci)["module"]


def measure_interleaved(
    modules: dict[str, nn.Module],
    input_shape: tuple[int, ...],
    settings: Settings,
    *,
    rounds: int = 3,
    description: str | None = None,
    **measure_kwargs: Any,
) -> dict[str, Measurement]:
    """Measure several modules in interleaved rounds; each result pools its rounds' medians.

    Every module is prepared once (one ONNX export each), then timed once per round in
    turn, so a machine that speeds up or slows down during the measurement affects all of
    them alike and their ratios stay fair. The reported median is the median of the
    per-round medians; the other statistics come from the last round. With a
    ``description``, a progress bar of that name follows the exports and the rounds.
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or shape[0] != settings.batch_size:
        raise ConfigError(f"input_shape {shape} must start with the batch size "
                          f"{settings.batch_size} of the settings")
    backend = get_backend(settings.backend)
    backend.check_available()
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(shape, generator=gen).to(DTYPES[settings.dtype])
    medians: dict[str, list[float]] = {name: [] for name in modules}
    last: dict[str, Measurement] = {}
    from lana.progress import progress

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
        with torch.inference_mode():
            for _ in range(max(1, rounds)):
                for name, runner in runners.items():
                    last[name] = time_runner(runner, **measure_kwargs)
                    medians[name].append(last[name].median_ms)
                    step()
    return {name: dataclasses.replace(last[name], median_ms=float(np.median(medians[name])))
            for name in modules}


# ---------------------------------------------------------------------------- LUT


class LatencyTable:
    """The latency lookup table, stored as a ``lana-lut/1`` JSON file (see module doc)."""

    def __init__(self, path: str | Path | None = None) -> None:
        """Open the LUT at ``path``, loading it if the file exists; ``None``: in memory."""
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, dict[str, Any]] = {}
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
        write_json(self.path, {"format": LUT_FORMAT, "entries": self._entries})

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
