"""Tests of lana.space: spec strings, brace expansion, builders and shape contracts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lana.decompose import LayerInfo
from lana.errors import ConfigError
from lana.space import (
    DEFAULT_SPACE,
    OP_TYPES,
    OpSpec,
    Residual,
    applicable,
    build_op,
    canonical,
    check_shapes,
    expand,
    layer_candidates,
    log10_space_size,
    parse_spec,
    space_specs,
)

ALL_SPECS = space_specs(DEFAULT_SPACE)

# (name, in_shape, out_shape, act): the layer situations a candidate must handle.
LAYERS = {
    "same": LayerInfo("same", (16, 8, 8), (16, 8, 8), "silu"),
    "stride2": LayerInfo("stride2", (16, 8, 8), (24, 4, 4), "silu"),
    "stride2_same_c": LayerInfo("stride2_same_c", (16, 8, 8), (16, 4, 4), "relu"),
    "wider": LayerInfo("wider", (16, 8, 8), (32, 8, 8), "relu6"),
    "narrower": LayerInfo("narrower", (32, 8, 8), (16, 8, 8), "silu"),
    "odd": LayerInfo("odd", (16, 7, 7), (24, 4, 4), "silu"),
    "odd_same": LayerInfo("odd_same", (8, 7, 7), (8, 7, 7), "hardswish"),
}


def _teacher_layer(info: LayerInfo) -> nn.Module:
    """A stand-in teacher layer that honours ``info`` (3x3 conv with the layer's stride)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(info.in_shape[0], info.out_shape[0], 3, info.stride, 1),
                         nn.BatchNorm2d(info.out_shape[0]))


@pytest.mark.parametrize("layer", list(LAYERS))
def test_every_default_op_maps_shapes(layer: str) -> None:
    info = LAYERS[layer]
    teacher = _teacher_layer(info)
    cands = layer_candidates(info, ALL_SPECS)
    same_shape = info.in_shape == info.out_shape
    # identity only where the shapes agree; every other op applies to every spatial layer
    expected = ALL_SPECS if same_shape else [s for s in ALL_SPECS if s != "identity"]
    assert cands == expected
    x = torch.randn(2, *info.in_shape, generator=torch.Generator().manual_seed(0))
    for spec in cands:
        module = build_op(spec, info, teacher)
        check_shapes(module, info)  # raises on a wrong shape
        module.eval()
        with torch.no_grad():
            y = module(x)
        assert tuple(y.shape) == (2, *info.out_shape), spec
        assert torch.isfinite(y).all(), spec
        # a candidate has its own weights; training it must not change the teacher
        if spec == "teacher":
            assert module is not teacher
            assert all(p is not q for p, q in zip(module.parameters(), teacher.parameters(),
                                                  strict=True))
            assert torch.equal(y, teacher.eval()(x))


def test_identity_only_on_equal_shapes() -> None:
    for info in LAYERS.values():
        assert applicable("identity", info) == (info.in_shape == info.out_shape)
    with pytest.raises(ConfigError, match="does not apply"):
        build_op("identity", LAYERS["stride2"])
    assert isinstance(build_op("identity", LAYERS["same"]), nn.Identity)


def test_non_spatial_layer_gets_only_teacher_and_identity() -> None:
    flat = LayerInfo("fc", (64,), (64,), "relu")
    assert layer_candidates(flat, ALL_SPECS) == ["teacher", "identity"]
    flat2 = LayerInfo("fc", (64,), (10,), "relu")
    assert layer_candidates(flat2, ALL_SPECS) == ["teacher"]
    with pytest.raises(ConfigError, match="does not apply"):
        build_op("ir_k3_e6", flat)


def test_layer_candidates_puts_teacher_first() -> None:
    specs = ["cb_k3", "identity", "teacher"]
    assert layer_candidates(LAYERS["same"], specs) == ["teacher", "cb_k3", "identity"]
    # the teacher op is always offered, even when the space does not list it
    assert layer_candidates(LAYERS["stride2"], ["cb_k3"]) == ["teacher", "cb_k3"]


def test_default_space_size() -> None:
    assert len(layer_candidates(LAYERS["same"], ALL_SPECS)) >= 20
    assert ALL_SPECS[:2] == ["teacher", "identity"]
    assert len(ALL_SPECS) == len(set(ALL_SPECS))
    assert all(canonical(s) == s for s in ALL_SPECS)


def test_teacher_op_needs_teacher() -> None:
    with pytest.raises(ConfigError, match="teacher"):
        build_op("teacher", LAYERS["same"])


def test_check_shapes_rejects_wrong_module() -> None:
    info = LAYERS["stride2"]
    with pytest.raises(ConfigError, match="expected"):
        check_shapes(nn.Conv2d(16, 24, 3, 1, 1), info)
    m = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1), nn.BatchNorm2d(24)).train()
    check_shapes(m, info)
    assert m.training  # the mode is restored


def test_residual_when_shapes_agree() -> None:
    info = LAYERS["same"]
    cb = build_op("cb_k3", info)
    assert isinstance(cb, Residual)
    with torch.no_grad():
        for p in cb.parameters():
            p.zero_()  # conv weight 0, BN affine 0: body outputs 0
    x = torch.randn(2, *info.in_shape)
    assert torch.equal(cb.eval()(x), x)
    assert not isinstance(build_op("cb_k3", LAYERS["stride2"]), Residual)
    assert not isinstance(build_op("cc_k3_w1", LAYERS["wider"]), Residual)


def test_op_parameters_reach_the_module() -> None:
    info = LAYERS["same"]

    def convs(m: nn.Module) -> list[nn.Conv2d]:
        return [c for c in m.modules() if isinstance(c, nn.Conv2d)]

    ir = build_op("ir_k5_e3", info)
    assert any(c.kernel_size == (5, 5) and c.groups > 1 for c in convs(ir))
    assert max(c.out_channels for c in convs(ir)) == 48  # expansion 3 of 16 channels
    assert isinstance(ir.se, nn.Identity)
    ir_se = build_op("ir_k5_e3_se", info)
    assert not isinstance(ir_se.se, nn.Identity)
    assert sum(p.numel() for p in ir_se.parameters()) > sum(p.numel() for p in ir.parameters())
    cb1 = build_op("cb_k1", LAYERS["stride2"])
    assert [c.kernel_size for c in convs(cb1)] == [(1, 1)]
    assert [c.stride for c in convs(cb1)] == [(2, 2)]
    cc = build_op("cc_k3_w0.5", LAYERS["wider"])
    assert [(c.in_channels, c.out_channels) for c in convs(cc)] == [(16, 16), (16, 32)]


def test_parse_spec_canonical_form() -> None:
    cases = {
        "ir": "ir_k3_e6",
        "ir_e6_k3": "ir_k3_e6",
        "ir_k5_e3_se": "ir_k5_e3_se",
        "ir_se_k5_e3": "ir_k5_e3_se",
        "ir_k3_e1.0": "ir_k3_e1",
        "ir_k3_e1_se0": "ir_k3_e1",
        "ir_k3_e1_se1": "ir_k3_e1_se",
        "cc_k3_w0.50": "cc_k3_w0.5",
        "cc_k03": "cc_k3_w1",
        "bn": "bn_k3_w0.25",
        "er": "er_k3_e4",
        "ds_k5": "ds_k5",
        "cb": "cb_k3",
        "  teacher ": "teacher",
        "identity": "identity",
    }
    for text, canon in cases.items():
        assert str(parse_spec(text)) == canon, text
        assert canonical(canon) == canon
    spec = parse_spec("ir_k5_e3_se")
    assert spec == OpSpec("ir", (("k", 5), ("e", 3.0), ("se", True)))
    assert spec.get("k") == 5 and spec.get("se") is True
    assert isinstance(parse_spec("cc_k3_w0.5").get("w"), float)
    assert hash(parse_spec("ir_e6_k3")) == hash(parse_spec("ir"))


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_round_trip_of_canonical_specs(spec: str) -> None:
    assert str(parse_spec(spec)) == spec


@pytest.mark.parametrize("text,needle", [
    ("foo_k3", "'foo' is not one of"),
    ("IR_k3", "is not one of"),
    ("ir_k4", "must be one of [1, 3, 5, 7]"),
    ("ir_x3", "bad token 'x3'"),
    ("ir_x3", "k<int>"),
    ("ir_k", "needs a number"),
    ("ir_k3.5", "needs a number"),
    ("ir_k3__e6", "bad token ''"),
    ("teacher_k3", "no parameters"),
    ("cc_w", "needs a number"),
])
def test_bad_specs_are_config_errors(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec(text)
    assert needle in str(info.value)
    assert repr(text) in str(info.value) or text.split("_")[0] in str(info.value)


def test_bad_spec_in_space_list_fails() -> None:
    with pytest.raises(ConfigError, match="ir_k9"):
        space_specs(["teacher", "ir_k{3,9}"])


def test_expand_brace_groups() -> None:
    assert expand("ir_k3") == ["ir_k3"]
    assert expand("ir_k{3,5}{,_se}") == ["ir_k3", "ir_k3_se", "ir_k5", "ir_k5_se"]
    assert expand("ir_k{3,5}_e{1,3,6}") == ["ir_k3_e1", "ir_k3_e3", "ir_k3_e6", "ir_k5_e1",
                                           "ir_k5_e3", "ir_k5_e6"]
    assert len(expand(DEFAULT_SPACE[2])) == 12


def test_space_specs_dedupes_and_keeps_order() -> None:
    assert space_specs(["cb_k3", "ir", "ir_k3_e6", "cb", "teacher"]) == [
        "cb_k3", "ir_k3_e6", "teacher"]
    assert space_specs(["teacher", "identity", "ir_k3_e{1,3}", "cb_k3"]) == [
        "teacher", "identity", "ir_k3_e1", "ir_k3_e3", "cb_k3"]


def test_log10_space_size() -> None:
    assert log10_space_size([["a", "b"], ["a"] * 10]) == pytest.approx(math.log10(20))
    assert log10_space_size([["teacher"]] * 5) == 0.0


def test_registered_op_types() -> None:
    assert {"teacher", "identity", "ir", "er", "ds", "cc", "bn", "cb"} <= set(OP_TYPES)
    for spec in ALL_SPECS:
        assert parse_spec(spec).kind in OP_TYPES
