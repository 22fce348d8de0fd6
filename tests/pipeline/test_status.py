"""``lana status``: a run directory's stages, read without changing anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lana.cli.commands import main
from lana.config import config_from_dict
from lana.core.io import atomic_write_bytes, read_json, run_lock, write_json
from lana.distill.phase1 import UNTRAINED, weight_path
from lana.errors import ConfigError
from lana.pipeline.status import run_status


def _states(status: dict) -> dict[tuple[str, str | None], str]:
    return {(s["stage"], s["budget"]): s["state"] for s in status["stages"]}


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_a_finished_run_is_done_and_status_changes_nothing(run_copy, capsys) -> None:
    run_dir, _ = run_copy
    before = _snapshot(run_dir)
    import lana

    status = lana.run_status(run_dir)  # the public API's name for it
    assert set(_states(status).values()) == {"done"}, status
    assert status["next"] == [] and status["running"] is None
    stages = [s["stage"] for s in status["stages"]]
    assert stages == ["prepare", "profile", "distill", "score", "search", "finetune", "export"]
    assert all(s["seconds"] > 0 for s in status["stages"] if s["stage"] != "prepare")
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "every stage is done" in out and "within budget" in out
    assert main(["status", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"] == status["stages"]
    assert _snapshot(run_dir) == before  # read only: not even config.yaml is rewritten


def test_changed_settings_missing_weights_and_a_second_budget(run_copy) -> None:
    run_dir, cfg = run_copy
    cfg["score"]["samples"] = 16  # a re-run recomputes scores and what depends on them
    atomic_write_bytes(run_dir / "config.yaml", config_from_dict(cfg).to_yaml().encode())
    cands = [layer["ops"] for layer in read_json(run_dir / "candidates.json")["layers"]]
    trained = [(i, s) for i, ops in enumerate(cands) for s in ops if s not in UNTRAINED]
    weight_path(run_dir, *trained[0]).unlink()
    (run_dir / "distill" / "checkpoint-0123abcd.pt").write_bytes(b"")  # its group, stopped
    (run_dir / "students" / "speedup3").mkdir()
    for other in ("speedup-1", "notes", "speedup1.2.3"):  # folders lana did not make
        (run_dir / "students" / other).mkdir()
    write_json(run_dir / "students" / "speedup3" / "search.json", {"inputs": "old"})
    status = run_status(run_dir)
    st = _states(status)
    tag = next(s["budget"] for s in status["stages"] if s["budget"])
    assert st[("distill", None)] == "partial"
    assert st[("profile", None)] == "done" and st[("score", None)] == "stale"
    assert st[("search", tag)] == "stale"
    # the student may come out the same: its fine-tuning is kept until the search says
    assert st[("finetune", tag)] == "stale" and st[("export", tag)] == "stale"
    assert st[("search", "speedup3")] == "stale" and st[("finetune", "speedup3")] == "missing"
    distill = next(s for s in status["stages"] if s["stage"] == "distill")
    assert distill["detail"].startswith(f"{len(trained) - 1}/{len(trained)} candidates "
                                        "trained; 1 group(s) under way, last checkpoint ")
    assert status["next"] == ["distill", "score",
                              f"{tag} (the config budget): search, finetune, export",
                              "speedup3 (--speedup 3): search, finetune, export"]


def test_a_corrupt_file_and_a_run_in_progress_are_named(run_copy, capsys) -> None:
    run_dir, _ = run_copy
    path = run_dir / "scores.json"
    path.write_bytes(path.read_bytes().replace(b"{", b"[", 1))  # checksum now fails
    with run_lock(run_dir):
        status = run_status(run_dir)
        assert status["running"]["pid"] == os.getpid()
        assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert _states(status)[("score", None)] == "corrupt"
    assert "scores.json" in next(s["detail"] for s in status["stages"]
                                 if s["stage"] == "score")
    assert "--recompute-corrupt" in out
    assert f"pid {os.getpid()}" in out
    assert run_status(run_dir)["running"] is None  # the lock went with its holder


def test_not_a_run_directory(tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="not a lana run directory"):
        run_status(tmp_path / "nothing")
    assert main(["status", str(tmp_path / "nothing")]) == 2
    assert "not a lana run directory" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()
