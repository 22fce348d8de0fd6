"""The layout of a run directory, defined once: every file's name and where it lives.

Plain data (no torch, nothing of lana), at the bottom of the package so that any phase
may name the files it writes: :mod:`lana.pipeline.stages` says which stage writes which,
docs/run-directory.md what each file holds.
"""

from __future__ import annotations

from pathlib import Path

# Run-level bookkeeping, written by every stage or by the commands around them.
CONFIG = "config.yaml"
TIMINGS = "timings.json"
MEMORY = "memory.json"
SUMMARY = "summary.json"
LOCK = "lana.lock"
REPORT_DIR = "report"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"

# prepare
TEACHER_WEIGHTS = "teacher.safetensors"
TEACHER = "teacher.json"
TEACHER_CHECKPOINT = "teacher-checkpoint.pt"
CANDIDATES = "candidates.json"
# profile and the parts computed on demand
LATENCY = "latency.json"
LUT = "lut.json"
COSTS = "costs.json"
LIBRARY = "library.json"
# distill (phase 1): one weight file per candidate, in a folder per layer
DISTILL_DIR = "distill"
DISTILL_INDEX = f"{DISTILL_DIR}/index.json"
DISTILL_INDEX_LOCK = f"{DISTILL_DIR}/index.lock"
DISTILL_CHECKPOINTS = f"{DISTILL_DIR}/checkpoint-*.pt"
SCORES = "scores.json"
# Per budget, under students/<budget tag>/ (see :func:`student_dir`).
STUDENTS_DIR = "students"
SEARCH = "search.json"
FINETUNE = "finetune.json"
FINETUNED_WEIGHTS = "finetuned.safetensors"
FINETUNE_CHECKPOINT = "finetune-checkpoint.pt"
EXPORT = "export.json"
MODEL_DIR = "model"
VERIFY = "verify.json"
# Written by `lana export` beside the students' model/ folders, once per run: the teacher
# exported as they are, so anyone can time both with their own tools.
TEACHER_ONNX = "teacher/model.onnx"

#: Bookkeeping files of the run directory that belong to no one stage (``report/``: the
#: commands ``lana run``, ``lana export`` and ``lana report`` write it; the teacher's ONNX
#: file: every export, when missing).
RUN_FILES = (CONFIG, TIMINGS, MEMORY, SUMMARY, LOCK, f"{REPORT_DIR}/*", TEACHER_ONNX)


def student_dir(run_dir: str | Path, tag: str) -> Path:
    """``DIR/students/<tag>``: the folder of one budget's search, fine-tuning and export
    (``tag`` as :func:`lana.pipeline.keys.budget_tag` names it)."""
    return Path(run_dir) / STUDENTS_DIR / tag


def distill_weights(run_dir: str | Path, layer: int, spec: str) -> Path:
    """Where candidate ``spec`` of layer ``layer`` keeps its phase-1 weights."""
    return Path(run_dir) / DISTILL_DIR / f"L{layer:03d}" / f"{spec}.safetensors"


def distill_checkpoint(run_dir: str | Path, group: str) -> Path:
    """The checkpoint of phase-1 group ``group`` (its id) while it trains."""
    return Path(run_dir) / DISTILL_CHECKPOINTS.replace("*", group)
