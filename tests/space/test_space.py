"""Tests of lana.space.ops: spec strings, brace expansion, builders and shape contracts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lana.errors import ConfigError
from lana.model.decompose import LayerInfo
from lana.space.ops import (
    DEFAULT_SPACE,
    OP_TYPES,
    OpSpec,
    Residual,
    _act_layer,
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


@pytest.mark.parametrize("spec", ["cb_k1", "cb_k3", "cc_k3_w0.5", "bn_k3_w0.25"])
def test_dense_blocks_end_with_the_activation_with_a(spec: str, randomize_bn) -> None:
    from lana.space.ops import ResidualAct

    for name in ("same", "stride2", "wider"):
        info = LAYERS[name]
        plain, act = build_op(spec, info), build_op(f"{spec}_a", info)
        # the flag adds a parameter-free activation and nothing else
        assert plain.state_dict().keys() == act.state_dict().keys()
        assert isinstance(act, ResidualAct) == isinstance(plain, Residual) == (name == "same")
        act.load_state_dict(randomize_bn(plain).state_dict())
        x = torch.randn(2, *info.in_shape)
        with torch.no_grad():
            y_plain, y_act = plain.eval()(x), act.eval()(x)
        assert (y_plain < 0).any()
        expected = _act_layer(info.act)()(y_plain)
        assert torch.allclose(y_act, expected), (spec, name)


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
    assert spec == OpSpec("ir", (("k", 5), ("e", 3.0), ("se", True), ("a", False)))
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


# ------------------------------------------------------------ family-aware op types

from lana.latency.timing import export_onnx  # noqa: E402
from lana.space.ops import (  # noqa: E402
    FAMILY_SPACES,
    RepVGGBlock,
    family_space,
    reparameterize,
    resolve_space,
)

NEW_OPS = ["rb_w1", "rb_w0.5", "rb_w0.25", "rb_w0.5_g2", "rb_w1_g4", "rb_w0.5_r2", "rb_w1_r4",
           "rb_w1_g2_r2", "basic", "rep_k3", "rep_k3_a", "rep_k5", "er_k3_e1", "er_k3_e2",
           "cb_k1_a", "cc_k3_w0.5_a", "bn_k3_w0.25_a"]
# stride 1 and 2, with and without channel changes, odd sizes
SHAPE_LAYERS = ["same", "stride2", "stride2_same_c", "wider", "narrower", "odd", "odd_same"]


@pytest.mark.parametrize("spec", NEW_OPS)
def test_new_ops_map_shapes_and_export(spec: str, randomize_bn) -> None:
    exported = 0
    for name in SHAPE_LAYERS:
        info = LAYERS[name]
        if not applicable(spec, info):
            assert spec.startswith("rb") and info.out_shape[0] % 4, (spec, name)
            continue
        module = build_op(spec, info)
        check_shapes(module, info)
        randomize_bn(module).eval()
        x = torch.randn(2, *info.in_shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            y = module(x)
        assert tuple(y.shape) == (2, *info.out_shape) and torch.isfinite(y).all()
        if name in ("same", "odd"):  # stride 1 keeping channels; stride 2 changing them
            import onnx

            proto = onnx.load_from_string(export_onnx(module, x[:1]))
            assert proto.graph.input[0].name == "input"
            exported += 1
    assert exported == 2


def test_resnet_ops_follow_timm_blocks() -> None:
    from timm.models.resnest import ResNestBottleneck
    from timm.models.resnet import BasicBlock, Bottleneck

    info = LayerInfo("r", (64, 8, 8), (256, 4, 4), "relu")
    convs = lambda m: [c for c in m.modules() if isinstance(c, nn.Conv2d)]  # noqa: E731
    rb = build_op("rb_w0.5", info)
    assert type(rb) is Bottleneck and rb.conv1.out_channels == 32  # 0.5 x 256 / 4
    assert rb.downsample is not None  # projection shortcut: shapes differ
    g4 = build_op("rb_w1_g4", info)
    assert type(g4) is Bottleneck and g4.conv2.groups == 4 and g4.conv1.out_channels == 64
    r2 = build_op("rb_w1_r2", info)
    assert type(r2) is ResNestBottleneck and r2.conv2.radix == 2
    same = LayerInfo("s", (256, 4, 4), (256, 4, 4), "relu")
    assert build_op("rb_w0.25", same).downsample is None  # identity shortcut
    assert type(build_op("basic", info)) is BasicBlock
    # the projection follows the teacher's style (avg-pool 'd' variants vs strided conv)
    import timm

    teacher = timm.create_model("resnest14d", pretrained=False).layer2[0]
    down = build_op("rb_w1", info, teacher).downsample
    assert isinstance(down[0], nn.AvgPool2d)
    assert all(c.stride == (1, 1) for c in convs(down))
    teacher = timm.create_model("resnet18", pretrained=False).layer2[0]
    down = build_op("rb_w1", info, teacher).downsample
    assert [c.stride for c in convs(down)] == [(2, 2)]
    assert not applicable("rb_w1", LayerInfo("x", (16, 8, 8), (18, 8, 8), "relu"))


@pytest.mark.parametrize("layer", ["same", "odd", "wider", "odd_same"])
@pytest.mark.parametrize("spec", ["rep_k3", "rep_k3_a", "rep_k5", "rep_k7"])
def test_repvgg_reparameterizes_exactly(spec: str, layer: str, randomize_bn) -> None:
    info = LAYERS[layer]
    block = build_op(spec, info)
    assert isinstance(block, RepVGGBlock)
    assert (block.identity is not None) == (info.in_shape == info.out_shape)
    randomize_bn(block, seed=3).eval()
    x = torch.randn(4, *info.in_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = block(x)
        fused = reparameterize(block)
        after = fused(x)
    assert fused is block and isinstance(block.fused, nn.Conv2d)
    assert block.fused.kernel_size == (parse_spec(spec).get("k"),) * 2
    assert sum(isinstance(m, nn.Conv2d) for m in block.modules()) == 1  # one conv left
    assert (before - after).abs().max().item() <= 1e-5
    reparameterize(block)  # idempotent
    with torch.no_grad():
        assert torch.equal(block(x), after)


def test_export_and_timing_use_the_reparameterized_block(randomize_bn) -> None:
    import onnx
    import onnxruntime as ort

    from lana.latency.timing import inference_form

    info = LAYERS["same"]
    block = randomize_bn(build_op("rep_k3_a", info), seed=1).eval()
    folded = inference_form(block)
    assert folded is not block and block.fused is None  # the caller's module is untouched
    assert folded.fused is not None
    plain = build_op("cb_k3", info)
    assert inference_form(plain) is plain  # nothing to fold: no copy
    x = torch.randn(1, *info.in_shape, generator=torch.Generator().manual_seed(0))
    data = export_onnx(block, x)
    assert block.fused is None
    convs = [n for n in onnx.load_from_string(data).graph.node if n.op_type == "Conv"]
    assert len(convs) == 1  # one fused conv, not three branches
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert abs(got - block(x).numpy()).max() <= 1e-5


def test_family_default_spaces() -> None:
    assert set(FAMILY_SPACES) >= {"timm-efficientnet", "timm-mobilenetv3", "timm-resnet"}
    assert family_space("some-registered-family") == DEFAULT_SPACE == family_space(None)
    # generic chains: the default ops, the dense ones in both endings (one per layer)
    generic = space_specs(family_space("sequential"))
    assert family_space("fx-chain") == family_space("sequential")
    assert set(generic) == set(space_specs(DEFAULT_SPACE)) | {
        canonical(s + "_a") for s in space_specs(DEFAULT_SPACE)
        if s not in ("teacher", "identity")}
    resnet = space_specs(family_space("timm-resnet"))
    effnet = space_specs(family_space("timm-efficientnet"))
    assert resnet[:2] == effnet[:2] == ["teacher", "identity"]
    # ResNet/ResNeSt: bottlenecks with cardinality and radix {1, 2, 4}, widths, basic, RepVGG
    rbs = [parse_spec(s) for s in resnet if s.startswith("rb")]
    assert {s.get("g") for s in rbs} == {1, 2, 4} and {s.get("r") for s in rbs} == {1, 2, 4}
    assert {s.get("w") for s in rbs} == {0.25, 0.5, 1.0}
    # dense blocks end with the activation, as the ResNet blocks they replace do
    assert {"basic", "rep_k3_a", "cc_k3_w0.5_a", "bn_k3_w0.25_a", "cb_k3_a"} <= set(resnet)
    assert not any(s.startswith(("cc", "bn", "cb")) and not parse_spec(s).get("a")
                   for s in resnet)
    assert not any(s.startswith("ir") for s in resnet)
    # EfficientNet V1/V2, MobileNetV3: MBConv with/without SE, fused MBConv with lower
    # expansion and without SE, dense blocks, RepVGG
    assert {"ir_k3_e6_se", "ir_k5_e1", "er_k3_e1", "er_k3_e2", "er_k3_e4", "rep_k3"} <= set(effnet)
    assert not any(s.startswith("er") and parse_spec(s).get("se") for s in effnet)
    assert space_specs(family_space("timm-mobilenetv3")) == effnet
    # space.ops: a list is used as given; 'auto' or None resolve by family
    assert resolve_space(["teacher", "cb_k3"], "timm-resnet") == ["teacher", "cb_k3"]
    assert resolve_space("auto", "timm-resnet") == list(family_space("timm-resnet"))
    assert resolve_space(None, "fx-chain") == list(family_space("fx-chain"))
    with pytest.raises(ConfigError, match="auto"):
        resolve_space("everything", "timm-resnet")


def test_lut_key_follows_teacher_dependent_structure() -> None:
    import timm

    from lana.latency.profile import op_key
    from lana.model.decompose import Chain

    info = LayerInfo("r", (64, 8, 8), (128, 4, 4), "relu")
    keys = {}
    for name in ("resnest14d", "resnet18"):
        teacher = timm.create_model(name, pretrained=False).layer2[0]
        chain = Chain(nn.Identity(), [teacher], nn.Identity(), ["r"], [info])
        keys[name] = {spec: op_key(chain, 0, spec, build_op(spec, info, teacher))
                      for spec in ("rb_w1_g1_r1", "basic", "cb_k3")}
    # avg-pool vs strided-conv shortcut: different modules, different LUT entries
    assert keys["resnest14d"]["rb_w1_g1_r1"] != keys["resnet18"]["rb_w1_g1_r1"]
    assert keys["resnest14d"]["basic"] != keys["resnet18"]["basic"]
    assert keys["resnest14d"]["cb_k3"] == keys["resnet18"]["cb_k3"] == "cb_k3@" + info.signature


def test_a_space_with_both_endings_gives_each_layer_the_matching_one() -> None:
    specs = space_specs(["teacher", "cc_k3_w1{,_a}", "cb_k3", "rep_k3{,_a}", "ds_k3"])
    linear = LayerInfo("l", (8, 8, 8), (8, 8, 8), "relu")
    post_act = LayerInfo("a", (8, 8, 8), (8, 8, 8), "relu", ends_with_act=True)
    assert layer_candidates(linear, specs) == ["teacher", "cc_k3_w1", "cb_k3", "rep_k3",
                                               "ds_k3"]
    assert layer_candidates(post_act, specs) == ["teacher", "cc_k3_w1_a", "cb_k3",
                                                 "rep_k3_a", "ds_k3"]
    # one form listed: kept at every layer, whatever the ending
    assert layer_candidates(linear, ["cc_k3_w1_a"]) == ["teacher", "cc_k3_w1_a"]
    assert layer_candidates(post_act, ["cb_k3"]) == ["teacher", "cb_k3"]
    # the ending is not part of the layer's identity: cache keys and stored students
    assert post_act.signature == linear.signature
    assert post_act == LayerInfo("a", (8, 8, 8), (8, 8, 8), "relu")
    assert "ends_with_act" not in post_act.to_dict()


@pytest.mark.parametrize("spec", ["ir_k3_e3_se", "er_k3_e2", "ds_k5"])
def test_mbconv_ops_with_the_activation_at_the_end(spec: str) -> None:
    from lana.space.inherit import inherit
    from lana.space.ops import PostAct

    for info in (LayerInfo("same", (16, 8, 8), (16, 8, 8), "relu"),
                 LayerInfo("down", (16, 8, 8), (24, 4, 4), "relu")):
        torch.manual_seed(0)
        linear = build_op(spec, info).eval()
        torch.manual_seed(0)
        post = build_op(spec + "_a", info).eval()
        assert isinstance(post, PostAct) and not isinstance(linear, PostAct)
        x = torch.randn(2, 16, 8, 8)
        with torch.no_grad():  # the same block, then the family's ReLU (after any sum)
            assert torch.equal(post(x), torch.relu(linear(x)))
        # inherits from a teacher block of its own kind, as the linear form does
        teacher = build_op(spec, info)
        assert inherit(post, spec + "_a", teacher) == inherit(linear, spec, teacher)
