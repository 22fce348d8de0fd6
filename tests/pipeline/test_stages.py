"""The stage graph: stage keys and ``lana status`` pinned to what existing run directories
hold, so a change to how stages are declared never makes a run recompute or report
otherwise."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from lana.cli.commands import main
from lana.config import config_from_dict
from lana.core.io import CHECKSUM_SUFFIX, atomic_write_bytes, read_json
from lana.core.layout import RUN_FILES, STUDENTS_DIR
from lana.pipeline.keys import score_inputs, stage_inputs
from lana.pipeline.stages import KEY_FIELD, LOCKED_SECTIONS, STAGE, STAGES, STEPS, key_hash
from lana.pipeline.status import run_status
from tests.conftest import tiny_config_dict

# Captured from lana before the stage graph was declared as data (commit 01b1662): the keys
# stamped into run directories made since. A different value here means existing runs would
# recompute that stage.
# "chosen": fine-tuning's key with a chosen student; "export": export's key after it.
# search.margin's default became "auto" (issue 34): a search under it is another search, so
# search, finetune and export were re-pinned then; a run made before keeps its keys with
# `search.margin: 0.03`, the old default (test_older_defaults_keep_older_run_directories).
# search.windows (issue 34: the chosen student timed in time windows apart) re-pinned
# search, finetune and export again; a run made before keeps its keys with
# `search.windows: 1` (the same test).
# latency.calibration_students (the weights' memory traffic in every op's cost) re-pinned
# profile, search, finetune and export; a run made before keeps its keys with
# `latency.calibration_students: 0` (the same test).
_TINY_KEYS = {"profile": "0a645ce8743165ff", "score": "55605a87cee57734",
              "search": "3aa5d8637234762e", "finetune": "c5453bbe8b70b0a5",
              "chosen": "027258fedcdf91ff", "export": "70229ce99484c320"}
# Settings at non-default values, and settings a key leaves out (budget, checkpoint_every,
# speed-only ones): only search and finetune change.
_VARIANT_KEYS = {"profile": "0a645ce8743165ff", "score": "55605a87cee57734",
                 "search": "20175bdbb5485e74", "finetune": "f029e74a6b1152a4",
                 "chosen": "33beccb7f2c42723", "export": "3f4eb49d73d62999"}
# The keys of run directories made before latency.calibration_students (the LUT alone).
_TINY_KEYS_NO_TRAFFIC = {"profile": "0eba15374ddd0b81", "score": "55605a87cee57734",
                         "search": "f49706cccc5c0883", "finetune": "b738e1a2935ea7e4",
                         "chosen": "2c7895f6cffd34c2", "export": "2120caaf3ccf363d"}
_VARIANT_KEYS_NO_TRAFFIC = {"profile": "0eba15374ddd0b81", "score": "55605a87cee57734",
                            "search": "2491467dde070058", "finetune": "b63e83d80d618962",
                            "chosen": "2094676f2b52d0e6", "export": "4387ce3d39cbc2c7"}
# The keys of run directories made before search.windows (one window).
_TINY_KEYS_ONE_WINDOW = {"profile": "0eba15374ddd0b81", "score": "55605a87cee57734",
                         "search": "ad1612430d4c4e7b", "finetune": "0bb74f7c3d530619",
                         "chosen": "ba6f22f8e5879758", "export": "b8af9c546e6a8b8f"}
_VARIANT_KEYS_ONE_WINDOW = {"profile": "0eba15374ddd0b81", "score": "55605a87cee57734",
                            "search": "a7d1f866543c3212", "finetune": "c67e434f84dfb23f",
                            "chosen": "e4d7f9a26f144f62", "export": "32e19a7a3ceeec2b"}
# The keys of run directories made before, with the fixed 3 % margin.
_TINY_KEYS_MARGIN_003 = {"profile": "0eba15374ddd0b81", "score": "55605a87cee57734",
                         "search": "f1e309f56de85771", "finetune": "0e81820d78c571f7",
                         "chosen": "a3439d705483e4bc", "export": "5f68f4a325df6e6e"}
_VARIANT_KEYS_MARGIN_003 = {"profile": "0eba15374ddd0b81", "score": "55605a87cee57734",
                            "search": "6a8f0bfa853be904", "finetune": "56ab14206fdf3444",
                            "chosen": "13029bffe959f9fe", "export": "78b9311e3a8a6633"}
_TEACHER_KEY = "73b32fea74d85d94"  # the tiny teacher's file name in the teacher cache


def _key(inputs: dict) -> str:
    # The hash as run directories store it, written out here on purpose: it is a file
    # format, not an implementation detail.
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _variant(cfg: dict) -> dict:
    v = copy.deepcopy(cfg)
    v["finetune"]["optimizer"] = "sgd"
    v["search"]["skip_dominated"] = True
    v["teacher_training"]["checkpoint_every"] = 7
    v["search"]["budget"] = {"latency_ms": 3}
    v["data"]["workers"] = 2
    v["distill"]["group_size"] = 3
    v["finetune"]["checkpoint_every"] = 5
    return v


def _stage_keys(cfg: dict) -> dict:
    config = config_from_dict(cfg)
    keys = {s: _key(stage_inputs(config, s))
            for s in ("profile", "score", "search", "finetune")}
    keys["chosen"] = _key({**stage_inputs(config, "finetune"),
                           "choices": {"choices": ["teacher", "x"]}})
    keys["export"] = _key({"finetune": keys["chosen"]})
    return keys


def _no_traffic(cfg: dict) -> dict:
    return {**cfg, "latency": {**cfg.get("latency", {}), "calibration_students": 0}}


def _one_window(cfg: dict) -> dict:
    # Runs made before search.windows were also made before latency.calibration_students.
    search = {**cfg.get("search", {}), "windows": 1}
    search.pop("window_gap_s", None)
    return {**_no_traffic(cfg), "search": search}


def _old_margin(cfg: dict) -> dict:
    one = _one_window(cfg)
    return {**one, "search": {**one["search"], "margin": 0.03}}


@pytest.mark.parametrize(("make", "expected"), [(lambda c: c, _TINY_KEYS),
                                                (_variant, _VARIANT_KEYS)])
def test_stage_keys_are_those_of_existing_run_directories(tmp_path: Path, make,
                                                          expected: dict) -> None:
    config = config_from_dict(make(tiny_config_dict(tmp_path)))
    assert _stage_keys(make(tiny_config_dict(tmp_path))) == expected
    assert _key(score_inputs(config, [[], []])) == expected["score"]
    assert _key(score_inputs(config, [["a"], []])) == "261de8b694cd2dc1"


# Each older default, with the keys of run directories made under it.
_OLDER = {"no_weight_traffic": (_no_traffic, _TINY_KEYS_NO_TRAFFIC, _VARIANT_KEYS_NO_TRAFFIC),
          "one_window": (_one_window, _TINY_KEYS_ONE_WINDOW, _VARIANT_KEYS_ONE_WINDOW),
          "old_margin": (_old_margin, _TINY_KEYS_MARGIN_003, _VARIANT_KEYS_MARGIN_003)}


@pytest.mark.parametrize(("older", "make", "expected"), [
    pytest.param(older, make, keys[n], id=f"{name}-{'variant' if n else 'tiny'}")
    for name, (older, *keys) in _OLDER.items()
    for n, make in enumerate((lambda c: c, _variant))])
def test_older_defaults_keep_older_run_directories(tmp_path: Path, older, make,
                                                   expected: dict) -> None:
    assert _stage_keys(older(make(tiny_config_dict(tmp_path)))) == expected


def test_a_finished_runs_files_carry_those_keys(pipeline_run) -> None:
    run_dir, cfg = pipeline_run
    assert read_json(run_dir / "latency.json")["inputs"] == _TINY_KEYS["profile"]
    assert read_json(run_dir / "scores.json")["inputs"] == _TINY_KEYS["score"]
    sdir = run_dir / "students" / "speedup1.5"
    search = read_json(sdir / "search.json")
    assert search["inputs"] == _TINY_KEYS["search"]
    finetune = read_json(sdir / "finetune.json")
    assert finetune["inputs"] == _key({**stage_inputs(config_from_dict(cfg), "finetune"),
                                       "choices": search["chosen"]})
    assert read_json(sdir / "export.json")["inputs"] == _key({"finetune": finetune["inputs"]})
    cache = Path(cfg["teacher_training"]["cache_dir"])
    assert (cache / f"{_TEACHER_KEY}.safetensors").is_file()


def _status_json(run_dir: Path, capsys) -> dict:
    assert main(["status", str(run_dir), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# `lana status --json` of the finished tiny run as lana printed it before the stage graph
# was declared as data; measured figures (any number with a point) read "#".
_FINISHED = [
    ("prepare", None, "lana:tiny_effnet: test accuracy # %, 11 layers, 51 candidates"),
    ("profile", None, "teacher # ms measured, onnxruntime"),
    ("distill", None, "33/33 candidates trained"),
    ("score", None, "32 held-out samples, ce"),
    ("search", "speedup1.5",
     "chosen student: predicted # ms, measured #x faster than the teacher, within budget"),
    ("finetune", "speedup1.5", "test accuracy # % (before: # %)"),
    ("export", "speedup1.5", "measured # ms, #x the teacher, within budget"),
]


def test_status_of_a_finished_run_is_unchanged(pipeline_run, capsys) -> None:
    run_dir, _ = pipeline_run
    status = _status_json(run_dir, capsys)
    assert list(status) == ["dir", "model", "running", "stages", "next"]
    assert (status["dir"], status["model"], status["running"], status["next"]) == (
        str(run_dir), "lana:tiny_effnet", None, [])
    timings = read_json(run_dir / "timings.json")
    assert [list(s) for s in status["stages"]] == [
        ["stage", "budget", "state", "detail", "seconds"]] * len(_FINISHED)
    assert [(s["stage"], s["budget"], re.sub(r"\d+\.\d+", "#", s["detail"]))
            for s in status["stages"]] == _FINISHED
    assert {s["state"] for s in status["stages"]} == {"done"}
    assert [s["seconds"] for s in status["stages"]] == [
        timings[k] for k in ("teacher_train_s", "profile_s", "distill_s", "score_s",
                             "search_speedup1.5_s", "finetune_speedup1.5_s",
                             "export_speedup1.5_s")]


def test_status_of_a_new_run_directory_is_unchanged(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = config_from_dict(tiny_config_dict(tmp_path / "cache"))
    atomic_write_bytes(run_dir / "config.yaml", config.to_yaml().encode())
    status = _status_json(run_dir, capsys)
    assert status["stages"] == [
        {"stage": stage, "budget": budget, "state": "missing", "detail": detail,
         "seconds": None} for stage, budget, detail in [
            ("prepare", None, "teacher not trained or evaluated yet"),
            ("profile", None, "candidate latencies not measured yet"),
            ("distill", None, "waits for prepare (the candidate list)"),
            ("score", None, "replace-one scores not computed yet"),
            ("search", "speedup1.5", "not searched yet"),
            ("finetune", "speedup1.5", "not fine-tuned yet"),
            ("export", "speedup1.5", "not exported yet")]]
    assert status["next"] == ["prepare", "profile", "distill", "score",
                              "speedup1.5 (the config budget): search, finetune, export"]


# ------------------------------------------------------------------ the table itself


def _declared(run_dir: Path) -> dict[str, list[str]]:
    """Every declared file pattern, relative to ``run_dir``, by what declares it."""
    tags = sorted(p.name for p in (run_dir / STUDENTS_DIR).iterdir())
    out: dict[str, list[str]] = {"run": list(RUN_FILES)}
    for stage in STAGES:
        for tag in tags if stage.per_budget else [None]:
            rel = stage.root(run_dir, tag).relative_to(run_dir).as_posix()
            prefix = "" if rel == "." else f"{rel}/"
            out.setdefault(stage.name, []).extend(prefix + f for f in stage.files)
            out.setdefault(f"{stage.name} (under way)", []).extend(
                prefix + f for f in stage.transient)
    return out


def test_every_file_of_a_finished_run_is_declared(pipeline_run) -> None:
    run_dir, _ = pipeline_run
    patterns = [p for group in _declared(run_dir).values() for p in group]
    written = [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")
               if p.is_file() and not p.name.endswith(CHECKSUM_SUFFIX)]
    assert written
    assert [f for f in written if not any(fnmatchcase(f, p) for p in patterns)] == []


def test_every_declared_file_of_a_finished_stage_exists(pipeline_run) -> None:
    run_dir, _ = pipeline_run
    declared = _declared(run_dir)
    written = [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()]
    for stage in STAGES:
        if stage.role == "after":  # lana verify has not run on it
            continue
        for pattern in declared[stage.name]:
            assert any(fnmatchcase(f, pattern) for f in written), (stage.name, pattern)
        for pattern in declared[f"{stage.name} (under way)"]:  # removed once it ended
            assert not any(fnmatchcase(f, pattern) for f in written), (stage.name, pattern)
        if stage.keyed_file:
            tags = [p.name for p in (run_dir / STUDENTS_DIR).iterdir()]
            for tag in tags if stage.per_budget else [None]:
                assert KEY_FIELD in read_json(stage.path(run_dir, tag)), stage.name


def test_the_table_is_consistent() -> None:
    from lana.config import Config
    from lana.pipeline.runner import Run

    names = [s.name for s in STAGES]
    assert len(set(names)) == len(names) and set(STAGE) == set(names)
    for n, stage in enumerate(STAGES):
        assert set(stage.after) <= set(names[:n]), f"{stage.name} reads a later stage"
        assert set(stage.sections) <= set(Config.model_fields), stage.name
        assert not set(stage.sections) & set(LOCKED_SECTIONS), stage.name
        assert stage.keyed_file is None or stage.keyed_file in stage.files, stage.name
        if stage.sections or stage.key_data:  # a key needs a file to stamp it into
            assert stage.keyed_file, stage.name
    # `lana run` calls each step's method of the same name; `lana status` lists them.
    assert all(callable(getattr(Run, s.name, None)) for s in STEPS)
    assert [s.name for s in STEPS] == ["prepare", "profile", "distill", "score", "search",
                                       "finetune", "export"]
    assert set(LOCKED_SECTIONS) <= set(Config.model_fields)


def test_status_lists_the_tables_steps(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = config_from_dict(tiny_config_dict(tmp_path / "cache"))
    atomic_write_bytes(run_dir / "config.yaml", config.to_yaml().encode())
    stages = run_status(run_dir)["stages"]
    assert [(s["stage"], s["budget"] is not None) for s in stages] == [
        (s.name, s.per_budget) for s in STEPS]


def test_key_hash_is_the_stored_hash() -> None:
    for inputs in ({}, {"b": [1, 2.5, None], "a": {"x": "y"}}, {"specs": [["teacher"]]}):
        assert key_hash(inputs) == _key(inputs)


def test_the_stage_table_is_light() -> None:
    # `lana status` and the report read it: importing it must not pull in torch.
    code = ("import sys, lana.pipeline.stages, lana.pipeline.status; "
            "assert 'torch' not in sys.modules and 'lana.pipeline.runner' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
