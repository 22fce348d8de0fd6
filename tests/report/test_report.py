"""The HTML/Markdown run report: content, missing stages, and rendering in a real browser."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from scipy.stats import kendalltau

from lana.cli.commands import main
from lana.core.io import read_json
from lana.errors import ArtifactError
from lana.report.html import build_sections, write_report

PLOTS = {"accuracy_latency.png", "sweep.png", "layers_speedup1.5.png",
         "predicted_measured.png", "score_loss.png", "timings.png"}

# Injected before everything else in <head> (so before the page's CSP applies): collects
# console errors, failed loads and CSP violations, and after `load` writes every image's
# state into the DOM, which `chromium --dump-dom` then prints.
_PROBE = """<script>
window.__lanaErrors = [];
(function () {
  const err = console.error.bind(console);
  console.error = function (...a) { window.__lanaErrors.push('console: ' + a.join(' ')); err(...a); };
  window.addEventListener('error', function (e) {
    const t = e.target;
    window.__lanaErrors.push('error: ' + (e.message || (t && (t.dataset && t.dataset.plot
      || t.tagName))));
  }, true);
  document.addEventListener('securitypolicyviolation', function (e) {
    window.__lanaErrors.push('csp: ' + e.violatedDirective + ' ' + e.blockedURI);
  });
  window.addEventListener('load', function () {
    const imgs = Array.from(document.images).map(function (i) {
      return {plot: i.dataset.plot || i.src.slice(0, 40), complete: i.complete,
              width: i.naturalWidth, height: i.naturalHeight};
    });
    const out = document.createElement('pre');
    out.id = 'lana-probe';
    out.textContent = JSON.stringify({images: imgs, errors: window.__lanaErrors});
    document.body.appendChild(out);
  });
})();
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("chromium is not installed (Debian: apt-get install chromium; "
                "scripts/setup.sh installs it)")


def browser_check(page: Path, tmp: Path) -> dict:
    """Open ``page`` in headless chromium; return its images' states and any errors."""
    probe = tmp / "probe.html"
    text = page.read_text()
    probe.write_text(text.replace("<head>", "<head>" + _PROBE, 1))
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=10000",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="lana-probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"the page did not finish loading in chromium:\n{proc.stderr[-3000:]}"
    return json.loads(html.unescape(m.group(1)))


@pytest.fixture(scope="module")
def report(pipeline_run, tmp_path_factory):
    """The report of the shared tiny end-to-end run, written outside the run directory."""
    run_dir, _ = pipeline_run
    out = tmp_path_factory.mktemp("report")
    return run_dir, write_report(run_dir, out)


def test_report_renders_every_plot_in_a_browser(report, tmp_path: Path) -> None:
    _, page = report
    res = browser_check(page, tmp_path)
    assert res["errors"] == []
    plots = {img["plot"] for img in res["images"]}
    assert plots == PLOTS
    for img in res["images"]:
        assert img["complete"] and img["width"] > 100 and img["height"] > 100, img


def test_browser_check_catches_a_broken_plot(report, tmp_path: Path) -> None:
    # The harness itself must be able to fail: a corrupt image is reported.
    _, page = report
    bad = tmp_path / "bad.html"
    bad.write_text(page.read_text().replace(
        "<body>", '<body><img src="data:image/png;base64,AAAA" data-plot="broken.png">', 1))
    res = browser_check(bad, tmp_path)
    broken = [i for i in res["images"] if i["plot"] == "broken.png"]
    assert broken and broken[0]["width"] == 0
    assert any("broken.png" in e for e in res["errors"])


def test_report_is_self_contained_with_a_markdown_twin(report) -> None:
    run_dir, page = report
    text = page.read_text()
    # No external references at all: every src is inline data, every href an anchor.
    assert not re.findall(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", text)
    assert "Content-Security-Policy" in text
    md = (page.parent / "report.md").read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert set(refs) == PLOTS
    embedded = dict(re.findall(r'src="data:image/png;base64,([^"]+)"[^>]*data-plot="([^"]+)"',
                               text))
    by_name = {name: data for data, name in embedded.items()}
    for ref in refs:
        png = (page.parent / ref).read_bytes()
        assert png.startswith(b"\x89PNG")
        assert base64.b64decode(by_name[ref]) == png
    # Every section drew from the files; none fell back to an error note.
    assert "could not be drawn" not in text and "could not be drawn" not in md


def test_report_numbers_match_the_run(report) -> None:
    run_dir, page = report
    summary = read_json(run_dir / "summary.json")
    md = (page.parent / "report.md").read_text()
    (student,) = summary["students"]
    assert f"{100 * student['accuracy']:.2f}%" in md
    assert f"{student['speedup']:.2f}x" in md
    search = read_json(run_dir / "students" / "speedup1.5" / "search.json")
    rows = [r for a in search["attempts"] for r in a["students"]]
    tau = kendalltau([r["score"] for r in rows], [r["val_loss"] for r in rows]).statistic
    assert f"| speedup1.5 | {len(rows)} | {tau:.3f} |" in md
    for spec in student["choices"]:
        assert f"| {spec} |" in md


def _drop(run_dir: Path, *names: str) -> None:
    for name in names:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def test_missing_stages_give_notes_not_errors(run_copy, tmp_path: Path) -> None:
    run_dir, _ = run_copy
    # Search results without export/fine-tuning: the table still shows the student.
    _drop(run_dir, "students/speedup1.5/export.json", "students/speedup1.5/finetune.json",
          "summary.json")
    md = write_report(run_dir).with_name("report.md").read_text()
    assert "not exported yet" in md and "student speedup1.5" in md
    assert "could not be drawn" not in md
    # Up to profiling only: sections that need a search say which command to run.
    _drop(run_dir, "students", "library.json", "scores.json", "timings.json")
    page = write_report(run_dir)
    md = page.with_name("report.md").read_text()
    assert f"lana search {run_dir}" in md and "could not be drawn" not in md
    assert not list(page.parent.glob("*.png")), "stale plots of the earlier report remain"
    # Only the teacher: still a report.
    _drop(run_dir, "latency.json", "candidates.json")
    assert "lana profile" in write_report(run_dir).with_name("report.md").read_text()
    # A bare run directory (config only).
    _drop(run_dir, "teacher.json")
    assert "lana prepare" in write_report(run_dir).with_name("report.md").read_text()


def test_a_student_well_under_its_budget_gets_a_reason(run_copy) -> None:
    """A kept student far under its budget reads like a search that gave accuracy away: the
    report says why (here: a costlier student met the budget with a higher held-out loss)."""
    from lana.core.io import write_json

    run_dir, _ = run_copy
    path = run_dir / "students" / "speedup1.5" / "search.json"
    search = read_json(path)
    last = search["attempts"][-1]
    search["chosen"].update(latency_ms_measured=0.5 * last["allowed_ms"], meets_budget=True)
    costly = {**search["chosen"], "choices": ["teacher"] * len(search["chosen"]["choices"]),
              "latency_ms_measured": 0.9 * last["allowed_ms"],
              "val_loss": search["chosen"]["val_loss"] + 1.0}
    search["attempts"].append({**last, "students": [costly]})
    write_json(path, search)
    md = write_report(run_dir).with_name("report.md").read_text()
    assert "Student speedup1.5: kept: student " in md
    note = md[md.index("Student speedup1.5: kept: "):].split("\n")[0]
    assert "% of the" in note and "costlier student(s) met the budget" in note, note
    # Without the injected student: this run's search reached the best-scoring architecture
    # of its space (candidates score better than some of the tiny teacher's layers).
    search["attempts"].pop()
    write_json(path, search)
    md = write_report(run_dir).with_name("report.md").read_text()
    note = md[md.index("Student speedup1.5: kept: "):].split("\n")[0]
    assert "so no looser budget gives a better-scoring one" in note, note


def test_corrupt_file_is_named_in_the_report(run_copy) -> None:
    run_dir, _ = run_copy
    (run_dir / "students" / "speedup1.5" / "search.json").write_text("{not json")
    (run_dir / "latency.json").write_text(json.dumps({"layers": "nonsense"}))
    sections = build_sections(run_dir, sweep_points=3)
    notes = " ".join(n for s in sections for n in s.notes)
    # The checksum lana keeps next to every artifact catches the damage and names the file.
    assert "corrupt file:" in notes and "search.json" in notes
    assert "could not be drawn" in notes  # latency.json of the wrong shape


def test_cli_report_and_bad_directory(run_copy, tmp_path: Path, capsys) -> None:
    run_dir, _ = run_copy
    assert main(["report", str(run_dir), "--points", "5"]) == 0
    out = capsys.readouterr().out
    assert str(run_dir / "report" / "report.html") in out
    assert (run_dir / "report" / "report.md").exists()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "not a lana run directory" in capsys.readouterr().err
    with pytest.raises(ArtifactError):
        write_report(tmp_path)


def test_cli_export_prints_the_table_and_writes_the_report(run_copy, capsys) -> None:
    run_dir, _ = run_copy
    assert main(["export", str(run_dir)]) == 0  # every stage cached: only the report is new
    out = capsys.readouterr().out
    assert "vs students" in " ".join(out.split())  # rich wraps lines to the width
    assert f"report: {run_dir / 'report' / 'report.html'}" in out
    assert (run_dir / "report" / "report.html").exists()
    (run_dir / "report" / "report.html").unlink()
    cfg = run_dir.parent / "cfg.yaml"
    shutil.copy(run_dir / "config.yaml", cfg)
    assert main(["run", str(cfg), "--out", str(run_dir)]) == 0  # resumes: nothing to do
    assert f"report: {run_dir / 'report' / 'report.html'}" in capsys.readouterr().out
    assert (run_dir / "report" / "report.html").exists()


def test_summary_table_tells_the_deployment_environment() -> None:
    from rich.console import Console

    from lana.report.terminal import print_summary

    summary = {"teacher": {"name": "t", "accuracy": 0.9, "latency_ms": 2.0},
               "latency": {"backend": "torch", "batch_size": 1, "threads": 1,
                           "deploy_env": "MALLOC_MMAP_MAX_=0"},
               "students": []}
    console = Console(record=True, width=200)
    print_summary(summary, console)
    assert "deploy with the same environment" in console.export_text()
    summary["latency"]["deploy_env"] = None
    console = Console(record=True, width=200)
    print_summary(summary, console)
    assert "deploy" not in console.export_text()


def test_summary_table_shows_the_budget_the_check_used() -> None:
    """A 2x budget is checked against the teacher timed with the student (0.96 ms), not the
    one timed at profiling (0.78 ms, which set the search's 0.39 ms target): the table
    shows 0.48 ms next to the measured 0.43 ms and "yes", not 0.39 ms."""
    from rich.console import Console

    from lana.report.terminal import print_summary
    from lana.search.verdict import budget_allowed_ms

    student = {"budget": {"speedup": 2.0}, "budget_ms": 0.388, "latency_ms_predicted": 0.375,
               "latency_ms_measured": 0.434, "teacher_latency_ms_measured": 0.96,
               "speedup": 0.96 / 0.434, "meets_budget": True, "accuracy": 0.84,
               "choices": ["teacher", "ir_k3_e1"], "path": "run/students/speedup2/model"}
    summary = {"teacher": {"name": "t", "accuracy": 0.84, "latency_ms": 0.78},
               "latency": {"backend": "onnxruntime", "batch_size": 1, "threads": 1},
               "students": [student]}
    console = Console(record=True, width=200)
    print_summary(summary, console)
    row = next(line for line in console.export_text().splitlines() if "student 2x" in line)
    assert "0.48 " in row and "0.388" not in row and "yes" in row
    assert budget_allowed_ms(None, 0.5, 0.96) == 0.5
    assert budget_allowed_ms(2.0, 0.388, None) == 0.388
