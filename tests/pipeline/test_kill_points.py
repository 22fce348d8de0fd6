"""The test kill hook (lana.core.dist.maybe_kill): its table of points, and that a point it does
not know is an error rather than a run that is silently never killed. No torch needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lana.cli.commands import main
from lana.core import dist
from lana.errors import ConfigError

ROOT = Path(__file__).parents[2]

# The points the crash-safety tests (test_scale.py) use, and a few more of the table's.
USED = ["teacher:3", "profile:layer0", "distill:3", "score:computed", "search:computed",
        "finetune:3", "export:saved", "distill:saved-one", "profile:layer12",
        "costs:computed", "export:computed", "finetune:computed"]
UNKNOWN = ["distil:3", "distill:x", "distill:-1", "profile:layer", "profile:3",
           "score:3", "export", "export:", ":3", "teacher:3:4"]


@pytest.mark.parametrize("point", USED)
def test_known_points_pass(point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dist.KILL_AT_ENV, point)
    dist.check_kill_env()


@pytest.mark.parametrize("point", UNKNOWN)
def test_unknown_points_are_an_error(point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dist.KILL_AT_ENV, point)
    with pytest.raises(ConfigError, match="is not a kill point.*distill:saved-one"):
        dist.check_kill_env()
    # ... also where maybe_kill is reached without the command line's check first
    with pytest.raises(ConfigError, match="is not a kill point"):
        dist.maybe_kill("distill", 1)


def test_kill_rank_must_be_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dist.KILL_AT_ENV, "distill:3")
    monkeypatch.setenv(dist.KILL_RANK_ENV, "one")
    with pytest.raises(ConfigError, match="LANA_TEST_KILL_RANK='one' is not a rank"):
        dist.check_kill_env()


def test_the_command_line_rejects_an_unknown_point(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv(dist.KILL_AT_ENV, "distil:3")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "lana: error: LANA_TEST_KILL_AT='distil:3' is not a kill point" in err, err


def test_unset_the_hook_checks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Normal use: one environment lookup, not even the call's own point is looked at.
    monkeypatch.delenv(dist.KILL_AT_ENV, raising=False)
    dist.maybe_kill("no-such-stage", "x")
    monkeypatch.setenv(dist.KILL_AT_ENV, "")
    dist.maybe_kill("no-such-stage", "x")


def test_a_call_naming_no_point_is_an_error_while_set(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    monkeypatch.setenv(dist.KILL_AT_ENV, "distill:3")
    dist.maybe_kill("distill", 2)  # known, not the target: goes on
    with pytest.raises(ValueError, match="names no point of lana.core.dist.KILL_POINTS"):
        dist.maybe_kill("distill", "saved-all")


@pytest.mark.parametrize(("target", "killed"), [("distill:3", True), ("distill:4", False)])
def test_the_named_point_kills(target: str, killed: bool) -> None:
    proc = subprocess.run([sys.executable, "-c", "from lana.core.dist import maybe_kill; "
                           "maybe_kill('distill', 3)"],
                          env={**os.environ, dist.KILL_AT_ENV: target, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)
    assert proc.returncode == (-signal.SIGKILL if killed else 0), proc.stderr
