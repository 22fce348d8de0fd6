"""The one YAML file that configures a run, validated with pydantic.

Every section has defaults that work; unknown keys are errors (a typo must not be silently
ignored). ``load_config`` turns pydantic's errors into one readable message.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lana.errors import BackendUnavailableError, ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """The teacher: a model name from lana's model registry plus constructor kwargs."""

    name: str = Field("lana:tiny_effnet", description="'timm:<name>' for any timm model, "
                      "'torchvision:<name>' for any torchvision classification model, "
                      "'lana:<name>' for a built-in model, or your own: "
                      "'python:<file.py or dotted.module>:<class or function>'")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to the builder "
                                   "(with the data's num_classes and in_chans, where it "
                                   "takes them)")
    weights: str | None = Field(None, description="the trained teacher's state dict: "
                                "safetensors, or a torch.save checkpoint (loaded with "
                                "weights_only=True; FILE#key picks a nested entry, else "
                                "state_dict/model are tried; module. prefixes dropped); "
                                "when absent the teacher is trained (and cached)")
    layers: list[str] | None = Field(None, description="names of the replaceable layers "
                                     "(modules called in a chain), for models lana cannot "
                                     "split by itself; default: the family's own split")


#: lana's own datasets (``data.name``); any other name is ``python:<module>:<function>``.
DATA_NAMES = ("fashion-mnist", "image-folder", "synthetic")


class DataConfig(_Section):
    """Dataset and splits. ``val`` is held out from the training data (for scoring/search)."""

    name: str = Field(
        "fashion-mnist", description="fashion-mnist (Debian package dataset-fashion-mnist), "
        "image-folder (data.path with train/ and val/ class folders), synthetic (a toy set "
        "for tests) or your own: 'python:<file.py or dotted.module>:<function>' returning "
        "(train, test), (train, val, test) or a dict of them plus 'num_classes', each a "
        "Dataset of (image CxHxW tensor, int label); it gets data.kwargs, and image_size "
        "and path where it takes them")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to a python: "
                                   "dataset builder")
    path: str | None = Field(None, description="dataset folder (default: the Debian "
                             "package's /usr/share/datasets/fashion-mnist)")
    image_size: int = Field(32, ge=8, le=1024, description="square input size in pixels "
                            "(images are resized to it)")
    train_samples: int | None = Field(None, ge=16, description="subset of the training split")
    val_samples: int = Field(2000, ge=16, description="held out from training data (unused "
                             "when a python: builder returns its own val split)")
    test_samples: int | None = Field(None, ge=16, description="subset of the test split "
                                     "(default: all of it)")
    workers: int = Field(0, ge=0, description="DataLoader worker processes (speed only: "
                         "changing it retrains nothing)")

    @field_validator("name")
    @classmethod
    def _known_source(cls, name: str) -> str:
        import difflib

        if name in DATA_NAMES or name.startswith("python:"):
            return name
        close = difflib.get_close_matches(name, DATA_NAMES, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown dataset {name!r}{hint}: use one of {list(DATA_NAMES)} or "
                         "your own, 'python:<file.py or dotted.module>:<function>'")


#: lana's training optimizers (:func:`lana.distill.train.make_optimizer`).
Optimizer = Literal["adamw", "sgd"]
_OPTIMIZER_HELP = "adamw (weight decay 1e-4) or sgd (Nesterov momentum 0.9, weight decay 5e-5)"


class TeacherTrainingConfig(_Section):
    """How lana trains the teacher when no weights are given."""

    epochs: float = Field(2.0, gt=0, description="passes over the training split")
    batch_size: int = Field(128, ge=1, description="images per training step")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (cosine schedule)")
    optimizer: Optimizer = Field("adamw", description=_OPTIMIZER_HELP)
    init: str | None = Field(None, description="pretrained weights the teacher's training "
                             "starts from, e.g. ImageNet weights to fine-tune on your data "
                             "(safetensors or a torch.save checkpoint, read as model.weights "
                             "is): every tensor whose name and shape match is loaded, the "
                             "rest (a classifier for another class count) keeps its fresh "
                             "initialisation; the file's SHA-256 joins the teacher cache key. "
                             "Default: train from scratch")
    cache_dir: str | None = Field(None, description="default: ~/.cache/lana/teachers")
    checkpoint_every: int = Field(200, ge=1, description="steps between resumable "
                                  "checkpoints (does not change the result)")


class SpaceConfig(_Section):
    """Candidate ops per layer, as spec patterns (brace groups expand)."""

    ops: list[str] | Literal["auto"] | None = Field(
        "auto", description="list of spec patterns, or 'auto' (or null): the default space "
        "of the teacher's family (see `lana list-models`)")


class DistillConfig(_Section):
    """Phase 1: layer-wise distillation of every candidate."""

    steps: int = Field(300, ge=1, description="optimiser steps per candidate")
    batch_size: int = Field(64, ge=1, description="images per step (one teacher pass feeds "
                            "all candidates)")
    lr: float = Field(2e-3, gt=0, description="peak learning rate (AdamW, cosine schedule)")
    group_size: int = Field(0, ge=0, description="candidates trained together per pass over "
                            "the data; 0 = automatic: as many consecutive candidates as fit "
                            "in max_memory_mb (one teacher pass feeds a whole group)")
    max_memory_mb: float = Field(1024, gt=0, description="memory budget of one group when "
                                 "group_size is 0, in MiB: each candidate's weights, "
                                 "gradients, Adam state and saved activations at batch_size, "
                                 "estimated from a 2-image forward pass (the teacher's "
                                 "features and torch itself come on top); the plan is "
                                 "in DIR/memory.json")
    checkpoint_every: int = Field(100, ge=1, description="steps between resumable checkpoints")
    inherit: bool = Field(True, description="initialise candidates from the teacher's layer "
                          "where the family allows (copies, most important channels); "
                          "false: fresh initialisation for every candidate")


class LatencyConfig(_Section):
    """Phase 2b: where and how latency is measured."""

    backend: str = Field("onnxruntime", description="a name in lana.latency.backends.BACKENDS: "
                         "onnxruntime, torch, openvino, torch-compile (CPU); torch-cuda, "
                         "torch-cuda-graphs, onnxruntime-cuda, onnxruntime-tensorrt, "
                         "tensorrt (GPU)")
    batch_size: int = Field(1, ge=1, description="batch size latency is measured at")
    threads: int = Field(1, ge=1, description="intra-op threads of the backend")
    warmup: int = Field(10, ge=0, description="untimed runs before timing")
    max_seconds: float = Field(0.3, gt=0, description="time cap per measured op")
    lut: str | None = Field(None, description="shared LUT file reused across runs")
    extra: list[str] = Field(default_factory=list, description="further latency columns "
                             "for library.json, as BACKEND or BACKEND@bN (batch size N): "
                             "each becomes a cost latency_ms@<entry> the search can bound")
    device: str | None = Field(None, description="device the LUT entries must come from: "
                               "unset = this machine (missing entries are measured); "
                               "'lut' = the one device in latency.lut, e.g. a target "
                               "profiled with `lana profile BUNDLE` (nothing is timed here)")
    normalize: bool = Field(True, description="time a fixed reference op alongside every "
                            "measurement and scale by it, so that the machine speeding up "
                            "or slowing down (other tenants of a VM, clocks) cancels out "
                            "between the LUT and end-to-end timings; the raw median is "
                            "kept in the LUT. false: a raw stopwatch, with periodic drift "
                            "checks instead (drift_every)")
    calibration_students: int = Field(8, ge=0, description="random students timed "
                                      "end to end beside the teacher when the LUT is built: "
                                      "where their weights explain how far whole networks "
                                      "run from their LUT sums (an op timed alone keeps its "
                                      "weights in cache, inside a network it streams them: "
                                      "small inputs on a CPU), every op also costs its "
                                      "parameters times the rate fitted on them "
                                      "(lana.latency.traffic). 0: the LUT alone")
    drift_every: int = Field(25, ge=0, description="with normalize false: re-time a "
                             "reference op after this many new LUT entries to detect a "
                             "machine that speeds up or slows down (0 = off; normalised "
                             "timings cancel drift as they go and skip it)")
    drift_threshold: float = Field(0.10, gt=0, description="relative change of the "
                                   "reference op that counts as drift: the entries since "
                                   "the last check are re-measured, then flagged")


class ScoreConfig(_Section):
    """Phase 2a: replace-one scoring."""

    metric: Literal["ce", "kl"] = Field("ce", description="replace-one loss: ce "
                                        "(cross-entropy on labels, the paper) or kl (KL to "
                                        "the teacher's outputs)")
    samples: int = Field(512, ge=8, description="held-out images used for scoring")
    batch_size: int = Field(256, ge=1, description="images per forward pass")


class BudgetConfig(_Section):
    """Latency budget: absolute milliseconds or a speed-up over the measured teacher."""

    latency_ms: float | None = Field(None, gt=0, description="end-to-end milliseconds")
    speedup: float | None = Field(None, gt=0, description="teacher ms / student ms, both "
                                  "measured")

    @model_validator(mode="after")
    def _one_of(self) -> BudgetConfig:
        if (self.latency_ms is None) == (self.speedup is None):
            raise ValueError("give exactly one of latency_ms or speedup")
        return self


class SearchConfig(_Section):
    """Phase 2c: ILP search and selection among K diverse solutions."""

    budget: BudgetConfig = Field(default_factory=lambda: BudgetConfig(speedup=2.0),
                                 description="the latency budget (one of its two keys)")
    k: int = Field(8, ge=1, description="diverse architectures solved, assembled and measured")
    overlap: float = Field(0.7, gt=0, le=1, description="fraction of layers a solution may "
                           "share with each earlier one")
    eval_samples: int = Field(1024, ge=8, description="held-out images to rank the K students")
    max_resolves: int = Field(4, ge=0, description="re-solves when a student misses its "
                              "budget, or leaves more than `slack` of it unused")
    extra_budgets: list[str] = Field(default_factory=list, description="further bounds "
                                     "on whole-network costs of library.json, e.g. "
                                     "'params<=2e6' or 'latency_ms@torch<=5'")
    margin: float | Literal["auto"] = Field(
        "auto", description="a student must measure this fraction under the budget to be "
        "selected, so that measurement noise does not push it over in a later timing. "
        "auto: derived from how much repeated timings of the same networks differ on this "
        "machine during the search (lana.latency.spread; 3 % until repeats are timed, "
        "1-25 %); or a fixed fraction in [0, 0.5)")
    slack: float = Field(0.15, gt=0, le=1, description="a chosen student that measures "
                         "more than this fraction under the budget (after the margin) "
                         "gives away accuracy: the calibration is refitted on every network "
                         "measured and the ILP re-solved with a larger LUT budget; the most "
                         "accurate student that met the budget over all solves is kept. "
                         "1 never re-solves upward")
    confirm: int = Field(3, ge=1, description="separate timings (each in fresh sessions, "
                         "the teacher alongside) whose median decides whether a student "
                         "meets the budget: the chosen student's in the search, and the "
                         "final check's at export; up to 2 x confirm + 1 while the median "
                         "is within half the timings' spread of the budget")
    windows: int = Field(3, ge=1, description="time windows in which the chosen student "
                         "is timed (confirm timings each, the teacher alongside) before the "
                         "search ends: the speed-up drifts between windows more than within "
                         "one, so the margin (auto) grows by the drift measured and a student "
                         "that misses over the windows is dropped and the ILP re-solved. 1: "
                         "judge by one window only")
    window_gap_s: float = Field(20.0, ge=0, description="seconds between those windows")
    skip_dominated: bool = Field(True, description="leave out every candidate that costs "
                                 "at least as much as the teacher's own layer in every cost "
                                 "column (each latency column, params, FLOPs): the search "
                                 "could pick it only for a replace-one score better than "
                                 "exact, i.e. by noise, so phase 1 does not train it either "
                                 "(latency is measured first)")

    @field_validator("margin")
    @classmethod
    def _margin_range(cls, v: float | str) -> float | str:
        if v != "auto" and not 0 <= v < 0.5:
            raise ValueError("margin must be 'auto' or a fraction in [0, 0.5), e.g. 0.05")
        return v


class FinetuneConfig(_Section):
    """Phase 3: fine-tuning with cross-entropy plus KD from the teacher."""

    epochs: float = Field(1.0, ge=0, description="passes over the training split (0: none)")
    batch_size: int = Field(128, ge=1, description="images per training step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (cosine schedule)")
    optimizer: Optimizer = Field("adamw", description=_OPTIMIZER_HELP)
    kd_weight: float = Field(1.0, ge=0, description="weight of the KD loss next to "
                             "cross-entropy")
    temperature: float = Field(2.0, gt=0, description="KD softmax temperature")
    checkpoint_every: int = Field(200, ge=1, description="steps between resumable "
                                  "checkpoints (does not change the result)")


class Config(_Section):
    """A whole lana run."""

    seed: int = Field(0, description="seed of every random choice (splits, init, order)")
    threads: int | None = Field(None, ge=1, description="torch threads for training")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
                        description="where the teacher, the candidates (phase 1), scoring "
                        "and fine-tuning run: auto (a GPU when CUDA is available, under "
                        "torchrun the one of each process's LOCAL_RANK; else the CPU), cpu, "
                        "cuda or cuda:N. Results on a GPU differ from the CPU's by float "
                        "rounding; changing it never invalidates finished stages. Latency "
                        "is measured where latency.backend says")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher_training: TeacherTrainingConfig = Field(default_factory=TeacherTrainingConfig)
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "value_error":  # our validators' own words, without pydantic's tag
            msg = msg.removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _suggest(err["loc"]) + \
                " (check the spelling; see `lana config --defaults`)"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def _suggest(loc: tuple) -> str:
    """' (did you mean 'steps'?)' for a mistyped key at ``loc``, from the section's keys."""
    import difflib

    model: Any = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def config_from_dict(data: dict | None, source: str = "config") -> Config:
    """Validate a plain dict into a :class:`Config`, raising ConfigError with every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a YAML mapping of sections, got "
                          f"{type(data).__name__}")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    # Candidate specs are validated here so a typo fails before hours of training. This
    # and the checks below import no torch: validating a YAML takes a fraction of a second.
    from lana.space.specs import space_specs

    if isinstance(cfg.space.ops, list):
        space_specs(cfg.space.ops)
    # Extra budgets and latency columns too: a typo must fail before the profile stage.
    from lana.search.budget import Budget

    for text in cfg.search.extra_budgets:
        Budget.parse(text)
    extra_columns(cfg.latency)
    return cfg


#: The latency backends lana ships, i.e. the names lana.latency.backends.BACKENDS starts
#: with; listed here so that checking a name needs no torch.
BUILTIN_BACKENDS = ("torch", "onnxruntime", "openvino", "torch-compile", "torch-cuda",
                    "torch-cuda-graphs", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")


def check_backend_name(name: str) -> None:
    """Raise BackendUnavailableError unless ``name`` is a registered latency backend.

    Backends are registered in ``lana.latency.backends.BACKENDS``, which imports torch. Registering
    one means importing that module, so while it is not loaded the built-in names are all
    there are, and a config is checked without loading torch.
    """
    backends = sys.modules.get("lana.latency.backends")
    known = backends.BACKENDS if backends is not None else BUILTIN_BACKENDS
    if name not in known:
        raise BackendUnavailableError.unknown(name, known)


def extra_columns(cfg: LatencyConfig) -> dict[str, LatencyConfig]:
    """``latency.extra`` as {column name: latency config}: ``"torch"`` -> column
    ``latency_ms@torch`` measured with backend torch, ``"onnxruntime@b32"`` -> column
    ``latency_ms@onnxruntime@b32`` at batch size 32 (other settings as ``cfg``)."""
    out = {}
    for entry in cfg.extra:
        backend, _, batch = entry.partition("@")
        if batch and not (batch.startswith("b") and batch[1:].isdigit() and int(batch[1:])):
            raise ConfigError(f"latency.extra entry {entry!r}: write BACKEND or BACKEND@bN "
                              "(N = batch size), e.g. 'torch' or 'onnxruntime@b32'")
        check_backend_name(backend)  # an unknown name fails here, listing the known ones
        out[f"latency_ms@{entry}"] = cfg.model_copy(update={
            "backend": backend, "batch_size": int(batch[1:]) if batch else cfg.batch_size,
            "extra": [], "device": None})
    return out


def with_changes(config: Config, source: str, **changes: Any) -> Config:
    """A validated copy of ``config`` with top-level keys replaced (e.g. ``device``);
    ``source`` names where the changes came from in error messages."""
    return config_from_dict({**config.model_dump(mode="json"), **changes}, source)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return config_from_dict(data, str(path))
