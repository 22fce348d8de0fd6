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
    from lana.errors import LanaError
    from lana.model.decompose import Chain, decompose
    from lana.pipeline.runner import Run, run
    from lana.pipeline.status import run_status
    from lana.pipeline.student import load_student

# Imported lazily so that `import lana.search` (the ILP) needs neither torch nor timm. No
# public name is also the name of a subpackage or module of lana (tests/test_imports.py):
# importing one binds it on the package under its own name, which would shadow the public
# object (as `lana.decompose`, a module beside the function, once did).
_LAZY = {
    "accelerate": "lana.api", "AccelerateResult": "lana.api",
    "Config": "lana.config", "load_config": "lana.config",
    "Chain": "lana.model.decompose", "decompose": "lana.model.decompose",
    "LanaError": "lana.errors", "Run": "lana.pipeline.runner", "run": "lana.pipeline.runner",
    "load_student": "lana.pipeline.student", "run_status": "lana.pipeline.status",
}


def __getattr__(name: str) -> Any:
    """Resolve a public name of ``_LAZY`` at first use and keep it (later uses are plain
    attribute lookups)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lana' has no attribute {name!r}")


__all__ = ["AccelerateResult", "Chain", "Config", "LanaError", "Run", "accelerate", "decompose",
           "load_config", "load_student", "run", "run_status", "__version__"]
