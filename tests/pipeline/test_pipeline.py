"""End-to-end tests of lana.pipeline.runner.Run on tiny synthetic data (one shared ~40 s run)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lana
import lana.distill.phase1
import lana.distill.train
import lana.latency.profile
import lana.space.ops
from lana.config import BudgetConfig, config_from_dict
from lana.core.io import load_tensors, read_json
from lana.core.layout import SEARCH
from lana.distill.train import evaluate
from lana.errors import ConfigError, InfeasibleBudgetError
from lana.pipeline.keys import budget_tag
from lana.pipeline.runner import Run
from lana.pipeline.student import assemble
from lana.space.ops import log10_space_size


def _forbid(*names: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{'/'.join(names)} must not be called")

    return fail


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lana.distill.phase1, "_train_group", _forbid("distill._train_group"))
    monkeypatch.setattr(lana.distill.train, "train_classifier", _forbid("train.train_classifier"))


def _mtimes(run_dir: Path, patterns: list[str]) -> dict[str, int]:
    out = {}
    for pat in patterns:
        for p in sorted(run_dir.glob(pat)):
            out[str(p.relative_to(run_dir))] = p.stat().st_mtime_ns
    return out


STAGE_FILES = ["teacher.safetensors", "teacher.json", "candidates.json", "distill/**/*",
               "latency.json", "scores.json", "students/*/*.json",
               "students/*/finetuned.safetensors", "students/*/model/*"]



def _assert_ilp_kept_its_budget(search_json: Path) -> None:
    """The chosen student's LUT latency is within the layer budget of the solve that
    found it: what the ILP guarantees. (Not its calibrated prediction within
    ``budget_ms``: the search aims at the teacher timed beside each solve, so on a
    machine that slowed down since profiling the prediction may exceed ``budget_ms``.)"""
    srch = read_json(search_json)
    chosen = srch["chosen"]
    found = [(a, r) for a in srch["attempts"] for r in a["students"]
             if r["choices"] == chosen["choices"]]
    assert found, "the chosen student is one of the solves' students"
    assert any(r["latency_ms_lut"] <= (a["layer_budget_ms"] + srch["fixed_ms"]) * 1.0001
               for a, r in found)

def test_summary_has_documented_fields(pipeline_run) -> None:
    run_dir, cfg = pipeline_run
    summary = read_json(run_dir / "summary.json")
    assert summary["format"] == "lana-summary/1"
    teacher = summary["teacher"]
    assert teacher["name"] == "lana:tiny_effnet"
    assert 0.0 <= teacher["accuracy"] <= 1.0
    assert teacher["latency_ms"] > 0
    lat = summary["latency"]
    assert lat["backend"] == "onnxruntime" and lat["batch_size"] == 1 and lat["threads"] == 1
    assert isinstance(lat["device"], str) and lat["device"]
    (student,) = summary["students"]
    assert student["budget"] == {"speedup": 1.5}
    assert student["budget_ms"] == pytest.approx(teacher["latency_ms"] / 1.5)
    assert student["latency_ms_predicted"] > 0
    _assert_ilp_kept_its_budget(run_dir / "students" / "speedup1.5" / SEARCH)
    assert student["latency_ms_measured"] > 0
    # the check is the median of search.confirm (or up to 2 x confirm + 1 where the
    # verdict is in doubt) separate timings, each with the teacher; every number comes
    # from the median one, so they agree with each other
    timings = student["timings_ms"]
    assert 3 <= len(timings) <= 7
    ratios = sorted(t["teacher"] / t["student"] for t in timings)
    assert student["speedup"] == pytest.approx(ratios[(len(ratios) - 1) // 2])
    assert student["speedup"] == pytest.approx(
        student["teacher_latency_ms_measured"] / student["latency_ms_measured"])
    assert {"teacher": student["teacher_latency_ms_measured"],
            "student": student["latency_ms_measured"]} in timings
    assert student["meets_budget"] == (student["speedup"] >= 1.5)
    assert 0.0 <= student["accuracy"] <= 1.0
    assert 0.0 <= student["accuracy_before_finetune"] <= 1.0
    candidates = [layer["ops"] for layer in read_json(run_dir / "candidates.json")["layers"]]
    assert len(student["choices"]) == len(candidates) == 11
    assert all(c in ops for c, ops in zip(student["choices"], candidates, strict=True))
    assert any(c != "teacher" for c in student["choices"])
    search = summary["search"]
    assert search["k"] == 2 and search["solve_seconds"] >= 0
    assert search["log10_space_size"] == pytest.approx(log10_space_size(candidates))
    # the written file and the export record agree
    export = read_json(run_dir / "students" / "speedup1.5" / "export.json")
    assert export["accuracy"] == student["accuracy"]
    assert export["choices"] == student["choices"]


def test_run_directory_contents(pipeline_run) -> None:
    run_dir, _ = pipeline_run
    layers = read_json(run_dir / "candidates.json")["layers"]
    teacher = read_json(run_dir / "teacher.json")
    assert [{k: v for k, v in layer.items() if k not in ("ops", "name")} for layer in layers] \
        == [{k: v for k, v in layer.items() if k != "name"} for layer in teacher["layers"]]
    expected = ["teacher", "identity", "ir_k3_e1", "ir_k3_e3", "cb_k3"]
    for layer in layers:
        same = layer["in_shape"] == layer["out_shape"]
        assert layer["ops"] == (expected if same else [s for s in expected if s != "identity"])
    index = read_json(run_dir / "distill" / "index.json")
    for i, layer in enumerate(layers):
        trained = [s for s in layer["ops"] if s not in ("teacher", "identity")]
        assert sorted(index[str(i)]) == sorted(trained)
        for spec in trained:
            assert lana.distill.phase1.weight_path(run_dir, i, spec).exists()
            assert math.isfinite(index[str(i)][spec]["nmse"])
    scores = read_json(run_dir / "scores.json")
    lat = read_json(run_dir / "latency.json")
    for i, layer in enumerate(layers):
        ops = layer["ops"]
        assert len(scores["scores"][i]) == len(lat["layers"][i]) == len(ops)
        assert scores["scores"][i][0] == 0.0  # the teacher op
        if "identity" in ops:
            assert lat["layers"][i][ops.index("identity")] == 0.0
        assert all(ms > 0 for s, ms in zip(ops, lat["layers"][i], strict=True)
                   if s != "identity")
    assert scores["samples"] == 32
    assert not list((run_dir / "distill").glob("checkpoint-*"))
    # The weights' traffic is fitted on the teacher and latency.calibration_students random
    # students; the op costs grow by it only where it was used, the LUT's kept beside them.
    traffic = lat["weight_traffic"]
    assert len(traffic["points"]) == 1 + len(traffic["choices"]) == 1 + 8
    assert all(len(ch) == len(layers) for ch in traffic["choices"])
    assert ("lut" in lat) == traffic["used"] == (traffic["ms_per_mparam"] > 0)


def test_exported_student_loads_and_matches(run_copy) -> None:
    import onnxruntime as ort

    run_dir, cfg = run_copy
    run = Run(run_dir, config_from_dict(cfg))
    sdir = run.student_dir(run.config.search.budget)
    export = read_json(sdir / "export.json")
    loaded = lana.load_student(sdir / "model")
    assert loaded.choices == export["choices"]
    # the fine-tuned student, rebuilt from the run directory
    ref = assemble(run.chain, export["choices"], run.build_candidate)
    ref.load_state_dict(load_tensors(sdir / "finetuned.safetensors"))
    ref.eval()
    x, _ = next(run.splits.test.batches(16))
    with torch.no_grad():
        expected = ref(x)
        assert torch.allclose(loaded(x), expected, atol=1e-5)
    # its test accuracy is the one reported in the summary
    assert evaluate(loaded, run.splits.test)["accuracy"] == export["accuracy"]
    sess = ort.InferenceSession(str(sdir / export["files"]["onnx"]),
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for k in range(4):
        (out,) = sess.run(None, {name: x[k:k + 1].numpy()})
        np.testing.assert_allclose(out, expected[k:k + 1].numpy(), atol=1e-4, rtol=1e-4)


def test_rerun_does_no_work(run_copy, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, cfg = run_copy
    before = read_json(run_dir / "summary.json")
    mtimes = _mtimes(run_dir, STAGE_FILES)
    assert len(mtimes) > 20
    _no_training(monkeypatch)
    monkeypatch.setattr(lana.latency.profile, "measure_models", _forbid("profile.measure_models"))
    monkeypatch.setattr(lana.latency.profile, "profile_candidates", _forbid("profile_candidates"))
    summary = Run(run_dir, config_from_dict(cfg)).all()
    assert _mtimes(run_dir, STAGE_FILES) == mtimes

    def strip(s: dict) -> dict:
        s = copy.deepcopy(s)
        s.pop("timings_s")  # see test_rerun_keeps_stage_timings
        for st in s["students"]:
            st.pop("path")
        return s

    assert strip(summary) == strip(before)
    assert summary["students"][0]["path"] == str(run_dir / "students" / "speedup1.5" / "model")


def test_rerun_keeps_stage_timings(run_copy, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stages whose output exists are skipped, and so must be their recorded durations:
    # a resumed run must not replace the real phase-1 time by the time of a no-op check.
    # Fails while Run.distill() records its timing even when nothing was distilled.
    run_dir, cfg = run_copy
    before = read_json(run_dir / "timings.json")
    _no_training(monkeypatch)
    summary = Run(run_dir, config_from_dict(cfg)).all()
    assert summary["timings_s"] == before


def test_second_budget_reruns_only_search_finetune_export(
        run_copy, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, cfg = run_copy
    mtimes = _mtimes(run_dir, STAGE_FILES)
    monkeypatch.setattr(lana.distill.phase1, "_train_group", _forbid("distill._train_group"))
    monkeypatch.setattr(lana.latency.profile, "profile_candidates", _forbid("profile_candidates"))
    trainings: list[str] = []
    real = lana.distill.train.train_classifier

    def spy(*args, **kwargs):
        trainings.append(kwargs.get("description", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(lana.distill.train, "train_classifier", spy)
    budget = BudgetConfig(speedup=1.2)
    summary = Run(run_dir, config_from_dict(cfg)).all(budget)
    assert trainings == ["phase 3 finetune"]
    assert _mtimes(run_dir, STAGE_FILES).items() >= mtimes.items()  # nothing rewritten
    assert sorted(s["budget"]["speedup"] for s in summary["students"]) == [1.2, 1.5]
    for s in summary["students"]:
        assert 0 <= s["accuracy"] <= 1
    for tag in ("speedup1.2", "speedup1.5"):
        _assert_ilp_kept_its_budget(run_dir / "students" / tag / SEARCH)
    tag = budget_tag(budget)
    assert tag == "speedup1.2"
    for name in ("search.json", "finetune.json", "export.json", "model/arch.json"):
        assert (run_dir / "students" / tag / name).exists()
    assert read_json(run_dir / "summary.json") == summary
    # a run with the second budget in its config is now complete, too
    trainings.clear()
    cfg2 = copy.deepcopy(cfg)
    cfg2["search"]["budget"] = {"speedup": 1.2}
    Run(run_dir, config_from_dict(cfg2)).all()
    assert trainings == []


def test_infeasible_budget(run_copy, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, cfg = run_copy
    _no_training(monkeypatch)
    run = Run(run_dir, config_from_dict(cfg))
    budget = BudgetConfig(latency_ms=1e-6)
    with pytest.raises(InfeasibleBudgetError) as info:
        run.search(budget)
    msg = str(info.value)
    assert "minimum reachable" in msg
    minimum = info.value.minimum["latency_ms"]
    assert minimum > 1e-6
    assert f"{minimum:.4g}" in msg
    assert not (run.student_dir(budget) / "search.json").exists()
    with pytest.raises(InfeasibleBudgetError):
        run.all(budget)
    # the reported minimum is reachable: a budget just above it is feasible for the ILP
    assert minimum < read_json(run_dir / "latency.json")["teacher_measured_ms"]


def test_config_change_of_results_sections_is_rejected(run_copy) -> None:
    run_dir, cfg = run_copy
    for section, change in [("space", {"ops": ["teacher", "cb_k3"]}),
                            ("distill", {"steps": 6, "batch_size": 16}),
                            ("data", {**cfg["data"], "val_samples": 32})]:
        other = copy.deepcopy(cfg)
        other[section] = change
        with pytest.raises(ConfigError, match=f"different '{section}' section"):
            Run(run_dir, config_from_dict(other))
    other = copy.deepcopy(cfg)
    other["seed"] = 1
    with pytest.raises(ConfigError, match="'seed'"):
        Run(run_dir, config_from_dict(other))
    # search, latency and fine-tuning settings may change freely
    other = copy.deepcopy(cfg)
    other["search"]["k"] = 3
    other["finetune"]["epochs"] = 2
    other["latency"]["warmup"] = 5
    other["data"]["workers"] = 2  # speed only, in a locked section
    other["distill"]["max_memory_mb"] = 256  # grouping: speed and memory only
    other["distill"]["checkpoint_every"] = 3
    Run(run_dir, config_from_dict(other))
    assert "k: 3" in (run_dir / "config.yaml").read_text()


# The settings that feed the teacher's cache key and the stage keys (pipeline._settings),
# less those left out of them. A new setting in one of these sections changes every key,
# so runs cached before it would retrain: give it its default in
# pipeline._LATER_SETTINGS (or, if it changes only speed, pipeline._SPEED_ONLY; data.kwargs
# is dropped from pipeline._locked when empty), then add it here.
_KEYED = {
    "data": {"image_size", "kwargs", "name", "path", "test_samples", "train_samples",
             "val_samples", "workers"},
    "teacher_training": {"batch_size", "cache_dir", "checkpoint_every", "epochs", "init",
                         "lr", "optimizer"},
    "latency": {"backend", "batch_size", "calibration_students", "device", "drift_every",
                "drift_threshold", "extra", "lut", "max_seconds", "normalize", "threads",
                "warmup"},
    "score": {"batch_size", "metric", "samples"},
    "search": {"budget", "confirm", "eval_samples", "extra_budgets", "k", "margin",
               "max_resolves", "overlap", "skip_dominated", "slack", "window_gap_s",
               "windows"},
    "finetune": {"batch_size", "checkpoint_every", "epochs", "kd_weight", "lr", "optimizer",
                 "temperature"},
}


@pytest.mark.parametrize("section", sorted(_KEYED))
def test_new_settings_do_not_silently_invalidate_cached_runs(section: str) -> None:
    from lana.config import Config

    fields = set(Config.model_fields[section].annotation.model_fields)
    assert fields == _KEYED[section], (
        f"the '{section}' section's settings changed ({sorted(fields ^ _KEYED[section])}): "
        "see the comment above _KEYED")


def test_run_needs_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a lana run directory"):
        Run(tmp_path / "nothing-here")
    assert not (tmp_path / "nothing-here").exists()


def test_run_reopens_from_its_config(run_copy) -> None:
    run_dir, cfg = run_copy
    run = Run(run_dir)
    assert run.config == config_from_dict(cfg)
    assert run.candidates == [layer["ops"] for layer in
                              json.loads((run_dir / "candidates.json").read_text())["layers"]]


def test_teacher_cache_is_reused(pipeline_run, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, cfg = pipeline_run
    _no_training(monkeypatch)
    cfg = copy.deepcopy(cfg)
    cfg["data"]["workers"] = 1  # how fast data loads: not part of the teacher's key
    run = Run(tmp_path / "second", config_from_dict(cfg))
    run.prepare()
    a = load_tensors(run_dir / "teacher.safetensors")
    b = load_tensors(tmp_path / "second" / "teacher.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_json(tmp_path / "second" / "teacher.json") == read_json(run_dir / "teacher.json")
    assert read_json(tmp_path / "second" / "candidates.json") == read_json(
        run_dir / "candidates.json")


def test_changed_score_settings_recompute_scores_only(run_copy,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, cfg = run_copy
    _no_training(monkeypatch)
    monkeypatch.setattr(lana.latency.profile, "profile_candidates", _forbid("profile_candidates"))
    latency = read_json(run_dir / "latency.json")
    other = copy.deepcopy(cfg)
    other["score"]["samples"] = 16
    scores = Run(run_dir, config_from_dict(other)).score()
    assert scores["samples"] == 16
    assert read_json(run_dir / "scores.json")["samples"] == 16
    assert read_json(run_dir / "latency.json") == latency


def test_own_model_and_data_through_the_python_api(tmp_path: Path, synthetic_splits,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's trained nn.Sequential on user data: no teacher training, torch backend."""
    from torch import nn

    from lana.pipeline.student import load_student
    from tests.conftest import small_sequential_teacher

    torch.manual_seed(0)
    model = small_sequential_teacher(seed=3)
    model.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real_train = lana.distill.train.train_classifier

    def no_teacher_training(*args, **kwargs):
        assert kwargs.get("description") != "teacher", "the given teacher must not be trained"
        return real_train(*args, **kwargs)

    monkeypatch.setattr(lana.distill.train, "train_classifier", no_teacher_training)
    cfg = config_from_dict({
        "seed": 0, "threads": 1, "model": {"name": "my-own-model"},
        "space": {"ops": ["teacher", "identity", "cb_k{1,3}"]},
        "distill": {"steps": 3, "batch_size": 16},
        "latency": {"backend": "torch", "max_seconds": 0.02, "warmup": 2, "drift_every": 0},
        "score": {"samples": 32}, "search": {"k": 2, "eval_samples": 32,
                                             "budget": {"speedup": 1.1}},
        "finetune": {"epochs": 1, "batch_size": 32}})
    summary = Run(tmp_path / "run", cfg, teacher=model, splits=synthetic_splits).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    student = summary["students"][0]
    assert summary["latency"]["backend"] == "torch"
    assert len(student["choices"]) == 5 and student["choices"][-1] == "teacher"
    loaded = load_student(student["path"], teacher=small_sequential_teacher().append(
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))))
    x = torch.randn(2, 1, 16, 16)
    assert loaded(x).shape == (2, 4)


@pytest.mark.parametrize("model_name,ops", [
    ("timm:resnest14d", ["teacher", "identity", "rb_w0.5", "rep_k3_a"]),
    ("timm:tf_efficientnetv2_b0", ["teacher", "identity", "er_k3_e1"]),
    ("timm:mobilenetv3_small_050", ["teacher", "identity", "rep_k3"]),
    # a torchvision model by name: the generic fx split, its 1-channel stem rebuilt, an
    # in-place Hardswish layer in its head, and the student loads back by rebuilding it
    ("torchvision:mobilenet_v3_small", ["teacher", "identity", "ds_k3"])])
def test_tiny_end_to_end_per_family(model_name: str, ops: list[str], tmp_path: Path,
                                    synthetic_splits) -> None:
    """Every phase on one small model of each teacher family beyond EfficientNet V1, with
    family-aware ops (bottlenecks inherited from the teacher, RepVGG folded for export)."""
    cfg = config_from_dict({
        "seed": 0, "threads": 1, "model": {"name": model_name},
        "teacher_training": {"epochs": 0.25, "batch_size": 32,
                             "cache_dir": str(tmp_path / "cache")},
        "space": {"ops": ops},
        "distill": {"steps": 2, "batch_size": 16},
        "latency": {"backend": "onnxruntime", "max_seconds": 0.01, "warmup": 1,
                    "drift_every": 0},
        # A loose budget: on these tiny inputs the candidates of a 4-layer ResNeSt are not
        # reliably faster than its blocks, and this test is about the pipeline, not speed
        # (so nothing is left out for being no cheaper than a block: timings would decide).
        "score": {"samples": 16}, "search": {"k": 2, "eval_samples": 16,
                                             "budget": {"latency_ms": 1000.0},
                                             "skip_dominated": False},
        "finetune": {"epochs": 0.25, "batch_size": 32}})
    summary = Run(tmp_path / "run", cfg, splits=synthetic_splits).all()
    student = summary["students"][0]
    assert 0.0 <= student["accuracy"] <= 1.0
    assert student["latency_ms_measured"] > 0
    layers = read_json(tmp_path / "run" / "teacher.json")["layers"]
    assert len(student["choices"]) == len(layers) > 1
    assert student["meets_budget"]
    # K=2 diverse solutions were assembled from phase-1 weights and measured
    search = read_json(tmp_path / "run" / "students" / "ms1000" / "search.json")
    assert len(search["attempts"][0]["students"]) == 2
    specs = lana.space.ops.space_specs(ops)
    assert set(student["choices"]) <= set(specs)
    assert read_json(tmp_path / "run" / "candidates.json")["space"]["ops"] == ops
    # the exported ONNX model holds no unfolded RepVGG branches
    if any(c.startswith("rep") for c in student["choices"]):
        import onnx

        onnx_path = Path(student["path"]) / "model.onnx"
        names = [n.name for n in onnx.load(str(onnx_path)).graph.initializer]
        assert not any("conv_1x1" in n or "identity" in n for n in names)
    loaded = lana.load_student(student["path"])
    s = synthetic_splits
    x = torch.randn(2, s.in_chans, s.image_size, s.image_size)
    assert loaded(x).shape == (2, synthetic_splits.num_classes)


@pytest.mark.parametrize("model_name,family", [("timm:resnet18", "timm-resnet"),
                                               ("lana:tiny_effnet", "timm-efficientnet")])
def test_auto_space_resolves_by_family(model_name: str, family: str, tmp_path: Path,
                                       synthetic_splits) -> None:
    """space.ops 'auto' (the default) gives the teacher family's space, recorded per run."""
    from lana.space.ops import family_space, layer_candidates, space_specs

    cfg = config_from_dict({"seed": 0, "model": {"name": model_name},
                            "teacher_training": {"epochs": 0.05, "batch_size": 32,
                                                 "cache_dir": str(tmp_path / "cache")}})
    assert cfg.space.ops == "auto"
    run = Run(tmp_path / "run", cfg, splits=synthetic_splits)
    run.prepare()
    data = read_json(tmp_path / "run" / "candidates.json")
    assert data["space"] == {"family": family, "ops": list(family_space(family))}
    specs = space_specs(family_space(family))
    for layer, info in zip(data["layers"], run.chain.info, strict=True):
        assert layer["ops"] == layer_candidates(info, specs)
    # an explicit list is used as given
    cfg2 = config_from_dict({**cfg.model_dump(), "space": {"ops": ["teacher", "cb_k3"]}})
    run2 = Run(tmp_path / "run2", cfg2, teacher=run.teacher, splits=synthetic_splits)
    assert all(ops == ["teacher", "cb_k3"] for ops in run2.candidates)


def test_layers_named_by_hand_through_the_config(tmp_path: Path, synthetic_splits) -> None:
    """model.layers splits a model that is not a chain at its top level (a skip connection
    around b2); the student keeps the split and loads back."""
    from torch import nn

    from lana.pipeline.student import load_student

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x))) + x

    class SkipNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, 2, 1)
            self.b1, self.b2 = Block(8), Block(8)
            self.stage = nn.Sequential(Block(8), Block(8))
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            y = self.b1(torch.relu(self.stem(x)))
            return self.fc(self.stage(self.b2(y) + y).mean((2, 3)))

    torch.manual_seed(0)
    model = SkipNet().eval()
    cfg = config_from_dict({
        "seed": 0, "threads": 1, "model": {"name": "skipnet", "layers": ["stage.0", "stage.1"]},
        "space": {"ops": ["teacher", "identity", "cb_k3", "rep_k3"]},
        "distill": {"steps": 2, "batch_size": 16},
        "latency": {"backend": "torch", "max_seconds": 0.01, "warmup": 1, "drift_every": 0},
        "score": {"samples": 16}, "search": {"k": 1, "eval_samples": 16,
                                             "budget": {"latency_ms": 1000.0}},
        "finetune": {"epochs": 0}})
    summary = Run(tmp_path / "run", cfg, teacher=model, splits=synthetic_splits).all()
    layers = read_json(tmp_path / "run" / "candidates.json")["layers"]
    assert [layer["name"] for layer in layers] == ["stage.0", "stage.1"]
    assert read_json(tmp_path / "run" / "candidates.json")["space"]["family"] == "fx-chain"
    student = summary["students"][0]
    arch = read_json(Path(student["path"]) / "arch.json")
    assert arch["model"]["layers"] == ["stage.0", "stage.1"]
    loaded = load_student(student["path"], teacher=SkipNet())
    assert loaded.names == ["stage.0", "stage.1"]
    assert loaded(torch.randn(2, 1, 16, 16)).shape == (2, 4)
