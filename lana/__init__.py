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
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lana' has no attribute {name!r}")


__all__ = ["AccelerateResult", "Chain", "Config", "LanaError", "Run", "accelerate", "decompose",
           "load_config", "load_student", "run", "run_status", "__version__"]
