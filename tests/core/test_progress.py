"""Progress reporting: log-mode lines, and the ILP's per-solution callback."""

from __future__ import annotations

from lana.core import progress as progress_mod
from lana.search.solver import Library, solve


def test_line_progress_total_can_shrink(capsys, monkeypatch) -> None:
    from rich.console import Console

    monkeypatch.setattr(progress_mod, "console", Console(stderr=True, width=200))
    with progress_mod._LineProgress() as bar:
        task = bar.add_task("phase 2c ILP", total=8, info="")
        bar.update(task, completed=2)
        # fewer diverse solutions than K exist: the bar ends where the search did
        bar.update(task, total=3, completed=3)
    err = capsys.readouterr().err
    assert "phase 2c ILP: 100% (3/3)" in err
    assert "stopped" not in err


def test_solve_reports_each_solution() -> None:
    lib = Library.from_dict({"layers": [
        {"name": f"l{i}", "ops": [
            {"spec": "teacher", "score": 0.0, "cost": {"latency_ms": 1.0}},
            {"spec": "a", "score": 0.1 + i / 100, "cost": {"latency_ms": 0.5}},
            {"spec": "b", "score": 0.2, "cost": {"latency_ms": 0.2}}]} for i in range(4)]})
    seen: list[int] = []
    res = solve(lib, ["latency_ms<=3.0"], k=3, overlap=0.5, on_solution=seen.append)
    assert seen == list(range(1, len(res.solutions) + 1)) and seen


def test_line_progress_reports_a_long_stage_between_quarters(capsys, monkeypatch) -> None:
    """A stage whose quarters are far apart still prints a line (with an ETA) once a minute,
    and none more often."""
    from rich.console import Console

    monkeypatch.setattr(progress_mod, "console", Console(stderr=True, width=200))
    now = [1000.0]
    monkeypatch.setattr(progress_mod.time, "time", lambda: now[0])
    with progress_mod._LineProgress() as bar:
        task = bar.add_task("teacher", total=100, info="")
        for _ in range(20):  # 20 steps of 10 s: 200 s, under a quarter
            now[0] += 10.0
            bar.advance(task)
    lines = capsys.readouterr().err.strip().splitlines()
    # at 60 s, 120 s and 180 s, then the exit line of an unfinished stage
    assert [line.split(" (")[0] for line in lines] == [
        "teacher: 6%, eta 940 s", "teacher: 12%, eta 880 s", "teacher: 18%, eta 820 s",
        "teacher: stopped"]
