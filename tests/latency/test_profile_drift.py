"""Drift detection inside phase 2b (lana.latency.profile.profile_candidates), on a fake machine.

The pipeline tests run with ``latency.drift_every: 0`` (on a busy machine the reference op
drifts at random and doubles their profile stage), so the drift path of the profile stage
is tested here, deterministically: the DriftMonitor itself is tested in
tests/latency/test_latency_trust.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import lana.latency.timing as L
from lana.config import LatencyConfig
from lana.latency.backends import BACKENDS
from lana.latency.lut import LatencyTable
from lana.latency.profile import profile_candidates, settings_from
from tests.latency.test_latency_trust import Machine


@pytest.mark.parametrize("drift_every", [2, 0])
def test_profile_stage_remeasures_a_slow_window(seq_chain, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path, drift_every: int) -> None:
    # Prepares: 0-2 reference at start (1 ms, the baseline); 3-4 stem and head while the
    # machine is twice as slow; 5-7 the reference check sees 2x; 8-9 stem and head
    # re-measured at normal speed; from 10 on (reference, the layers) normal speed.
    machine = Machine([1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0])
    monkeypatch.setattr(L, "_clock", machine)
    monkeypatch.setitem(BACKENDS, "fake", machine.backend())
    # Raw timings: normalisation (the default) cancels drift by itself and skips the check.
    cfg = LatencyConfig(backend="fake", warmup=1, max_seconds=10.0, drift_every=drift_every,
                        normalize=False)
    candidates = [["teacher"], ["teacher", "identity"], ["teacher"], ["teacher"]]
    lut = LatencyTable(tmp_path / "lut.json")
    got = profile_candidates(seq_chain, candidates, None, cfg, lut, (1, 16, 16))
    drift = got["drift"]
    if drift_every == 0:  # off: no reference timed, the slow window stays in the LUT
        assert drift["enabled"] is False and drift["checks"] == []
        assert machine.prepared == 6
        # prepares 0-5: stem, head, then the layers; 3-5 (layers 1-3) in the slow window
        assert got["layers"] == [[pytest.approx(1.0)], [pytest.approx(2.0), 0.0],
                                 [pytest.approx(2.0)], [pytest.approx(2.0)]]
        return
    assert drift["enabled"] and drift["remeasured"] == 2 and drift["flagged"] == []
    assert [c["reason"] for c in drift["checks"]] == ["start", "periodic", "after re-measure",
                                                     "periodic", "periodic"]
    assert [round(c["ratio"], 2) for c in drift["checks"]] == [1.0, 2.0, 1.0, 1.0, 1.0]
    # the returned numbers are the re-measured ones, not those read before the check
    assert got["stem_ms"] == pytest.approx(1.0) and got["head_ms"] == pytest.approx(1.0)
    assert got["layers"] == [[pytest.approx(1.0)], [pytest.approx(1.0), 0.0],
                             [pytest.approx(1.0)], [pytest.approx(1.0)]]
    assert not any(e.get("flagged") for e in lut.entries().values())
    saved = LatencyTable(tmp_path / "lut.json")  # what the file holds, too
    assert saved.reference(settings_from(cfg, saved))["baseline_ms"] == pytest.approx(1.0)
    assert sorted(e["median_ms"] for e in saved.entries().values()) == [pytest.approx(1.0)] * 6

