"""Weight traffic: the cost of an op inside a network that its LUT entry does not show.

An op timed alone for its LUT entry runs again and again on the same weights, so they stay
in the CPU's caches. Inside a network every other layer's weights pass through the caches
between two of its runs, so an op whose weights outgrow the caches streams them from
memory each time. Where compute is small beside the weights (small images, late layers of
a few pixels) that stream is most of the op's time: on EfficientNet-Lite2 at 64 px an
``er_k3_e4`` at a 2x2 layer (7 MB of weights) ran 125 us alone and 390 us inside a
student (ONNX Runtime's own per-node profile), and the LUT sum of 50 random students missed
their measured latency by 18 % (median), the residual correlating 0.94 with their
parameter count (benchmarks/RESULTS.md, "Latency additivity at 64 px"). The ILP makes it
worse than random: it is drawn to exactly the ops whose entries are too small.

The remedy keeps the cost additive: every op costs its LUT entry plus ``ms_per_mparam``
times its parameters (in millions), with the rate fitted on whole networks measured end to
end (the teacher and a few random students, :func:`fit_weight_traffic`), and used only
when it predicts left-out networks better than the LUT sum alone. Plain numbers, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Networks needed for the three-coefficient fit to be tested on left-out ones.
MIN_POINTS = 5


@dataclass(frozen=True)
class WeightTraffic:
    """Each op's cost = its LUT ms + ``ms_per_mparam`` x its parameters / 1e6 (LUT units).

    ``used`` says whether the fit earned its place (else the rate is 0); ``reason`` why;
    ``points`` the (LUT sum ms, parameters, measured ms) networks it was fitted on;
    ``loo_error`` the mean relative error of each network left out of the fit in turn,
    for the LUT sum alone (``"lut"``, a line) and with the weights (``"traffic"``).
    """

    ms_per_mparam: float = 0.0
    used: bool = False
    reason: str = "not fitted"
    points: list[list[float]] = field(default_factory=list)
    loo_error: dict[str, float] = field(default_factory=dict)

    def cost(self, lut_ms: float, params: float) -> float:
        """The cost of an op (or a sum of ops) of ``lut_ms`` and ``params`` parameters."""
        return lut_ms + self.ms_per_mparam * params / 1e6

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


def _lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(x, y, rcond=None)[0]


def _loo(x: np.ndarray, y: np.ndarray) -> float:
    """Mean relative error of each point predicted by the fit on the others."""
    errs = []
    for k in range(len(y)):
        keep = np.arange(len(y)) != k
        coef = _lstsq(x[keep], y[keep])
        errs.append(abs(float(x[k] @ coef) - y[k]) / y[k])
    return float(np.mean(errs))


def fit_weight_traffic(points: Sequence[tuple[float, float, float]]) -> WeightTraffic:
    """Fit measured ~ a x LUT sum + g x parameters + b on ``(lut_ms, params, measured_ms)``
    networks; the rate in LUT units is g / a.

    Used only when it is plausible (a > 0, g > 0) and predicts each network left out of
    the fit better than the line without the parameters (measured ~ a x LUT sum + b, what
    the search's own calibration can do): a handful of noisy timings otherwise gives a
    rate that is noise. Fewer than :data:`MIN_POINTS` networks, or parameter counts that do
    not vary, leave it unused.
    """
    pts = [[float(a), float(b), float(c)] for a, b, c in points]
    if len(pts) < MIN_POINTS:
        return WeightTraffic(points=pts, reason=f"{len(pts)} networks measured, "
                             f"{MIN_POINTS} needed")
    arr = np.asarray(pts)
    lut, params, y = arr[:, 0], arr[:, 1] / 1e6, arr[:, 2]
    if np.ptp(params) <= 1e-3 * max(np.max(params), 1e-12) or np.ptp(lut) <= 0:
        return WeightTraffic(points=pts, reason="the networks' parameter counts or LUT sums "
                             "do not vary")
    ones = np.ones_like(lut)
    line = np.column_stack([lut, ones])
    full = np.column_stack([lut, params, ones])
    a, g, _ = _lstsq(full, y)
    errors = {"lut": _loo(line, y), "traffic": _loo(full, y)}
    if a <= 0 or g <= 0:
        return WeightTraffic(points=pts, loo_error=errors, reason=(
            f"implausible fit (a = {a:.3g}, g = {g:.3g} ms per million parameters)"))
    if errors["traffic"] >= errors["lut"]:
        return WeightTraffic(points=pts, loo_error=errors, reason=(
            f"the parameters do not predict left-out networks better "
            f"({errors['traffic']:.1%} against {errors['lut']:.1%} mean error)"))
    return WeightTraffic(ms_per_mparam=float(g / a), used=True, points=pts, loo_error=errors,
                         reason=(f"left-out networks predicted within {errors['traffic']:.1%} "
                                 f"(mean) against {errors['lut']:.1%} by the LUT sum alone"))
