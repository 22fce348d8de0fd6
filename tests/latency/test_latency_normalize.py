"""Normalised latency (``latency.normalize``): a reference op timed alongside every
measurement cancels a machine that slows down and speeds up, on a fake clock."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

import lana.latency.timing as L
from lana.config import LatencyConfig
from lana.latency.backends import BACKENDS
from lana.latency.lut import LatencyTable
from lana.latency.profile import measure_models, profile_candidates, settings_from
from tests.conftest import fake_backend

REF_MS = 1.0


class Phased:
    """A fake machine whose speed changes with time: every run costs its base ms times
    ``factor(now)``. The reference op costs REF_MS at full speed; any other module costs
    its ``fake_ms`` attribute (default 3 ms). With ``cold``, an op's first run after the
    reference costs ``1 + cold`` times more (the reference evicted it from the cache)."""

    def __init__(self, slow_until_ms: float = 0.0, slow: float = 2.0,
                 cold: float = 0.0) -> None:
        self.now = 0
        self.slow_until = int(slow_until_ms * 1e6)
        self.slow = slow
        self.cold = cold
        self.last = ""
        self.runs: dict[str, int] = {}

    def __call__(self) -> int:
        return self.now

    def factor(self) -> float:
        return self.slow if self.now < self.slow_until else 1.0

    def backend(self):
        def prepare(module: nn.Module, example: torch.Tensor):
            is_ref = (isinstance(module, nn.Sequential) and isinstance(module[0], nn.Conv2d)
                      and module[0].in_channels == 32)
            base = REF_MS if is_ref else getattr(module, "fake_ms", 3.0)
            name = "ref" if is_ref else "op"

            def run() -> None:
                self.runs[name] = self.runs.get(name, 0) + 1
                cold = 1.0 + self.cold if name == "op" and self.last == "ref" else 1.0
                self.last = name
                self.now += int(base * cold * self.factor() * 1e6)

            return run

        return fake_backend(prepare)


@pytest.fixture
def phased(monkeypatch: pytest.MonkeyPatch):
    def make(**kw) -> Phased:
        m = Phased(**kw)
        monkeypatch.setattr(L, "_clock", m)
        monkeypatch.setitem(BACKENDS, "fake", m.backend())
        return m

    return make


def _op(ms: float) -> nn.Module:
    m = nn.ReLU()
    m.fake_ms = ms
    return m


def test_a_slow_phase_cancels(phased) -> None:
    phased(slow_until_ms=1e6)  # slow (2x) throughout
    s = L.Settings(backend="fake", normalize=True)
    raw = L.Settings(backend="fake")
    kw = {"warmup": 2, "max_seconds": 0.2}
    slow_raw = L.measure(_op(3.0), (1, 4, 8, 8), raw, **kw)
    slow_norm = L.measure(_op(3.0), (1, 4, 8, 8), s, baseline_ms=REF_MS, **kw)
    assert slow_raw.median_ms == pytest.approx(6.0)
    assert slow_norm.median_ms == pytest.approx(3.0)  # the units of the baseline
    assert slow_norm.raw_median_ms == pytest.approx(6.0)
    assert slow_norm.ref_ms == pytest.approx(2.0)
    phased()  # full speed
    fast = L.measure(_op(3.0), (1, 4, 8, 8), s, baseline_ms=REF_MS, **kw)
    assert fast.median_ms == pytest.approx(3.0) and fast.ref_ms == pytest.approx(1.0)
    # Without a baseline the call times the reference first: its own units, same ratio.
    phased(slow_until_ms=1e6)
    own = L.measure(_op(3.0), (1, 4, 8, 8), s, **kw)
    assert own.median_ms == pytest.approx(6.0) and own.ref_ms == pytest.approx(2.0)


def test_the_reference_costs_at_most_about_half(phased) -> None:
    """A tiny op is not swamped: the reference runs once per its own time of op runs."""
    m = phased()
    got = L.measure(_op(0.01), (1, 4, 8, 8), L.Settings(backend="fake", normalize=True),
                    baseline_ms=REF_MS, warmup=0, min_repeats=1000, max_repeats=1000)
    assert got.median_ms == pytest.approx(0.01)
    assert 8 <= m.runs["ref"] <= 12  # 1000 runs x 0.01 ms / 1 ms, +- the first
    m = phased()
    L.measure(_op(5.0), (1, 4, 8, 8), L.Settings(backend="fake", normalize=True),
              baseline_ms=REF_MS, warmup=0, min_repeats=20, max_repeats=20)
    assert m.runs["ref"] == 20  # a big op: once after every run


def test_lut_and_network_share_the_baseline(phased, seq_chain, tmp_path: Path) -> None:
    """Profile at full speed, then time the network while the machine is 2x slower: with
    normalisation the network's time still equals the LUT sum; raw, it would double."""
    phased()
    cfg = LatencyConfig(backend="fake", warmup=1, max_seconds=0.05, normalize=True)
    # the pipeline's default; the low-level Settings default to a raw stopwatch
    assert settings_from(cfg).normalize and LatencyConfig().normalize
    assert not L.Settings().normalize
    lut = LatencyTable(tmp_path / "lut.json")
    got = profile_candidates(seq_chain, [["teacher"]] * len(seq_chain.layers), None, cfg,
                             lut, (1, 16, 16))
    assert got["drift"]["enabled"] is False  # moot with normalisation
    saved = LatencyTable(tmp_path / "lut.json")
    record = saved.reference(settings_from(cfg))
    assert record["baseline_ms"] == pytest.approx(REF_MS)
    entries = list(saved.entries().values())
    assert entries and all(e["settings"]["normalize"] and e["ref_ms"] == pytest.approx(1.0)
                           for e in entries)
    lut_sum = got["stem_ms"] + got["head_ms"] + sum(r[0] for r in got["layers"])
    net = nn.Sequential(seq_chain.stem, *seq_chain.layers, seq_chain.head)
    net.fake_ms = lut_sum  # the fake network costs exactly the sum of its parts
    phased(slow_until_ms=1e6)
    ms = measure_models({"net": net}, (1, 16, 16), cfg, rounds=2, lut=saved)["net"]
    assert ms == pytest.approx(lut_sum)
    raw = measure_models({"net": net}, (1, 16, 16), cfg.model_copy(update={"normalize": False}),
                         rounds=2)["net"]
    assert raw == pytest.approx(2 * lut_sum)


def test_settings_key_and_old_luts() -> None:
    a = L.Settings(backend="onnxruntime")
    b = L.Settings(backend="onnxruntime", normalize=True)
    assert a.key() != b.key() and b.key().endswith("|norm")
    old = a.to_dict()
    del old["normalize"]  # a LUT written before the field existed
    assert L.Settings.from_dict(old) == a
    m = L.Measurement.from_samples([1.0, 2.0, 3.0]).scaled(0.5)
    assert m.median_ms == 1.0 and m.raw_median_ms == 2.0
    assert L.Measurement.from_dict(m.to_dict()) == m


@pytest.mark.parametrize("op_ms", [0.2, 0.5, 1.0, 2.0])
def test_no_timed_run_starts_cold_after_the_reference(phased, op_ms: float) -> None:
    """The reference evicts a small runner from the cache (here: +30 % on its next run).
    Before the fix a 0.5-1 ms runner was timed right after nearly every reference run
    and came out up to 30 % slow; now it runs once untimed after each reference run."""
    m = phased(cold=0.3)
    res = L.measure(_op(op_ms), (1, 4, 8, 8), L.Settings(backend="fake", normalize=True),
                    baseline_ms=REF_MS, warmup=3, max_seconds=0.2)
    assert res.median_ms == pytest.approx(op_ms)
    assert res.raw_median_ms == pytest.approx(op_ms)
    assert m.runs["ref"] >= 5


def test_a_runner_much_slower_than_the_reference_gets_no_extra_runs(phased) -> None:
    m = phased(cold=0.01)
    res = L.measure(_op(8.0), (1, 4, 8, 8), L.Settings(backend="fake", normalize=True),
                    baseline_ms=REF_MS, warmup=2, min_repeats=20, max_seconds=10)
    # every timed run follows a reference run: the 1 % is in every sample alike
    assert res.median_ms == pytest.approx(8.08)
    assert m.runs["op"] == 2 + res.count


class NoisyReference:
    """A fake machine on which the networks always cost their ``fake_ms`` but every run of
    the reference op costs REF_MS times a seeded random factor in [0.7, 1.5]."""

    def __init__(self) -> None:
        self.now = 0
        self.rng = random.Random(0)
        self.runs: dict[str, int] = {}

    def __call__(self) -> int:
        return self.now

    def backend(self):
        def prepare(module: nn.Module, example: torch.Tensor):
            is_ref = isinstance(module, nn.Sequential)
            name = "ref" if is_ref else str(module.fake_ms)

            def run() -> None:
                self.runs[name] = self.runs.get(name, 0) + 1
                ms = REF_MS * self.rng.uniform(0.7, 1.5) if is_ref else module.fake_ms
                self.now += int(ms * 1e6)

            return run

        return fake_backend(prepare)


def test_networks_timed_together_share_one_factor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference's own noise must not enter the ratio of two networks timed in the same
    rounds (a speed-up is checked on that ratio), as it did when each network was scaled
    by the reference timed between its own runs."""
    m = NoisyReference()
    monkeypatch.setattr(L, "_clock", m)
    monkeypatch.setitem(BACKENDS, "fake", m.backend())
    s = L.Settings(backend="fake", normalize=True)
    res = L.measure_interleaved({"teacher": _op(3.0), "student": _op(1.5)}, (1, 4, 8, 8), s,
                                baseline_ms=REF_MS, **L.e2e_kwargs(0.05, warmup=2, rounds=6))
    t, st = res["teacher"], res["student"]
    assert t.median_ms / st.median_ms == pytest.approx(2.0)
    assert t.raw_median_ms == pytest.approx(3.0) and st.raw_median_ms == pytest.approx(1.5)
    assert t.ref_ms == st.ref_ms and 0.7 <= t.ref_ms <= 1.5  # one pooled factor
    assert t.median_ms == pytest.approx(3.0 * REF_MS / t.ref_ms)


def test_whole_networks_run_back_to_back_with_the_reference_in_its_own_slot(phased) -> None:
    """Whole networks (e2e_kwargs) are timed as a user's loop times them: no timed run
    follows the reference op, which here evicts whatever ran before it (+30 % on the next
    run). Between the runs it made a large network (no untimed re-run) read 30 % slow
    beside a small one, the speed-up with it; in a slot of its own the ratio is exact."""
    m = phased(cold=0.3)
    s = L.Settings(backend="fake", normalize=True)
    nets = {"teacher": _op(8.0), "student": _op(2.0)}
    kw = L.e2e_kwargs(0.5, warmup=2, rounds=4)
    res = L.measure_interleaved(nets, (1, 4, 8, 8), s, baseline_ms=REF_MS, **kw)
    assert res["teacher"].raw_median_ms == pytest.approx(8.0)
    assert res["student"].raw_median_ms == pytest.approx(2.0)
    assert res["teacher"].median_ms / res["student"].median_ms == pytest.approx(4.0)
    assert res["teacher"].ref_ms == pytest.approx(REF_MS)
    assert m.runs["ref"] >= 4  # timed in every round
    between = L.measure_interleaved(nets, (1, 4, 8, 8), s, baseline_ms=REF_MS,
                                    **{**kw, "reference_slot": False})
    assert between["teacher"].raw_median_ms == pytest.approx(8.0 * 1.3)


def test_rounds_warm_up_once_and_split_the_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warm-up runs are the first round's; later rounds run each network once untimed (to
    refill the caches the others evicted). The rounds share 12x the per-op time cap."""
    m = NoisyReference()
    monkeypatch.setattr(L, "_clock", m)
    monkeypatch.setitem(BACKENDS, "fake", m.backend())
    res = L.measure_interleaved({"a": _op(2.0), "b": _op(5.0)}, (1, 4, 8, 8),
                                L.Settings(backend="fake"), rounds=4, warmup=5,
                                min_repeats=3, max_repeats=3)
    assert m.runs == {"2.0": 5 + 3 + 3 * (1 + 3), "5.0": 5 + 3 + 3 * (1 + 3)}
    assert res["a"].count == 4 * 3 and res["a"].min_ms == pytest.approx(2.0)
    kw = L.e2e_kwargs(0.1, warmup=7)
    assert kw["rounds"] == L.E2E_ROUNDS and kw["warmup"] == 7
    assert kw["rounds"] * kw["max_seconds"] == pytest.approx(1.2)
    with pytest.raises(L.ConfigError, match="rounds"):
        L.e2e_kwargs(0.1, warmup=1, rounds=0)
