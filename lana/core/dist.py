"""Running under ``torchrun``: process group, rank/world, barriers, and the test kill hook.

lana reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...) and joins
one process group per job: gloo for CPU tensors, plus NCCL for GPU tensors where GPUs
are. :func:`resolve_device` turns the config's ``device`` into this process's device.
Without torchrun everything here is a no-op (rank 0 of 1), so single-process code paths
stay unchanged.
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import timedelta
from types import ModuleType


def _torch_distributed() -> ModuleType | None:
    """``torch.distributed`` when this process has joined a process group, else None.

    Only looked up, never imported: no group can exist before torch.distributed was
    imported (by :func:`init_from_env` or the caller's own code), and commands that need
    no torch at all (``lana search LIBRARY``, ``lana config``) run through this module.
    """
    td = sys.modules.get("torch.distributed")
    if td is None or not td.is_available() or not td.is_initialized():
        return None
    return td


def env_world() -> int:
    """The world size torchrun announced (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_from_env() -> tuple[int, int]:
    """Join the job's process group if started by torchrun; return ``(rank, world)``.

    On a machine with GPUs the group is ``cpu:gloo,cuda:nccl``: collectives on GPU tensors
    go through NCCL, those on CPU tensors through gloo, so the same group serves training
    on the GPUs (``device: cuda``) and on the CPUs (``device: cpu``). The NCCL
    communicator is made lazily, at the first collective on a GPU tensor. The barrier
    timeout is long (``LANA_DIST_TIMEOUT_S``, default 24 h) because ranks wait at barriers
    while rank 0 alone runs single-process stages such as latency profiling.
    """
    if env_world() <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        import torch

        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        timeout = timedelta(seconds=float(os.environ.get("LANA_DIST_TIMEOUT_S", 86400)))
        dist.init_process_group(backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def resolve_device(spec: str = "auto"):
    """The device this process trains and evaluates on, from the config's ``device``.

    ``auto``: a GPU when CUDA is available (under torchrun, the one of this process's
    ``LOCAL_RANK``, when every process of the node has its own), else the CPU. ``cuda``
    asks for that GPU and fails clearly without one; ``cuda:N`` picks GPU ``N`` of a single
    process; ``cpu`` stays on the CPU even where GPUs are. Every rank of a job resolves the
    same kind of device, so the processes agree on how they communicate.
    """
    import torch

    from lana.errors import ConfigError

    spec = (spec or "auto").strip().lower()
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) if env_world() > 1 else 1
    if spec == "cpu":
        return torch.device("cpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        if gpus == 0:
            return torch.device("cpu")
        if gpus < per_node:
            from lana.core.progress import log

            log(f"[yellow]device auto: {per_node} processes on this node but {gpus} "
                "GPU(s); training on the CPUs (start at most one process per GPU, or set "
                "device: cpu to silence this)[/yellow]")
            return torch.device("cpu")
        spec = "cuda"
    if not spec.startswith("cuda"):
        raise ConfigError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    if gpus == 0:
        build = torch.version.cuda or "none (a CPU-only build)"
        raise ConfigError(f"device {spec!r} asks for an NVIDIA GPU, but "
                          f"torch.cuda.is_available() is False (torch's CUDA version: "
                          f"{build}); use device: cpu or auto, or install a CUDA build of "
                          "torch on a machine with a GPU")
    if spec == "cuda":
        index = local_rank if env_world() > 1 else torch.cuda.current_device()
        if env_world() > 1 and gpus < per_node:
            raise ConfigError(f"device 'cuda': torchrun started {per_node} processes on this "
                              f"node but it has {gpus} GPU(s), and NCCL needs one GPU per "
                              f"process; use --nproc-per-node {gpus} (or fewer), or "
                              "device: cpu")
    else:
        if env_world() > 1:
            raise ConfigError(f"device {spec!r}: under torchrun every process uses the GPU "
                              "of its LOCAL_RANK; write device: cuda (choose the GPUs with "
                              "CUDA_VISIBLE_DEVICES)")
        try:
            index = int(spec.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N"
                              ) from None
        if not 0 <= index < gpus:
            raise ConfigError(f"device {spec!r}: this machine has {gpus} GPU(s), numbered "
                              f"0 to {gpus - 1}")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def rank() -> int:
    """This process's rank (0 without a process group)."""
    td = _torch_distributed()
    return td.get_rank() if td is not None else 0


def world() -> int:
    """The number of processes in the job (1 without a process group)."""
    td = _torch_distributed()
    return td.get_world_size() if td is not None else 1


def is_main() -> bool:
    """True on the one process that writes shared artifacts (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    td = _torch_distributed()
    if td is not None and td.get_world_size() > 1:
        td.barrier()


def all_ok(ok: bool) -> bool:
    """True when ``ok`` holds on every rank, so all ranks can stop together on an error."""
    td = _torch_distributed()
    if td is None or td.get_world_size() <= 1:
        return ok
    import torch

    flag = torch.tensor([0 if ok else 1], dtype=torch.int64)
    td.all_reduce(flag)  # gloo (CPU tensor) also in a group that has NCCL for GPUs
    return int(flag.item()) == 0


def share(value):
    """Rank 0's ``value`` on every rank (``value`` itself without a process group); every
    rank must call it. For small plain values (it pickles them between the job's own
    processes)."""
    td = _torch_distributed()
    if td is None or td.get_world_size() <= 1:
        return value
    box = [value]
    td.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun command)."""
    td = _torch_distributed()
    if td is not None:
        td.destroy_process_group()


# ------------------------------------------------------------------ fault injection (tests)

KILL_AT_ENV = "LANA_TEST_KILL_AT"
KILL_RANK_ENV = "LANA_TEST_KILL_RANK"

# Every point where a test can SIGKILL lana (LANA_TEST_KILL_AT=stage:step), with where it
# is. In a step, N stands for a number: a training step (1, 2, ...) or a layer index
# (0, 1, ...). A call to maybe_kill names one of these; the crash-safety tests
# (tests/pipeline/test_scale.py) kill a run at each and check that re-running the same command
# resumes and ends with the same result. Keep this table in step with the calls.
KILL_POINTS: dict[str, dict[str, str]] = {
    "teacher": {"N": "after teacher-training step N, its checkpoint saved if one was due "
                     "(lana.distill.train)"},
    "distill": {"N": "after phase-1 step N of a group of candidates (lana.distill.phase1)",
                "saved-one": "the first candidate of a group saved, the others not yet"},
    "profile": {"layerN": "layer N's candidates measured and saved in the LUT "
                          "(lana.latency.profile)",
                "computed": "latency.json computed but not yet written (Run._stage)"},
    "costs": {"computed": "costs.json computed but not yet written (Run._stage)"},
    "score": {"computed": "scores.json computed but not yet written (Run._stage)"},
    "search": {"computed": "a budget's search.json computed but not yet written "
                           "(Run._stage)"},
    "finetune": {"N": "after fine-tuning step N, its checkpoint saved if one was due "
                      "(lana.distill.train)",
                 "computed": "a budget's finetune.json computed but not yet written "
                             "(Run._stage)"},
    "export": {"saved": "the student's files written, its latency not yet verified "
                        "(Run.export)",
               "computed": "a budget's export.json computed but not yet written "
                           "(Run._stage)"},
}


def _is_kill_point(stage: str, step: str) -> bool:
    import re

    return any(re.fullmatch(known.replace("N", "[0-9]+"), step)
               for known in KILL_POINTS.get(stage, {}))


def _kill_point_error(target: str) -> str:
    known = ", ".join(f"{stage}:{step}" for stage, steps in KILL_POINTS.items()
                      for step in steps)
    return (f"{KILL_AT_ENV}={target!r} is not a kill point; known (N a number): {known}; "
            "see lana.core.dist.KILL_POINTS")


def check_kill_env() -> None:
    """Raise ConfigError unless ``LANA_TEST_KILL_AT`` is unset, empty or a point of
    :data:`KILL_POINTS`, and ``LANA_TEST_KILL_RANK`` unset or a rank number.

    ``lana`` checks at start, so that a misspelt point fails at once instead of letting
    the run finish without being killed.
    """
    from lana.errors import ConfigError

    target = os.environ.get(KILL_AT_ENV)
    if target and not _is_kill_point(*target.partition(":")[::2]):
        raise ConfigError(_kill_point_error(target))
    only = os.environ.get(KILL_RANK_ENV)
    if only is not None and not (only.isdigit() and only.isascii()):
        raise ConfigError(f"{KILL_RANK_ENV}={only!r} is not a rank number (0, 1, ...)")


def maybe_kill(stage: str, step: int | str) -> None:
    """Test hook: SIGKILL this process when ``LANA_TEST_KILL_AT`` is ``stage:step``.

    ``stage:step`` must be one of :data:`KILL_POINTS` (e.g. ``distill:3``,
    ``profile:layer0``, ``export:saved``, ``score:computed``); while the variable is set,
    a call naming an unknown point, or a variable naming one, is an error.
    ``LANA_TEST_KILL_RANK`` limits the kill to one rank. Unset in normal use, where this
    costs one environment lookup.
    """
    target = os.environ.get(KILL_AT_ENV)
    if not target:
        return
    # Only tests get here. Both sides are checked, so that a misspelt point is an error
    # rather than a run that is never killed.
    if not _is_kill_point(stage, str(step)):
        raise ValueError(f"maybe_kill({stage!r}, {step!r}) names no point of "
                         "lana.core.dist.KILL_POINTS: add it there")
    check_kill_env()
    if target != f"{stage}:{step}":
        return
    only = os.environ.get(KILL_RANK_ENV)
    if only is not None and int(only) != rank():
        return
    os.kill(os.getpid(), signal.SIGKILL)


def on_main(fn):
    """Run ``fn`` on rank 0 only, then release every rank together; return its result
    (None on other ranks). An error on rank 0 stops every rank: rank 0 re-raises it, the
    others raise a LanaError pointing at it, so no rank waits forever at a barrier."""
    if world() <= 1:
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others know
            error = exc
    if not all_ok(error is None):
        if error is not None:
            raise error
        from lana.errors import LanaError

        raise LanaError("rank 0 stopped with an error (see its message above); every rank "
                        "stops with it")
    return result


# ------------------------------------------------------------------ memory

def reset_peak_rss() -> None:
    """Start a new peak-memory window (Linux: resets VmHWM; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process since :func:`reset_peak_rss`, in MiB
    (``getrusage``'s lifetime peak where /proc is not available)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
