"""The stage graph: stage keys and ``lana status`` pinned to what existing run directories
hold, so a change to how stages are declared never makes a run recompute or report
otherwise."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import pytest
from conftest import tiny_config_dict

from lana.cli import main
from lana.config import config_from_dict
from lana.io import atomic_write_bytes, read_json
from lana.pipeline import score_inputs, stage_inputs

# Captured from lana before the stage graph was declared as data (commit 01b1662): the keys
# stamped into run directories made since. A different value here means existing runs would
# recompute that stage.
# "chosen": fine-tuning's key with a chosen student; "export": export's key after it.
_TINY_KEYS = {"profile": "0eba15374ddd0b81", "score": "55605a87cee57734",
              "search": "f1e309f56de85771", "finetune": "0e81820d78c571f7",
              "chosen": "a3439d705483e4bc", "export": "5f68f4a325df6e6e"}
# Settings at non-default values, and settings a key leaves out (budget, checkpoint_every,
# speed-only ones): only search and finetune change.
_VARIANT_KEYS = {"profile": "0eba15374ddd0b81", "score": "55605a87cee57734",
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


@pytest.mark.parametrize(("make", "expected"), [(lambda c: c, _TINY_KEYS),
                                                (_variant, _VARIANT_KEYS)])
def test_stage_keys_are_those_of_existing_run_directories(tmp_path: Path, make,
                                                          expected: dict) -> None:
    config = config_from_dict(make(tiny_config_dict(tmp_path)))
    keys = {s: _key(stage_inputs(config, s))
            for s in ("profile", "score", "search", "finetune")}
    keys["chosen"] = _key({**stage_inputs(config, "finetune"),
                           "choices": {"choices": ["teacher", "x"]}})
    keys["export"] = _key({"finetune": keys["chosen"]})
    assert keys == expected
    assert _key(score_inputs(config, [[], []])) == expected["score"]
    assert _key(score_inputs(config, [["a"], []])) == "261de8b694cd2dc1"


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
