"""Assemble students from phase-1 weights, save them, and load them back.

A saved student is a folder with ``arch.json`` (teacher model spec, input shape, one op spec
per layer), ``weights.safetensors`` and ``model.onnx``. :func:`load_student` rebuilds the
network from the first two; nothing is unpickled. :func:`onnx_bytes` is the one ONNX export
of a whole network, shared with the teacher's ``teacher/model.onnx`` so that both files are
made the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lana.core.io import atomic_write_bytes, load_tensors, read_json, save_tensors, write_json
from lana.errors import ArtifactError
from lana.model.decompose import Chain, LayerInfo, decompose
from lana.space.ops import build_op

STUDENT_FORMAT = "lana-student/1"


def assemble(teacher: Chain, choices: list[str], load: Callable[[int, str], nn.Module]
             ) -> Chain:
    """A student chain: the teacher's stem and head (copied) and ``load(i, choices[i])``."""
    if len(choices) != len(teacher.layers):
        raise ArtifactError(f"{len(choices)} choices for a teacher with "
                            f"{len(teacher.layers)} layers")
    layers = [load(i, spec) for i, spec in enumerate(choices)]
    student = Chain(copy.deepcopy(teacher.stem), layers, copy.deepcopy(teacher.head),
                    teacher.names, teacher.info)
    student.choices = list(choices)
    return student


def arch_dict(model_name: str, model_kwargs: dict, input_shape: tuple[int, ...],
              student: Chain, choices: list[str]) -> dict:
    """The JSON architecture of a student (enough to rebuild it with the teacher's code)."""
    return {
        "format": STUDENT_FORMAT,
        "model": {"name": model_name, "kwargs": model_kwargs},
        "input_shape": list(input_shape),
        "layers": [{"spec": spec, **info.to_dict()} for spec, info in
                   zip(choices, student.info, strict=True)],
    }


def onnx_bytes(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> bytes:
    """``model`` (put in eval mode) exported to ONNX for one image of ``input_shape``
    (C, H, W): the export of every whole network lana writes, students and teacher alike,
    so that a user timing them side by side compares like with like."""
    from lana.latency.timing import export_onnx

    return export_onnx(model.eval(), torch.zeros(1, *input_shape))


def save_student(out_dir: str | Path, student: Chain, arch: dict, onnx: bool = True) -> dict:
    """Write ``arch.json``, ``weights.safetensors`` and (optionally) ``model.onnx``."""
    out_dir = Path(out_dir)
    save_tensors(out_dir / "weights.safetensors", student.state_dict(),
                 metadata={"format": STUDENT_FORMAT})
    files = {"arch": "arch.json", "weights": "weights.safetensors"}
    if onnx:
        atomic_write_bytes(out_dir / "model.onnx", onnx_bytes(student, arch["input_shape"]))
        files["onnx"] = "model.onnx"
    write_json(out_dir / "arch.json", {**arch, "files": files})
    return files


def load_student(path: str | Path, teacher: nn.Module | None = None) -> Chain:
    """Rebuild a saved student (eval mode) from its folder.

    ``teacher`` is only needed for models that ``model.name`` cannot build (a module you
    handed to :func:`lana.accelerate` or ``Run`` as an object); pass an instance of the
    teacher architecture (its weights are not used).
    """
    from lana.model.zoo import create_model

    path = Path(path)
    arch = read_json(path / "arch.json")
    if arch.get("format") != STUDENT_FORMAT:
        raise ArtifactError(f"{path / 'arch.json'} is not a lana student "
                            f"(format {arch.get('format')!r}, expected {STUDENT_FORMAT!r})")
    if teacher is None:
        teacher = create_model(arch["model"]["name"], **arch["model"]["kwargs"])
    teacher.eval()
    chain = decompose(teacher, torch.zeros(1, *arch["input_shape"]),
                      layers=arch["model"].get("layers"))
    specs = [layer["spec"] for layer in arch["layers"]]
    infos = [LayerInfo.from_dict(layer) for layer in arch["layers"]]
    if [i.to_dict() for i in infos] != [i.to_dict() for i in chain.info]:
        raise ArtifactError(f"{path}: the teacher architecture does not match the one the "
                            "student was made from (layer shapes differ)")
    student = assemble(chain, specs, lambda i, s: build_op(s, chain.info[i], chain.layers[i]))
    state = load_tensors(path / "weights.safetensors")
    try:
        student.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(f"{path / 'weights.safetensors'} does not fit the architecture "
                            f"in arch.json: {exc}") from None
    return student.eval()
