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
the margin is the one lana used as a constant before (3 %). Pure Python, no torch.
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
    """

    fixed: float | None = None
    z: float = MARGIN_Z
    groups: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, margin: float | str) -> SpreadMargin:
        """``search.margin``: a number is used as is; ``"auto"`` derives it."""
        return cls(fixed=None if margin == "auto" else float(margin))

    def set_group(self, name: str, timings: Sequence[dict[str, float]],
                  student: str = "student") -> None:
        """Record the timings (dicts of ms with ``"teacher"`` and ``student``) of one
        network pair; fewer than two say nothing about the spread and are ignored."""
        logs = [math.log(t["teacher"] / t[student]) for t in timings
                if t.get(student) and t.get("teacher")]
        if len(logs) >= 2:
            self.groups[name] = logs

    @property
    def dof(self) -> int:
        """Degrees of freedom measured: timings minus groups."""
        return sum(len(g) - 1 for g in self.groups.values())

    @property
    def sigma(self) -> float:
        """Pooled standard deviation of the log speed-up, shrunk towards the prior."""
        ss = sum((x - statistics.fmean(g)) ** 2 for g in self.groups.values() for x in g)
        return math.sqrt((PRIOR_SIGMA ** 2 * PRIOR_DOF + ss) / (PRIOR_DOF + self.dof))

    @property
    def value(self) -> float:
        """The margin now: the fixed one, or ``1 - exp(-z sigma)`` within the bounds."""
        if self.fixed is not None:
            return self.fixed
        return min(MAX_MARGIN, max(MIN_MARGIN, 1 - math.exp(-self.z * self.sigma)))

    def interval(self, speedup: float) -> list[float]:
        """Where one fresh timing of a student measured at ``speedup`` lands ~90 % of the
        time (two-sided, z each way) if later timings spread as the measured ones did (on a
        shared VM, windows minutes apart spread more: docs/latency.md)."""
        return _span(speedup, self.z * self.sigma)

    def to_dict(self) -> dict[str, Any]:
        """What ``search.json`` records of it (``margin_from``)."""
        return {"mode": "fixed" if self.fixed is not None else "auto",
                "sigma_log_speedup": self.sigma, "z": self.z, "dof": self.dof,
                "groups": len(self.groups), "prior_sigma": PRIOR_SIGMA,
                "prior_dof": PRIOR_DOF}


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
