"""Phase 2c in the pipeline: solve the ILP, then measure and rank the K students.

The ILP sees only the library (plain numbers, :mod:`lana.search.solver`). Here its solutions are
turned into networks: each of the K diverse solutions is assembled from phase-1 weights,
evaluated on held-out data (BatchNorm in batch-statistics mode, as in the paper) and
measured end to end. The best student that *measurably* meets the budget wins; when none
does, the LUT budget is tightened by the observed error and the ILP re-solved; when the
winner measures far under the budget (``search.slack``), the LUT budget is loosened the
same way, so a budget is used rather than given away in accuracy.

:func:`select` takes the network-side work as three callables, so the logic is testable
with fakes and independent of torch. The search is a :class:`Selection`: its state (the
calibration, the margin, the bracket of layer budgets tried, the best student so far) is
explicit, and each round of :meth:`Selection.run` is a sequence of small steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lana.core.progress import log, progress
from lana.errors import InfeasibleBudgetError
from lana.latency.spread import MAX_MARGIN, SpreadMargin
from lana.search.calibration import Calibration, fit_calibration
from lana.search.solver import (
    Budget,
    Library,
    SearchResult,
    Solution,
    minimum_reachable,
    score_optimum_cost,
    solve,
)
from lana.search.verdict import (
    budget_allowed_ms,
    measured_speedup,
    pool_timings,
    time_until_decided,
)

if TYPE_CHECKING:
    from lana.config import BudgetConfig, SearchConfig

#: Solves beyond ``search.max_resolves`` for students that the time windows dropped.
WINDOW_RESOLVES = 2



def select(library: Library, latency: dict, budget: BudgetConfig, target_ms: float,
           cfg: SearchConfig, build: Callable[[list[str]], Any],
           measure: Callable[[dict[str, Any]], dict[str, float]] | None,
           evaluate: Callable[[Any], dict[str, float]],
           extra_budgets: Sequence[Budget] = (),
           wait: Callable[[float], None] | None = None) -> dict:
    """Search, verify and rank students; return the content of ``search.json``.

    ``latency`` holds ``stem_ms``, ``head_ms``, ``teacher_measured_ms``,
    ``teacher_predicted_ms`` (from the profile stage). ``build(specs)`` assembles a student,
    ``measure(students)`` returns end-to-end ms per name plus ``"teacher"`` (timed in the
    same session), ``evaluate(student)`` returns held-out ``loss`` and ``accuracy``.
    ``measure=None`` (the LUT comes from another machine, ``latency.device``): nothing can
    be timed here, so students are judged by the corrected prediction, marked
    ``verified: false``, and there is no re-solve. ``extra_budgets`` bound further cost
    columns of the library (layer sums, i.e. without the fixed stem/head costs).
    ``wait(seconds)`` (e.g. ``time.sleep``) spaces the chosen student's time windows
    (``search.windows``); None times them back to back. The search itself is
    :class:`Selection`.
    """
    return Selection(library, latency, budget, target_ms, cfg, build, measure, evaluate,
                     extra_budgets, wait).run()


@dataclass
class Bracket:
    """The layer budgets tried so far on either side of the budget: the largest one whose
    chosen student met it (``under``) and the smallest one none of whose students did
    (``over``). Later budgets stay between; once both are known, they bisect."""

    under: float | None = None
    over: float | None = None

    def met(self, layer_budget: float) -> None:
        """A solve at ``layer_budget`` chose a student that met the budget."""
        self.under = layer_budget if self.under is None else max(self.under, layer_budget)

    def missed(self, layer_budget: float) -> None:
        """No student of a solve at ``layer_budget`` met the budget."""
        self.over = layer_budget if self.over is None else min(self.over, layer_budget)

    def retract(self, layer_budget: float) -> None:
        """The student chosen at ``layer_budget`` misses the budget when timed again: that
        budget counts as missed, and a met budget at or above it is no evidence any more."""
        self.missed(layer_budget)
        if self.under is not None and self.under >= layer_budget:
            self.under = None

    @property
    def closed(self) -> bool:
        """Whether both sides are known."""
        return self.under is not None and self.over is not None

    @property
    def narrow(self) -> bool:
        """Whether both sides are known and within 1 % of each other: nowhere left to go."""
        return self.closed and self.over - self.under <= 0.01 * self.over


@dataclass
class Incumbent:
    """A student confirmed within budget: its row (of ``search.json``), its network, the
    layer budget of the solve that found it, and its timing in that solve's time window
    (``{"teacher": ms, "student": ms}``)."""

    row: dict
    model: Any
    layer_budget: float
    window: dict[str, float]
    windows_checked: bool = False  # timed in ``search.windows`` time windows


@dataclass
class Round:
    """One solve of the search and what came of it, filled in by the steps of
    :meth:`Selection.run` in turn."""

    result: SearchResult
    students: dict[str, Any]
    measured: dict[str, float] = field(default_factory=dict)
    allowed: float = 0.0  # ms, by the teacher timed in this round
    retimed: bool = False  # the incumbent was timed beside this round's students
    rows: list[dict] = field(default_factory=list)
    chosen: Incumbent | None = None
    used: float = 1.0  # the chosen student's share of the budget allowed
    improved: bool = False  # the chosen student became the incumbent


class Selection:
    """The search of :func:`select`, with its state explicit.

    :meth:`run` is the template: each round solves the ILP at ``layer_budget`` and builds
    the K students, measures them (with the incumbent beside them), re-times the
    incumbent, evaluates the students, confirms the best one that met the budget, records
    the attempt and decides the next layer budget, or stops; before it stops, the
    incumbent is timed in ``search.windows`` time windows apart (:meth:`_across_windows`),
    which may drop it and solve once more.

    State carried from one round to the next: ``points`` (every (LUT sum, measured ms)
    pair so far) and ``cal`` (the calibration the next solve's budget came from);
    ``spread`` (the margin, from the spread of repeated timings); ``layer_budget``;
    ``bracket`` (:class:`Bracket`); ``best`` (the most accurate student confirmed within
    budget over all solves, an :class:`Incumbent`, or None); ``attempts`` (the rows of
    ``search.json``) and ``solve_seconds``. Building raises
    :class:`~lana.errors.InfeasibleBudgetError` when the budget is below every architecture.
    ``wait(seconds)`` passes the time between the windows of :meth:`_across_windows` (None:
    windows back to back, for fakes).
    """

    def __init__(self, library: Library, latency: dict, budget: BudgetConfig,
                 target_ms: float, cfg: SearchConfig, build: Callable[[list[str]], Any],
                 measure: Callable[[dict[str, Any]], dict[str, float]] | None,
                 evaluate: Callable[[Any], dict[str, float]],
                 extra_budgets: Sequence[Budget] = (),
                 wait: Callable[[float], None] | None = None) -> None:
        self.library, self.latency, self.budget = library, latency, budget
        self.target_ms, self.cfg, self.extra_budgets = target_ms, cfg, extra_budgets
        self.build, self.measure, self.evaluate = build, measure, evaluate
        self.wait = wait or (lambda seconds: None)
        self.fixed = latency["stem_ms"] + latency["head_ms"]
        # The LUT sums ops timed alone; the whole network runs at a different speed (fusion,
        # caches, per-call overhead). Measured ~ alpha * LUT sum + beta calibrates that:
        # first from the teacher alone (a ratio), then refitted on every network measured.
        self.teacher_lut = latency["teacher_predicted_ms"]
        self.points = [(self.teacher_lut, latency["teacher_measured_ms"])]
        self.cal = fit_calibration(self.points)
        # The margin grows or shrinks with the spread of the repeated timings below.
        self.spread = SpreadMargin.from_config(cfg.margin)
        self.layer_budget = self.cal.invert(target_ms * (1 - self.spread.value)) - self.fixed
        self.floor = minimum_reachable(library, "latency_ms")
        if self.layer_budget < self.floor:
            raise self._infeasible()
        self.ceiling = minimum_reachable(library, "latency_ms", "max")
        self.optimum = score_optimum_cost(library, "latency_ms")
        if not extra_budgets:
            # Looser than the best-scoring architecture, the ILP's optimum stays that one: a
            # re-solve there only times the same students again. (Another cost column may
            # rule that architecture out, and then a costlier latency can still buy a
            # better one.)
            self.ceiling = min(self.ceiling, self.optimum)
        self.bracket = Bracket()
        self.best: Incumbent | None = None
        self.attempts: list[dict] = []
        self.solve_seconds = 0.0

    def _infeasible(self) -> InfeasibleBudgetError:
        backend = self.latency.get("settings", {}).get("backend", "the backend")
        minimum = self.cal.predict(self.floor + self.fixed)
        margin = self.spread.value
        return InfeasibleBudgetError(
            f"a budget of {self.target_ms:.4g} ms is below the minimum reachable latency "
            f"{minimum:.4g} ms of this candidate space on {backend} "
            f"(stem+head alone: {self.cal.predict(self.fixed):.4g} ms"
            + (f", {margin:.0%} safety margin" if margin else "") + "). Raise the "
            "budget (or lower the speed-up), or add cheaper candidate ops.",
            minimum={"latency_ms": minimum})

    def run(self) -> dict:
        """Solve, measure and re-solve until a round decides to stop (at most
        ``search.max_resolves`` re-solves, and up to ``WINDOW_RESOLVES`` more for students
        the time windows drop); return the content of ``search.json``."""
        rounds = 0
        while True:
            rnd = self._solve()
            self._measure(rnd)
            self._retime_best(rnd)
            self._evaluate(rnd)
            self._confirm(rnd)
            self._record(rnd)
            rounds += 1
            new_budget = (self._next_layer_budget(rnd) if rounds <= self.cfg.max_resolves
                          else None)
            if new_budget is None:
                new_budget = self._across_windows()
            if new_budget is None or rounds > self.cfg.max_resolves + WINDOW_RESOLVES:
                break
            self.layer_budget = new_budget
        return self._result()

    def _solve(self) -> Round:
        """Solve the ILP at the current layer budget and build its students."""
        with progress() as bar:
            task = bar.add_task("phase 2c ILP", total=self.cfg.k, info="diverse solutions")
            result = solve(self.library, [Budget("latency_ms", "<=", self.layer_budget),
                                          *self.extra_budgets], k=self.cfg.k,
                           overlap=self.cfg.overlap,
                           on_solution=lambda n, b=bar, t=task: b.update(t, completed=n))
            # Fewer than K diverse architectures may exist; the bar ends where the ILP did.
            bar.update(task, total=len(result.solutions), completed=len(result.solutions))
        self.solve_seconds += result.solve_seconds
        return Round(result, {f"s{n}": self.build(sol.specs)
                              for n, sol in enumerate(result.solutions)})

    def _measure(self, rnd: Round) -> None:
        """Time the round's students beside the teacher, and the incumbent with them."""
        # The machine's speed drifts by whole time windows, and keeping the solve that met
        # its budget keeps the luckiest window: timing the incumbent again in every later
        # window undoes that. One timing stands for each window (the confirm timings of one
        # solve share a window).
        rnd.retimed = self.best is not None and self.measure is not None
        again = {"best": self.best.model} if rnd.retimed else {}
        measured = self.measure({**rnd.students, **again}) if self.measure is not None else None
        rnd.measured = (measured if measured is not None
                        else {"teacher": self.latency["teacher_measured_ms"]})
        rnd.allowed = budget_allowed_ms(self.budget.speedup, self.target_ms,
                                        rnd.measured["teacher"])

    def _retime_best(self, rnd: Round) -> None:
        """Pool the incumbent's timings over every time window so far (its own solve's and
        each later one's); one that misses the budget there is dropped."""
        if not rnd.retimed:
            return
        best = self.best
        retimed = best.row.setdefault("retimed_ms", [])
        retimed.append({"teacher": rnd.measured["teacher"], "student": rnd.measured["best"]})
        windows = [best.window, *retimed]
        self.spread.set_group("best", windows)
        pooled = pool_timings(windows, "student", self.budget.speedup, self.target_ms)
        if not self._within_margin(pooled["fraction"]):
            self._drop_best(pooled, len(windows))

    def _across_windows(self) -> float | None:
        """Time the incumbent in ``search.windows`` time windows (its own solve's and later
        ones ``search.window_gap_s`` apart) and grow the margin by the drift between them;
        None when it meets the budget over them (or there is nothing to time), else the
        layer budget of one more solve, tighter by its overshoot."""
        best, cfg = self.best, self.cfg
        if best is None or self.measure is None or cfg.windows <= 1 or best.windows_checked:
            return None
        row = best.row
        windows = [row.get("timings_ms") or [best.window]]
        windows += [[t] for t in row.get("retimed_ms", [])]
        with progress() as bar:
            task = bar.add_task("phase 2c windows", total=cfg.windows - 1,
                                info=f"chosen student, {cfg.window_gap_s:g} s apart")
            for n in range(cfg.windows - 1):
                self.wait(cfg.window_gap_s)
                windows.append([self._time_best() for _ in range(cfg.confirm)])
                self.spread.set_group(f"{len(self.attempts)}/window {n + 1}", windows[-1])
                bar.advance(task)
        best.windows_checked = True
        row["windows_ms"] = windows
        self.spread.set_windows(windows)
        every = [t for w in windows for t in w]
        pooled = pool_timings(every, "student", self.budget.speedup, self.target_ms)
        row["margin"] = self.spread.value
        if self._within_margin(pooled["fraction"]):
            row["latency_ms_measured"] = pooled["latency_ms"]
            return None
        self._drop_best(pooled, len(windows))
        # Measured ms scale with the LUT sum through the calibration: ask for a student
        # faster by the overshoot.
        lut = row["latency_ms_lut"]
        goal = self.cal.predict(lut) * (1 - self.spread.value) / pooled["fraction"]
        new_budget = min(self.cal.invert(goal) - self.fixed, self._below(lut))
        new_budget = max(self.floor, new_budget)
        log(f"[yellow]search: re-solving below the dropped student, LUT budget "
            f"{new_budget + self.fixed:.4g} ms[/yellow]")
        return new_budget

    def _within_margin(self, fraction: float) -> bool:
        """Whether a student at ``fraction`` of its budget meets it less the margin."""
        return fraction <= (1 - self.spread.value) * (1 + 1e-9)

    def _below(self, lut_ms: float) -> float:
        """The layer budget just under a student's LUT cost ``lut_ms``: the ILP returns
        that student again at any budget from its cost up."""
        return (lut_ms - self.fixed) * (1 - 1e-3)

    def _time_best(self) -> dict[str, float]:
        """One timing of the incumbent beside the teacher."""
        ms = self.measure({"best": self.best.model})
        return {"teacher": ms["teacher"], "student": ms["best"]}

    def _drop_best(self, pooled: dict[str, float], windows: int) -> None:
        """The incumbent missed the budget over ``windows`` time windows: no longer met."""
        best = self.best
        log(f"[yellow]search: the best student so far, timed again, measures "
            f"{pooled['latency_ms']:.4g} ms, "
            f"{pooled['fraction']:.0%} of its budget over {windows} "
            "time windows: dropped[/yellow]")
        best.row.update(meets_budget=False, latency_ms_measured=pooled["latency_ms"])
        self.bracket.retract(best.layer_budget)
        self.best = None

    def _evaluate(self, rnd: Round) -> None:
        """Evaluate the round's students on held-out data; one row each for ``search.json``,
        judged by the timing of all K (or the corrected prediction where nothing is timed)."""
        solutions = rnd.result.solutions
        with progress() as bar:
            task = bar.add_task("phase 2c evaluate", total=len(solutions),
                                info="K students on held-out data")
            evals = []
            for n in range(len(solutions)):
                evals.append(self.evaluate(rnd.students[f"s{n}"]))
                bar.advance(task)
        rnd.rows = [self._row(sol, ev, rnd.measured.get(f"s{n}"), rnd.allowed)
                    for n, (sol, ev) in enumerate(zip(solutions, evals, strict=True))]

    def _row(self, sol: Solution, ev: dict[str, float], ms: float | None,
             allowed: float) -> dict:
        lut_ms = sol.cost["latency_ms"] + self.fixed
        judged = ms if ms is not None else self.cal.predict(lut_ms)
        return {"choices": sol.specs, "score": sol.score,
                "latency_ms_lut": lut_ms,
                "latency_ms_predicted": self.cal.predict(lut_ms),
                "latency_ms_measured": ms, "verified": ms is not None,
                "meets_budget": judged <= allowed * (1 - self.spread.value) * (1 + 1e-9),
                "val_loss": ev["loss"], "val_accuracy": ev["accuracy"]}

    def _confirm(self, rnd: Round) -> None:
        """Choose the round's student: the lowest held-out loss of those that met the
        budget, once fresh timings confirm it (a student they fail gives way to the next)."""
        rows = rnd.rows
        for n in sorted((n for n, r in enumerate(rows) if r["meets_budget"]),
                        key=lambda n: rows[n]["val_loss"]):
            r, name = rows[n], f"s{n}"
            rnd.used = (r["latency_ms_measured"] or r["latency_ms_predicted"]) / rnd.allowed
            pooled = None
            if self.measure is not None and self.cfg.confirm > 1:
                pooled = self._time_again(rnd, r, name)
                rnd.used = pooled["fraction"]
            if r["meets_budget"]:
                window = (r["timings_ms"][pooled["timing"]] if pooled is not None
                          else {"teacher": rnd.measured["teacher"],
                                "student": r["latency_ms_measured"]})
                rnd.chosen = Incumbent(r, rnd.students[name], self.layer_budget, window)
                return

    def _time_again(self, rnd: Round, r: dict, name: str) -> dict[str, float]:
        """Judge the row ``r`` (student ``name``) by ``search.confirm`` fresh timings (more
        while in doubt, :func:`time_until_decided`); return their pooled values."""
        # Picking the best of K noisy timings favours one that was timed fast by luck, so
        # the timing that picked it is no evidence and takes no part in the verdict
        # (counting it biased the median low: a student passed the search that later
        # timings put over budget).
        timings, pooled = time_until_decided(
            lambda one={name: rnd.students[name]}: self.measure(one), name,
            self.budget.speedup, self.target_ms, 1 - self.spread.value, self.cfg.confirm)
        r["selected_by_ms"] = {"teacher": rnd.measured["teacher"],
                               "student": rnd.measured[name]}
        r["timings_ms"] = [{"teacher": t["teacher"], "student": t[name]} for t in timings]
        r["latency_ms_measured"] = pooled["latency_ms"]
        self.spread.set_group(f"{len(self.attempts)}/{name}", r["timings_ms"])
        r["margin"] = self.spread.value
        r["meets_budget"] = self._within_margin(pooled["fraction"])
        if not r["meets_budget"]:
            log(f"[yellow]search: {name} met the budget in the timing of all K "
                f"but not in the median of {len(timings)} more "
                f"({pooled['fraction']:.1%} of the budget): not chosen[/yellow]")
        return pooled

    def _record(self, rnd: Round) -> None:
        """Add the round's timings to the calibration points and the round to
        ``attempts``; its chosen student becomes the incumbent if its loss is lower."""
        for r in rnd.rows:
            if r["latency_ms_measured"] is not None:
                self.points.append((r["latency_ms_lut"], r["latency_ms_measured"]))
        if self.measure is not None:
            self.points.append((self.teacher_lut, rnd.measured["teacher"]))
        self.attempts.append({"layer_budget_ms": self.layer_budget,
                              "teacher_ms": rnd.measured["teacher"],
                              "allowed_ms": rnd.allowed,
                              "solve_seconds": rnd.result.solve_seconds,
                              "calibration": self.cal.to_dict(), "students": rnd.rows})
        rnd.improved = rnd.chosen is not None and (
            self.best is None or rnd.chosen.row["val_loss"] < self.best.row["val_loss"])
        if rnd.improved:
            self.best = rnd.chosen

    def _next_layer_budget(self, rnd: Round) -> float | None:
        """The layer budget of the next solve, or None to stop: tighter after a miss, looser
        after a student far under the budget, within the bracket and the reachable range."""
        if self.measure is None:
            return None  # nothing measured, nothing to learn from
        # The goal is what the verdict judges by: the budget allowed by the teacher timed
        # in this round. The target of the profile stage is a timing of hours ago: on a
        # machine slower since, it asked for students far faster than the budget.
        goal = rnd.allowed * (1 - self.spread.value)
        if rnd.chosen is not None:
            if self._settled(rnd):
                return None
            self.bracket.met(self.layer_budget)
            new_budget, why, how = self._loosen(rnd, goal)
        else:
            self.bracket.missed(self.layer_budget)
            new_budget, why, how = self._tighten(rnd, goal)
        under, over = self.bracket.under, self.bracket.over
        if self.bracket.closed:
            # A refit line interpolates badly where the device is not linear in the LUT
            # sum; halving the bracket always gets there.
            new_budget = (under + over) / 2
            how = (f"bisecting between LUT budgets {under + self.fixed:.4g} ms (met) and "
                   f"{over + self.fixed:.4g} ms (missed)")
        new_budget = min(max(self.floor, new_budget), self.ceiling)
        if (abs(new_budget - self.layer_budget) <= 0.005 * self.layer_budget
                or self.bracket.narrow):
            return None  # at the cheapest (or costliest) architecture, or nowhere left to go
        log(f"[yellow]search: {why}; {how}; LUT budget {self.layer_budget + self.fixed:.4g}"
            f" -> {new_budget + self.fixed:.4g} ms, re-solving[/yellow]")
        return new_budget

    def _settled(self, rnd: Round) -> bool:
        """Whether a round whose student met the budget ends the search."""
        # Far under the budget, the student gave away accuracy that a costlier one would
        # keep, so the search goes on with a looser budget, unless this solve, between
        # budgets already tried, found nothing better: there is nothing left between.
        return (rnd.used >= _loosen_below(self.spread.value, self.cfg.slack)
                or self.layer_budget >= self.ceiling
                or (not rnd.improved and self.bracket.over is not None))

    def _loosen(self, rnd: Round, goal: float) -> tuple[float, str, str]:
        """The next layer budget after a student well under the budget; why and how."""
        row = rnd.chosen.row
        new_budget, self.cal, how = _looser_budget(self.points, row, self.layer_budget,
                                                   self.fixed, self.cal, goal)
        why = (f"chosen student measured {row['latency_ms_measured']:.4g} ms, "
               f"{rnd.used:.0%} of the {rnd.allowed:.4g} ms allowed")
        return new_budget, why, how

    def _tighten(self, rnd: Round, goal: float) -> tuple[float, str, str]:
        """The next layer budget after no student met the budget; why and how."""
        new_budget, self.cal, how = _next_budget(self.points, rnd.rows, self.layer_budget,
                                                 self.fixed, self.cal, goal)
        top = min(rnd.rows, key=lambda r: r["val_loss"])
        new_budget = min(new_budget, self._below(top["latency_ms_lut"]))
        why = (f"best student measured {top['latency_ms_measured']:.4g} ms > "
               f"{goal:.4g} ms allowed")
        return new_budget, why, how

    def _result(self) -> dict:
        """The content of ``search.json``: the incumbent, else the fastest student."""
        chosen = self.best.row if self.best is not None else self._fastest()
        final = fit_calibration(self.points)
        spread = self.spread
        if spread.fixed is None and spread.value >= MAX_MARGIN:
            log(f"[yellow]search: repeated timings of the same networks differ by "
                f"{spread.sigma:.0%} (sd) on this machine; the margin stops at "
                f"{MAX_MARGIN:.0%}, so a later timing may well miss the budget. Time on a "
                "quieter machine (nothing else running) for a promise that holds[/yellow]")
        if (sp := measured_speedup(chosen, self.attempts)) is not None:
            chosen["speedup_interval"] = spread.interval(sp)
        cfg = self.cfg
        return {"budget": self.budget.model_dump(exclude_none=True),
                "budget_ms": self.target_ms, "calibration": final.to_dict(),
                "fixed_ms": self.fixed, "k": cfg.k, "overlap": cfg.overlap,
                "margin": spread.value, "margin_from": spread.to_dict(), "slack": cfg.slack,
                "log10_space_size": self.library.log10_space_size(),
                "solve_seconds": self.solve_seconds, "resolves": len(self.attempts) - 1,
                "score_optimum_ms_lut": self.optimum + self.fixed,
                "attempts": self.attempts, "chosen": chosen}

    def _fastest(self) -> dict:
        """The fastest student of every solve (measured, else predicted), when none met
        the budget."""
        fastest = min((r for a in self.attempts for r in a["students"]),
                      key=lambda r: (r["latency_ms_measured"] if r["verified"]
                                     else r["latency_ms_predicted"]))
        log(f"[red]search: no student measurably met the budget after {len(self.attempts)} "
            "solve(s); keeping the fastest one (see meets_budget in summary.json)[/red]")
        return fastest


def _loosen_below(margin: float, slack: float) -> float:
    """The share of its budget below which a student that met it gave away accuracy: the
    search loosens the LUT budget there, and :func:`explain` says why it stayed there."""
    return (1 - margin) * (1 - slack)


def _next_budget(points: list[tuple[float, float]], rows: list[dict], layer_budget: float,
                 fixed: float, cal: Calibration, goal: float
                 ) -> tuple[float, Calibration, str]:
    """The layer budget of the next solve after no student met ``goal`` (ms, measured).

    First choice: refit the calibration on every network measured so far and invert it at
    the goal. When the refit does not tighten the budget (the miss is noise rather than a
    wrong calibration), shrink it by the best student's measured overshoot instead (at
    least 3 %).
    """
    refit = fit_calibration(points)
    by_fit = refit.invert(goal) - fixed
    if by_fit < layer_budget:
        return by_fit, refit, (f"refit measured ~ {refit.alpha:.3f} x LUT "
                               f"{refit.beta:+.3g} ms on {refit.points} networks")
    best = min(rows, key=lambda r: r["val_loss"])
    shrink = min(0.97, goal / best["latency_ms_measured"])
    return ((layer_budget + fixed) * shrink - fixed, cal,
            f"calibration unchanged, tightening by {1 - shrink:.1%}")


def _looser_budget(points: list[tuple[float, float]], chosen: dict, layer_budget: float,
                   fixed: float, cal: Calibration, goal: float
                   ) -> tuple[float, Calibration, str]:
    """The layer budget of the next solve after the chosen student measured well under
    ``goal`` (ms): the larger of the calibration refitted on every network measured so far
    (inverted at the goal) and the budget grown by the chosen student's undershoot
    (measured ∝ LUT for that student). The larger one, because a refit line is pulled
    towards the teacher's ratio by the teacher's points; a step too far is caught by the
    next solve's miss and the :class:`Bracket` of :class:`Selection`."""
    refit = fit_calibration(points)
    by_fit = refit.invert(goal) - fixed
    grow = max(1.03, goal / chosen["latency_ms_measured"])
    by_grow = (layer_budget + fixed) * grow - fixed
    if by_fit > by_grow:
        return by_fit, refit, (f"refit measured ~ {refit.alpha:.3f} x LUT "
                               f"{refit.beta:+.3g} ms on {refit.points} networks")
    return by_grow, cal, f"loosening by the chosen student's undershoot ({grow - 1:.1%})"


def explain(result: dict) -> list[str]:
    """What a search did and why it kept its student, as plain sentences (``search.json``
    in, lines out; the terminal and the report print them).

    One line per solve (its LUT budget, how many of its students met the budget in the
    timing, the best of those), then the kept student and the share of its budget it uses.
    A kept student well under its budget (below ``(1 - margin) * (1 - slack)`` of it, the
    point where the search itself loosens the budget; the run's own ``search.margin`` and
    ``search.slack``, recorded in ``search.json``) gets a reason: the search
    reached the best-scoring architecture of the whole space (no looser budget can give a
    better one), or costlier students met the budget but had no lower held-out loss (the
    search keeps the lowest loss, as the paper does, not the largest network), or none
    did.
    """
    attempts = result.get("attempts") or []
    chosen = result.get("chosen")
    if not attempts or chosen is None:
        return []
    fixed = result.get("fixed_ms", 0.0)
    # search.json files written before margin and slack were recorded ran on the defaults
    # of then (a fixed 3 % margin, 15 % slack; the margin is recorded as a number since
    # "auto")
    under = _loosen_below(result.get("margin", 0.03), result.get("slack", 0.15))

    def ms_of(r: dict) -> float:  # measured, or the corrected prediction where unmeasured
        return r["latency_ms_measured"] or r["latency_ms_predicted"]

    lines = []
    where = None  # (solve, student) of the kept student
    for a, att in enumerate(attempts):
        rows = att["students"]
        met = [r for r in rows if r["meets_budget"]]
        for n, r in enumerate(rows):
            if r["choices"] == chosen["choices"] and where is None:
                where = (a, n)
        text = (f"solve {a + 1}: LUT budget {att['layer_budget_ms'] + fixed:.4g} ms, "
                f"{len(met)}/{len(rows)} students met the {att['allowed_ms']:.4g} ms allowed")
        if met:
            top = min(met, key=lambda r: r["val_loss"])
            ms = ms_of(top)
            text += (f"; the best of them {ms:.4g} ms ({ms / att['allowed_ms']:.0%}), "
                     f"val loss {top['val_loss']:.4f}")
        lines.append(text)
    if not chosen["meets_budget"]:
        lines.append("kept: the fastest student, as none met the budget")
        return lines
    a, n = where if where is not None else (len(attempts) - 1, 0)
    allowed = attempts[a]["allowed_ms"]
    ms = ms_of(chosen)
    used = ms / allowed
    lines.append(f"kept: student {n} of solve {a + 1}, {ms:.4g} ms = {used:.0%} of the "
                 f"{allowed:.4g} ms allowed, val loss {chosen['val_loss']:.4f}")
    if used < under * (1 - 1e-9):
        # The same network solved again (timed anew) is not a costlier alternative.
        costlier = [r for att in attempts for r in att["students"] if r["meets_budget"]
                    and r["choices"] != chosen["choices"]
                    and ms_of(r) > ms * 1.02]
        best_lut = result.get("score_optimum_ms_lut")
        reached = best_lut is not None and any(
            att["layer_budget_ms"] + fixed >= best_lut * (1 - 1e-9) for att in attempts)
        optimum = (f"the best-scoring architecture of the whole space costs {best_lut:.4g} ms "
                   "by the LUT, within a LUT budget the search tried, so no looser budget "
                   "gives a better-scoring one") if reached else ""
        if costlier:
            lines.append(
                f"why under budget: {len(costlier)} costlier student(s) met the budget (up "
                f"to {max(ms_of(r) for r in costlier):.4g} ms) "
                f"with no lower held-out loss (the lowest of them "
                f"{min(r['val_loss'] for r in costlier):.4f}); the search keeps the lowest "
                "loss, not the largest network" + (f"; and {optimum}" if reached else ""))
        elif reached:
            lines.append(f"why under budget: {optimum}")
        else:
            lines.append(f"why under budget: no costlier student met the budget in "
                         f"{len(attempts)} solve(s)")
    return lines
