"""The weights' memory traffic fitted on whole networks (lana.latency.traffic)."""

from __future__ import annotations

import numpy as np
import pytest

from lana.latency.traffic import MIN_POINTS, fit_weight_traffic


def _networks(rate: float, noise: float = 0.0, n: int = 9) -> list[tuple[float, float, float]]:
    """(LUT sum, parameters, measured) of ``n`` networks that run 1.1 x their LUT sum plus
    ``rate`` ms per million parameters, with relative noise ``noise``."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        lut, params = rng.uniform(0.3, 1.5), rng.uniform(1e6, 2e7)
        measured = (1.1 * lut + rate * params / 1e6) * (1 + noise * rng.standard_normal())
        out.append((lut, params, measured))
    return out


def test_recovers_the_rate_in_lut_units() -> None:
    fit = fit_weight_traffic(_networks(0.05))
    assert fit.used
    # measured = 1.1 x (LUT + rate / 1.1 x Mparams): the rate in LUT units is 0.05 / 1.1
    assert fit.ms_per_mparam == pytest.approx(0.05 / 1.1, rel=1e-6)
    assert fit.cost(0.2, 2e6) == pytest.approx(0.2 + 2 * 0.05 / 1.1, rel=1e-6)
    assert fit.loo_error["traffic"] < fit.loo_error["lut"]
    assert len(fit.points) == 9


def test_unused_where_the_weights_explain_nothing() -> None:
    fit = fit_weight_traffic(_networks(0.0, noise=0.03))
    assert not fit.used and fit.ms_per_mparam == 0.0
    assert fit.cost(0.2, 2e6) == 0.2
    assert fit.reason


def test_unused_with_too_few_networks_or_equal_weights() -> None:
    few = fit_weight_traffic(_networks(0.05, n=MIN_POINTS - 1))
    assert not few.used and "needed" in few.reason
    same = fit_weight_traffic([(x, 5e6, 1.1 * x) for x in (0.3, 0.5, 0.7, 0.9, 1.1)])
    assert not same.used and "vary" in same.reason
