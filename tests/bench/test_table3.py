"""The pure parts of benchmarks/table3.py (issue 6): pruning to a latency, Kendall tau, the
resumable step cache and the per-family configurations. The benchmark's quality is not
tested here; it is measured by running it (benchmarks/RESULTS.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import table3  # noqa: E402


def test_prune_to_latency_reaches_the_target_within_tolerance():
    # Latency falls as the ratio grows, like a pruned network's (quadratic in the width).
    def latency(ratio: float) -> float:
        return 0.2 + 0.8 * (1 - ratio) ** 2

    for target in (0.9, 0.5, 0.3):
        res = table3.prune_to_latency(lambda r: r, latency, target)
        assert res["within"], res
        assert abs(res["latency"] - target) <= 0.05 * target
        assert res["model"] == res["ratio"]
        assert len(res["history"]) <= 10
        # Every step moved toward the target: the ratios bracket the answer.
        assert all(0.0 < r < 0.95 for r, _ in res["history"])


def test_prune_to_latency_interpolates_once_the_target_is_bracketed():
    # Pruned latency is about quadratic in the kept width; with a 1 % tolerance plain
    # halving of [0, 0.95] needs 6 prunes for this target, interpolation fewer.
    def latency(ratio: float) -> float:
        return 0.1 + 0.9 * (1 - ratio) ** 2

    target = latency(0.62)
    res = table3.prune_to_latency(lambda r: r, latency, target, tol=0.01)
    assert res["within"]
    assert len(res["history"]) <= 4, res["history"]
    bisect_steps, lo, hi = 0, 0.0, 0.95
    while True:
        bisect_steps += 1
        mid = (lo + hi) / 2
        if abs(latency(mid) - target) <= 0.01 * target:
            break
        lo, hi = (mid, hi) if latency(mid) > target else (lo, mid)
    assert len(res["history"]) < bisect_steps


def test_prune_to_latency_survives_noisy_timings():
    # A timing that is not monotone in the ratio (a noisy VM) must not stall the search or
    # leave the bracket: every point stays inside (0, 0.95) and the best one is returned.
    import random

    rng = random.Random(0)

    def noisy(ratio: float) -> float:
        return (1 - ratio) * (1 + rng.uniform(-0.15, 0.15))

    lines: list[str] = []
    res = table3.prune_to_latency(lambda r: r, noisy, 0.4, tol=0.01, max_iter=8,
                                  say=lines.append)
    assert len(res["history"]) == len(lines) <= 8
    assert all(0.0 < r < 0.95 for r, _ in res["history"])
    assert abs(res["latency"] - 0.4) == min(abs(ms - 0.4) for _, ms in res["history"])


def test_prune_to_latency_reports_an_unreachable_target():
    res = table3.prune_to_latency(lambda r: r, lambda r: 1.0 - 0.5 * r, 0.1, max_iter=6)
    assert not res["within"]
    # The closest one tried is returned: the largest ratio the bisection reached.
    assert res["ratio"] == max(r for r, _ in res["history"])
    with pytest.raises(ValueError):
        table3.prune_to_latency(lambda r: r, lambda m: 1.0, 0.0)


def test_prune_to_latency_with_torch_pruning_on_a_tiny_model():
    tp = pytest.importorskip("torch_pruning")
    import torch
    from torch import nn

    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))
    example = torch.zeros(1, 1, 8, 8)

    def make(ratio: float) -> nn.Module:
        import copy

        m = copy.deepcopy(base)
        tp.pruner.MagnitudePruner(m, example, importance=tp.importance.MagnitudeImportance(),
                                  pruning_ratio=ratio, ignored_layers=[m[-1]]).step()
        return m

    def fake_latency(m: nn.Module) -> float:  # stands in for a measured time
        return float(sum(p.numel() for p in m.parameters()))

    full = fake_latency(base)
    res = table3.prune_to_latency(make, fake_latency, 0.4 * full, tol=0.1)
    assert res["within"]
    assert res["model"](example).shape == (1, 4)
    assert abs(fake_latency(res["model"]) - 0.4 * full) <= 0.1 * 0.4 * full


def test_prune_teacher_keeps_split_attention_consistent():
    # Plain Torch-Pruning breaks this tiny ResNeSt at ratio 0.05 (split conv and fc2
    # pruned to different widths: "shape '[1, 2, 116, 1, 1]' is invalid").
    pytest.importorskip("torch_pruning")
    import torch
    from timm.models.resnest import ResNestBottleneck
    from timm.models.resnet import ResNet

    torch.manual_seed(0)
    teacher = ResNet(block=ResNestBottleneck, layers=[1, 1, 1, 1], in_chans=1,
                     num_classes=10, stem_type="deep", stem_width=8, avg_down=True,
                     channels=(16, 32, 64, 128),
                     block_args=dict(radix=2, avd=True, avd_first=False)).eval()
    kept = table3.radix_coupled_layers(teacher)
    assert len(kept) == 8  # conv and fc2 of each block's SplitAttn
    pruned = table3.prune_teacher(teacher, 0.05, (1, 32, 32))
    assert pruned(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    params = sum(p.numel() for p in pruned.parameters())
    assert params < sum(p.numel() for p in teacher.parameters())
    assert teacher.layer1[0].conv1.out_channels == 16  # the teacher itself is untouched
    assert table3.radix_coupled_layers(torch.nn.Linear(2, 2)) == []


def test_kendall_tau_sign_and_size():
    scores = [0.1, 0.2, 0.3, 0.4]
    assert table3.kendall(scores, [0.9, 0.8, 0.7, 0.6])["tau"] == pytest.approx(1.0)
    assert table3.kendall(scores, [0.6, 0.7, 0.8, 0.9])["tau"] == pytest.approx(-1.0)
    assert table3.kendall(scores, [0.9, 0.7, 0.8, 0.6])["n"] == 4
    with pytest.raises(ValueError):
        table3.kendall([0.1], [0.5])


def test_steps_cache_resumes_after_an_interruption(tmp_path):
    calls = []

    def step(name):
        def fn():
            calls.append(name)
            return {"value": len(calls)}
        return fn

    def crash():
        raise KeyboardInterrupt

    steps = table3.Steps(tmp_path, say=lambda _: None)
    assert steps.get("a", step("a"))["value"] == 1
    with pytest.raises(KeyboardInterrupt):
        steps.get("b", crash)
    assert not steps.done("b")  # nothing half-written for the step that was cut off
    again = table3.Steps(tmp_path, say=lambda _: None)
    assert again.get("a", step("a"))["value"] == 1  # cached: not run again
    assert again.get("b", step("b"))["value"] == 2
    assert calls == ["a", "b"]
    assert set(again.all()) == {"a", "b"}
    assert "seconds" in again.all()["a"]
    # A cached result that the current method would not have made is computed again.
    assert again.get("a", step("a"), valid=lambda r: r["value"] == 1)["value"] == 1
    assert again.get("a", step("a"), valid=lambda r: "target" in r)["value"] == 3
    assert calls == ["a", "b", "a"]


@pytest.mark.parametrize("family", sorted(table3.FAMILIES))
@pytest.mark.parametrize("scale", sorted(table3.SCALES))
def test_every_family_and_scale_is_a_valid_lana_config(family, scale, tmp_path):
    from lana.config import config_from_dict

    cfg = config_from_dict(table3.run_config(family, scale, tmp_path), "table3")
    assert cfg.model.name == f"timm:{table3.FAMILIES[family]['teacher']}"
    assert cfg.data.name == "fashion-mnist" and cfg.data.image_size == 32
    assert cfg.latency.backend == "onnxruntime"
    assert cfg.teacher_training.cache_dir == str(tmp_path / "teacher-cache")


def test_random_baseline_uses_its_budget():
    """Random search draws in a band under its LUT budget: a looser budget gives a costlier
    architecture (without the floor the effnet full run could not reach LANA's latency),
    and a budget past the costliest architecture still gives one."""
    from lana.search.solver import Layer, Library, Op, minimum_reachable

    # Cheap ops score well here, as phase 1's low-loss identity-like ops often do: a
    # floorless best-of-random sits near the cheapest end whatever the budget.
    lib = Library(layers=[Layer(name=f"L{i}", ops=[
        Op(spec=f"op{j}", score=0.1 * j, cost={"latency_ms": 0.1 + 0.2 * j})
        for j in range(6)]) for i in range(8)])
    lo, hi = (minimum_reachable(lib, "latency_ms", s) for s in ("min", "max"))
    costs = []
    for frac in (0.2, 0.5, 0.8, 1.0, 3.0):
        budget = lo + frac * (hi - lo)
        sol = table3.Table3.random_solution(lib, budget)
        cost = sol.cost["latency_ms"]
        assert cost <= min(budget, hi) * (1 + 1e-6)
        assert cost >= table3.RANDOM_BAND * min(budget, hi) * (1 - 1e-6), (frac, cost)
        costs.append(cost)
    assert costs == sorted(costs) and costs[-1] > 0.9 * hi


def test_spread_and_budget_label():
    assert table3.spread([1.0]) == (1.0, None)
    mean, sd = table3.spread([1.0, 3.0])
    assert mean == 2.0 and sd == pytest.approx(2 ** 0.5)
    assert table3.budget_label(2.0, "b0", 1.7) == "2x"
    assert table3.budget_label(1.7, "b0", 1.7).startswith("b0 latency")


def test_work_dir_is_tied_to_its_settings(tmp_path):
    from lana.errors import ConfigError

    table3.check_settings(tmp_path, {"a": 1, "b": None})
    table3.check_settings(tmp_path, {"a": 1, "b": None})  # same settings: resumes
    with pytest.raises(ConfigError, match="other benchmark settings"):
        table3.check_settings(tmp_path, {"a": 2, "b": None})


def fake_run(tmp_path, scale: str, sessions: int = 1, family: str = "effnet"):
    """A made-up finished table3 run of ``family``: ``(bench, res)`` as ``report`` takes
    them; its work directory is ``tmp_path``."""
    from types import SimpleNamespace

    from lana.core.io import write_json

    steps = table3.Steps(tmp_path / "steps")
    steps.get("member_s0", lambda: {"accuracy": 0.80})
    steps.get("kendall", lambda: {"tau": 0.5})
    bench = SimpleNamespace(family=family, scale=scale, seeds=1,
                            fam=table3.FAMILIES[family], steps=steps,
                            cfg=SimpleNamespace(threads=2),
                            run=SimpleNamespace(timings=lambda: {"teacher_train_s": 60.0,
                                                                  "distill_s": 30.0},
                                                dir=tmp_path / "run"),
                            work=tmp_path)
    # The pipeline's own check of the 2x student: three timings beside the teacher.
    (tmp_path / "run" / "students" / "2x").mkdir(parents=True)
    write_json(tmp_path / "run" / "students" / "2x" / "search.json", {"chosen": {
        "latency_ms_measured": 0.5, "timings_ms": [
            {"teacher": 1.0, "student": 0.45}, {"teacher": 1.0, "student": 0.5},
            {"teacher": 1.1, "student": 0.5}]}})
    msp = 1.6
    lana = {sp: [{"tag": f"{sp:g}x", "accuracy": 0.84 - 0.01 * sp, "accuracy_before": 0.5,
                  "choices": ["teacher", f"ir_k3_e{sp:g}"]}] for sp in (msp, 2.0, 3.0)}
    lana[5.0] = [{"infeasible": "budget below the minimum 0.3 ms"}]
    lana[2.0][0]["trace"] = [{"lut_budget_ms": 0.6, "allowed_ms": 0.5, "students": [
        {"lut_ms": 0.6, "ms": 0.5, "val_loss": 0.3, "meets": True, "kept": True}]}]
    res = {
        "prep": {"accuracy": 0.85}, "member_speedup": msp,
        "members": [{"accuracy": 0.80}],
        "lana": lana,
        "random": {sp: [{"tag": r[0]["tag"], "accuracy": 0.7, "within": sp != 3.0,
                         "choices": ["identity", "ds_k3"]}]
                   for sp, r in lana.items()
                   if "tag" in r[0]},
        "prune": {sp: [{"tag": r[0]["tag"], "accuracy": 0.75, "ratio": 0.3, "within": True}]
                  for sp, r in lana.items() if "tag" in r[0]},
        "lana_equal": {"tag": f"{msp:g}x", "epochs": 4.0, "accuracy": 0.86},
        "kendall": {"tau": 0.6, "p_value": 0.01, "n": 30, "tau_score_vs_loss": 0.7,
                    "eval_samples": 100},
        "latency": {"settings": {"backend": "onnxruntime", "threads": 1}, **{
            f"b{b}": {"teacher": 1.0 * b, "member": 0.62 * b,
                      **{f"{k}_{sp:g}x": b / sp for sp in (msp, 2.0, 3.0)
                         for k in ("lana", "random", "prune")}} for b in (1, 32)}},
    }
    if scale == "reduced":
        del res["lana_equal"]
    if sessions > 1:  # the same timings, and two sessions where LANA 2x is slower
        one = {b: res["latency"].pop(b) for b in ("b1", "b32")}
        slower = {b: {**t, "lana_2x": t["lana_2x"] * 1.25} for b, t in one.items()}
        res["latency"]["windows"] = [{**one, "at": 100.0}, {**slower, "at": 400.0},
                                     {**slower, "at": 700.0}]
    return bench, res


@pytest.mark.parametrize(("scale", "sessions"), [(s, 1) for s in sorted(table3.SCALES)]
                         + [("medium", 3)])
def test_report_renders_a_whole_result(scale, sessions, tmp_path, monkeypatch):
    """The report runs only after hours of training: render it from a made-up result so a
    formatting slip cannot lose a finished run."""
    from lana.core.io import read_json

    written: dict[str, str] = {}
    monkeypatch.setattr(table3, "write_section", lambda h, b: written.update({h: b}))
    monkeypatch.setattr(table3, "HERE", tmp_path)
    bench, res = fake_run(tmp_path, scale, sessions)
    body = table3.report(bench, res, "python benchmarks/table3.py --family effnet", 12.0)
    assert list(written) == [f"## Table 3 on Fashion-MNIST: effnet ({scale} scale, issue 6)"]
    assert "| LANA | 2x | 82.00 | 50.00 |" in body
    equal = ("at the member's latency and equal training images, LANA is more accurate "
             "than the member: **met** (86.00 vs 80.00)")
    if scale == "reduced":  # a result made before the row existed
        assert "as the member trains" not in body and equal not in body
    else:
        assert "| LANA, fine-tuned 4 epochs (as the member trains) | efficientnet_b0 " \
            "latency (1.60x) | 86.00 | - | 0.625 |" in body
        assert equal in body
    if sessions == 1:
        assert "| 2.00× | 2.00× |" in body and "in one interleaved session" in body
    else:  # median over sessions, range in brackets; the target reads the median
        assert "| 1.60× (1.60–2.00) | 1.60× (1.60–2.00) |" in body
        assert "3 interleaved sessions" in body and "spread over 10 min" in body
        assert "2x faster for <= 0.5 points: **NOT met** (measured 1.60×" in body
    assert "student (the median of its back-to-back timings beside the teacher):\n" \
        f"  2x: 2.20× (the table: {2.0 if sessions == 1 else 1.6:.2f}×)." in body
    assert "5x faster for <= 1.5 points: **not measurable**" in body
    assert "LANA beats Torch-Pruning and random search at every matched latency: **met**" \
        in body
    assert "training with 2 torch thread(s)" in body
    assert "within ±5%: 1.6x: True; 2x: True; 3x: False." in body
    assert (tmp_path / f"table3_effnet_{scale}.png").exists()
    summary = read_json(table3.summary_path("effnet", scale))  # the same numbers as plain data
    lana2 = next(r for r in summary["rows"] if r["kind"] == "lana" and r["budget"] == "2x")
    assert lana2["accuracy"] == pytest.approx(82.0) and lana2["speedup"] == 2.0
    assert lana2["speedup_b1"] == pytest.approx(2.0 if sessions == 1 else 1.6)
    assert [t["met"] for t in summary["targets"]][-1] is True
    # Enough to rebuild every network and time it again once the work directory is gone.
    assert lana2["arch"] == {"choices": ["teacher", "ir_k3_e2"]}
    archs = {r["kind"]: r.get("arch") for r in summary["rows"] if r["budget"] == "2x"}
    assert archs["random"] == {"choices": ["identity", "ds_k3"]}
    assert archs["prune"] == {"ratio": 0.3}
    assert archs.get("lana_equal") is None  # equal training sits at the member's budget
    # the search's solves, where the step kept them (steps stored earlier did not)
    assert lana2["search"][0]["students"][0]["kept"] is True
    assert all("search" not in r for r in summary["rows"] if r["budget"] != "2x")


def test_search_trace_keeps_every_solve_and_marks_the_kept_student():
    def student(choices, lut, ms, loss, meets):
        return {"choices": choices, "latency_ms_lut": lut, "latency_ms_measured": ms,
                "val_loss": loss, "meets_budget": meets}

    first = student(["teacher", "ds_k3"], 1.2, 1.0, 0.40, True)
    srch = {"fixed_ms": 0.2, "chosen": first, "attempts": [
        {"layer_budget_ms": 1.0, "allowed_ms": 1.5,
         "students": [first, student(["ds_k3", "ds_k3"], 1.1, None, 0.5, True)]},
        {"layer_budget_ms": 1.4, "allowed_ms": 1.5,  # looser: a costlier student, no better
         "students": [student(["teacher", "teacher"], 1.6, 1.4, 0.41, True)]}]}
    trace = table3.search_trace(srch)
    assert [a["lut_budget_ms"] for a in trace] == [1.2, 1.6]
    assert trace[0]["students"][0] == {"lut_ms": 1.2, "ms": 1.0, "val_loss": 0.4,
                                       "meets": True, "kept": True}
    assert trace[0]["students"][1]["ms"] is None and "kept" not in trace[0]["students"][1]
    assert "kept" not in trace[1]["students"][0]


def test_timing_sessions_are_pooled_by_their_own_ratios():
    # Session 2 is a slow window for everyone: its ms move the medians, but the ratio of
    # each network to the teacher timed beside it stays what it is in every session.
    windows = [{"b1": {"teacher": 4.0, "s": 2.0}, "b32": {"teacher": 40.0, "s": 10.0}},
               {"b1": {"teacher": 8.0, "s": 5.0}, "b32": {"teacher": 80.0, "s": 20.0}},
               {"b1": {"teacher": 4.4, "s": 2.0}, "b32": {"teacher": 44.0, "s": 11.0}}]
    pooled = table3.pool_windows(windows)
    assert pooled["b1"] == {"teacher": 4.4, "s": 2.0}
    assert pooled["speedup_b1"]["s"] == [2.0, 1.6, 2.2]
    assert pooled["speedup_b1"]["teacher"] == [1.0, 1.0, 1.0]
    assert pooled["speedup_b32"]["s"] == [4.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="no timing sessions"):
        table3.pool_windows([])
    # A step stored before sessions were kept is one session.
    old = {"b1": {"teacher": 1.0}, "b32": {"teacher": 2.0}}
    assert table3.timing_windows(old) == [{**old, "at": 0.0}]


def _latency_bench(tmp_path, monkeypatch):
    """A Table3 with only what ``latency`` needs, and a fake clock of timing sessions:
    every network takes ``1 / speed`` ms, the teacher 4 ms, times the session's slowness."""
    from types import SimpleNamespace

    # profile binds measure_interleaved by name when first imported: imported under the
    # patch below (table3's latency step imports it lazily), it would keep the fake for
    # every later test of this worker (tests/cli timed `1 / Chain`).
    import lana.latency.profile  # noqa: F401
    import lana.latency.timing
    from lana.config import LatencyConfig

    calls: list[tuple[int, tuple[str, ...]]] = []

    def fake_measure(models, shape, settings, **kwargs):
        session = sum(1 for c in calls if c[0] == 1) + (shape[0] == 1)
        calls.append((shape[0], tuple(models)))
        slow = 2.0 if session == 2 else 1.0
        return {k: SimpleNamespace(median_ms=slow * (4.0 if k == "teacher" else 1 / m) * shape[0])
                for k, m in models.items()}

    monkeypatch.setattr(lana.latency.timing, "measure_interleaved", fake_measure)
    bench = table3.Table3.__new__(table3.Table3)
    bench.steps = table3.Steps(tmp_path / "steps", say=lambda _: None)
    bench.cfg = SimpleNamespace(latency=LatencyConfig(backend="onnxruntime", threads=1))
    bench.run = SimpleNamespace(teacher="teacher", input_shape=(1, 8, 8))
    bench.final_model = lambda name, info: info["speed"]
    return bench, calls


def test_final_timing_takes_sessions_apart_and_adds_to_stored_ones(tmp_path, monkeypatch):
    bench, calls = _latency_bench(tmp_path, monkeypatch)
    methods = {"lana_2x": {"speed": 0.5}, "member": {"speed": 0.25}}
    lat = bench.latency(methods, windows=2, gap_s=0.0)
    assert [c[0] for c in calls] == [1, 32, 1, 32]
    assert len(lat["windows"]) == 2
    assert lat["speedup_b1"]["lana_2x"] == [2.0, 2.0, 2.0]  # the slow session cancels out
    assert lat["b1"]["teacher"] == 6.0  # median ms of 4 and 8
    # Cached with enough sessions; asking for more adds sessions to the stored ones.
    assert bench.latency(methods, windows=2, gap_s=0.0) == lat
    assert len(calls) == 4
    more = bench.latency(methods, windows=3, gap_s=0.0)
    assert len(calls) == 6 and len(more["windows"]) == 3
    assert more["windows"][:2] == lat["windows"]
    assert more["b1"]["teacher"] == 4.0
    # A network that joins is timed with all the others again, from the first session.
    methods["random_2x"] = {"speed": 0.4}
    again = bench.latency(methods, windows=1, gap_s=0.0)
    assert len(again["windows"]) == 1 and "random_2x" in again["b1"]
    assert calls[-1][1] == ("teacher", "lana_2x", "member", "random_2x")


def test_final_timing_reads_a_step_stored_before_sessions_were_kept(tmp_path, monkeypatch):
    from lana.core.io import write_json

    bench, calls = _latency_bench(tmp_path, monkeypatch)
    methods = {"lana_2x": {"speed": 0.5}}
    names = '["lana_2x"]'
    write_json(bench.steps.path("latency"),
               {"names": names, "b1": {"teacher": 4.0, "lana_2x": 2.5},
                "b32": {"teacher": 128.0, "lana_2x": 64.0}, "seconds": 5.0})
    lat = bench.latency(methods, windows=1, gap_s=0.0)
    assert calls == [] and lat["speedup_b1"]["lana_2x"] == [1.6, 1.6, 1.6]
    assert lat["windows"][0]["at"] > 0  # the file's time stands for its session's
    lat = bench.latency(methods, windows=2, gap_s=0.0)
    assert len(calls) == 2 and lat["speedup_b1"]["lana_2x"][1:] == [1.6, 2.0]
