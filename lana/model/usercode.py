"""The user's own code named in a config: ``python:<module or file.py>:<callable>``, as
``model.name`` (a model builder) and ``data.name`` (a dataset builder) take it."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from lana.errors import ConfigError


def import_callable(target: str, what: str, kinds: tuple[type, ...] = ()) -> Callable:
    """``<module>:<attr>`` -> the object; ``<module>`` is a dotted name or a .py file.

    ``what`` names the setting in errors (``"model.name"``); ``kinds`` are the classes a
    missing name's listing includes beside the module's own functions."""
    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise ConfigError(f"{what} 'python:{target}' must be 'python:<module>:<callable>' "
                          "or 'python:<path/to/file.py>:<callable>', e.g. "
                          "'python:my_code.py:build'")
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            path = os.path.abspath(where)
            if not os.path.isfile(path):
                raise ConfigError(f"{what} 'python:{target}': there is no file {path} "
                                  "(a relative path is taken from the current directory)")
            # Named by path and content: an edited file is imported afresh (a notebook
            # need not restart), an unchanged one once.
            with open(path, "rb") as f:
                key = hashlib.sha256(path.encode() + b"\0" + f.read()).hexdigest()[:16]
            name = f"lana_user_code_{key}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module  # dataclasses and pickling look a module up
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
        else:
            # As `python -m` does: modules beside the user (the console script lacks it).
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.append(os.getcwd())
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{what} 'python:{target}': importing {where!r} failed "
                          f"({type(exc).__name__}: {exc}); a module must be importable from "
                          "the current directory or PYTHONPATH, a file given by its "
                          "path") from exc
    if not hasattr(module, attr):
        found = sorted(k for k, v in vars(module).items() if not k.startswith("_")
                       and (isinstance(v, type) and issubclass(v, kinds)
                            or callable(v) and getattr(v, "__module__", None)
                            == module.__name__))
        raise ConfigError(f"{what} 'python:{target}': {where} has no {attr!r}; it "
                          f"defines {found}")
    return getattr(module, attr)


def takes(fn: Callable, names: Iterable[str]) -> set[str]:
    """Which of ``names`` ``fn`` accepts as keywords (all of them through ``**kwargs``)."""
    names = set(names)
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature (a builtin): pass everything
        return names
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return names
    return names & {p.name for p in params
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def code_digest(name: str, what: str) -> str | None:
    """For ``python:<module>:<callable>``, the SHA-256 of the file that defines the
    callable, so that results made by an earlier version of the user's code are not
    reused; None for any other name (or code outside a readable .py file)."""
    source, _, target = name.partition(":")
    if source != "python" or ":" not in target:  # not python:, or accelerate()'s label
        return None
    try:
        path = inspect.getsourcefile(import_callable(target, what))
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except (TypeError, OSError):
        return None
