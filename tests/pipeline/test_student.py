"""Tests of lana.pipeline.student: assembling students, saving them and loading them back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lana.distill.phase1 import build_candidate
from lana.errors import ArtifactError
from lana.model.decompose import decompose
from lana.model.zoo import create_model
from lana.pipeline.student import STUDENT_FORMAT, arch_dict, assemble, load_student, save_student
from lana.space.ops import build_op
from tests.conftest import small_sequential_teacher

INPUT = (1, 16, 16)
KWARGS = {"num_classes": 4, "in_chans": 1}


@pytest.fixture
def effnet_chain(randomize_bn):
    torch.manual_seed(0)
    model = randomize_bn(create_model("lana:tiny_effnet", **KWARGS), seed=2).eval()
    return decompose(model, torch.zeros(2, *INPUT)).eval()


def _choices(chain) -> list[str]:
    out = []
    for i, info in enumerate(chain.info):
        if info.in_shape == info.out_shape and i % 3 == 0:
            out.append("identity")
        else:
            out.append(["teacher", "cb_k3", "ir_k3_e1_se", "ds_k5"][i % 4])
    return out


def _student(chain, randomize_bn):
    choices = _choices(chain)
    student = assemble(chain, choices, lambda i, s: build_candidate(chain, i, s, seed=0))
    return randomize_bn(student, seed=3).eval(), choices


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, *INPUT, generator=torch.Generator().manual_seed(0))


def test_assemble(effnet_chain) -> None:
    chain = effnet_chain
    all_teacher = ["teacher"] * len(chain.layers)
    student = assemble(chain, all_teacher, lambda i, s: build_op(s, chain.info[i],
                                                                 chain.layers[i]))
    x = _x()
    with torch.no_grad():
        assert torch.equal(student(x), chain(x))
    assert student.choices == all_teacher
    assert student.names == chain.names and student.info == chain.info
    # stem and head are copies: training the student leaves the teacher untouched
    assert student.stem is not chain.stem and student.head is not chain.head
    with torch.no_grad():
        next(student.head.parameters()).add_(1.0)
        assert not torch.equal(student(x), chain(x))
    with pytest.raises(ArtifactError, match="choices"):
        assemble(chain, all_teacher[:-1], lambda i, s: nn.Identity())


def test_save_and_load_student(effnet_chain, randomize_bn, tmp_path: Path) -> None:
    import onnxruntime as ort

    student, choices = _student(effnet_chain, randomize_bn)
    arch = arch_dict("lana:tiny_effnet", KWARGS, INPUT, student, choices)
    files = save_student(tmp_path, student, arch)
    assert files == {"arch": "arch.json", "weights": "weights.safetensors",
                     "onnx": "model.onnx"}
    saved = json.loads((tmp_path / "arch.json").read_text())
    assert saved["format"] == STUDENT_FORMAT
    assert saved["model"] == {"name": "lana:tiny_effnet", "kwargs": KWARGS}
    assert saved["input_shape"] == list(INPUT)
    assert [layer["spec"] for layer in saved["layers"]] == choices
    assert saved["files"] == files

    loaded = load_student(tmp_path)
    assert not loaded.training
    assert loaded.choices == choices
    x = _x()
    with torch.no_grad():
        expected = student(x)
        assert torch.allclose(loaded(x), expected, atol=1e-6)
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for k in range(len(x)):
        (out,) = sess.run(None, {name: x[k:k + 1].numpy()})
        np.testing.assert_allclose(out, expected[k:k + 1].numpy(), atol=1e-4, rtol=1e-4)


def test_load_student_with_own_teacher_class(tmp_path: Path) -> None:
    teacher = small_sequential_teacher(seed=0)
    chain = decompose(teacher, torch.zeros(1, *INPUT))
    choices = ["cb_k3", "identity", "teacher", "ir_k3_e1"]
    student = assemble(chain, choices, lambda i, s: build_candidate(chain, i, s)).eval()
    save_student(tmp_path, student, arch_dict("my:net", {}, INPUT, student, choices),
                 onnx=False)
    assert not (tmp_path / "model.onnx").exists()
    # lana's registry cannot build "my:net"; an instance of the class is enough, its
    # weights are not used
    loaded = load_student(tmp_path, teacher=small_sequential_teacher(seed=5))
    x = _x()
    with torch.no_grad():
        assert torch.allclose(loaded(x), student(x), atol=1e-6)


def test_load_student_errors(effnet_chain, randomize_bn, tmp_path: Path) -> None:
    student, choices = _student(effnet_chain, randomize_bn)
    save_student(tmp_path, student, arch_dict("lana:tiny_effnet", KWARGS, INPUT, student,
                                              choices), onnx=False)
    arch_path = tmp_path / "arch.json"
    good = json.loads(arch_path.read_text())

    def write(arch: dict) -> None:
        arch_path.write_text(json.dumps(arch))
        # an edit on purpose: drop the checksum lana wrote, or the edit reads as corruption
        arch_path.with_name("arch.json.sha256").unlink(missing_ok=True)

    write({**good, "format": "something-else"})
    with pytest.raises(ArtifactError, match="not a lana student"):
        load_student(tmp_path)

    bad = json.loads(json.dumps(good))
    j = next(i for i, c in enumerate(choices) if c == "cb_k3")
    bad["layers"][j]["spec"] = "ir_k3_e6"  # other weights than those saved
    write(bad)
    with pytest.raises(ArtifactError, match="does not fit"):
        load_student(tmp_path)

    bad = json.loads(json.dumps(good))
    bad["model"]["kwargs"]["num_classes"] = 7  # a different teacher head
    write(bad)
    with pytest.raises(ArtifactError):
        load_student(tmp_path)

    bad = json.loads(json.dumps(good))
    bad["layers"][0]["out_shape"] = [99, 8, 8]
    write(bad)
    with pytest.raises(ArtifactError, match="layer shapes differ"):
        load_student(tmp_path)

    write(good)
    (tmp_path / "weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match="weights.safetensors"):
        load_student(tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_student(tmp_path / "nowhere")
