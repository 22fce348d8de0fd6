"""Atomic, safe reading and writing of run-directory artifacts (JSON and safetensors)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from lana.errors import ArtifactError


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader never sees a partial file.

    The bytes go to a temporary file in the same directory, are flushed to disk,
    and only then renamed over the target (rename is atomic on POSIX).
    """
    path = Path(path)
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


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON artifact, naming the file in the error if it is missing or corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist; run the stage that writes it first") from None
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
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist") from None
    try:
        return load(data)
    except (SafetensorError, Exception) as exc:  # safetensors raises several types
        raise ArtifactError(
            f"{path} is not a valid safetensors file ({exc}); it may be truncated or a "
            "pickle. Delete it and re-run the stage that writes it."
        ) from None
