"""How a student's timings are judged against its budget: the milliseconds a budget
allows in one timing (the teacher timed beside the student), the pooling of separate
timings into one verdict, timing until the verdict is clear, and the speed-up a search
measured for its chosen student. Plain numbers, no torch; used by the search
(:mod:`lana.search.select`), the pipeline, its status and its reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def budget_allowed_ms(speedup: float | None, target_ms: float,
                      teacher_ms: float | None) -> float:
    """The budget in ms that a student's measured latency is checked against.

    A speed-up budget is checked against the teacher timed in the same session as the
    student (its ms over the speed-up), so a machine that drifted since profiling fails no
    student unfairly; ``target_ms`` (the search's target, from the teacher timed at
    profiling) stands for a millisecond budget, or when no teacher was timed.
    """
    if speedup is not None and teacher_ms is not None:
        return teacher_ms / speedup
    return target_ms


def pool_timings(timings: Sequence[dict[str, float]], name: str, speedup: float | None,
                 target_ms: float) -> dict[str, float]:
    """Pool separate timings of the student ``name``, each a dict of ms with the teacher
    timed alongside (``"teacher"``), into the values of one of them: the timing whose
    ``fraction`` (the student's ms over the budget allowed in that timing,
    :func:`budget_allowed_ms`) is the median; of an even number, the higher of the two
    middle ones, so a tie is judged on the slower side. A student meets the budget when
    ``fraction <= 1`` (less a margin in the search).

    A median of separate timings, not one timing, decides: a shared machine's speed
    differs from one session to the next by more than a margin of a few percent (see
    :data:`lana.latency.timing.E2E_ROUNDS`). The student's ms, the teacher's and the speed-up are
    taken from the same timing rather than as medians of their own, so that the numbers
    a user reads agree with each other and with the verdict (independent medians of a
    teacher and a student that drift together imply a speed-up no timing measured).
    Returns ``latency_ms``, ``teacher_ms``, ``speedup``, ``fraction`` and ``timing`` (the
    index of the median timing).
    """
    if not timings:
        raise ValueError("no timings to pool")
    fractions = _fractions(timings, name, speedup, target_ms)
    order = sorted(range(len(timings)), key=fractions.__getitem__)
    k = order[len(order) // 2]
    t = timings[k]
    return {"latency_ms": t[name], "teacher_ms": t["teacher"],
            "speedup": t["teacher"] / t[name], "fraction": fractions[k], "timing": k}


def median_speedup(timings: Sequence[dict[str, float]], name: str = "student") -> float:
    """The median over ``timings`` (each a dict of ms with the teacher timed alongside) of
    teacher ms / ``name`` ms: a speed-up from pairs timed in the same session."""
    import statistics

    return statistics.median(t["teacher"] / t[name] for t in timings)


def chosen_speedup(search: dict) -> float | None:
    """The chosen student's speed-up over the teacher as a search result (``search.json``)
    measured it: the median of its timings over the time windows (else of its
    confirmation timings), else its one timing beside the
    teacher of its attempt; None when nothing was timed (a LUT from another device)."""
    return measured_speedup(search.get("chosen") or {}, search.get("attempts", []))


def measured_speedup(chosen: dict, attempts: Sequence[dict]) -> float | None:
    """:func:`chosen_speedup` of a student row ``chosen`` and the search's ``attempts``."""
    timings = [t for w in chosen.get("windows_ms", []) for t in w] or chosen.get("timings_ms")
    if timings:
        return median_speedup(timings)
    if chosen.get("latency_ms_measured"):
        for att in attempts:
            if chosen in att["students"]:
                return att["teacher_ms"] / chosen["latency_ms_measured"]
    return None


def _fractions(timings: Sequence[dict[str, float]], name: str, speedup: float | None,
               target_ms: float) -> list[float]:
    """Per timing: the student's ms over the budget allowed in that timing."""
    return [t[name] / budget_allowed_ms(speedup, target_ms, t["teacher"]) for t in timings]


def time_until_decided(time_once: Callable[[], dict[str, float]], name: str,
                       speedup: float | None, target_ms: float, threshold: float,
                       confirm: int, first: dict[str, float] | None = None
                       ) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Time the student ``name`` (``time_once()``: one timing with the teacher alongside)
    ``confirm`` times in all, counting ``first``, and more while the verdict is in doubt:
    while the median ``fraction`` (:func:`pool_timings`) is within half the spread of the
    timings' fractions of ``threshold``, up to ``2 * confirm + 1`` timings. A clear case
    costs ``confirm`` timings; a noisy, borderline one gets the timings it needs.
    Returns the timings and their pooled values.
    """
    timings = [first] if first is not None else []
    while True:
        if len(timings) >= confirm:
            pooled = pool_timings(timings, name, speedup, target_ms)
            fractions = _fractions(timings, name, speedup, target_ms)
            spread = max(fractions) - min(fractions)
            if (len(timings) >= 2 * confirm + 1
                    or abs(pooled["fraction"] - threshold) > spread / 2):
                return timings, pooled
        timings.append(time_once())
