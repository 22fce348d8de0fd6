"""Import-time behaviour of the package: public names stay the public objects whatever was
imported before, and the torch-free paths (config validation, the library search) never
import torch. Each check runs in a fresh interpreter, where import order is under control."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lana

# lana's subpackages and top-level modules: importing one binds it on lana under its name.
SUBMODULES = sorted(m.name for m in pkgutil.iter_modules(lana.__path__))


def _python(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_no_public_name_is_a_submodule_name() -> None:
    # A public name that were also a submodule's would become that module once the
    # submodule loads (`lana.decompose` did, before lana had folders: issue 35).
    assert "model" in SUBMODULES and "decompose" not in SUBMODULES
    assert not set(lana.__all__) & set(SUBMODULES)


@pytest.mark.parametrize("first", ["attribute", "import", "from-import"])
def test_public_names_survive_importing_their_modules(first: str) -> None:
    # The defining module is loaded before the public name is used, after it, or both ways.
    _python(f"""
        import importlib, sys, types
        import lana

        for name, module in lana._LAZY.items():
            if {first!r} == "attribute":
                getattr(lana, name)
            if {first!r} == "from-import":
                exec(f"from {{module}} import {{name}}")
            importlib.import_module(module)
            exec(f"import {{module}}")
            value = getattr(lana, name)
            assert not isinstance(value, types.ModuleType), (name, value)
            assert value is getattr(sys.modules[module], name), name
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
        import lana.model.decompose
        from lana.model.decompose import Chain

        again = lana.decompose(model, x)
        assert isinstance(first, Chain) and isinstance(again, Chain)
        assert len(again.layers) == len(first.layers)
    """)


def test_config_validation_imports_no_torch(tmp_path: Path) -> None:
    # Every check that used to reach into torch-importing modules: candidate specs, extra
    # budgets and extra latency columns (issue 35); and `lana config` itself.
    (tmp_path / "run.yaml").write_text(textwrap.dedent("""
        space:
          ops: [teacher, identity, "ir_k{3,5}_e{1,3}{,_se}", rb_w0.5_g2, rep_k3_a]
        latency:
          extra: [torch, onnxruntime@b8]
        search:
          extra_budgets: ["params<=2e6", "latency_ms@torch<=5"]
    """))
    _python(f"""
        import contextlib, io, sys

        from lana.cli.commands import main
        from lana.config import extra_columns, load_config
        from lana.errors import BackendUnavailableError, ConfigError

        cfg = load_config({str(tmp_path / "run.yaml")!r})
        assert list(extra_columns(cfg.latency)) == ["latency_ms@torch",
                                                    "latency_ms@onnxruntime@b8"]
        for bad, error in [("space:\\n  ops: [teacher, ir_k4]\\n", ConfigError),
                           ("latency:\\n  extra: [nosuch]\\n", BackendUnavailableError),
                           ("search:\\n  extra_budgets: ['params<2e6']\\n", ConfigError)]:
            path = {str(tmp_path / "bad.yaml")!r}
            open(path, "w").write(bad)
            try:
                load_config(path)
            except error:
                pass
            else:
                raise AssertionError(bad)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["config"]) == 0 and main(["config", "--reference"]) == 0
        assert "torch" not in sys.modules, "torch was imported"
        assert "scipy" not in sys.modules, "scipy was imported"  # the solver: not needed
    """)


def test_library_search_command_imports_no_torch(tmp_path: Path) -> None:
    # `lana search DIR/library.json` on a run-like directory: the ILP, then a baseline.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    layers = [{"name": f"blocks.{i}", "ops": [
        {"spec": "teacher", "score": 0.0, "cost": {"latency_ms": 2.0, "params": 100.0}},
        {"spec": "ir_k3_e3", "score": 0.1 * (i + 1), "cost": {"latency_ms": 1.0,
                                                              "params": 60.0}},
        {"spec": "identity", "score": 0.5 * (i + 1), "cost": {"latency_ms": 0.0,
                                                              "params": 0.0}},
    ]} for i in range(4)]
    (run_dir / "library.json").write_text(json.dumps({"layers": layers}))
    out = tmp_path / "result.json"
    _python(f"""
        import contextlib, io, json, sys

        import lana.search
        assert "scipy" not in sys.modules  # the folder's names load on first use
        from lana.search import Library, solve
        assert solve is sys.modules["lana.search.solver"].solve, solve
        assert Library is lana.search.Library is sys.modules["lana.search.library"].Library

        from lana.cli.commands import main

        lib = {str(run_dir / "library.json")!r}
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["search", lib, "--budget", "latency_ms<=5", "--k", "2",
                         "--json", {str(out)!r}]) == 0
            chosen = json.load(open({str(out)!r}))["solutions"][0]
            assert chosen["cost"]["latency_ms"] <= 5, chosen
            assert main(["search", lib, "--budget", "latency_ms<=5", "--baseline",
                         "greedy", "--time-limit", "0.1"]) == 0
        assert "torch" not in sys.modules, "torch was imported"
    """)


def test_the_search_folder_imports_no_torch() -> None:
    # lana/search/__init__.py says so of every module in the folder: the search loop gets
    # its networks as callables, so it and its helpers read and test without torch.
    _python("""
        import pkgutil, importlib, sys
        import lana.search

        for m in pkgutil.iter_modules(lana.search.__path__):
            importlib.import_module(f"lana.search.{m.name}")
        assert "torch" not in sys.modules and "timm" not in sys.modules, "torch was imported"
    """)


def test_builtin_backend_names_match_the_registry() -> None:
    # Config validation checks backend names against BUILTIN_BACKENDS until lana.latency.backends
    # is loaded; a fresh registry must hold exactly those names.
    _python("""
        from lana.latency.backends import BACKENDS
        from lana.config import BUILTIN_BACKENDS

        assert sorted(BACKENDS) == sorted(BUILTIN_BACKENDS), (BACKENDS, BUILTIN_BACKENDS)
    """)


def test_registered_ops_and_backends_pass_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ops and backends users register (which loads torch) are known to config validation.
    from lana.config import config_from_dict
    from lana.latency.backends import BACKENDS, TorchBackend
    from lana.space.ops import OP_TYPES, OpType, Param

    monkeypatch.setitem(BACKENDS, "my-backend", TorchBackend)
    monkeypatch.setitem(OP_TYPES, "zz", OpType("zz", None, (Param("k", int, 3, (3, 5)),)))
    cfg = config_from_dict({"space": {"ops": ["teacher", "zz_k{3,5}"]},
                            "latency": {"extra": ["my-backend"]}})
    assert cfg.latency.extra == ["my-backend"]


def _folder_imports() -> dict[str, set[str]]:
    """Which of lana's folders (``core``, ``model``...; ``config``, ``errors`` and ``api``
    for the top-level modules) each imports at run time, from the source: every
    ``import``, also inside functions, but not under ``if TYPE_CHECKING``."""
    import ast

    root = Path(lana.__file__).parent

    def folder(module: str) -> str | None:
        parts = module.split(".")
        if parts[0] != "lana" or len(parts) < 2:
            return None
        if (root / parts[1]).is_dir():
            return parts[1]
        return parts[1] if parts[1] in ("config", "errors") else "api"

    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        own = folder(".".join(path.relative_to(root.parent).with_suffix("").parts))
        tree = ast.parse(path.read_text())
        types_only = {id(n) for node in ast.walk(tree)
                      if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
                      for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in types_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                names = ([f"{node.module}.{a.name}" for a in node.names]
                         if node.module.count(".") <= 1 else [node.module])
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                other = folder(name)
                if other is not None and own is not None and other != own:
                    graph.setdefault(own, set()).add(other)
    return graph


def test_the_folders_import_each_other_without_a_cycle() -> None:
    """The folders follow the method from the bottom up (docs/development.md): a folder
    imports only folders below it, so each can be read, tested and replaced alone."""
    from graphlib import CycleError, TopologicalSorter

    graph = _folder_imports()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"lana's folders import each other in a cycle: {exc.args[1]}")
    assert max(order.index("core"), order.index("model")) < order.index("pipeline")
    assert "pipeline" not in graph["latency"] | graph["distill"] | graph["search"]


def test_config_is_only_a_type_below_the_pipeline() -> None:
    # The phases take their config section as an argument: the schema (which validates op
    # specs and budgets with space's and search's grammars) sits above them.
    graph = _folder_imports()
    assert not any("config" in graph.get(f, set())
                   for f in ("core", "model", "space", "latency", "distill", "search"))
