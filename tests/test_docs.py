"""docs/: the configuration reference is generated, and the guide's code examples run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lana.cli import main
from lana.config import Config
from lana.config_doc import config_reference

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_config_reference_is_current(capsys) -> None:
    expected = config_reference()
    assert (DOCS / "config.md").read_text() == expected, (
        "docs/config.md is out of date: run `lana config --reference > docs/config.md`")
    assert main(["config", "--reference"]) == 0
    assert capsys.readouterr().out == expected


def _fields(model, prefix=""):
    for name, f in model.model_fields.items():
        key = prefix + name
        yield key, f
        tp = f.annotation
        if isinstance(tp, type) and hasattr(tp, "model_fields"):
            yield from _fields(tp, key + ".")


def test_every_option_is_in_the_reference_with_its_default() -> None:
    ref = config_reference()
    for key, f in _fields(Config):
        assert f"`{key}`" in ref, key
        if not hasattr(f.annotation, "model_fields"):
            assert f.description, f"config option {key} has no Field(description=...)"
            row = next(line for line in ref.splitlines() if line.startswith(f"| `{key}` |"))
            default = f.get_default(call_default_factory=True)
            assert f"`{__import__('json').dumps(default)}`" in row, (key, row)


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_guide_examples_for_an_op_and_a_backend_work() -> None:
    from lana.decompose import LayerInfo
    from lana.latency import BACKENDS, Settings, measure
    from lana.space import OP_TYPES, build_op, check_shapes

    blocks = _python_blocks((DOCS / "guide.md").read_text())
    op_code = next(b for b in blocks if "register_op(" in b)
    backend_code = next(b for b in blocks if "BACKENDS[" in b)
    try:
        exec(compile(op_code, "guide.md:op", "exec"), {})
        exec(compile(backend_code, "guide.md:backend", "exec"), {})
        info = LayerInfo("blocks.1", (8, 8, 8), (16, 4, 4), "relu")
        for spec in ("gc_k3_g4", "gc_k5_g2"):
            op = build_op(spec, info, None)
            check_shapes(op, info)
            assert op(torch.randn(2, 8, 8, 8)).shape == (2, 16, 4, 4)
        m = measure(build_op("gc_k3_g4", info, None), (1, 8, 8, 8),
                    Settings(backend="torch-channels-last", batch_size=1, threads=1),
                    warmup=1, min_repeats=3, max_seconds=0.05)
        assert m.median_ms > 0
    finally:
        OP_TYPES.pop("gc", None)
        BACKENDS.pop("torch-channels-last", None)


def test_guide_links_exist() -> None:
    text = (DOCS / "guide.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (DOCS / target).exists(), target


@pytest.mark.parametrize("name", ["guide.md", "config.md"])
def test_docs_exist(name: str) -> None:
    assert (DOCS / name).stat().st_size > 500
