"""benchmarks/finetune_epochs.py: finding the table3 step of the LANA student to fine-tune."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import finetune_epochs  # noqa: E402


def test_budget_step_finds_the_member_budget_and_speedups(tmp_path):
    with pytest.raises(FileNotFoundError, match="run benchmarks/table3.py"):
        finetune_epochs.budget_step(tmp_path, "member")
    for sp in ("1.715", "1.9", "2", "3", "5"):
        (tmp_path / f"lana_speedup{sp}_s0.json").write_text("{}")
    (tmp_path / "lana_speedup2_s1.json").write_text("{}")  # another seed: not a budget
    # Two budgets that are not 2x/3x/5x: the member's is the one its timing names.
    with pytest.raises(FileNotFoundError, match="member_ratio.json is missing"):
        finetune_epochs.budget_step(tmp_path, "member")
    (tmp_path / "member_ratio.json").write_text('{"ratio": 0.5830532344621466}')
    assert finetune_epochs.budget_step(tmp_path, "member") == "lana_speedup1.715_s0"
    assert finetune_epochs.budget_step(tmp_path, "2") == "lana_speedup2_s0"
    assert finetune_epochs.budget_step(tmp_path, "3.0") == "lana_speedup3_s0"
    with pytest.raises(FileNotFoundError, match=r"no LANA student at 4x .*have: 1.715x, 1.9x, 2x"):
        finetune_epochs.budget_step(tmp_path, "4")
    (tmp_path / "member_ratio.json").write_text('{"ratio": 0.25}')  # the member at 4x
    with pytest.raises(FileNotFoundError, match="no LANA student at 4x"):
        finetune_epochs.budget_step(tmp_path, "member")
