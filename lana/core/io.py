"""Atomic, safe reading and writing of run-directory artifacts (JSON and safetensors).

Every file written here gets a checksum sidecar ``NAME.sha256`` (``sha256sum -c``
format). Readers verify it: a file changed or truncated after lana wrote it raises
:class:`CorruptArtifactError` naming it. :func:`verify_tree` checks a whole directory and,
on request, moves corrupt files aside so that the stage that writes them recomputes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lana.core.layout import LOCK
from lana.errors import ArtifactError, LanaError

if TYPE_CHECKING:
    from torch import nn

CHECKSUM_SUFFIX = ".sha256"


class CorruptArtifactError(ArtifactError):
    """A file's content does not match the checksum lana recorded when writing it."""

    def __init__(self, message: str, paths: list[Path] | None = None) -> None:
        super().__init__(message)
        self.paths = list(paths or [])


class RunLockedError(LanaError):
    """Another live lana process is writing the same run directory."""


def checksum_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar that holds ``path``'s sha256."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, checksum: bool = True) -> None:
    """Write ``data`` to ``path`` so that a reader never sees a partial file.

    The bytes go to a temporary file in the same directory, are flushed to disk,
    and only then renamed over the target (rename is atomic on POSIX). With ``checksum``
    the sha256 goes to ``path.sha256`` afterwards; the old sidecar is removed first, so a
    crash between the two writes leaves a complete file without a checksum (accepted
    unverified), never a good file with a stale checksum (which would read as corrupt).
    """
    path = Path(path)
    side = checksum_path(path)
    if checksum:
        side.unlink(missing_ok=True)
    _atomic_write(path, data)
    if checksum:
        _atomic_write(side, f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays show up in scores and costs; JSON wants plain numbers.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (NaN/inf become null)."""
    text = json.dumps(_finite(json.loads(json.dumps(obj, default=_json_default))), indent=2)
    atomic_write_bytes(path, (text + "\n").encode())


def _verified_bytes(path: Path, kind: str, missing: str) -> bytes:
    """``path``'s bytes, checked against its checksum sidecar; a missing file or a folder
    raises ArtifactError naming it (``missing`` says what to do, ``kind`` what it should be)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist{missing}") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path} is a directory, not a {kind} file") from None
    verify_bytes(path, raw)
    return raw


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON artifact, naming the file in the error if it is missing or corrupt."""
    path = Path(path)
    raw = _verified_bytes(path, "JSON", "; run the stage that writes it first")
    try:
        return json.loads(raw.decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{path} is corrupt ({exc}); delete it and re-run the stage that writes it"
        ) from None


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, Any],
                 metadata: dict[str, str] | None = None) -> None:
    """Atomically save a flat dict of tensors as safetensors."""
    from safetensors.torch import save

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(flat, metadata=metadata))


def load_tensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a safetensors file; a missing, truncated or non-safetensors file is named clearly."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    data = _verified_bytes(path, "safetensors", "")
    try:
        return load(data)
    except (SafetensorError, Exception) as exc:  # safetensors raises several types
        kind = _pickle_kind(data)
        if kind:
            # Never unpickled: a pickle can run arbitrary code when loaded.
            raise ArtifactError(
                f"{path} is {kind}, not safetensors; lana never unpickles files (loading a "
                "pickle can run arbitrary code). If you trust it, convert it once with: "
                "python -c \"import torch; from safetensors.torch import save_file; "
                f"save_file(torch.load('{path}', weights_only=True), "
                f"'{path.with_suffix('.safetensors')}')\" (a checkpoint that nests the state "
                "dict, e.g. under 'state_dict', needs that key picked out first)."
            ) from None
        raise ArtifactError(
            f"{path} is not a valid safetensors file ({exc}); it may be truncated. Delete "
            "it and re-run the stage that writes it (or run with --recompute-corrupt)."
        ) from None


#: Where training scripts nest the state dict in a checkpoint, in the order timm's
#: ``load_checkpoint`` looks (the non-EMA weights first).
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
#: Prefixes that wrappers add to every key: DDP/DataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A trained model's weights from the user: a safetensors file, or a ``torch.save``
    checkpoint loaded with ``weights_only=True`` (torch's restricted unpickler: tensors and
    plain containers only, never arbitrary objects). ``path#key`` picks a nested state dict
    (e.g. ``ckpt.pth#state_dict_ema``); without it the usual nestings are tried. Wrapper
    prefixes (``module.``, ``_orig_mod.``) are removed. lana's own files stay safetensors."""
    import torch

    raw, _, key = str(path).rpartition("#") if "#" in str(path) else (str(path), "", "")
    if key and Path(str(path)).is_file():  # a file name that holds a '#'
        raw, key = str(path), ""
    path = Path(raw)
    try:
        head = path.open("rb").read(8)
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path} is a directory, not a weights file") from None
    if not _pickle_kind(head):
        state = load_tensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ArtifactError(
                f"{path} is {_pickle_kind(head)} that torch.load(weights_only=True) refuses "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); it "
                "holds more than tensors (e.g. a whole pickled model or an argparse "
                "Namespace), and lana never unpickles arbitrary objects. Save the model's "
                "state_dict() instead, e.g. as safetensors (safetensors.torch.save_file)"
            ) from None
    state = _pick_state(state, key, path)
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def file_digest(path: str | os.PathLike[str], what: str) -> str:
    """The SHA-256 of a weights file named in the config as ``what`` (a ``#key`` suffix
    included: another entry of the same checkpoint is other weights); ArtifactError
    naming ``what`` when the file does not exist."""
    raw = str(path)
    file = Path(raw.rpartition("#")[0] if "#" in raw and not Path(raw).is_file() else raw)
    try:
        data = file.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise ArtifactError(f"{what}: {file} does not exist or is not a file") from None
    return hashlib.sha256(data + b"#" + raw.encode()[len(str(file)):]).hexdigest()


def _pick_state(obj: Any, key: str, path: Path) -> dict[str, Any]:
    import torch

    def is_state(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())

    if key:
        if not isinstance(obj, dict) or key not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else []
            raise ArtifactError(f"{path} has no entry {key!r} (it has {keys})")
        obj = obj[key]
        if not is_state(obj):
            raise ArtifactError(f"{path}#{key} is not a state dict of named tensors")
        return obj
    if is_state(obj):
        return obj
    if isinstance(obj, dict):
        for k in _NESTED_STATE_KEYS:
            if is_state(obj.get(k)):
                return obj[k]
        keys = sorted(map(str, obj))
        raise ArtifactError(f"{path} holds no state dict of named tensors at its top level "
                            f"or under {list(_NESTED_STATE_KEYS)}; its keys: {keys[:20]}. "
                            f"Name the entry to use: {path}#<key>")
    raise ArtifactError(f"{path} holds a {type(obj).__name__}, not a state dict")


def _pickle_kind(data: bytes) -> str | None:
    if data[:4] == b"PK\x03\x04":
        return "a zip archive (the format of torch.save)"
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (e.g. an old torch.save file)"
    return None


# ------------------------------------------------------------------ checksums

def _recorded_sha(side: Path) -> str | None:
    try:
        text = side.read_text().split()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return text[0].lower() if text else ""


def verify_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Raise :class:`CorruptArtifactError` if ``data`` (``path``'s content) does not match
    its checksum sidecar. Files without a sidecar (user files, or written before the
    checksum landed) are accepted as they are."""
    path = Path(path)
    expected = _recorded_sha(checksum_path(path))
    if expected is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CorruptArtifactError(_corrupt_message([path]), [path])


def _corrupt_message(paths: list[Path]) -> str:
    names = ", ".join(str(p) for p in paths[:5]) + (f" and {len(paths) - 5} more"
                                                   if len(paths) > 5 else "")
    return (f"corrupt file{'s' if len(paths) > 1 else ''}: {names}. The content no longer "
            f"matches the sha256 lana recorded next to it ({CHECKSUM_SUFFIX}), so it was "
            "truncated or changed after it was written (disk full, a copy that stopped, an "
            "edit). Re-run the same command with --recompute-corrupt to move such files "
            "aside (to NAME.corrupt) and recompute only them; or delete them yourself. If "
            f"you edited a file on purpose, delete its {CHECKSUM_SUFFIX} file instead.")


def verify_tree(root: str | os.PathLike[str], fix: bool = False) -> list[Path]:
    """Check every checksummed file under ``root``; return the corrupt ones.

    With ``fix`` each corrupt file is renamed to ``NAME.corrupt`` (kept for inspection)
    and its sidecar removed, so the stage that writes it recomputes it on the next run;
    without ``fix`` any corrupt file raises :class:`CorruptArtifactError` naming them all.
    """
    root = Path(root)
    bad: list[Path] = []
    for side in sorted(root.rglob(f"*{CHECKSUM_SUFFIX}")):
        target = side.with_name(side.name[:-len(CHECKSUM_SUFFIX)])
        if not target.is_file():
            continue
        expected = _recorded_sha(side)
        digest = hashlib.sha256()
        with open(target, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != expected:
            bad.append(target)
    if bad and not fix:
        raise CorruptArtifactError(_corrupt_message(bad), bad)
    for target in bad:
        os.replace(target, target.with_name(target.name + ".corrupt"))
        checksum_path(target).unlink(missing_ok=True)
    return bad


# ------------------------------------------------------------------ locks

@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for a read-modify-write
    that several processes share (e.g. ranks updating one index). Blocks until free."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


_held: dict[str, list[int]] = {}  # lock path -> [fd, depth]: re-entrant within a process

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Stop two lana processes from writing one run directory at the same time.

    ``DIR/lana.lock`` is held with ``flock`` and names the holder (pid, host, command).
    The kernel drops the lock when its process dies, however it dies, so a lock left by a
    killed run is simply taken over. Re-entrant within one process.
    """
    import fcntl
    import socket
    import sys
    import time

    path = Path(run_dir) / LOCK
    key = str(path.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(path)
        os.close(fd)
        who = (f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('command')}, "
               f"since {holder.get('since')})" if holder else "another process")
        raise RunLockedError(
            f"{run_dir} is being written by another lana run: {who}. Two runs writing one "
            f"directory would overwrite each other's work. Wait for it to finish, stop it "
            f"(kill {holder.get('pid', 'PID')}), or use another --out directory."
        ) from None
    old = _lock_holder(path)
    if old.get("pid") and old.get("host") == socket.gethostname() \
            and not _pid_alive(int(old["pid"])):
        from lana.core.progress import log

        log(f"[yellow]{path}: taking over the lock of pid {old['pid']}, which is no longer "
            "running[/yellow]")
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join(sys.argv)[:200],
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    _held[key] = [fd, 1]
    # Half-written temporaries of a killed writer (see _atomic_write): nobody else writes
    # here while we hold the lock, so they are garbage.
    for tmp in Path(run_dir).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    try:
        yield
    finally:
        del _held[key]
        os.ftruncate(fd, 0)
        os.close(fd)


def lock_holder(run_dir: str | os.PathLike[str]) -> dict | None:
    """The process now holding ``DIR/lana.lock`` (:func:`run_lock`: pid, host, command,
    since), or None when no live lana process works in the directory. Takes nothing."""
    import fcntl

    path = Path(run_dir) / LOCK
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_holder(path) or {"pid": "?"}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _lock_holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------- weights into a model
def load_state(model: nn.Module, state: dict, path: str | os.PathLike[str]) -> None:
    """Load ``state`` into ``model`` (strictly); a mismatch raises ArtifactError naming
    ``path`` and what differs, in a few lines."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        why = _state_mismatch(model, state) or str(exc)
        raise ArtifactError(f"{path} does not fit the model: {why}") from None


def load_matching(model: nn.Module, path: str | Path) -> str:
    """Load every tensor of the weights file ``path`` whose name and shape match ``model``'s
    (pretrained weights for a model with another classifier or input channels); the rest of
    ``model`` keeps its initialisation. Returns what was loaded, in words; raises
    ArtifactError when nothing matches (another architecture)."""
    state = load_state_dict(path)
    own = model.state_dict()
    fits = {k: v for k, v in state.items()
            if k in own and tuple(getattr(v, "shape", ())) == tuple(own[k].shape)}
    if not fits:
        raise ArtifactError(f"teacher_training.init {path} does not fit the model: "
                            f"{_state_mismatch(model, state)}")
    model.load_state_dict(fits, strict=False)
    kept = [k for k in own if k not in fits and not k.endswith("num_batches_tracked")]
    return (f"{len(fits)} of {len(own)} tensors loaded" +
            (f"; freshly initialised: {', '.join(kept[:4])}{', ...' if len(kept) > 4 else ''}"
             if kept else ""))


def _state_mismatch(model: nn.Module, state: dict) -> str:
    """What differs between ``model``'s state dict and ``state``, in a few lines (torch's
    own message lists every key, hundreds for a real network)."""
    own = model.state_dict()

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in own.items() if k in state and hasattr(state[k], "shape")
              and tuple(state[k].shape) != tuple(v.shape)]
    parts = [f"{len(missing)} of the model's {len(own)} entries missing ({some(missing)})"
             if missing else "",
             f"{len(extra)} unexpected ({some(extra)})" if extra else "",
             f"{len(shapes)} of another shape ({some(shapes)})" if shapes else ""]
    text = "; ".join(p for p in parts if p)
    if text and shapes and not missing and not extra:
        text += (". Same layers, other sizes: build the model as it was trained "
                 "(model.kwargs, e.g. num_classes)")
    elif text and missing and len(missing) == len(own):
        text += ". No name matches: is it another architecture, or are the weights "
        text += "nested or prefixed (pick an entry with weights: FILE#key)?"
    return text
