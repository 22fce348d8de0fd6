"""Tests of lana.distill.phase1: learning, grouping-independence, checkpoint/resume, weight
files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import lana.distill.phase1 as D
from lana.config import DistillConfig
from lana.core.io import read_json, save_tensors
from lana.errors import ArtifactError
from lana.model.data import Data

# Layers of the conftest teacher: 0: 1x16x16 -> 8x8x8, 1: 8x8x8 -> 8x8x8,
# 2: 8x8x8 -> 16x4x4, 3: 16x4x4 -> 16x4x4.
CANDIDATES = [["teacher", "cb_k3"], ["teacher", "identity", "cb_k3", "ir_k3_e1"],
              ["teacher", "cb_k1"], ["teacher", "ds_k3"]]
TRAINED = [(i, s) for i, specs in enumerate(CANDIDATES) for s in specs
           if s not in D.UNTRAINED]


class Crash(RuntimeError):
    """Simulated interruption (power loss, kill) in the middle of phase 1."""


class CrashingData(Data):
    """A Data whose streams raise :class:`Crash` once ``crash_after`` batches were drawn."""

    def __init__(self, data: Data, crash_after: int | None) -> None:
        super().__init__(data.dataset, data.workers)
        self.crash_after = crash_after
        self.drawn = 0

    def stream(self, batch_size, seed=0, augment=False):
        for batch in super().stream(batch_size, seed=seed, augment=augment):
            if self.crash_after is not None and self.drawn >= self.crash_after:
                raise Crash(f"crash after {self.drawn} batches")
            self.drawn += 1
            yield batch


def _weights(run_dir: Path, chain) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
    return {(i, s): D.load_candidate(chain, run_dir, i, s).state_dict() for i, s in TRAINED}


def _nmse_on(module, chain, i: int, x: torch.Tensor) -> float:
    module.eval()
    with torch.no_grad():
        feats = chain.features(x)
        return D._nmse(module(feats[i]), feats[i + 1]).item()


def test_distillation_lowers_nmse(seq_chain, synthetic_splits, tmp_path: Path) -> None:
    steps = 200
    cfg = DistillConfig(steps=steps, batch_size=16, lr=3e-2)
    index = D.distill(seq_chain, CANDIDATES, synthetic_splits.train, cfg, tmp_path, seed=0)
    x_val = next(synthetic_splits.val.batches(32))[0]  # held out from the training split
    for i, spec in TRAINED:
        fresh = D.build_candidate(seq_chain, i, spec, seed=0)  # the weights training began at
        trained = D.load_candidate(seq_chain, tmp_path, i, spec)
        before = _nmse_on(fresh, seq_chain, i, x_val)
        after = _nmse_on(trained, seq_chain, i, x_val)
        assert after < 0.6 * before, (i, spec, before, after)
        assert after < 0.85, (i, spec, after)  # clearly better than predicting zeros
        entry = index[str(i)][spec]
        assert entry["steps"] == steps
        # the recorded training nmse tracks the held-out one
        assert entry["nmse"] == pytest.approx(after, abs=0.15), (i, spec)
        assert D.weight_path(tmp_path, i, spec).exists()
    # teacher and identity are never trained, nor written
    assert not D.weight_path(tmp_path, 1, "identity").exists()
    assert not D.weight_path(tmp_path, 0, "teacher").exists()
    assert read_json(tmp_path / "distill" / "index.json") == index
    assert not list((tmp_path / "distill").glob("checkpoint-*"))


def test_weight_path_layout(tmp_path: Path) -> None:
    assert D.weight_path(tmp_path, 7, "ir_k3_e6_se") == (
        tmp_path / "distill" / "L007" / "ir_k3_e6_se.safetensors")


def test_candidate_seed_is_stable_and_distinct() -> None:
    assert D.candidate_seed(1, "cb_k3", 0) == D.candidate_seed(1, "cb_k3", 0)
    seeds = {D.candidate_seed(i, s, 0) for i, s in TRAINED}
    assert len(seeds) == len(TRAINED)
    assert D.candidate_seed(1, "cb_k3", 0) != D.candidate_seed(1, "cb_k3", 1)


def test_build_candidate_is_deterministic_and_keeps_global_rng(seq_chain) -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = D.build_candidate(seq_chain, 1, "ir_k3_e1", seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = D.build_candidate(seq_chain, 1, "ir_k3_e1", seed=0)
    c = D.build_candidate(seq_chain, 1, "ir_k3_e1", seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_grouping_does_not_change_results(seq_chain, synthetic_splits, tmp_path: Path) -> None:
    results = {}
    for group_size in (0, 1, 3):
        out = tmp_path / f"g{group_size}"
        cfg = DistillConfig(steps=6, batch_size=16, group_size=group_size)
        D.distill(seq_chain, CANDIDATES, synthetic_splits.train, cfg, out, seed=0)
        results[group_size] = _weights(out, seq_chain)
    for group_size in (1, 3):
        for key, state in results[0].items():
            other = results[group_size][key]
            assert state.keys() == other.keys()
            for name in state:
                assert torch.equal(state[name], other[name]), (group_size, key, name)


def test_sharding_covers_every_candidate(seq_chain, synthetic_splits, tmp_path: Path) -> None:
    # Shards run one after the other (or start at different times) into one directory:
    # together, ranks 0..world-1 must train every candidate. Fails while distill() shards
    # the list of *pending* candidates (rank 1 then sees a shorter list and skips some).
    cfg = DistillConfig(steps=3, batch_size=16)
    D.distill(seq_chain, CANDIDATES, synthetic_splits.train, cfg, tmp_path / "all", seed=0)
    for rank in range(2):
        D.distill(seq_chain, CANDIDATES, synthetic_splits.train, cfg, tmp_path / "shard",
                  seed=0, rank=rank, world=2)
    index = read_json(tmp_path / "shard" / "distill" / "index.json")
    assert {(int(i), s) for i, row in index.items() for s in row} == set(TRAINED)
    a, b = _weights(tmp_path / "all", seq_chain), _weights(tmp_path / "shard", seq_chain)
    for key in a:
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key


@pytest.mark.parametrize("group_size", [0, 2])
def test_resume_after_crash_matches_uninterrupted_run(
        seq_chain, synthetic_splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        group_size: int) -> None:
    steps = 7
    cfg = DistillConfig(steps=steps, batch_size=16, checkpoint_every=2, group_size=group_size)
    ref_dir = tmp_path / "ref"
    D.distill(seq_chain, CANDIDATES, synthetic_splits.train, cfg, ref_dir, seed=0)
    reference = _weights(ref_dir, seq_chain)

    n_groups = 1 if group_size == 0 else math.ceil(len(TRAINED) / group_size)
    # Crash in the middle of the last group, after its checkpoint at step 4 was written.
    crash_after = (n_groups - 1) * steps + 5
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        D.distill(seq_chain, CANDIDATES, CrashingData(synthetic_splits.train, crash_after),
                  cfg, run_dir, seed=0)
    ckpts = list((run_dir / "distill").glob("checkpoint-*.pt"))
    assert len(ckpts) == 1
    assert torch.load(ckpts[0], weights_only=True)["step"] == 4
    finished = [(i, s) for i, s in TRAINED if D.weight_path(run_dir, i, s).exists()]
    assert len(finished) == (n_groups - 1) * (group_size or 0)
    mtimes = {key: D.weight_path(run_dir, *key).stat().st_mtime_ns for key in finished}

    calls: list[tuple[list, int]] = []
    real_train_group = D._train_group

    def spy(chain, members, data, cfg_, run_dir_, seed, device):
        calls.append((list(members), data.drawn))
        return real_train_group(chain, members, data, cfg_, run_dir_, seed, device)

    monkeypatch.setattr(D, "_train_group", spy)
    trained_steps = []  # one teacher pass (stem call) per trained step
    hook = seq_chain.stem.register_forward_hook(lambda *_: trained_steps.append(1))
    data = CrashingData(synthetic_splits.train, None)
    try:
        D.distill(seq_chain, CANDIDATES, data, cfg, run_dir, seed=0)
    finally:
        hook.remove()
    # only the interrupted group is trained again, and it resumes at its checkpoint:
    # it replays 4 batches (same data order) and trains the remaining 3 steps
    assert len(calls) == 1
    assert set(calls[0][0]) == set(TRAINED) - set(finished)
    assert data.drawn == steps
    assert len(trained_steps) == steps - 4
    for key, mtime in mtimes.items():
        assert D.weight_path(run_dir, *key).stat().st_mtime_ns == mtime
    assert not list((run_dir / "distill").glob("checkpoint-*"))
    resumed = _weights(run_dir, seq_chain)
    for key, state in reference.items():
        for name in state:
            assert torch.allclose(state[name], resumed[key][name], rtol=1e-6, atol=1e-7), (
                key, name)
    index = read_json(run_dir / "distill" / "index.json")
    ref_index = read_json(ref_dir / "distill" / "index.json")
    assert index.keys() == ref_index.keys()
    for i in index:
        for spec, entry in index[i].items():
            assert entry["nmse"] == pytest.approx(ref_index[i][spec]["nmse"], rel=1e-5)

    # a finished run directory trains nothing
    calls.clear()
    D.distill(seq_chain, CANDIDATES, data, cfg, run_dir, seed=0)
    assert calls == []


def _interrupted(chain, splits, tmp_path: Path, cfg: DistillConfig) -> tuple[Path, Path]:
    """An uninterrupted reference run in ``tmp_path/ref`` and one killed at step 3 in
    ``tmp_path/run``; returns the latter and the checkpoint it left."""
    D.distill(chain, CANDIDATES, splits.train, cfg, tmp_path / "ref", seed=0)
    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        D.distill(chain, CANDIDATES, CrashingData(splits.train, 3), cfg, run_dir, seed=0)
    (ckpt,) = (run_dir / "distill").glob("checkpoint-*.pt")
    return run_dir, ckpt


def _same_as_reference(chain, tmp_path: Path, run_dir: Path) -> None:
    a, b = _weights(tmp_path / "ref", chain), _weights(run_dir, chain)
    for key in a:
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key


def test_unreadable_checkpoint_restarts_group(seq_chain, synthetic_splits, tmp_path: Path
                                              ) -> None:
    cfg = DistillConfig(steps=4, batch_size=16, checkpoint_every=2)
    run_dir, ckpt = _interrupted(seq_chain, synthetic_splits, tmp_path, cfg)
    ckpt.write_bytes(b"garbage")
    D.distill(seq_chain, CANDIDATES, synthetic_splits.train, cfg, run_dir, seed=0)
    _same_as_reference(seq_chain, tmp_path, run_dir)


def test_regrouping_mid_run_drops_the_old_checkpoint(seq_chain, synthetic_splits,
                                                     tmp_path: Path, capsys) -> None:
    # A run short of memory is resumed with smaller groups: the group in progress has a
    # checkpoint no new group owns; it is dropped (not left behind) and the result is the
    # same as an uninterrupted run's.
    cfg = DistillConfig(steps=4, batch_size=16, checkpoint_every=2, group_size=0)
    run_dir, old = _interrupted(seq_chain, synthetic_splits, tmp_path, cfg)
    smaller = cfg.model_copy(update={"group_size": 1})
    D.distill(seq_chain, CANDIDATES, synthetic_splits.train, smaller, run_dir, seed=0)
    assert not old.exists() and not list((run_dir / "distill").glob("checkpoint-*"))
    captured = capsys.readouterr()
    assert "belongs to an earlier grouping" in captured.err + captured.out
    _same_as_reference(seq_chain, tmp_path, run_dir)


def test_missing_weight_file_is_retrained(seq_chain, synthetic_splits, tmp_path: Path) -> None:
    cfg = DistillConfig(steps=2, batch_size=16)
    D.distill(seq_chain, CANDIDATES, synthetic_splits.train, cfg, tmp_path, seed=0)
    path = D.weight_path(tmp_path, 1, "cb_k3")
    other = D.weight_path(tmp_path, 1, "ir_k3_e1")
    other_mtime = other.stat().st_mtime_ns
    path.unlink()
    D.distill(seq_chain, CANDIDATES, synthetic_splits.train, cfg, tmp_path, seed=0)
    assert path.exists()
    assert other.stat().st_mtime_ns == other_mtime


def test_load_candidate(seq_chain, synthetic_splits, tmp_path: Path) -> None:
    cfg = DistillConfig(steps=2, batch_size=16)
    D.distill(seq_chain, CANDIDATES, synthetic_splits.train, cfg, tmp_path, seed=0)
    # the teacher op keeps the teacher's weights; identity needs no file
    teacher_op = D.load_candidate(seq_chain, tmp_path, 1, "teacher")
    ref = seq_chain.layers[1].state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in teacher_op.state_dict().items())
    assert teacher_op is not seq_chain.layers[1]
    assert isinstance(D.load_candidate(seq_chain, tmp_path, 1, "identity"), torch.nn.Identity)
    # weights of the wrong candidate are a clear ArtifactError
    wrong = D.build_candidate(seq_chain, 1, "ir_k3_e1").state_dict()
    save_tensors(D.weight_path(tmp_path, 1, "cb_k3"), wrong)
    with pytest.raises(ArtifactError, match="cb_k3"):
        D.load_candidate(seq_chain, tmp_path, 1, "cb_k3")
    with pytest.raises(ArtifactError, match="does not exist"):
        D.load_candidate(seq_chain, tmp_path, 2, "ir_k3_e1")


# ------------------------------------------------- candidates initialised from the teacher

RESNET_CANDIDATES = [["teacher", "rb_w1_g1_r1", "rb_w0.5_g1_r1", "cb_k3"],
                     ["teacher", "identity", "rb_w0.5_g1_r1", "rb_w0.5_g2_r1", "rb_w1_g1_r2"],
                     ["teacher", "rb_w0.25_g1_r1", "basic"]]


@pytest.fixture(scope="module")
def resnet_chain():
    """A small Bottleneck ResNet on 1x16x16 inputs with BN statistics calibrated on data,
    as a trained teacher has them (layers: 16->64 ch, 64->64, 64->128 stride 2, ...)."""
    from lana.model.toys import calibrated_resnet_chain

    return calibrated_resnet_chain()


def _phase1_loss(module, chain, i: int, x: torch.Tensor) -> float:
    """The phase-1 loss as training sees it at step 0 (train mode: batch statistics)."""
    module.train()
    with torch.no_grad():
        feats = chain.features(x)
        return D._nmse(module(feats[i]), feats[i + 1]).item()


def test_inherited_candidates_start_closer_to_the_teacher(resnet_chain, synthetic_splits
                                                          ) -> None:
    from lana.space.inherit import inherit

    chain = resnet_chain
    x = next(synthetic_splits.val.batches(32))[0]
    assert chain.names[:3] == ["layer1.0", "layer1.1", "layer2.0"]
    cases = {(0, "rb_w1_g1_r1"): "copy", (0, "rb_w0.5_g1_r1"): "bottleneck-channels",
             (1, "rb_w0.5_g1_r1"): "bottleneck-channels",
             (1, "rb_w0.5_g2_r1"): "bottleneck-channels",
             (1, "rb_w1_g1_r2"): "bottleneck-channels",
             (2, "rb_w0.25_g1_r1"): "bottleneck-channels"}
    for (i, spec), rule in cases.items():
        fresh = D.build_candidate(chain, i, spec, seed=0, inherit=False)
        assert inherit(D.build_candidate(chain, i, spec, inherit=False), spec,
                       chain.layers[i]) == rule
        inherited = D.build_candidate(chain, i, spec, seed=0)
        before, after = _phase1_loss(fresh, chain, i, x), _phase1_loss(inherited, chain, i, x)
        assert after < 0.8 * before, (i, spec, before, after)
        if rule == "copy":  # the teacher's own block structure: starts as the teacher
            assert after < 0.02
    # a narrower bottleneck holds the teacher's most important middle channels
    teacher = chain.layers[1]
    narrow = D.build_candidate(chain, 1, "rb_w0.5_g1_r1")
    rows = [torch.where((teacher.conv1.weight == w).all(dim=(1, 2, 3)))[0].item()
            for w in narrow.conv1.weight]
    assert rows == sorted(rows) and len(rows) == teacher.conv1.out_channels // 2
    from lana.space.inherit import _importance

    importance = _importance(teacher.conv1, teacher.bn1)
    assert importance[rows].min() >= importance.topk(len(rows)).values.min()
    assert torch.equal(narrow.conv3.weight, teacher.conv3.weight[:, rows])
    # no rule applies to other op types: fresh seeded weights, exactly as without inherit
    a = D.build_candidate(chain, 0, "cb_k3").state_dict()
    b = D.build_candidate(chain, 0, "cb_k3", inherit=False).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_inherited_phase1_is_independent_of_grouping_and_sharding(
        resnet_chain, synthetic_splits, tmp_path: Path) -> None:
    chain = resnet_chain
    trained = [(i, s) for i, specs in enumerate(RESNET_CANDIDATES) for s in specs
               if s not in D.UNTRAINED]

    def weights(run_dir):
        return {(i, s): D.load_candidate(chain, run_dir, i, s).state_dict() for i, s in trained}

    runs = {}
    for group_size in (0, 2):
        cfg = DistillConfig(steps=3, batch_size=16, group_size=group_size)
        D.distill(chain, RESNET_CANDIDATES, synthetic_splits.train, cfg,
                  tmp_path / f"g{group_size}", seed=0)
        runs[f"g{group_size}"] = weights(tmp_path / f"g{group_size}")
    cfg = DistillConfig(steps=3, batch_size=16)
    for rank in range(2):
        D.distill(chain, RESNET_CANDIDATES, synthetic_splits.train, cfg, tmp_path / "shard",
                  seed=0, rank=rank, world=2)
    runs["shard"] = weights(tmp_path / "shard")
    for name in ("g2", "shard"):
        for key, state in runs["g0"].items():
            assert all(torch.equal(state[n], runs[name][key][n]) for n in state), (name, key)
    # ... and inheriting changed the result (the teacher's weights were used)
    cfg = DistillConfig(steps=3, batch_size=16, inherit=False)
    D.distill(chain, RESNET_CANDIDATES, synthetic_splits.train, cfg, tmp_path / "fresh", seed=0)
    fresh = weights(tmp_path / "fresh")
    key = (1, "rb_w0.5_g1_r1")
    assert not torch.equal(fresh[key]["conv1.weight"], runs["g0"][key]["conv1.weight"])


@pytest.mark.parametrize("teacher_spec,spec,rule", [
    ("ir_k3_e3_se", "ir_k3_e6_se", "mbconv-channels"),
    ("ir_k3_e3", "ir_k5_e6", "mbconv-channels"),
    ("er_k3_e2", "er_k3_e4", "fused-mbconv-channels"),
    ("rb_w0.5", "rb_w1", "bottleneck-channels"),
    ("ds_k3", "ds_k5", "kernel-resize")])
def test_wider_candidates_start_as_the_teacher(teacher_spec: str, spec: str, rule: str,
                                               randomize_bn) -> None:
    """A wider variant of the teacher's block (extra channels silent, bigger kernel zero
    padded) computes exactly the teacher's function before training."""
    from lana.model.decompose import LayerInfo
    from lana.space.inherit import inherit
    from lana.space.ops import build_op

    info = LayerInfo("l", (16, 8, 8), (16, 8, 8), "silu")
    torch.manual_seed(0)
    teacher = randomize_bn(build_op(teacher_spec, info), seed=2).eval()
    candidate = build_op(spec, info)
    assert inherit(candidate, spec, teacher) == rule
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (candidate.eval()(x) - teacher(x)).abs().max().item() <= 1e-5
    # a narrower variant is not the teacher, but inherits deterministically
    narrow_a, narrow_b = build_op(teacher_spec, info), build_op(teacher_spec, info)
    inherit(narrow_a, teacher_spec, candidate)
    inherit(narrow_b, teacher_spec, candidate)
    assert all(torch.equal(v, narrow_b.state_dict()[k]) for k, v in narrow_a.state_dict().items())
