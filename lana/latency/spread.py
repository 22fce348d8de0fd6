"""The search's safety margin, from the spread of speed-ups measured on this machine.

A student is selected when the median of its timings beside the teacher meets the budget
less a margin (:mod:`lana.search.select`). A constant margin promises too much on a noisy machine
and gives accuracy away on a quiet one. Instead, every network the search times more than
once (a student's confirmation timings, the best student timed again beside each later
solve) is a sample of how much one timing of the speed-up differs from the next on this
machine. Their pooled spread ``sigma`` (standard deviation of the log speed-up, pooled over
groups) gives

    margin = 1 - exp(-z * sigma)

so that a student whose median just meets ``budget / (1 - margin)`` still meets the budget
in a fresh timing with probability ~ Phi(z) (z = 1.645: 95 %), and the interval
``speedup * exp(-+ z * sigma)`` that the summary and report show.

Few repeated timings estimate ``sigma`` badly, so the estimate is shrunk towards a prior
(``PRIOR_SIGMA`` with ``PRIOR_DOF`` pseudo degrees of freedom): before any repeat is timed
the margin is the one lana used as a constant before (3 %).

Timings close together agree better than timings minutes apart: on a shared machine the
speed-up of one student moves between time windows by more than within one (measured:
window sd 7-12 % for sub-millisecond networks, benchmarks/RESULTS.md "Budget truth"), and a
user times the student in a later window. So the chosen student is also timed in windows
``search.window_gap_s`` apart (:meth:`SpreadMargin.set_windows`); the spread of the window
means beyond what the within-window spread explains is a second variance component,
shrunk towards the same prior, and

    sigma = sqrt(sigma_within^2 + sigma_between^2)

once windows are measured. Pure Python, no torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: One-sided normal quantile: a fresh timing meets the budget with ~95 % probability.
MARGIN_Z = 1.645
#: Prior spread of the log speed-up between timings: margin 3 % before anything is measured.
PRIOR_SIGMA = -math.log(1 - 0.03) / MARGIN_Z
#: Weight of the prior, in degrees of freedom (one group of three timings has two).
PRIOR_DOF = 2.0
#: The derived margin stays within these bounds: below 1 % a timing's own resolution
#: decides; above 25 % the machine is too noisy for a budget to mean much (the search log
#: says so).
MIN_MARGIN, MAX_MARGIN = 0.01, 0.25


@dataclass
class SpreadMargin:
    """The margin of one search: ``fixed`` (``search.margin`` as a number) or derived from
    the groups of repeated timings added with :meth:`set_group` (``search.margin: auto``).

    ``groups`` maps a name (a student, or the best student's windows) to its log speed-ups;
    setting a group again replaces it, so a growing list of timings is never counted twice.
    ``windows``: the log speed-ups of one student per time window (:meth:`set_windows`).
    """

    fixed: float | None = None
    z: float = MARGIN_Z
    groups: dict[str, list[float]] = field(default_factory=dict)
    windows: list[list[float]] = field(default_factory=list)

    @classmethod
    def from_config(cls, margin: float | str) -> SpreadMargin:
        """``search.margin``: a number is used as is; ``"auto"`` derives it."""
        return cls(fixed=None if margin == "auto" else float(margin))

    def set_group(self, name: str, timings: Sequence[dict[str, float]],
                  student: str = "student") -> None:
        """Record the timings (dicts of ms with ``"teacher"`` and ``student``) of one
        network pair; fewer than two say nothing about the spread and are ignored."""
        logs = _log_speedups(timings, student)
        if len(logs) >= 2:
            self.groups[name] = logs

    def set_windows(self, windows: Sequence[Sequence[dict[str, float]]],
                    student: str = "student") -> None:
        """Record the timings of one student in each of several time windows (each a list
        of dicts of ms, as :meth:`set_group` takes); replaces earlier windows. A window's
        timings as repeats within a window are the caller's to add (:meth:`set_group`), so
        that timings already recorded are not counted twice."""
        logs = [w for w in (_log_speedups(w, student) for w in windows) if w]
        if len(logs) >= 2:
            self.windows = logs

    @property
    def dof(self) -> int:
        """Degrees of freedom measured: timings minus groups."""
        return sum(len(g) - 1 for g in self.groups.values())

    @property
    def sigma_within(self) -> float:
        """Pooled standard deviation of the log speed-up between timings of the same
        network in one window, shrunk towards the prior."""
        ss = sum((x - statistics.fmean(g)) ** 2 for g in self.groups.values() for x in g)
        return math.sqrt((PRIOR_SIGMA ** 2 * PRIOR_DOF + ss) / (PRIOR_DOF + self.dof))

    @property
    def sigma_between(self) -> float:
        """Standard deviation of the log speed-up between time windows beyond the
        within-window spread, shrunk towards the prior; 0 until windows are measured."""
        if len(self.windows) < 2:
            return 0.0
        means = [statistics.fmean(w) for w in self.windows]
        # A window mean of n timings varies by sigma_within^2 / n from the timings alone;
        # only the rest is drift between windows.
        noise = self.sigma_within ** 2 * statistics.fmean(1 / len(w) for w in self.windows)
        var = max(0.0, statistics.variance(means) - noise)
        dof = len(means) - 1
        return math.sqrt((PRIOR_SIGMA ** 2 * PRIOR_DOF + var * dof) / (PRIOR_DOF + dof))

    @property
    def sigma(self) -> float:
        """The spread of one fresh timing of the log speed-up: within a window, plus
        between windows once they are measured."""
        return math.hypot(self.sigma_within, self.sigma_between)

    @property
    def value(self) -> float:
        """The margin now: the fixed one, or ``1 - exp(-z sigma)`` within the bounds."""
        if self.fixed is not None:
            return self.fixed
        return min(MAX_MARGIN, max(MIN_MARGIN, 1 - math.exp(-self.z * self.sigma)))

    def interval(self, speedup: float) -> list[float]:
        """Where one fresh timing of a student measured at ``speedup`` lands ~90 % of the
        time (two-sided, z each way) if later timings spread as the measured ones did
        (windows included once measured; drift over hours can exceed it: docs/latency.md)."""
        return _span(speedup, self.z * self.sigma)

    def to_dict(self) -> dict[str, Any]:
        """What ``search.json`` records of it (``margin_from``)."""
        return {"mode": "fixed" if self.fixed is not None else "auto",
                "sigma_log_speedup": self.sigma, "sigma_within": self.sigma_within,
                "sigma_between": self.sigma_between, "windows": len(self.windows),
                "z": self.z, "dof": self.dof, "groups": len(self.groups),
                "prior_sigma": PRIOR_SIGMA, "prior_dof": PRIOR_DOF}


def _log_speedups(timings: Sequence[dict[str, float]], student: str) -> list[float]:
    """log(teacher ms / student ms) of each timing that has both."""
    return [math.log(t["teacher"] / t[student]) for t in timings
            if t.get(student) and t.get("teacher")]


def interval_of(search: dict, speedup: float | None) -> list[float] | None:
    """The interval of :meth:`SpreadMargin.interval` around ``speedup`` by the spread a
    search recorded (``search.json``'s ``margin_from``); None without either."""
    rec = search.get("margin_from") or {}
    if speedup is None or "sigma_log_speedup" not in rec:
        return None
    return _span(speedup, rec["z"] * rec["sigma_log_speedup"])


def _span(speedup: float, half: float) -> list[float]:
    return [speedup * math.exp(-half), speedup * math.exp(half)]


def interval_text(interval: Sequence[float] | None) -> str:
    """`` (1.93-2.18x)`` or the empty string."""
    return "" if not interval else f" ({interval[0]:.2f}-{interval[1]:.2f}x)"
