"""The pure parts of benchmarks/score_rank.py (issue 33's Kendall tau). What it measures is
in benchmarks/RESULTS.md, from running it, not here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import score_rank  # noqa: E402


def test_additive_score_sums_each_layers_chosen_op():
    table = {"specs": [["teacher", "a", "b"], ["teacher", "c"]],
             "scores": [[0.0, 0.1, 0.5], [0.0, 0.25]]}
    assert score_rank.additive(table, ["b", "c"]) == pytest.approx(0.75)
    assert score_rank.additive(table, ["teacher", "teacher"]) == 0.0


def test_taus_rank_lower_scores_as_better_at_both_test_sizes():
    rows = [{"score": {"ce_500": s},
             "eval": {"1000": {"accuracy": a, "loss": -a}, "None": {"accuracy": b, "loss": -b}}}
            for s, a, b in [(0.1, 0.9, 0.9), (0.2, 0.8, 0.7), (0.3, 0.7, 0.8)]]
    t = score_rank.taus(rows, ["ce_500"])
    assert t["ce_500|acc1000"] == pytest.approx(1.0)
    assert t["ce_500|loss1000"] == pytest.approx(1.0)
    assert t["ce_500|accall"] == pytest.approx(1 / 3)
