"""The pure parts of benchmarks/pretrained.py (issue 33) and its independent stopwatch,
benchmarks/ort_timing.py. The benchmark's quality is measured by running it
(benchmarks/RESULTS.md), not here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import ort_timing  # noqa: E402
import pretrained  # noqa: E402


def _arm(arm: str, rows: list[dict], **extra) -> dict:
    return {"arm": arm, "date": "d", "machine": "m", "wall_s": 10.0,
            "timing": {"windows": 3, "rounds": 5, "minutes_after_search": 12.0},
            "teacher": {"name": "lite2", "accuracy": [0.92]}, "rows": rows, **extra}


def _result() -> dict:
    sib = [{"method": "sibling", "budget": "lite0", "accuracy": [0.900, 0.902, 0.898],
            "speedup": 1.9, "speedup_windows": [1.9, 1.9, 1.9]},
           {"method": "sibling", "budget": "lite1", "accuracy": [0.910, 0.911, 0.909],
            "speedup": 1.4, "speedup_windows": [1.4, 1.4, 1.4]}]
    lana = [{"method": "lana", "budget": "lite0", "speedup_budget": 1.9,
             "accuracy": [0.915, 0.914, 0.916], "speedup": 1.88,
             "speedup_windows": [1.88, 1.86, 1.9]},
            {"method": "lana", "budget": "lite1", "speedup_budget": 1.4,
             "accuracy": [0.905, 0.906, 0.904], "speedup": 1.3,
             "speedup_windows": [1.3, 1.3, 1.3]},
            {"method": "random", "budget": "lite0", "accuracy": [0.90, 0.92, 0.91]},
            {"method": "lana", "budget": "2x", "speedup_budget": 2.0, "accuracy": [0.918],
             "speedup": 2.0, "speedup_windows": [2.0]},
            {"method": "torch-pruning", "budget": "2x", "accuracy": [0.93]}]
    return pretrained.merge([_arm("siblings", sib),
                             _arm("lana", lana, kendall={"tau": 0.8, "p_value": 0.01,
                                                         "n": 30, "tau_score_vs_loss": -0.7})])


def test_merge_follows_the_issue_schema():
    res = _result()
    assert set(res) >= {"teacher", "kendall_tau", "wall_s", "rows"}
    assert res["kendall_tau"] == 0.8 and res["wall_s"] == 20.0
    assert {r["method"] for r in res["rows"]} == {"sibling", "lana", "random", "torch-pruning"}
    assert all(isinstance(r["accuracy"], list) for r in res["rows"])


def test_siblings_timed_beside_the_students_replace_their_own_arms_speedups():
    """Ratios from two arms' windows are not comparable: when the lana arm timed the
    siblings beside its students, the table shows those figures and keeps the others."""
    sib = [{"method": "sibling", "budget": "lite0", "accuracy": [0.9],
            "speedup": 1.6, "speedup_windows": [1.6, 1.7, 1.6]},
           {"method": "sibling", "budget": "lite1", "accuracy": [0.91],
            "speedup": 1.2, "speedup_windows": [1.2, 1.2, 1.2]}]
    lana = _arm("lana", [], siblings_timed_here={
        "lite0": {"speedup": 1.5, "speedup_windows": [1.5, 1.4, 1.5],
                  "weights": "fine-tuned seed 0"}})
    rows = {r["budget"]: r for r in pretrained.merge([_arm("siblings", sib), lana])["rows"]}
    assert rows["lite0"]["speedup"] == 1.5 and rows["lite0"]["timed_with"] == "lana"
    assert rows["lite0"]["timed_weights"] == "fine-tuned seed 0"
    assert rows["lite0"]["speedup_own_arm"] == {"speedup": 1.6,
                                                "speedup_windows": [1.6, 1.7, 1.6]}
    # not timed in the lana arm: its own arm's figure stays, unmarked
    assert rows["lite1"]["speedup"] == 1.2 and "timed_with" not in rows["lite1"]


def test_siblings_timed_before_their_arm_ran_show_their_latency_and_no_accuracy():
    lana = _arm("lana", [], siblings_timed_here={
        "lite1": {"speedup": 1.2, "speedup_windows": [1.2], "weights": "ImageNet"}})
    res = pretrained.merge([lana])
    (row,) = [r for r in res["rows"] if r["method"] == "sibling"]
    assert row["budget"] == "lite1" and row["accuracy"] == [] and row["speedup"] == 1.2
    assert "| lite1 | sibling | not yet run | 1.20x; 1.20 |" in pretrained.table(res)
    assert "LANA vs lite1 at lite1's latency: not measured" in pretrained.targets(res)


def test_targets_state_met_and_missed_with_their_numbers():
    lines = pretrained.targets(_result())
    text = "\n".join(lines)
    # +1.5 points over lite0 with sd ~0.2: beyond 1 point + 2 sd.
    assert "LANA >= lite0 + 1.0 point beyond 2 sd: +1.50 points" in text
    assert [s for s in lines if s.startswith("LANA >= lite0")][0].endswith(": met")
    assert [s for s in lines if s.startswith("LANA >= lite1")][0].endswith(": missed")
    assert "2x for <= 0.3 points: 0.20 points: met" in text
    assert "5x: not measured" in text
    # 1.3 / 1.4 = 0.929 of the target: missed; 1.88 / 1.9 = 0.989: met
    assert "LANA lite1: independent speed-up 1.30x = 0.929 of the target: missed" in text
    assert "LANA lite0: independent speed-up 1.88x = 0.989 of the target: met" in text
    # random: +0.5 points with an sd of 1 point is not beyond 2 sd; one seed: plain comparison
    assert [s for s in lines if "above random at lite0" in s][0].endswith(": missed")
    assert [s for s in lines if "above torch-pruning at 2x" in s][0].endswith(": missed")
    assert "Kendall tau >= 0.9: 0.800: missed" in text


def test_table_lists_every_row_with_spread_and_windows():
    md = pretrained.table(_result())
    assert "| lite0 | lana | 91.50% ± 0.10 (3) | 1.88x; 1.88, 1.86, 1.90 |" in md
    assert "| 2x | torch-pruning | 93.00% (1) | - |" in md


def test_independent_timer_times_onnx_files_in_a_fresh_process(tmp_path: Path):
    """Two exported networks timed in windows by the stopwatch's own process; how fast they
    are is the benchmark's business, not a test's."""
    torch.manual_seed(0)
    heavy = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1))
    light = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1))
    ort_timing.export(heavy, tmp_path / "teacher.onnx", (3, 32, 32))
    ort_timing.export(light, tmp_path / "light.onnx", (3, 32, 32))
    out = tmp_path / "timing.json"
    subprocess.run([sys.executable, str(Path(ort_timing.__file__)), str(tmp_path),
                    "--windows", "2", "--gap", "0", "--rounds", "2", "--runs", "5",
                    "--out", str(out)], check=True, capture_output=True)
    import json

    res = json.loads(out.read_text())
    assert len(res["windows"]) == 2 and res["threads"] == 1
    for w in res["windows"]:
        assert w["speedup"]["teacher"] == 1.0
        assert 0 < w["speedup"]["light"] < float("inf")
        assert set(w["ms"]) == {"teacher", "light"}


def test_independent_timer_needs_the_teacher(tmp_path: Path):
    with pytest.raises(ValueError, match="must include 'teacher'"):
        ort_timing.time_windows({"x": tmp_path / "x.onnx"})
