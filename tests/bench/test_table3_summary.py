"""benchmarks/table3_summary.py: every family's rendered table3 run in one section."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import table3  # noqa: E402
import table3_summary  # noqa: E402

from tests.bench.test_table3 import fake_run  # noqa: E402


def test_summary_reads_what_the_family_reports_wrote(tmp_path, monkeypatch):
    monkeypatch.setattr(table3, "write_section", lambda h, b: None)
    monkeypatch.setattr(table3, "HERE", tmp_path)
    for fam in ("effnet", "resnest"):  # effnetv2 has not run
        work = tmp_path / "work" / f"table3-{fam}-medium"
        work.mkdir(parents=True)
        bench, res = fake_run(work, "medium", family=fam)
        if fam == "resnest":  # a family whose LANA student lost to random search at 3x
            res["random"][3.0][0]["accuracy"] = 0.9
        table3.report(bench, res, f"python benchmarks/table3.py --family {fam}", 1.0)
    summaries = table3_summary.load("medium", tmp_path / "table3_results")
    assert (tmp_path / "table3_results" / "effnet-medium.json").exists()
    assert summaries["effnetv2"] is None and summaries["effnet"]["family"] == "effnet"
    heading, body = table3_summary.render(summaries, "medium")
    assert heading == "## Table 3 summary: all families (medium scale, issue 6)"
    assert "Not run yet at this scale: effnetv2." in body
    # teacher 85 %, member 80 % at 1/0.62 = 1.61x, LANA 82.4 % at the member's latency
    assert ("| effnet (efficientnet_b2 → efficientnet_b0) | 85.00 | 80.00 (1.61×) | "
            "82.40 (1.60×) | 82.00 (2.00×) | 81.00 (3.00×) | - | 86.00 (1.60×) |") in body
    assert "| effnet | 3x | 81.00 | 70.00 (3.00×) | 75.00 (3.00×) | +6.00 |" in body
    assert "| resnest | 3x | 81.00 | 90.00 (3.00×) | 75.00 (3.00×) | -9.00 |" in body
    assert "| target | effnet | resnest |" in body
    # a baseline off the student's final speed-up by more than 5 % is marked, either way
    cell = table3_summary._base_cell
    lana = {"speedup_b1": 2.0}
    assert cell({"accuracy": 80.0, "speedup_b1": 2.09}, lana) == "80.00 (2.09×)"
    assert cell({"accuracy": 80.0, "speedup_b1": 2.2}, lana) == "80.00 (2.20×) ↑"
    assert cell({"accuracy": 80.0, "speedup_b1": 1.8}, lana) == "80.00 (1.80×) ↓"
    assert cell(None, lana) == "-"
    assert "| LANA beats both baselines everywhere | **met** | **NOT met** |" in body
    assert "| 5x faster for <= 1.5 points | **not measurable** (budget infeasible" in body
    assert "effnet τ = 0.600 (30 architectures)" in body
    assert "`python benchmarks/table3.py --family resnest`" in body


def test_summary_goes_before_the_family_sections(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other\n\nx\n\n"
                       "## Table 3 on Fashion-MNIST: effnet (medium scale, issue 6)\n\ny\n")
    monkeypatch.setattr(table3_summary, "RESULTS", results)
    table3_summary.write("## Table 3 summary: all families (medium scale, issue 6)",
                         "## Table 3 summary: all families (medium scale, issue 6)\n\nz\n",
                         "medium")
    text = results.read_text()
    assert text.index("## Other") < text.index("## Table 3 summary") < text.index(
        "## Table 3 on Fashion-MNIST: effnet")
    table3_summary.write("## Table 3 summary: all families (medium scale, issue 6)",
                         "## Table 3 summary: all families (medium scale, issue 6)\n\nw\n",
                         "medium")
    text = results.read_text()
    assert text.count("## Table 3 summary") == 1 and "\nw\n" in text and "\nz\n" not in text


def test_no_rendered_run_is_a_clear_error(tmp_path, capsys):
    assert table3_summary.main(["--scale", "full", "--results", str(tmp_path)]) == 2
    assert "no family has a rendered full run yet" in capsys.readouterr().err


@pytest.mark.parametrize("scale", sorted(table3.SCALES))
def test_every_scale_has_a_setup_line(scale, tmp_path, monkeypatch):
    monkeypatch.setattr(table3, "write_section", lambda h, b: None)
    monkeypatch.setattr(table3, "HERE", tmp_path)
    work = tmp_path / "work" / f"table3-effnet-{scale}"
    work.mkdir(parents=True)
    bench, res = fake_run(work, scale)
    table3.report(bench, res, "cmd", 1.0)
    _, body = table3_summary.render(table3_summary.load(scale), scale)
    assert "Set-up at this scale: " in body and "epochs from scratch" in body


def test_setup_line_names_the_seeds_each_run_used():
    """A run made with --seeds N says so; runs without the field have the scale's default."""
    rows = [{"kind": "teacher", "budget": "-", "speedup": None, "accuracy": 90.0,
             "ms_b1": 1.0, "speedup_b1": 1.0}]
    run = {"teacher": "t", "member": "m", "member_speedup": 1.5, "tau": None,
           "kendall_n": 0, "rows": rows, "targets": [], "command": "c", "date": "d",
           "machine": "x"}
    _, body = table3_summary.render({"effnet": run, "resnest": {**run, "seeds": 1}},
                                    "medium")
    assert "epoch(s), 1 seed(s)." in body
    _, body = table3_summary.render({"effnet": run, "resnest": {**run, "seeds": 2}},
                                    "medium")
    assert "epoch(s), seeds: effnet 1, resnest 2." in body


def test_a_new_summary_goes_below_the_headline_of_the_real_results(tmp_path, monkeypatch):
    real = (Path(__file__).resolve().parents[2] / "benchmarks" / "RESULTS.md").read_text()
    heading = "## Table 3 summary: all families (full scale, issue 6)"
    start = real.index(heading)
    without = real[:start] + real[real.index("\n## ", start) + 1:]
    results = tmp_path / "RESULTS.md"
    results.write_text(without)
    monkeypatch.setattr(table3_summary, "RESULTS", results)
    table3_summary.write(heading, f"{heading}\n\nz\n", "full")
    text = results.read_text()
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads[0] == "## Headline"
    assert heads[heads.index(heading) + 1] == "## Table 3 on Fashion-MNIST: effnet (full scale, issue 6)"
