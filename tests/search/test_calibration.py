"""The correction of LUT predictions: measured ~ alpha * LUT sum + beta, and the re-solve."""

from __future__ import annotations

import pytest

from lana.config import BudgetConfig, SearchConfig
from lana.search.calibration import Calibration, fit_calibration
from lana.search.select import select
from tests.search.test_select import LATENCY, LIB, LUT, evaluate


def test_fit_recovers_a_line() -> None:
    pts = [(x, 1.2 * x + 0.5) for x in (2.0, 3.0, 4.0, 5.0)]
    cal = fit_calibration(pts)
    assert cal.method == "line" and cal.points == 4
    assert cal.alpha == pytest.approx(1.2) and cal.beta == pytest.approx(0.5)
    assert cal.invert(cal.predict(3.3)) == pytest.approx(3.3)


@pytest.mark.parametrize("pts", [
    [(5.0, 6.0)],                                   # one point: only a ratio is defined
    [(5.0, 6.0), (2.0, 2.5)],                       # two points: too few for a line
    [(5.0, 6.0), (4.9, 5.0), (5.05, 6.5)],          # LUT sums too close together
    [(2.0, 6.0), (3.0, 5.0), (4.0, 4.0)],           # slower when cheaper: implausible
])
def test_fit_falls_back_to_ratio(pts) -> None:
    cal = fit_calibration(pts)
    assert cal.method == "ratio" and cal.beta == 0.0
    assert cal.alpha == pytest.approx(sum(y for _, y in pts) / sum(x for x, _ in pts))


def test_fit_keeps_the_ratio_when_a_line_only_fits_noise() -> None:
    """Nine noisy points of a pure ratio (measured = 1.1 x LUT, +-4% noise): the line's
    intercept would fit the noise; leave-one-out prefers the ratio. A real overhead
    (measured = LUT + 3 ms) with the same noise keeps the line."""
    noise = [1.04, 0.97, 1.0, 1.03, 0.96, 1.02, 0.99, 1.04, 0.96]
    xs = [10.0, 12.0, 14.0, 15.0, 17.0, 19.0, 21.0, 23.0, 25.0]
    cal = fit_calibration([(x, 1.1 * x * e) for x, e in zip(xs, noise, strict=True)])
    assert cal.method == "ratio" and cal.alpha == pytest.approx(1.1, rel=0.02)
    cal = fit_calibration([(x, (x + 3.0) * e) for x, e in zip(xs, noise, strict=True)])
    assert cal.method == "line" and cal.beta == pytest.approx(3.0, abs=1.5)


def test_fit_needs_a_significant_intercept() -> None:
    """The teacher and 8 students of efficientnet_b0 on ONNX Runtime (the latency benchmark,
    LUT sum vs measured ms). Leave-one-out slightly prefers the line (intercept -1.6 ms),
    but the intercept is within 2 standard errors of zero; on 50 other students the ratio
    predicted better (p90 8.0% against 10.1%). Three points get no leave-one-out at all:
    only the t-test keeps their noise out of the intercept."""
    b0_ort = [(16.37, 15.91), (12.08, 11.19), (18.21, 17.27), (10.71, 10.21), (17.5, 19.04),
              (7.79, 7.19), (9.49, 8.75), (7.29, 6.3), (11.23, 10.44)]
    three = [(10.0, 11.4), (15.0, 16.0), (20.0, 22.6)]
    for pts in (b0_ort, three):
        line = fit_calibration(pts, test_line=False)
        assert line.method == "line" and line.beta != 0.0
        cal = fit_calibration(pts)
        assert cal.method == "ratio" and cal.beta == 0.0
    # The same scatter plus a 5 ms overhead: an intercept of 3.4 ms is well beyond noise.
    cal = fit_calibration([(x, y + 5.0) for x, y in b0_ort])
    assert cal.method == "line" and cal.beta == pytest.approx(3.41, abs=0.01)


def test_fit_ignores_bad_points_and_empty() -> None:
    assert fit_calibration([]) == Calibration()
    assert fit_calibration([(0.0, 1.0), (float("nan"), 2.0)]).method == "none"


def overhead_device(per_network_ms: float):
    """Whole-network latency = LUT sum + a constant overhead the LUT cannot see."""

    def measure(students: dict) -> dict:
        out = {"teacher": 5.0 + per_network_ms}
        for name, specs in students.items():
            out[name] = 1.0 + sum(LUT[s] for s in specs) + per_network_ms
        return out

    return measure


def test_constant_overhead_is_learned_and_resolve_fits() -> None:
    latency = {**LATENCY, "teacher_measured_ms": 6.0}
    res = select(LIB, latency, BudgetConfig(latency_ms=3.0), 3.0,
                 SearchConfig(k=1, max_resolves=4, margin=0.0), build=list,
                 measure=overhead_device(1.0), evaluate=evaluate)
    # The teacher's ratio (1.2) under-corrects small students: the first solve misses...
    first = res["attempts"][0]
    assert first["calibration"]["method"] == "ratio"
    assert not any(r["meets_budget"] for r in first["students"])
    # ...the refit on teacher + students finds the overhead, and the next solve fits.
    assert res["resolves"] >= 1
    second = res["attempts"][1]["calibration"]
    assert second["method"] == "line"
    assert second["alpha"] == pytest.approx(1.0) and second["beta"] == pytest.approx(1.0)
    assert res["chosen"]["meets_budget"] and res["chosen"]["latency_ms_measured"] <= 3.0
    # The corrected prediction is exact on this device.
    assert res["chosen"]["latency_ms_predicted"] == pytest.approx(
        res["chosen"]["latency_ms_measured"])
    assert res["calibration"]["beta"] == pytest.approx(1.0)
    assert res["resolves"] == 1  # one refit was enough
