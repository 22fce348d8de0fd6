"""Property-based fuzzing of the two user-facing parsers (config and library files): any
input gives a valid result or a LanaError (exit code 2 in the CLI), never a traceback."""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from lana.config import Config, config_from_dict, load_config
from lana.errors import LanaError
from lana.search.solver import Library

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def _keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _section_value(name: str):
    field = Config.model_fields[name]
    ann = field.annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        keys = _keys(ann)
        # real keys, near-misses (typos) and junk keys, with plausible or random values
        key = st.one_of(st.sampled_from(keys), st.sampled_from(keys).map(lambda k: k[:-1]),
                        st.text(max_size=8))
        val = st.one_of(values, st.integers(-5, 500), st.floats(-1, 1e4),
                        st.sampled_from(["synthetic", "ce", "kl", "torch", "teacher",
                                         "ir_k{3,5}_e{1,3}", "cb_k3", "bogus_k9"]),
                        st.lists(st.sampled_from(["teacher", "identity", "cb_k{1,3}",
                                                  "ir_k3_e1", "nonsense", "ir_k{3"]),
                                 max_size=4))
        return st.one_of(st.dictionaries(key, val, max_size=5), values)
    return values


configs = st.one_of(
    values,
    st.fixed_dictionaries({}, optional={name: _section_value(name)
                                        for name in Config.model_fields}),
    st.dictionaries(st.text(max_size=10), values, max_size=4),
)


@FUZZ
@given(configs)
def test_config_from_dict_never_crashes(data) -> None:
    try:
        cfg = config_from_dict(data)
    except LanaError as exc:
        assert str(exc)
        return
    assert isinstance(cfg, Config)
    assert config_from_dict(yaml.safe_load(cfg.to_yaml())) == cfg


@FUZZ
@given(st.one_of(st.text(max_size=200), configs.map(lambda d: yaml.safe_dump(d))))
def test_load_config_never_crashes(tmp_path_factory, text: str) -> None:
    path = Path(tmp_path_factory.mktemp("cfg")) / "c.yaml"
    path.write_text(text)
    try:
        assert isinstance(load_config(path), Config)
    except LanaError as exc:
        assert str(exc)


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                    st.booleans(), st.text(max_size=3), st.none())
cost_keys = st.sampled_from(["latency_ms", "params", "latency_ms@gpu", ""])
ops = st.one_of(
    st.fixed_dictionaries({"spec": st.one_of(st.sampled_from(["teacher", "cb_k3", ""]),
                                             scalars),
                           "score": numbers,
                           "cost": st.one_of(st.dictionaries(cost_keys, numbers, max_size=3),
                                             values)},
                          optional={"extra": values}),
    values)
layers = st.one_of(
    st.fixed_dictionaries({"name": st.one_of(st.sampled_from(["a", "b", "c", ""]), scalars),
                           "ops": st.one_of(st.lists(ops, max_size=4), values)}),
    values)
libraries = st.one_of(
    values,
    st.fixed_dictionaries({"layers": st.one_of(st.lists(layers, max_size=4), values)},
                          optional={"fixed_cost": values}),
)


@FUZZ
@given(libraries)
def test_library_from_dict_never_crashes(data) -> None:
    try:
        lib = Library.from_dict(data)
    except LanaError as exc:
        assert str(exc)
        return
    keys = lib.cost_keys()
    for layer in lib.layers:
        assert layer.ops
        for op in layer.ops:
            assert math.isfinite(op.score)
            assert set(op.cost) == set(keys)
            assert all(math.isfinite(v) for v in op.cost.values())
