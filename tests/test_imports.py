"""Import-time behaviour of the package: public names that share a submodule's name stay
the public objects, and the torch-free paths (config validation, the library search) never
import torch. Each check runs in a fresh interpreter, where import order is under control."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap

import pytest

import lana

# Public names of the package that are also the names of its submodules (lana.decompose).
CLASHING = sorted(set(lana.__all__) & {m.name for m in pkgutil.iter_modules(lana.__path__)})


def _python(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_some_public_name_clashes_with_a_submodule() -> None:
    # Guards the tests below against checking nothing.
    assert "decompose" in CLASHING


@pytest.mark.parametrize("first", ["attribute", "import", "from-import"])
def test_public_names_survive_importing_their_submodule(first: str) -> None:
    # The submodule is loaded before the public name is used, after it, or both ways.
    _python(f"""
        import importlib, sys, types
        import lana

        for name in {CLASHING!r}:
            module = "lana." + name
            if {first!r} == "attribute":
                getattr(lana, name)
            if {first!r} == "from-import":
                exec(f"from {{module}} import {{name}}")
            importlib.import_module(module)
            exec(f"import {{module}}")
            value = getattr(lana, name)
            assert not isinstance(value, types.ModuleType), (name, value)
            assert value is getattr(sys.modules[value.__module__], name), name
    """)


def test_decompose_is_callable_again_after_its_module_is_imported() -> None:
    # The README's call, twice, with the submodule imported in between (issue 35).
    _python("""
        import torch
        from torch import nn

        import lana

        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
        x = torch.zeros(1, 3, 8, 8)
        first = lana.decompose(model, x)
        import lana.decompose
        from lana.decompose import Chain

        again = lana.decompose(model, x)
        assert isinstance(first, Chain) and isinstance(again, Chain)
        assert len(again.layers) == len(first.layers)
    """)
