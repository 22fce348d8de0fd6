"""Latency backends: how one inference of a module runs on the target device.

A backend turns an ``nn.Module`` and an example input into a zero-argument *runner* that
executes one inference (:data:`Runner`). Backends that run ONNX also accept an ONNX model
directly (:meth:`OnnxBackend.prepare_onnx`): that is how ``lana profile BUNDLE`` measures
a candidate bundle on a machine that has neither the teacher's code nor its weights.

Every backend is registered in :data:`BACKENDS` by name. A backend that cannot run here
raises :class:`~lana.errors.BackendUnavailableError` saying what is missing and how to get
it; none is ever silently replaced by another.

CPU backends
    ``torch``: PyTorch eager, eval mode, ``torch.inference_mode``, torch's intra-op threads
    pinned to ``Settings.threads``, glibc malloc's thresholds fixed (:func:`steady_malloc`)
    so that no run page-faults its activations in afresh.
    ``torch-compile``: ``torch.compile(mode="max-autotune-no-cudagraphs")`` of the eval
    module. **The first call compiles** (C++ code generation with the system compiler):
    seconds per small op and ~45 s for a whole EfficientNet on 2 cores, paid once per op
    and shape inside :meth:`prepare`, never inside the timed loop. A LUT of hundreds of
    candidates therefore takes tens of minutes to build the first time; it is cached.
    ``onnxruntime``: the module exported to ONNX in memory (:func:`export_onnx`), run by an
    onnxruntime ``CPUExecutionProvider`` session: ``intra_op_num_threads=threads``,
    ``inter_op_num_threads=1``, ``ORT_SEQUENTIAL``, all graph optimisations, I/O bound once.
    ``openvino``: the same ONNX export compiled by OpenVINO for ``CPU`` with
    ``PERFORMANCE_HINT=LATENCY``, ``INFERENCE_NUM_THREADS=threads``, one stream and f32
    inference precision (OpenVINO would otherwise run bf16 on CPUs with AMX, which is not
    what ``dtype: float32`` promises). Optional: ``pip install 'lana[openvino]'``.

GPU backends (timed with CUDA events, synchronised after every run)
    ``torch-cuda``: PyTorch eager on the current GPU.
    ``torch-cuda-graphs``: the same, the inference captured once as a CUDA graph and
    replayed (removes the per-kernel launch overhead, as a deployed graph would).
    ``onnxruntime-cuda`` / ``onnxruntime-tensorrt``: onnxruntime with the CUDA or TensorRT
    execution provider (``pip install onnxruntime-gpu``); a session that would not put the
    graph on the requested provider is an error, not a CPU fallback.
    ``tensorrt``: a TensorRT engine built from the ONNX export (``pip install tensorrt``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from lana.errors import BackendUnavailableError, ConfigError, LanaError

__all__ = [
    "BACKENDS",
    "Backend",
    "OnnxBackend",
    "OnnxRuntimeBackend",
    "OpenVinoBackend",
    "Runner",
    "TensorRtBackend",
    "TorchBackend",
    "TorchCompileBackend",
    "TorchCudaBackend",
    "deploy_env",
    "export_onnx",
    "get_backend",
    "inference_form",
    "steady_malloc",
]

#: A runner executes one inference. It returns ``None`` when the caller should time it
#: with the host clock, or the elapsed milliseconds when the device timed itself (CUDA
#: events), because the host clock would then also count the synchronisation wait.
Runner = Callable[[], float | None]

GPU_HINT = ("Run `lana profile` on a machine with an NVIDIA GPU (build the LUT there from "
            "a bundle: `lana export-candidates DIR --out BUNDLE`, then `lana profile BUNDLE "
            "--backend ... --out lut.json` on the GPU machine), or measure the CPU with "
            "backend 'onnxruntime' or 'torch'.")


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
    deployed = inference_form(module)  # a folded copy, if anything folds
    try:
        for name in order:
            try:
                with _quiet(), torch.no_grad():
                    return exporters[name](deployed, example, opset)
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


@runtime_checkable
class OnnxBackend(Backend, Protocol):
    """A backend that runs ONNX models, so it can also measure a candidate bundle."""

    def prepare_onnx(self, model: bytes, example: np.ndarray, threads: int) -> Runner:
        """Return a runner executing the ONNX ``model`` (one input) on ``example``."""
        ...


def inference_form(module: nn.Module) -> nn.Module:
    """``module`` as it is deployed: blocks with a ``reparameterize()`` method (RepVGG-style
    training-time branches) folded into their inference form. Returns ``module`` itself when
    there is nothing to fold, else a folded deep copy (the caller's module is unchanged)."""
    if not any(hasattr(m, "reparameterize") for m in module.modules()):
        return module
    from lana.space.ops import reparameterize

    return reparameterize(copy.deepcopy(module).eval())


def _frozen_copy(module: nn.Module, device: str, dtype: torch.dtype) -> nn.Module:
    # Work on a copy so measuring never changes the caller's module (mode, dtype,
    # device); no parameter needs grad, so no autograd graph even outside inference mode.
    m = inference_form(copy.deepcopy(module)).to(device=device, dtype=dtype).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _require(packages: dict[str, str], backend: str, extra: str = "") -> None:
    """Raise unless every module in ``packages`` (import name -> pip name) imports."""
    missing = []
    for module, pip_name in packages.items():
        try:
            __import__(module)
        except ImportError:
            missing.append(pip_name)
    if missing:
        raise BackendUnavailableError(
            f"backend {backend!r} needs the Python package(s) {', '.join(missing)}: "
            f"pip install {' '.join(missing)}{extra}")


def _require_cuda(backend: str) -> None:
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (CPU-only build)"
        raise BackendUnavailableError(
            f"backend {backend!r} needs an NVIDIA GPU, but torch.cuda.is_available() is "
            f"False here (torch {torch.__version__}, CUDA build: {build}). " + GPU_HINT)


#: glibc ``mallopt`` parameters and the values :func:`steady_malloc` sets: no block is
#: ever mmapped (so none is unmapped after its run) and the heap's top is given back to the
#: OS only when more than 1 GiB of it is free.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
MMAP_MAX, TRIM_THRESHOLD = 0, 1 << 30
#: The same as environment variables, for the process the user deploys in.
STEADY_MALLOC_ENV = f"MALLOC_MMAP_MAX_={MMAP_MAX} MALLOC_TRIM_THRESHOLD_={TRIM_THRESHOLD}"
_malloc_state: str | None = None


def steady_malloc() -> str:
    """Keep glibc malloc from returning torch's activation memory to the OS between runs.

    By default glibc serves blocks above a (moving) threshold, and every block above 32 MiB,
    with mmap and unmaps them when freed, and gives the top of the heap back once it has
    enough free. A torch eager network then faults its activations (and oneDNN's copies of
    large conv weights) in afresh on every forward pass. On the 2-core reference VM, four
    tf_efficientnetv2_b0 students took 840 000 page faults while they were timed, two of
    them 1.7x slower than the sums of their ops timed alone; with a 32 MiB threshold alone,
    resnest26d students still took 9 million and ran up to 1.9x slower. How much a network
    faults depends on what the process allocated before, so no LUT can predict it. Serving
    every block from the heap and keeping it (what jemalloc/tcmalloc do, and what
    PyTorch's CPU performance guide recommends) makes every run reuse its memory; the LUT
    then adds up. Deploy with the same (:data:`STEADY_MALLOC_ENV`) to get the latency lana
    measured.

    Returns what happened: ``"set"``, ``"already"`` (earlier call), ``"user"`` (the
    environment sets malloc's thresholds or preloads another allocator, or
    ``LANA_MALLOC=default``: left alone) or ``"unsupported"`` (not glibc).
    """
    global _malloc_state
    if _malloc_state is not None:
        return "already"
    if _users_malloc():
        _malloc_state = "user"
        return _malloc_state
    import ctypes

    _malloc_state = "unsupported"
    if not _glibc():
        return _malloc_state
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return _malloc_state
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_MAX, MMAP_MAX) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        _malloc_state = "set"
        from lana.core.progress import log

        log(f"latency: glibc malloc keeps freed memory for reuse while torch is timed (as "
            f"`{STEADY_MALLOC_ENV}`; deploy with the same, or set LANA_MALLOC=default)")
    return _malloc_state


def _users_malloc() -> bool:
    env = os.environ
    preload = env.get("LD_PRELOAD", "")
    return (env.get("LANA_MALLOC") == "default"
            or any(v in env for v in ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_",
                                      "MALLOC_TRIM_THRESHOLD_"))
            or "malloc" in env.get("GLIBC_TUNABLES", "")
            or any(a in preload for a in ("jemalloc", "tcmalloc", "mimalloc")))


def _glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"


def deploy_env(backend: str) -> str | None:
    """The environment a deployment needs to match what ``backend`` measured here: for the
    torch CPU backends on glibc, :data:`STEADY_MALLOC_ENV` (see :func:`steady_malloc`);
    ``None`` when nothing is needed or the user chose their own allocator settings."""
    if backend in ("torch", "torch-compile") and _glibc() and not _users_malloc():
        return STEADY_MALLOC_ENV
    return None


def _float32_only(backend: str, dtype: torch.dtype) -> None:
    if dtype != torch.float32:
        raise BackendUnavailableError(
            f"backend {backend!r} measures float32 only, not {dtype}; use dtype 'float32', "
            "or backend 'torch-cuda' for reduced precision")


class TorchBackend:
    """PyTorch eager on the CPU (``"torch"``)."""

    name = "torch"
    device_kind = "cpu"

    def check_available(self) -> None:
        """Always available: torch is a dependency of lana."""

    def prepare(self, module: nn.Module, example: torch.Tensor, threads: int) -> Runner:
        """Return a runner calling an eval-mode copy of ``module`` on ``example``.

        :func:`lana.latency.timing.measure` pins ``torch.set_num_threads(threads)`` and enters
        ``torch.inference_mode`` around the timed loop (entering it per run costs ~2 us,
        a sizeable share of a tiny op).
        """
        steady_malloc()
        m = _frozen_copy(module, "cpu", example.dtype)
        x = example.detach().to("cpu")

        def run() -> None:
            m(x)

        return run


class TorchCompileBackend:
    """``torch.compile`` on the CPU (``"torch-compile"``); see the module doc for its cost."""

    name = "torch-compile"
    device_kind = "cpu"
    #: Inference-oriented: autotuned kernels, no CUDA graphs (there is no GPU here).
    mode = "max-autotune-no-cudagraphs"

    def check_available(self) -> None:
        """Raise unless torch has a working ``torch.compile`` (it needs a C++ compiler)."""
        if not hasattr(torch, "compile"):
            raise BackendUnavailableError("backend 'torch-compile' needs torch >= 2.0")

    def prepare(self, module: nn.Module, example: torch.Tensor, threads: int) -> Runner:
        """Compile an eval copy of ``module`` for ``example`` and run it once (the compile)."""
        steady_malloc()
        m = _frozen_copy(module, "cpu", example.dtype)
        x = example.detach().to("cpu")
        compiled = torch.compile(m, mode=self.mode, dynamic=False)
        try:
            # Inference mode as in the timed loop: a grad-mode change would fail the
            # compiled guards there and recompile inside the measurement.
            with torch.inference_mode(), _quiet():
                compiled(x)  # the slow first call: code generation happens here
        except Exception as exc:  # inductor raises many types (compiler missing, ...)
            raise BackendUnavailableError(
                f"torch.compile failed for {type(module).__name__} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); it needs a working C++ "
                "compiler (apt-get install g++), or use backend 'torch'") from exc

        def run() -> None:
            compiled(x)

        return run


class TorchCudaBackend:
    """PyTorch eager on the current CUDA GPU, timed with CUDA events (``"torch-cuda"``).

    ``graphs=True`` (``"torch-cuda-graphs"``) captures one inference as a CUDA graph and
    times its replay.
    """

    device_kind = "cuda"

    def __init__(self, graphs: bool = False) -> None:
        self.graphs = graphs
        self.name = "torch-cuda-graphs" if graphs else "torch-cuda"

    def check_available(self) -> None:
        """Raise unless a CUDA GPU is usable from this torch build."""
        _require_cuda(self.name)

    def prepare(self, module: nn.Module, example: torch.Tensor, threads: int) -> Runner:
        """Return a runner that times one inference with CUDA events and synchronises."""
        self.check_available()
        m = _frozen_copy(module, "cuda", example.dtype)
        x = example.detach().to("cuda")
        call: Callable[[], object] = lambda: m(x)  # noqa: E731
        out = None
        if self.graphs:
            # Warm up on a side stream before capture, as torch's CUDA graph docs require.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(3):
                    m(x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                out = m(x)
            call = graph.replay
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)

        def run() -> float:
            start.record()
            call()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        # A replayed graph reads the weights and input and writes the output at the
        # addresses of its capture: once ``call`` is graph.replay nothing else refers to
        # them, and freed, their memory would be reused by the next network's tensors
        # (an illegal memory access, seen on an H200, or silently wrong timings).
        run.keep_alive = (m, x, out, graph if self.graphs else None)  # type: ignore[attr-defined]
        return run


class _ExportsOnnx:
    """Shared ``prepare`` of the ONNX backends: export the module (float32) to ONNX, then
    hand it to the backend's own ``prepare_onnx`` (which a bundle's ONNX files use too)."""

    name: str

    def prepare(self, module: nn.Module, example: torch.Tensor, threads: int) -> Runner:
        """Export ``module`` to ONNX and return ``prepare_onnx``'s runner for ``example``."""
        self.check_available()
        _float32_only(self.name, example.dtype)
        model = export_onnx(module, example.detach().cpu())
        return self.prepare_onnx(model, example.detach().cpu().numpy(), threads)


class OnnxRuntimeBackend(_ExportsOnnx):
    """onnxruntime on an in-memory ONNX export (``"onnxruntime"`` and its GPU variants)."""

    def __init__(self, provider: str = "CPUExecutionProvider",
                 name: str = "onnxruntime") -> None:
        self.provider = provider
        self.name = name
        self.device_kind = "cpu" if provider == "CPUExecutionProvider" else "cuda"

    def check_available(self) -> None:
        """Raise unless onnxruntime (with the wanted provider) and ONNX can be imported."""
        gpu = self.device_kind == "cuda"
        _require({"onnxruntime": "onnxruntime-gpu" if gpu else "onnxruntime",
                  "onnx": "onnx"}, self.name, "" if gpu else "  (or use backend 'torch')")
        import onnxruntime as ort

        if self.provider not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"backend {self.name!r} needs onnxruntime's {self.provider}, but this "
                f"onnxruntime {ort.__version__} offers only {ort.get_available_providers()}. "
                "pip uninstall onnxruntime && pip install onnxruntime-gpu (with CUDA/cuDNN"
                + (" and TensorRT" if "Tensorrt" in self.provider else "")
                + " libraries) on a GPU machine. " + GPU_HINT)

    def prepare_onnx(self, model: bytes, example: np.ndarray, threads: int) -> Runner:
        """Load the ONNX ``model`` into a session and return a runner for ``example``."""
        self.check_available()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: ORT warns about unused initialisers
        try:
            session = ort.InferenceSession(model, opts, providers=[self.provider])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise LanaError(f"onnxruntime ({self.provider}) cannot load the model: "
                            f"{exc}") from exc
        if session.get_providers()[0] != self.provider:
            raise BackendUnavailableError(
                f"onnxruntime could not use {self.provider} (session providers: "
                f"{session.get_providers()}); refusing to time another provider. " + GPU_HINT)
        # Binding once keeps the per-run Python overhead at ~4 us instead of ~9 us with
        # session.run(feed); per-op overhead adds up across a LUT-composed network.
        x = np.ascontiguousarray(example)
        binding = session.io_binding()
        if self.device_kind == "cpu":
            binding.bind_cpu_input(session.get_inputs()[0].name, x)
        else:
            # The input lives on the GPU already, as for the torch-cuda and TensorRT
            # backends: a host-to-device copy in every run would be counted once per op
            # in a LUT sum but once per network in an end-to-end timing.
            x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            binding.bind_ortvalue_input(session.get_inputs()[0].name, x_dev)
        out_device = "cpu" if self.device_kind == "cpu" else "cuda"
        for out in session.get_outputs():
            binding.bind_output(out.name, out_device)

        if self.device_kind == "cpu":
            def run() -> None:
                session.run_with_iobinding(binding)

            return run
        # On the GPU the host clock would measure the launch, not the work: synchronise
        # inside the run so the host clock covers the whole inference.
        def run_sync() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        run_sync.input = x_dev  # type: ignore[attr-defined]  # keep the bound memory alive
        return run_sync


class OpenVinoBackend(_ExportsOnnx):
    """OpenVINO on the CPU from an in-memory ONNX export (``"openvino"``)."""

    name = "openvino"
    device_kind = "cpu"

    def check_available(self) -> None:
        """Raise unless the optional ``openvino`` package is installed."""
        _require({"openvino": "openvino", "onnx": "onnx"}, self.name,
                 "  (or pip install 'lana[openvino]')")

    def prepare_onnx(self, model: bytes, example: np.ndarray, threads: int) -> Runner:
        """Compile the ONNX ``model`` (threads pinned, latency hint) and bind ``example``."""
        self.check_available()
        # OpenVINO's telemetry would try the network on first import; never from lana.
        os.environ.setdefault("OPENVINO_TELEMETRY_OPTOUT", "1")
        import openvino as ov

        core = ov.Core()
        try:
            ov_model = core.read_model(model, b"")
            compiled = core.compile_model(ov_model, "CPU", {
                "INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"})
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise LanaError(f"OpenVINO cannot compile the model: {exc}") from exc
        request = compiled.create_infer_request()
        request.set_input_tensor(ov.Tensor(np.ascontiguousarray(example)))

        def run() -> None:
            request.infer()

        return run


class TensorRtBackend(_ExportsOnnx):
    """A TensorRT engine built from the ONNX export, timed with CUDA events (``"tensorrt"``)."""

    name = "tensorrt"
    device_kind = "cuda"

    def check_available(self) -> None:
        """Raise unless a GPU and the ``tensorrt`` package are present."""
        _require_cuda(self.name)
        _require({"tensorrt": "tensorrt", "onnx": "onnx"}, self.name)

    def prepare_onnx(self, model: bytes, example: np.ndarray, threads: int) -> Runner:
        """Build an fp32 engine for the ONNX ``model`` and return a runner for ``example``."""
        self.check_available()
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.ERROR)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(model):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise LanaError(f"TensorRT cannot parse the ONNX model: {errs}")
        config = builder.create_builder_config()
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise LanaError("TensorRT failed to build an engine (see its log above)")
        engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        context = engine.create_execution_context()
        buffers = []
        for i in range(engine.num_io_tensors):
            tname = engine.get_tensor_name(i)
            shape = tuple(engine.get_tensor_shape(tname))
            if engine.get_tensor_mode(tname) == trt.TensorIOMode.INPUT:
                buf = torch.from_numpy(np.ascontiguousarray(example)).cuda()
            else:
                buf = torch.empty(shape, dtype=torch.float32, device="cuda")
            buffers.append(buf)
            context.set_tensor_address(tname, buf.data_ptr())
        stream = torch.cuda.Stream()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)

        def run() -> float:
            start.record(stream)
            context.execute_async_v3(stream.cuda_stream)
            end.record(stream)
            end.synchronize()
            return float(start.elapsed_time(end))

        run.buffers = buffers  # type: ignore[attr-defined]  # keep the memory alive
        return run


#: Registry of latency backends: name -> zero-argument factory returning a Backend.
#: Other modules may register more. Its built-in names are also listed, without torch, in
#: lana.config.BUILTIN_BACKENDS (config validation checks names against them).
BACKENDS: dict[str, Callable[[], Backend]] = {
    "torch": TorchBackend,
    "onnxruntime": OnnxRuntimeBackend,
    "openvino": OpenVinoBackend,
    "torch-compile": TorchCompileBackend,
    "torch-cuda": TorchCudaBackend,
    "torch-cuda-graphs": lambda: TorchCudaBackend(graphs=True),
    "onnxruntime-cuda": lambda: OnnxRuntimeBackend("CUDAExecutionProvider",
                                                   "onnxruntime-cuda"),
    "onnxruntime-tensorrt": lambda: OnnxRuntimeBackend("TensorrtExecutionProvider",
                                                       "onnxruntime-tensorrt"),
    "tensorrt": TensorRtBackend,
}


def get_backend(name: str) -> Backend:
    """Instantiate the backend registered as ``name`` (does not check availability)."""
    try:
        factory = BACKENDS[name]
    except (KeyError, TypeError):
        raise BackendUnavailableError.unknown(name, BACKENDS) from None
    return factory()
