"""One call for notebooks: ``lana.accelerate(model, train_data, val_data, budget=2.0)``.

It wraps :class:`lana.pipeline.runner.Run` with the model's current weights as the teacher and the
given datasets as the splits, runs every stage (resumable: call it again with the same
``out`` to continue), writes the HTML report and hands back the student as a module.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from lana.config import BudgetConfig, Config, config_from_dict, load_config
from lana.core.layout import EXPORT, MODEL_DIR, REPORT_DIR, REPORT_HTML
from lana.errors import ConfigError

__all__ = ["AccelerateResult", "accelerate", "parse_budget"]


@dataclass
class AccelerateResult:
    """What :func:`accelerate` returns.

    ``student`` is the fine-tuned student (eval mode), ``summary`` the run's
    ``summary.json`` content, ``report`` the path of the HTML report, ``run_dir`` the run
    directory and ``run`` the :class:`lana.pipeline.runner.Run` (for other budgets:
    ``run.all(...)``).
    """

    student: nn.Module
    summary: dict
    report: Path
    run_dir: Path
    export: dict = field(default_factory=dict)
    run: Any = field(default=None, repr=False)

    def __repr__(self) -> str:
        e = self.export
        return (f"AccelerateResult(speedup={e.get('speedup', float('nan')):.2f}x, "
                f"accuracy={e.get('accuracy', float('nan')):.4f}, "
                f"teacher_accuracy={self.summary['teacher']['accuracy']:.4f}, "
                f"meets_budget={e.get('meets_budget')}, report={str(self.report)!r})")


def parse_budget(budget: float | int | str | dict | BudgetConfig) -> BudgetConfig:
    """A budget from ``2.0`` / ``"2x"`` (speed-up), ``"1.5ms"`` (milliseconds), a dict such
    as ``{"latency_ms": 1.5}``, or a :class:`BudgetConfig`."""
    if isinstance(budget, BudgetConfig):
        return budget
    try:
        if isinstance(budget, dict):
            return BudgetConfig(**budget)
        if isinstance(budget, bool):
            raise ValueError
        if isinstance(budget, int | float):
            return BudgetConfig(speedup=float(budget))
        if isinstance(budget, str):
            text = budget.strip().lower().replace(" ", "")
            if text.endswith("ms"):
                return BudgetConfig(latency_ms=float(text[:-2]))
            return BudgetConfig(speedup=float(text.removesuffix("x")))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"budget {budget!r} is not understood ({exc}); give a speed-up "
                          "(2.0 or '2x') or milliseconds ('1.5ms' or {'latency_ms': 1.5})"
                          ) from None
    raise ConfigError(f"budget must be a number, a string or a dict, got "
                      f"{type(budget).__name__}")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _teacher(model: nn.Module, train_data: Dataset, val_data: Dataset,
             test_data: Dataset | None) -> tuple[nn.Module, tuple[int, ...], torch.Tensor]:
    """(the teacher, the images' shape, its logits on the first training image), checked
    before a run starts: a module, images of one shape in every split, class logits out.

    lana keeps the teacher on the CPU between stages and moves it to config.device to
    train; a model handed over on a GPU is copied to the CPU first.
    """
    from lana.model.data import sample_shape

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch nn.Module, got {type(model).__name__}")
    shape = sample_shape(train_data, "train_data")
    for data, what in ((val_data, "val_data"), (test_data, "test_data")):
        if data is not None and sample_shape(data, what) != shape:
            raise ConfigError(f"{what} images have a different shape than train_data's "
                              f"{shape}")
    teacher = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        logits = teacher(train_data[0][0].unsqueeze(0))
    if logits.dim() != 2:
        raise ConfigError(f"the model returns a tensor of shape {tuple(logits.shape)}; lana "
                          "needs class logits of shape (batch, classes)")
    return teacher, shape, logits


def _config(model: nn.Module, shape: tuple[int, ...],
            budget: float | str | dict | BudgetConfig, backend: str | None,
            config: Config | dict | str | os.PathLike[str] | None,
            overrides: dict[str, Any]) -> tuple[Config, BudgetConfig]:
    """(the run's configuration, the budget): ``config`` (default lana's defaults) with the
    model's label and image size, then ``overrides``, ``backend`` and ``budget`` on top."""
    if config is None:
        base = Config().model_dump(mode="json")
    elif isinstance(config, Config):
        base = config.model_dump(mode="json")
    elif isinstance(config, dict):
        base = config_from_dict(config).model_dump(mode="json")
    else:
        base = load_config(config).model_dump(mode="json")
    # model.name is only a label when the model is given; data.image_size records the size.
    base = _merge(base, {"model": {"name": f"python:{type(model).__name__}", "weights": None},
                         "data": {"image_size": shape[1]}})
    cfg_dict = _merge(base, overrides)
    if backend is not None:
        cfg_dict = _merge(cfg_dict, {"latency": {"backend": backend}})
    bud = parse_budget(budget)
    # Replaced whole, not merged: a millisecond budget over the default speed-up one would
    # give both.
    cfg_dict["search"] = {**cfg_dict["search"], "budget": bud.model_dump(exclude_none=True)}
    return config_from_dict(cfg_dict, "accelerate() arguments"), bud


def accelerate(model: nn.Module, train_data: Dataset, val_data: Dataset, *,
               test_data: Dataset | None = None,
               budget: float | str | dict | BudgetConfig = 2.0,
               backend: str | None = None,
               out: str | os.PathLike[str] = "lana-run",
               config: Config | dict | str | os.PathLike[str] | None = None,
               report: bool = True,
               **overrides: Any) -> AccelerateResult:
    """Make ``model`` faster under ``budget`` on ``backend``; return the student and more.

    ``model`` is the trained teacher (its current weights are used and never changed; it
    is copied). ``train_data`` trains the candidates and fine-tunes the student;
    ``val_data`` (held out) scores the candidates and ranks the K students; accuracy is
    reported on ``test_data`` (default: ``val_data``). Each dataset yields
    ``(image CxHxW float tensor, int label)``. ``backend`` is a latency backend
    (``onnxruntime``, ``torch``, ``torch-cuda``; default the config's). ``config`` is a base
    configuration (a :class:`Config`, dict or YAML path; default lana's defaults) and
    ``overrides`` replace parts of it by section, e.g. ``distill={"steps": 100},
    search={"k": 4}, seed=1, device="cuda"`` (where training runs; default ``auto``: a GPU
    when there is one). Everything is written to ``out`` and resumes from there.
    """
    from lana.model.data import Data, Splits
    from lana.pipeline.runner import Run

    teacher, shape, logits = _teacher(model, train_data, val_data, test_data)
    cfg, bud = _config(model, shape, budget, backend, config, overrides)
    splits = Splits(train=Data(train_data), val=Data(val_data),
                    test=Data(test_data if test_data is not None else val_data),
                    num_classes=int(logits.shape[1]), in_chans=shape[0], image_size=shape[1],
                    name=type(train_data).__name__)
    run = Run(out, cfg, teacher=teacher, splits=splits)
    run.all(bud)
    summary = run.write_summary()
    from lana.core.io import read_json
    from lana.pipeline.student import load_student

    sdir = run.student_dir(bud)
    export = read_json(sdir / EXPORT)
    # A fresh copy as the architecture: loading must not touch the caller's model.
    student = load_student(sdir / MODEL_DIR, teacher=copy.deepcopy(model))
    report_path = Path(out) / REPORT_DIR / REPORT_HTML
    if report:
        from lana.report.html import write_report

        report_path = write_report(out)
    return AccelerateResult(student=student, summary=summary, report=report_path,
                            run_dir=Path(out), export=export, run=run)
