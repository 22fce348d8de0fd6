"""How a student's timings are judged against its budget (lana.search.verdict): pooled
timings, and timing until the verdict is clear. Plain numbers, no device."""

from __future__ import annotations

import pytest

from lana.search.verdict import chosen_speedup, pool_timings, time_until_decided


def test_pool_timings_reports_the_median_timing():
    timings = [{"teacher": 4.0, "s": 2.0}, {"teacher": 6.0, "s": 2.5}, {"teacher": 5.0, "s": 3.0}]
    # a ms budget: fractions 0.8, 1.0, 1.2; the middle timing gives every number
    ms = pool_timings(timings, "s", None, 2.5)
    assert ms["timing"] == 1 and ms["fraction"] == pytest.approx(1.0)
    assert (ms["latency_ms"], ms["teacher_ms"]) == (2.5, 6.0)
    assert ms["speedup"] == pytest.approx(2.4)
    # a speed-up budget: each timing against the teacher timed alongside (2, 3, 2.5 ms
    # allowed), fractions 1.0, 0.833, 1.2
    x = pool_timings(timings, "s", 2.0, 99.0)
    assert x["timing"] == 0 and x["fraction"] == pytest.approx(1.0)
    assert (x["latency_ms"], x["teacher_ms"], x["speedup"]) == (2.0, 4.0, 2.0)
    with pytest.raises(ValueError):
        pool_timings([], "s", None, 1.0)


def test_pooled_numbers_agree_with_each_other_and_the_verdict():
    """Teacher and student drift together from one timing to the next: medians of each
    taken apart (here 6 and 2.5 ms, 2.4x) imply a speed-up that no timing measured."""
    timings = [{"teacher": 4.0, "s": 2.5}, {"teacher": 6.0, "s": 3.3},
               {"teacher": 8.0, "s": 2.0}]
    p = pool_timings(timings, "s", 2.0, 99.0)
    assert p["teacher_ms"] / p["latency_ms"] == pytest.approx(p["speedup"])
    assert p["speedup"] == pytest.approx(6.0 / 3.3)  # the median of 1.6, 1.82, 4.0
    assert p["fraction"] == pytest.approx(2.0 / p["speedup"])
    # an even number of timings: the slower of the two middle ones decides
    even = timings + [{"teacher": 5.0, "s": 2.0}]  # speed-ups 1.6, 1.82, 4.0, 2.5
    q = pool_timings(even, "s", 2.0, 99.0)
    assert q["speedup"] == pytest.approx(6.0 / 3.3) and q["timing"] == 1


def test_a_borderline_noisy_verdict_gets_more_timings():
    """A clear case costs ``confirm`` timings; one whose median sits within the timings'
    spread of the budget is timed again, up to 2 x confirm + 1 timings."""
    def timer(values):
        it = iter(values)
        return lambda: {"teacher": 10.0, "s": next(it)}

    # clear: 4.0-4.2 ms against 5 ms (speed-up 2): three timings
    timings, pooled = time_until_decided(timer([4.0, 4.2, 4.1]), "s", 2.0, 5.0, 1.0, 3)
    assert len(timings) == 3 and pooled["fraction"] == pytest.approx(0.82)
    # borderline: 4.6-5.4 ms around 5 ms; the median settles within the spread, so the
    # timing goes on to the cap
    noisy = [4.6, 5.4, 4.9, 5.3, 4.7, 5.2, 4.8, 99.0]
    timings, pooled = time_until_decided(timer(noisy), "s", 2.0, 5.0, 1.0, 3)
    assert len(timings) == 7 and pooled["latency_ms"] == pytest.approx(4.9)
    # a first timing that is given counts: 2 more make 3
    timings, _ = time_until_decided(timer([4.0, 4.1]), "s", None, 5.0, 0.97, 3,
                                    first={"teacher": 10.0, "s": 4.2})
    assert [t["s"] for t in timings] == [4.2, 4.0, 4.1]


def test_chosen_speedup_prefers_windows_then_confirmations_then_one_timing():
    w = {"teacher": 6.0, "student": 3.0}
    assert chosen_speedup({"chosen": {"windows_ms": [[w], [{"teacher": 4.0, "student": 2.5}],
                                                      [{"teacher": 5.0, "student": 2.0}]]}}
                          ) == pytest.approx(2.0)
    assert chosen_speedup({"chosen": {"timings_ms": [w]}}) == pytest.approx(2.0)
    row = {"latency_ms_measured": 2.0}
    assert chosen_speedup({"chosen": row, "attempts": [{"teacher_ms": 5.0, "students": [row]}]}
                          ) == pytest.approx(2.5)
    assert chosen_speedup({}) is None
