"""lana: Latency Aware Network Acceleration (Molchanov et al., ECCV 2022) for PyTorch.

Public API::

    lana.decompose(model, example_input[, layers]) -> Chain  # stem, layers, head
    lana.run(config_or_yaml, out_dir) -> summary dict  # the whole pipeline, resumable
    lana.Run(out_dir, config)                          # stage by stage
    lana.load_student(path) -> nn.Module               # a saved student, rebuilt
    lana.run_status(out_dir) -> dict                   # how far a run got (read only)
    lana.accelerate(model, train_ds, val_ds, budget=2) # one call: .student .summary .report
    lana.search.solve(library, budgets, k=...)          # the ILP alone (no torch needed)
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from lana.api import AccelerateResult, accelerate
    from lana.config import Config, load_config
    from lana.decompose import Chain, decompose
    from lana.errors import LanaError
    from lana.pipeline import Run, run
    from lana.status import run_status
    from lana.student import load_student

# Imported lazily so that `import lana.search` (the ILP) needs neither torch nor timm.
_LAZY = {
    "accelerate": "lana.api", "AccelerateResult": "lana.api",
    "Config": "lana.config", "load_config": "lana.config",
    "Chain": "lana.decompose", "decompose": "lana.decompose",
    "LanaError": "lana.errors", "Run": "lana.pipeline", "run": "lana.pipeline",
    "load_student": "lana.student", "run_status": "lana.status",
}


def __getattr__(name: str) -> Any:
    """Resolve a public name of ``_LAZY`` at first use and keep it (later uses are plain
    attribute lookups)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        # Written to the namespace directly: _Package.__setattr__ is for the import system.
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lana' has no attribute {name!r}")


class _Package(types.ModuleType):
    """The ``lana`` package object, which keeps public callables from being shadowed.

    Importing a submodule binds it on its package (``lana.decompose`` becomes the module
    ``lana/decompose.py``) the first time it loads, wherever that import happens. Where a
    public name of ``_LAZY`` is also a submodule's name, that would replace the function
    the README calls, ``lana.decompose(model, x)``, with the module: a "'module' object is
    not callable" error that depends on import order. The binding is skipped instead, so
    the name still resolves through ``__getattr__``. The submodule itself stays reachable
    with ``from lana.decompose import ...``, ``importlib.import_module`` or ``sys.modules``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if (name in _LAZY and isinstance(value, types.ModuleType)
                and value.__name__ == f"{__name__}.{name}"):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["AccelerateResult", "Chain", "Config", "LanaError", "Run", "accelerate", "decompose",
           "load_config", "load_student", "run", "run_status", "__version__"]
