"""The ``lana`` command line.

``commands`` (the parser, one subcommand per stage, and :func:`main`, the console
script's entry point), ``config_doc`` (the configuration reference, ``lana config
--reference``), ``demo`` (``lana demo``). ``python -m lana.cli`` runs :func:`main`
(``__main__``), as ``torchrun -m lana.cli`` does on every rank. ``main`` is also importable
from here and loads on first use: ``import lana.cli`` imports nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from lana.cli.commands import main

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    if name == "main":
        from lana.cli.commands import main

        globals()["main"] = main
        return main
    raise AttributeError(f"module 'lana.cli' has no attribute {name!r}")
