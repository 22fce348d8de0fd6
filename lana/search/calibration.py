"""The LUT's correction: measured end-to-end latency ~ ``alpha`` * LUT sum + ``beta``.

Fit by the search (:mod:`lana.search.select`) on the students it timed, so that a LUT sum
predicts what a whole network measures; plain numbers, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Calibration:
    """Measured end-to-end latency ~ ``alpha`` * LUT sum + ``beta`` (ms).

    The LUT times every op alone, so its sum misses what the whole network does
    differently: a per-network overhead (one session call instead of dozens, the input
    copy, the head) that is constant, and a per-op speed factor (fused kernels, warm
    caches between consecutive layers, or the opposite). ``alpha`` captures the factor,
    ``beta`` the constant; ``points`` is how many (LUT sum, measured) pairs it was fit on.
    """

    alpha: float = 1.0
    beta: float = 0.0
    points: int = 0
    method: str = "none"

    def predict(self, lut_ms: float) -> float:
        """The corrected prediction of a network whose LUT sum is ``lut_ms``."""
        return self.alpha * lut_ms + self.beta

    def invert(self, measured_ms: float) -> float:
        """The LUT sum whose corrected prediction is ``measured_ms``."""
        return (measured_ms - self.beta) / self.alpha

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)



def fit_calibration(points: Sequence[tuple[float, float]], *, min_span: float = 0.15,
                    test_line: bool = True, level: float = 0.05) -> Calibration:
    """Fit measured ~ alpha * lut + beta to ``(lut_ms, measured_ms)`` pairs.

    A line needs LUT sums that differ: when there are fewer than three points, or their
    LUT sums span less than ``min_span`` of the largest one, the intercept is not
    identifiable from noise and the fit falls back to a ratio through the origin (the
    pooled measured/LUT ratio, ``beta = 0``). The line is also rejected in favour of the
    ratio when it is implausible: a non-positive slope, or a prediction at or below zero
    for one of the points.

    The ratio is the default and the line's second parameter must earn its place
    (``test_line=False`` skips both tests and keeps any plausible line):

    - its intercept must differ from zero by more than noise: a two-sided t-test at
      ``level`` on the least-squares intercept (a handful of noisy timings gives a line
      whose intercept is mostly noise, and extrapolating it costs more than it gains);
    - from four points on, it must also predict the points better than the ratio does
      when each point is left out of the fit in turn (leave-one-out).
    """
    pts = [(float(x), float(y)) for x, y in points
           if math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0]
    if not pts:
        return Calibration()
    ratio = _fit_ratio(pts)
    line = _fit_line(pts, min_span)
    if line is None or not test_line:
        return line or ratio
    if not _intercept_significant(pts, line, level):
        return ratio
    if len(pts) >= 4:
        def loo_error(fit) -> float:  # mean relative error of the left-out point's prediction
            errs = []
            for k, (x, y) in enumerate(pts):
                cal = fit(pts[:k] + pts[k + 1:]) or _fit_ratio(pts[:k] + pts[k + 1:])
                errs.append(abs(cal.predict(x) - y) / y)
            return sum(errs) / len(errs)

        if loo_error(lambda p: _fit_line(p, min_span)) >= loo_error(_fit_ratio):
            return ratio
    return line


def _intercept_significant(pts: list[tuple[float, float]], line: Calibration,
                           level: float) -> bool:
    """Whether the least-squares intercept of ``line`` is non-zero at ``level`` (t-test)."""
    from scipy.stats import t as student_t

    n = len(pts)
    xs = [x for x, _ in pts]
    mx = sum(xs) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    rss = sum((y - line.predict(x)) ** 2 for x, y in pts)
    # Standard error of the intercept of an ordinary least-squares line.
    se = math.sqrt(rss / (n - 2) * (1.0 / n + mx * mx / sxx))
    scale = max(y for _, y in pts)
    if se <= 1e-12 * scale:  # the points lie on the line: any visible intercept is real
        return abs(line.beta) > 1e-9 * scale
    return abs(line.beta) / se > student_t.ppf(1.0 - level / 2.0, n - 2)


def _fit_ratio(pts: list[tuple[float, float]]) -> Calibration:
    return Calibration(alpha=sum(y for _, y in pts) / sum(x for x, _ in pts), beta=0.0,
                       points=len(pts), method="ratio")


def _fit_line(pts: list[tuple[float, float]], min_span: float) -> Calibration | None:
    """The least-squares line, or None where it is not identifiable or implausible."""
    xs = [x for x, _ in pts]
    if len(pts) < 3 or (max(xs) - min(xs)) < min_span * max(xs):
        return None
    n = len(pts)
    mx = sum(xs) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in pts)
    alpha = sxy / sxx
    beta = my - alpha * mx
    line = Calibration(alpha=alpha, beta=beta, points=n, method="line")
    if alpha <= 0 or any(line.predict(x) <= 0 for x in xs):
        return None
    return line
