"""``lana verify``: the exported student timed again in sessions spread out in time."""

from __future__ import annotations

import itertools

import pytest

import lana.latency.profile
from lana.cli.commands import main
from lana.config import BudgetConfig
from lana.core.io import read_json, write_json
from lana.errors import ArtifactError, ConfigError
from lana.pipeline.runner import Run


def _scripted(monkeypatch, timings: list[tuple[float, float]]):
    """measure_models returns these (teacher ms, student ms) in turn; calls are counted."""
    it = iter(timings)
    calls = []

    def fake(models, input_shape, cfg, rounds=None, lut=None):
        assert set(models) == {"teacher", "student"} and lut is not None
        calls.append(1)
        t, s = next(it)
        return {"teacher": t, "student": s}

    monkeypatch.setattr(lana.latency.profile, "measure_models", fake)
    return calls


def _export_timings(run_dir, tag: str, timings: list[tuple[float, float]]) -> None:
    """Replace export's own timings (the tiny run's real ones vary by machine)."""
    path = run_dir / "students" / tag / "export.json"
    exp = read_json(path)
    exp["timings_ms"] = [{"teacher": t, "student": s} for t, s in timings]
    write_json(path, exp)


def test_sessions_add_up_and_the_median_of_all_timings_decides(run_copy, monkeypatch,
                                                               capsys) -> None:
    run_dir, _ = run_copy
    # budget 1.5x: a student of 0.6 ms beside a 1 ms teacher is at 90 % of its budget
    _export_timings(run_dir, "speedup1.5", [(1.0, 0.6)] * 3)
    sleeps = []
    monkeypatch.setattr("time.sleep", sleeps.append)
    calls = _scripted(monkeypatch, [(1.0, 0.62), (1.0, 0.6)] + [(1.0, 0.9)] * 8)
    res = Run(run_dir).verify(BudgetConfig(speedup=1.5), sessions=2, gap_s=100.0)
    assert len(calls) == 2 and len(res["sessions"]) == 2
    assert len(sleeps) == 1 and 99 < sleeps[0] <= 100  # the gap, after the first session
    assert res["meets_budget"] and res["pooled"]["speedup"] == pytest.approx(1 / 0.6)
    stored = read_json(run_dir / "students" / "speedup1.5" / "verify.json")
    assert [s["student"] for s in stored["sessions"]] == [0.62, 0.6]
    # Later windows where the student is slow (135 % of the budget): three more sessions
    # leave the median of all 8 timings within it (5 of them are fast), six more bring
    # the median of all 11 over it, and the CLI exits 1.
    assert main(["verify", str(run_dir), "--sessions", "3", "--gap", "0"]) == 0
    assert "median of 8 timings: student 0.62 ms" in capsys.readouterr().out
    assert main(["verify", str(run_dir), "--sessions", "3", "--gap", "0"]) == 1
    out = capsys.readouterr().out
    assert "OVER budget" in out and "median of 11 timings: student 0.9 ms" in out
    assert len(read_json(run_dir / "students" / "speedup1.5" / "verify.json")["sessions"]) == 8
    from lana.pipeline.status import run_status

    export_row = next(s for s in run_status(run_dir)["stages"] if s["stage"] == "export")
    assert export_row["detail"].endswith("`lana verify`: 8 later session(s), median 1.11x")


def test_verify_needs_an_exported_student_timed_here(run_copy, monkeypatch) -> None:
    run_dir, _ = run_copy
    _scripted(monkeypatch, [])
    with pytest.raises(ArtifactError, match=r"export the student first \(`lana export .* "
                                            r"--speedup 3`\)"):
        Run(run_dir).verify(BudgetConfig(speedup=3), sessions=1, gap_s=0)
    path = run_dir / "students" / "speedup1.5" / "export.json"
    exp = read_json(path)
    exp["meets_budget"] = None  # what export records when the LUT is another device's
    write_json(path, exp)
    with pytest.raises(ConfigError, match="another machine"):
        Run(run_dir).verify(sessions=1, gap_s=0)
    assert main(["verify", str(run_dir), "--sessions", "-1"]) == 2


def test_zero_sessions_judges_what_is_stored(run_copy, monkeypatch) -> None:
    run_dir, cfg = run_copy
    # search settings changed since the export: verify times the exported student and
    # does not search again
    cfg["search"]["k"] = 3
    from lana.config import config_from_dict

    monkeypatch.setattr(Run, "search", lambda *a, **k: pytest.fail("searched again"))
    _export_timings(run_dir, "speedup1.5", [(1.0, 0.6), (1.0, 0.7), (1.0, 0.65)])
    calls = _scripted(monkeypatch, itertools.repeat((1.0, 0.6)))
    res = Run(run_dir, config_from_dict(cfg)).verify(sessions=0)
    assert calls == [] and res["sessions"] == []
    assert res["pooled"]["latency_ms"] == 0.65 and res["meets_budget"]


# ------------------------------------------------------------ the independent mode


def test_teacher_onnx_is_exported_beside_the_students_and_gives_its_outputs(run_copy) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    run_dir, _ = run_copy
    path = run_dir / "teacher" / "model.onnx"
    assert path.exists() and (run_dir / "teacher" / "model.onnx.sha256").exists()
    run = Run(run_dir)
    x = torch.randn(1, *run.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = run.teacher(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    # written once per run; a missing file is written again by the next export
    mtime = path.stat().st_mtime_ns
    assert run.teacher_onnx() == path and path.stat().st_mtime_ns == mtime
    path.unlink()
    Run(run_dir).export()
    assert path.exists()


def test_independent_verify_times_each_window_in_a_fresh_process(run_copy, monkeypatch,
                                                                 capsys) -> None:
    import os

    from lana.pipeline.status import run_status
    from lana.pipeline.verify import independent_summary
    from lana.report.html import write_report

    run_dir, _ = run_copy
    # None of lana's measuring code may time anything in this process either.
    monkeypatch.setattr(lana.latency.profile, "measure_models",
                        lambda *a, **k: pytest.fail("lana's measuring code ran"))
    code = main(["verify", str(run_dir), "--independent", "--windows", "2", "--gap", "0"])
    out = capsys.readouterr().out
    assert code in (0, 1)  # the verdict depends on this machine's timings
    assert "lana verify --independent" in out and "window(s)" in out
    sdir = run_dir / "students" / "speedup1.5"
    ind = read_json(sdir / "verify.json")["independent"]
    windows = ind["windows"]
    assert len(windows) == 2
    pids = {w["pid"] for w in windows}
    assert len(pids) == 2 and os.getpid() not in pids
    for w in windows:
        # the timing process imported nothing of lana but the timer itself (and the packages
        # around it, whose __init__ files import nothing)
        assert set(w["lana_modules"]) <= {"lana", "lana.latency", "lana.latency.ort_timer"}
        assert len(w["rounds"]) == 20 and w["runs_per_round"] >= 3
        assert w["speedup"] > 0 and w["teacher_ms"] > 0 and w["student_ms"] > 0
        assert w["holds"] == (w["speedup"] >= 1.5)
    entry = read_json(run_dir / "summary.json")["students"][0]["independent_verify"]
    assert entry["window_count"] == 2 and len(entry["holds"]) == 2
    assert entry["speedup_min"] <= entry["speedup_median"] <= entry["speedup_max"]
    assert entry == independent_summary(run_dir, sdir)
    # a rewritten summary keeps it, and lana's own verify keeps the windows
    assert Run(run_dir).write_summary()["students"][0]["independent_verify"] == entry
    Run(run_dir).verify(sessions=0)
    res = Run(run_dir).verify_independent(windows=1, gap_s=0)
    assert len(res["windows"]) == 3 and len({w["pid"] for w in res["windows"]}) == 3
    md = write_report(run_dir).with_name("report.md").read_text()
    assert "## Timed independently" in md and str(windows[0]["pid"]) in md
    export_row = next(s for s in run_status(run_dir)["stages"] if s["stage"] == "export")
    assert "independently timed: 3 window(s)" in export_row["detail"]
    # windows of other ONNX files (a student exported again) no longer count
    stored = read_json(sdir / "verify.json")
    stored["independent"]["key"]["student_onnx_sha256"] = "0" * 64
    write_json(sdir / "verify.json", stored)
    assert independent_summary(run_dir, sdir) is None


def test_independent_verify_refuses_other_backends_and_bad_input(run_copy) -> None:
    from lana.config import config_from_dict
    from lana.errors import LanaError

    run_dir, cfg = run_copy
    assert main(["verify", str(run_dir), "--windows", "2"]) == 2  # needs --independent
    assert main(["verify", str(run_dir), "--independent", "--windows", "-1"]) == 2
    cfg["latency"]["batch_size"] = 2  # the ONNX files are exported for batch 1
    with pytest.raises(LanaError, match="takes batches of 1"):
        Run(run_dir, config_from_dict(cfg)).verify_independent(windows=1, gap_s=0)
    cfg["latency"]["batch_size"] = 1
    cfg["latency"]["backend"] = "torch"
    with pytest.raises(ConfigError, match=r"supports only the latency backend\(s\) "
                                          r"onnxruntime; this run measured with 'torch'"):
        Run(run_dir, config_from_dict(cfg)).verify_independent(windows=1, gap_s=0)
    assert main(["verify", str(run_dir), "--independent", "--windows", "1"]) == 2


def test_budget_verdict_on_given_numbers() -> None:
    from lana.pipeline.verify import budget_holds, summarize

    assert budget_holds({"speedup": 2.0}, 0.5, 2.0, 9.9)  # exactly the budget holds
    assert not budget_holds({"speedup": 2.0}, 0.5, 1.99, 0.1)
    assert budget_holds({"latency_ms": 1.5}, 1.5, 0.1, 1.5)
    assert not budget_holds({"latency_ms": 1.5}, 1.5, 9.0, 1.51)
    windows = [{"teacher_ms": 1.0, "student_ms": 1 / s, "speedup": s}
               for s in (2.13, 1.9, 2.33)]
    s = summarize(windows, {"speedup": 2.0}, 0.5)
    assert (s["speedup_median"], s["speedup_min"], s["speedup_max"]) == (2.13, 1.9, 2.33)
    assert s["holds"] == [True, False, True] and s["windows_held"] == 2 and s["meets_budget"]
    s = summarize(windows[1:2], {"speedup": 2.0}, 0.5)
    assert s["holds"] == [False] and not s["meets_budget"]
    # a millisecond budget is judged on the student's ms, whatever the speed-up
    s = summarize(windows, {"latency_ms": 0.45}, 0.45)  # student 0.469, 0.526, 0.429 ms
    assert s["holds"] == [False, False, True] and not s["meets_budget"]
    assert s["student_ms_median"] == pytest.approx(1 / 2.13)
    with pytest.raises(ConfigError, match="no independent timing windows"):
        summarize([], {"speedup": 2.0}, 0.5)
