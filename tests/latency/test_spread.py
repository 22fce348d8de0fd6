"""The search margin derived from the spread of repeated timings (lana.latency.spread, issue 34)."""

from __future__ import annotations

import itertools
import math

import pytest

from lana.config import BudgetConfig, SearchConfig
from lana.latency.spread import MAX_MARGIN, MIN_MARGIN, SpreadMargin, interval_of, interval_text
from lana.report.terminal import print_summary
from lana.search.select import select
from tests.search.test_select import LATENCY, LIB, LUT, evaluate


def timings(speedups: list[float], teacher: float = 4.0) -> list[dict[str, float]]:
    return [{"teacher": teacher, "student": teacher / s} for s in speedups]


def test_before_any_repeat_the_margin_is_the_old_constant():
    m = SpreadMargin.from_config("auto")
    assert m.value == pytest.approx(0.03)
    assert m.dof == 0 and m.to_dict()["mode"] == "auto"


def test_a_fixed_margin_is_used_as_given_whatever_was_measured():
    m = SpreadMargin.from_config(0.05)
    m.set_group("a", timings([1.0, 2.0, 4.0]))
    assert m.value == 0.05
    assert m.to_dict()["mode"] == "fixed"


def test_steady_timings_shrink_the_margin_and_noisy_ones_grow_it():
    quiet, noisy = SpreadMargin(), SpreadMargin()
    for g in range(10):
        quiet.set_group(str(g), timings([2.0, 2.002, 1.998]))
        noisy.set_group(str(g), timings([2.0, 2.3, 1.7]))
    assert quiet.value == pytest.approx(MIN_MARGIN)
    # sd of log(2.3/2), log(1.7/2) about its mean: ~0.15 -> 1 - exp(-1.645 * 0.15) ~ 0.22
    assert 0.15 < noisy.value <= MAX_MARGIN
    lo, hi = noisy.interval(2.0)
    assert lo < 2.0 < hi and hi / 2.0 == pytest.approx(2.0 / lo)


def test_a_group_set_again_is_replaced_not_counted_twice():
    m = SpreadMargin()
    m.set_group("best", timings([2.0, 2.2]))
    m.set_group("best", timings([2.0, 2.2, 2.1]))
    assert m.dof == 2
    m.set_group("single", timings([2.0]))  # one timing says nothing about spread
    assert m.dof == 2


def test_drift_between_windows_adds_to_the_spread_within_them():
    steady, drifting = SpreadMargin(), SpreadMargin()
    for m in (steady, drifting):
        m.set_group("confirm", timings([2.0, 2.02, 1.98]))
    # the same spread within each window; the drifting machine moves the speed-up by
    # ~10 % from one window to the next
    steady.set_windows([timings([2.0, 2.02, 1.98])] * 3)
    drifting.set_windows([timings([2.0, 2.02, 1.98]), timings([2.2, 2.22, 2.18]),
                          timings([1.8, 1.82, 1.78])])
    assert steady.sigma_within == pytest.approx(drifting.sigma_within, rel=0.02)
    assert drifting.sigma_between > 2 * steady.sigma_between > 0  # the prior, shrunk
    assert drifting.value > steady.value
    assert drifting.sigma == pytest.approx(math.hypot(drifting.sigma_within,
                                                      drifting.sigma_between))
    rec = drifting.to_dict()
    assert rec["windows"] == 3 and rec["sigma_between"] == drifting.sigma_between
    # repeats within a window are the caller's to add (they may be recorded already)
    assert drifting.dof == 2
    # one window is no evidence of drift
    one = SpreadMargin()
    one.set_windows([timings([2.0, 2.02, 1.98])])
    assert one.sigma_between == 0.0


def test_interval_from_a_search_record_and_its_text():
    rec = {"margin_from": {"sigma_log_speedup": 0.05, "z": 1.645}}
    lo, hi = interval_of(rec, 2.0)
    assert lo == pytest.approx(2.0 * math.exp(-0.08225))
    assert interval_of({}, 2.0) is None and interval_of(rec, None) is None
    assert interval_text([1.9, 2.1]) == " (1.90-2.10x)" and interval_text(None) == ""


def test_margin_setting_is_validated_with_a_clear_message():
    with pytest.raises(ValueError, match="'auto' or a fraction"):
        SearchConfig(margin=0.7)
    assert SearchConfig().margin == "auto"


# A search on the fake library of test_select, on a device whose timings of the same
# student differ from call to call.
def noisy_device(jitter: list[float]):
    """Teacher 5 ms; a student's LUT sum + 1 ms, times the next factor of ``jitter``."""
    factors = itertools.cycle(jitter)

    def measure(students: dict) -> dict:
        out = {"teacher": 5.0}
        for name, specs in students.items():
            out[name] = (1.0 + sum(LUT[s] for s in specs)) * next(factors)
        return out
    return measure


def search(margin, jitter):
    cfg = SearchConfig(k=3, max_resolves=4, margin=margin)
    return select(LIB, LATENCY, BudgetConfig(speedup=2.0), 2.5, cfg, build=list,
                  measure=noisy_device(jitter), evaluate=evaluate)


def test_a_noisy_machine_gets_a_wider_margin_and_a_faster_student():
    steady = search("auto", [1.0])
    noisy = search("auto", [1.0, 1.12, 0.9])
    assert steady["margin_from"]["mode"] == "auto"
    assert steady["margin"] < 0.03 < noisy["margin"]
    assert noisy["margin_from"]["dof"] > 0
    # The noisy search keeps a student with room for the spread it measured.
    assert (noisy["chosen"]["latency_ms_measured"]
            <= steady["chosen"]["latency_ms_measured"])
    lo, hi = noisy["chosen"]["speedup_interval"]
    assert lo < hi and hi - lo > (steady["chosen"]["speedup_interval"][1]
                                  - steady["chosen"]["speedup_interval"][0])


def test_a_fixed_margin_search_records_it_and_the_measured_spread():
    res = search(0.05, [1.0, 1.12, 0.9])
    assert res["margin"] == 0.05
    assert res["margin_from"]["mode"] == "fixed" and res["margin_from"]["dof"] > 0


def test_terminal_table_shows_the_interval(capsys):
    from rich.console import Console

    summary = {"teacher": {"name": "t", "accuracy": 0.9, "latency_ms": 4.0},
               "latency": {"backend": "onnxruntime", "batch_size": 1, "threads": 1},
               "students": [{"budget": {"speedup": 2.0}, "budget_ms": 2.0,
                             "teacher_latency_ms_measured": 4.0, "accuracy": 0.88,
                             "latency_ms_measured": 1.9, "latency_ms_predicted": 1.8,
                             "speedup": 2.1, "speedup_interval": [1.95, 2.26],
                             "meets_budget": True, "choices": ["teacher"], "path": "p"}]}
    # 80 columns: the interval has a line below the table, so no cell cuts it.
    console = Console(width=80, record=True)
    print_summary(summary, console=console)
    text = console.export_text()
    assert "speed-up 2.10x; 90 % of repeated timings here (1.95-2.26x)" in text
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
