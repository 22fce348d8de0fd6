"""README.md and docs/: the configuration reference is generated, the guide's code examples
run, every link and anchor resolves, and every code block of the README is exercised
(YAML validated, commands parsed by the CLI's parser, Python executed, the table printed)."""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from lana.cli.commands import main
from lana.cli.config_doc import config_reference
from lana.config import Config

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_config_reference_is_current(capsys) -> None:
    expected = config_reference()
    assert (DOCS / "config.md").read_text() == expected, (
        "docs/config.md is out of date: run `lana config --reference > docs/config.md`")
    assert main(["config", "--reference"]) == 0
    assert capsys.readouterr().out == expected


def _fields(model, prefix=""):
    for name, f in model.model_fields.items():
        key = prefix + name
        yield key, f
        tp = f.annotation
        if isinstance(tp, type) and hasattr(tp, "model_fields"):
            yield from _fields(tp, key + ".")


def test_every_option_is_in_the_reference_with_its_default() -> None:
    ref = config_reference()
    for key, f in _fields(Config):
        assert f"`{key}`" in ref, key
        if not hasattr(f.annotation, "model_fields"):
            assert f.description, f"config option {key} has no Field(description=...)"
            row = next(line for line in ref.splitlines() if line.startswith(f"| `{key}` |"))
            default = f.get_default(call_default_factory=True)
            assert f"`{__import__('json').dumps(default)}`" in row, (key, row)


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_guide_examples_for_an_op_and_a_backend_work() -> None:
    from lana.latency.timing import BACKENDS, Settings, measure
    from lana.model.decompose import LayerInfo
    from lana.space.ops import OP_TYPES, build_op, check_shapes

    blocks = _python_blocks((DOCS / "guide.md").read_text())
    op_code = next(b for b in blocks if "register_op(" in b)
    backend_code = next(b for b in blocks if "BACKENDS[" in b)
    try:
        exec(compile(op_code, "guide.md:op", "exec"), {})
        exec(compile(backend_code, "guide.md:backend", "exec"), {})
        info = LayerInfo("blocks.1", (8, 8, 8), (16, 4, 4), "relu")
        for spec in ("gc_k3_g4", "gc_k5_g2"):
            op = build_op(spec, info, None)
            check_shapes(op, info)
            assert op(torch.randn(2, 8, 8, 8)).shape == (2, 16, 4, 4)
        m = measure(build_op("gc_k3_g4", info, None), (1, 8, 8, 8),
                    Settings(backend="torch-channels-last", batch_size=1, threads=1),
                    warmup=1, min_repeats=3, max_seconds=0.05)
        assert m.median_ms > 0
    finally:
        OP_TYPES.pop("gc", None)
        BACKENDS.pop("torch-channels-last", None)


@pytest.mark.parametrize("name", ["guide.md", "config.md"])
def test_docs_exist(name: str) -> None:
    assert (DOCS / name).stat().st_size > 500


# ------------------------------------------------------------------ README.md and docs/*.md

ROOT = DOCS.parent
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


def _fenced(path: Path) -> list[tuple[str, str, int]]:
    """Every fenced code block of a Markdown file: ``(language, body, first line)``."""
    text = path.read_text()
    return [(m.group(2), textwrap.dedent(m.group(3)), text.count("\n", 0, m.start()) + 1)
            for m in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```$", text, re.S | re.M)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


BENCH_PAGES = [ROOT / "benchmarks" / "RESULTS.md", ROOT / "benchmarks" / "HISTORY.md"]


@pytest.mark.parametrize("page", PAGES + BENCH_PAGES, ids=lambda p: p.name)
def test_links_and_anchors_exist(page: Path) -> None:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith("http"):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file) if file else page
        assert dest.exists(), f"{page.name}: link to {target}: no such file"
        if anchor:
            assert anchor in _anchors(dest), f"{page.name}: link to {target}: no such heading"


def test_readme_is_a_short_front_door() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "docs/report.png" in text and "benchmarks/RESULTS.md" in text
    for page in DOCS.glob("*.md"):
        assert f"docs/{page.name}" in text, f"README does not link docs/{page.name}"


def test_code_points_to_existing_doc_sections() -> None:
    """Messages and docstrings that cite 'docs/PAGE.md, "Heading"' name a real heading."""
    refs = 0
    for src in sorted((ROOT / "lana").rglob("*.py")):
        code = src.read_text().replace('\\"', '"')
        code = re.sub(r'"\s*\n\s*"', "", code)   # join implicitly concatenated strings
        assert "README, " not in code, f"{src.name} cites a README section that moved"
        for page, heading in re.findall(r'(docs/[\w-]+\.md)(?:, "([^"]+)")?', code):
            refs += 1
            assert (ROOT / page).exists(), (src.name, page)
            if heading:
                heading = " ".join(heading.split())
                assert _slug(heading) in _anchors(ROOT / page), (src.name, page, heading)
    assert refs


# --- YAML blocks: validated as configs


def _uncomment_options(block: str) -> str:
    """The block with its commented-out options (``# key: value`` at the start of a line,
    not the comments beside values) switched on."""
    return "\n".join(re.sub(r"^(\s*)#( +)([a-z_]+:.*)$",
                            lambda m: m.group(1) + m.group(2)[1:] + m.group(3), line)
                     for line in block.splitlines())


YAML_BLOCKS = [(p, body, line) for p in PAGES for lang, body, line in _fenced(p)
               if lang == "yaml"]


@pytest.mark.parametrize("page,body,line", YAML_BLOCKS,
                         ids=[f"{p.name}:{n}" for p, _, n in YAML_BLOCKS])
def test_yaml_blocks_are_valid_configs(page: Path, body: str, line: int) -> None:
    from lana.config import config_from_dict

    cfg = config_from_dict(yaml.safe_load(body), f"{page.name}:{line}")
    switched_on = _uncomment_options(body)
    if switched_on != body:
        config_from_dict(yaml.safe_load(switched_on), f"{page.name}:{line} (options on)")
    if cfg.model.name.startswith("timm:"):
        import timm

        assert timm.is_model(cfg.model.name.removeprefix("timm:")), cfg.model.name


def test_readme_yaml_options_switch_on() -> None:
    """The README's commented options are real options, at the right indentation."""
    (body,) = [b for lang, b, _ in _fenced(README) if lang == "yaml"]
    data = yaml.safe_load(_uncomment_options(body))
    assert data["model"]["kwargs"] == {"width": 32}
    assert data["model"]["layers"] == ["blocks.0", "blocks.1"]
    assert data["teacher_training"]["init"] == "imagenet.safetensors"


# --- bash blocks: every command exists, every `lana ...` parses with the CLI's parser


def _commands(body: str) -> list[list[str]]:
    """The commands of a bash block as tokens (comments dropped, continuations joined,
    redirections and shell operators as tokens of their own)."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        tokens = list(lex)
        if tokens:
            out.append(tokens)
    return out


def _check_command(tokens: list[str], where: str) -> None:
    from lana.cli.commands import _parser

    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):   # VAR=value prefixes
        tokens = tokens[1:]
    assert "<" not in tokens and "<<" not in tokens, (
        f"{where}: an unquoted '<' is a shell redirection: quote the argument")
    if ">" in tokens:
        i = tokens.index(">")
        assert len(tokens) == i + 2, f"{where}: one file after '>'"
        tokens = tokens[:i]
    assert not set(tokens) & {"|", "&&", ";", "&", "||"}, where
    cmd, *args = tokens
    if cmd == "torchrun":
        assert "-m" in args and args[args.index("-m") + 1] == "lana.cli", where
        cmd, args = "lana", args[args.index("-m") + 2:]
    if cmd == "lana":
        # [--optional args] in the docs: parse them too
        args = [a.strip("[]") for a in args if a.strip("[]")]
        try:
            _parser().parse_args(args)
        except SystemExit as exc:
            raise AssertionError(f"{where}: `lana {' '.join(args)}` does not parse") from exc
    elif cmd == "bash":
        assert (ROOT / args[0]).is_file(), where
    elif cmd == "python" or cmd.endswith("/python"):
        if args[:2] == ["-m", "pytest"]:
            for a in args[2:]:
                assert a.startswith("-") or (ROOT / a).exists() or a.isdigit(), (where, a)
        else:
            assert (ROOT / args[0]).is_file(), where
    elif cmd == "pip":
        extras = re.fullmatch(r"-e|\.\[(\w+)\]", args[-1])
        assert args[0] == "install" and extras, where
        if extras.group(1):
            assert f"\n{extras.group(1)} = [" in (ROOT / "pyproject.toml").read_text(), where
    else:
        raise AssertionError(f"{where}: no check for `{cmd}` commands in tests/test_docs.py")


BASH_BLOCKS = [(p, body, line) for p in PAGES for lang, body, line in _fenced(p)
               if lang == "bash"]


@pytest.mark.parametrize("page,body,line", BASH_BLOCKS,
                         ids=[f"{p.name}:{n}" for p, _, n in BASH_BLOCKS])
def test_bash_blocks_parse(page: Path, body: str, line: int) -> None:
    for tokens in _commands(body):
        _check_command(tokens, f"{page.name}:{line}: {' '.join(tokens)}")


def test_readme_commands_are_the_promised_ones() -> None:
    cmds = [t for lang, body, _ in _fenced(README) if lang == "bash" for t in _commands(body)]
    assert ["bash", "scripts/demo.sh"] in cmds and ["bash", "scripts/test.sh"] in cmds
    used = {t[1] for t in cmds if t[0] == "lana"}
    assert {"run", "search", "finetune", "export", "verify", "status", "report"} <= used


# --- Python blocks of the README: executed


def _readme_python(key: str) -> str:
    (body,) = [b for lang, b, _ in _fenced(README) if lang == "python" and key in b]
    return body


def test_readme_accelerate_block_runs(tmp_path: Path, monkeypatch) -> None:
    """The block as written, on a small conv chain and synthetic data; lana's default
    configuration is swapped for the tests' tiny one (every stage runs, briefly)."""
    from torch import nn

    import lana.api
    from lana.config import config_from_dict
    from lana.model.data import synthetic_dataset

    tiny = {"seed": 0, "threads": 1, "device": "cpu",
            "space": {"ops": ["teacher", "identity", "cb_k{1,3}"]},
            "distill": {"batch_size": 16},
            "latency": {"max_seconds": 0.02, "warmup": 2, "drift_every": 0},
            "score": {"samples": 32}, "search": {"k": 2, "eval_samples": 32},
            "finetune": {"epochs": 1, "batch_size": 32}}
    monkeypatch.setattr(lana.api, "Config", lambda: config_from_dict(tiny))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    # 32 channels, not 16: at 16 the stem and head took a quarter of the teacher's ~0.04 ms
    # and on a busy machine the block's 2x budget came out below the fastest student
    # (InfeasibleBudgetError, seen beside a training run).
    c = 32
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU()),
        *[nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU())
          for _ in range(3)],
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 4))).eval()
    x, y = synthetic_dataset(192, 16, seed=0).tensors
    pairs = [(x[i], int(y[i])) for i in range(len(y))]
    ns = {"model": model, "train_ds": pairs[:128], "val_ds": pairs[128:]}
    exec(compile(_readme_python("lana.accelerate("), "README.md:accelerate", "exec"), ns)
    res = ns["res"]
    assert isinstance(res.student, nn.Module) and not res.student.training
    assert res.student(x[:2]).shape == (2, 4)
    (student,) = res.summary["students"]
    assert student["budget"] == {"speedup": 2.0} and student["latency_ms_measured"] > 0
    assert Path(res.report).is_file()
    assert (tmp_path / "runs" / "mine" / "distill").is_dir()


def test_readme_step_by_step_block_runs(pipeline_run, tmp_path: Path) -> None:
    """The block as written, in a fresh process: my.yaml is the tests' tiny config and
    runs/mine a copy of its finished run, so lana.run resumes (nothing trains)."""
    run_dir, cfg_dict = pipeline_run
    shutil.copytree(run_dir, tmp_path / "runs" / "mine")
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(cfg_dict))
    # In a fresh process, as a user runs it: nothing imported before the block.
    code = _readme_python("lana.decompose(") + (
        "\nprint(type(chain).__name__, len(chain.layers), type(student).__name__,"
        " summary['students'][0]['path'])\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "LANA_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, layers, student, path = proc.stdout.split()[-4:]
    assert name == "Chain" and int(layers) == 16 and student == "Chain"
    assert path.startswith("runs/mine/students/") and (tmp_path / path / "arch.json").is_file()


def test_readme_python_blocks_all_run() -> None:
    """Each Python block of the README has one of the runners above."""
    keys = ("lana.accelerate(", "lana.decompose(")
    for lang, body, line in _fenced(README):
        if lang == "python":
            assert sum(k in body for k in keys) == 1, (
                f"README.md:{line}: a Python block with no test that runs it")


# --- the terminal table in the README: what lana.report.terminal.print_summary prints

DEMO_SUMMARY = {  # the `lana demo` run of benchmarks/RESULTS.md ("lana demo", 2026-12-07)
    "teacher": {"name": "lana:tiny_effnet", "accuracy": 0.8309, "latency_ms": 0.4586},
    "latency": {"backend": "onnxruntime", "batch_size": 1, "threads": 1, "deploy_env": None},
    "students": [{
        "budget": {"speedup": 2.0}, "budget_ms": 0.2293, "accuracy": 0.8388,
        "latency_ms_measured": 0.2113, "latency_ms_predicted": 0.2220,
        "teacher_latency_ms_measured": 0.5005, "speedup": 2.37, "meets_budget": True,
        "speedup_interval": [2.32, 2.42],
        "path": "lana-demo/students/speedup2/model",
        "choices": ["teacher", "teacher", "ir_k3_e3", "teacher", "cb_k3", "identity",
                    "ir_k3_e3", "ir_k3_e3", "cb_k1", "ir_k5_e3", "cb_k1"]}]}


def test_readme_terminal_table_is_what_lana_prints() -> None:
    from rich.console import Console

    from lana.report.terminal import print_summary

    (body,) = [b for lang, b, _ in _fenced(README) if lang == "text"]
    buf = io.StringIO()
    print_summary(DEMO_SUMMARY, Console(file=buf, width=92, color_system=None))
    printed = [line.strip() for line in buf.getvalue().strip().splitlines()]
    assert [line.strip() for line in body.strip().splitlines()] == printed


def test_python_blocks_of_the_docs_compile() -> None:
    for page in PAGES:
        for lang, body, line in _fenced(page):
            if lang == "python":
                compile(body, f"{page.name}:{line}", "exec")


def test_readme_blocks_are_all_checked() -> None:
    """Every fenced block of the README is of a kind the tests above exercise."""
    for lang, _, line in _fenced(README):
        assert lang in {"bash", "yaml", "python", "text"}, f"README.md:{line}: ```{lang}"


# --- benchmarks/RESULTS.md: the Headline first, every benchmark's section where its script looks

RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"


def _results_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_results", ROOT / "benchmarks" / "_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _headings(text: str) -> list[str]:
    return re.findall(r"^## .+$", text, re.M)


def test_results_start_with_the_headline_and_hold_every_script_section() -> None:
    text = RESULTS_MD.read_text()
    assert _headings(text)[0] == "## Headline"
    fixed = set()  # the fixed headings the scripts find their sections by (f-strings aside)
    for src in (ROOT / "benchmarks").glob("*.py"):
        fixed.update(re.findall(r'"(## [^"{}]+)"', src.read_text()))
    assert len(fixed) >= 10
    for heading in fixed:
        at = text.find(heading)  # how _results.replace_section finds a section
        assert at > 0 and text[at - 1] == "\n", f"RESULTS.md: no section {heading!r}"


def test_rewriting_a_section_keeps_the_headline_first_and_the_history_link() -> None:
    replace = _results_module().replace_section
    text = ("# Benchmark results\n\n## Headline\n\n- a figure; see [A](#a)\n\n## A\n\nold\n\n"
            "History: earlier runs in [HISTORY.md](HISTORY.md#a).\n\n## B\n\nb\n")
    new = replace(text, "## A", "## A\n\nnew\n")
    assert new == text.replace("\nold\n", "\nnew\n")
    assert replace(new, "## B", "## B\n\nc\n").endswith("\n## B\n\nc\n")
    own = "## A\n\nnewer\n\nHistory: earlier runs in [HISTORY.md](HISTORY.md#a).\n"
    assert replace(new, "## A", own).count("History:") == 1
    appended = replace(new, "## C", "## C\n\nc\n")
    assert _headings(appended) == ["## Headline", "## A", "## B", "## C"]
    # every section of the real file rewritten by its script: the Headline stays first, the
    # section keeps its link to HISTORY.md
    real = RESULTS_MD.read_text()
    for heading in _headings(real)[1:]:
        old = real.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
        new = replace(real, heading, f"{heading}\n\nnew numbers\n")
        assert _headings(new) == _headings(real), heading
        section = new.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
        assert ("\nHistory: " in section) == ("\nHistory: " in old), heading
