"""Scale-out and fault tolerance: torchrun (gloo, 2 processes) for phase 1 and phase 3,
SIGKILL at deterministic points of every phase then resume, checksums, the run lock.

The multi-process tests start real processes (``python -m torch.distributed.run`` and
``python -m lana.cli``), so they check what a user gets, at a few seconds each.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import lana.distill.phase1 as D
from lana.cli.commands import main
from lana.core.io import checksum_path, load_tensors, read_json, run_lock, verify_tree
from lana.pipeline.runner import Run

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1",
           "LANA_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    env.pop("LANA_TEST_KILL_AT", None)
    env.update(extra)
    return env


def _torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", *args]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout,
                         cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ data sharding

@pytest.mark.parametrize("in_memory", [True, False])
def test_sharded_stream_splits_every_global_batch(in_memory: bool) -> None:
    from torch.utils.data import Subset

    from lana.model.data import Data, synthetic_dataset

    ds = synthetic_dataset(50, 8, seed=1)
    # a Subset is not a TensorDataset: it takes the DataLoader path
    data = Data(ds if in_memory else Subset(ds, list(range(50))))
    full = data.stream(8, seed=2, augment=True)
    shards = [data.stream(8, seed=2, augment=True, rank=r, world=3) for r in range(3)]
    for _ in range(12):  # past an epoch boundary (50 items: a last batch of 2 < 3 ranks)
        parts = [next(s) for s in shards]
        x, y = next(full)
        if len(y) < 3:  # skipped by sharded streams, since one rank would get nothing
            x, y = next(full)
        for r, (xr, yr) in enumerate(parts):
            assert torch.equal(xr, x[r::3]) and torch.equal(yr, y[r::3])


# ------------------------------------------------------------------ torchrun

def test_ddp_training_matches_one_process(tmp_path: Path) -> None:
    """train_classifier under DDP (2 ranks, gloo) on a model with BatchNorm (torch's and
    timm's BatchNormAct2d) equals one process with the same global batch: each rank gets
    its share of every batch (6 + 5 of the last batch of 11, weighted per item), DDP
    averages the gradients and the norms use the global batch's statistics
    (lana.distill.sync_bn), so only float summation order differs (observed ~1e-7; atol 1e-5),
    running statistics included."""
    from tests.pipeline import ddp_worker

    _torchrun(str(TESTS / "ddp_worker.py"), str(tmp_path))
    net = ddp_worker.model()
    stats = ddp_worker.train(net)
    ref, ddp = net.state_dict(), load_tensors(tmp_path / "ddp.safetensors")
    assert ref.keys() == ddp.keys()
    diff = {k: (ref[k].double() - ddp[k].double()).abs().max().item() for k in ref}
    assert max(diff.values()) < 1e-5, diff
    out = read_json(tmp_path / "ddp.json")
    assert out["world"] == 2 and out["steps"] == stats["steps"]
    assert out["train_loss"] == pytest.approx(stats["train_loss"], rel=1e-5)
    # every rank trained on its own share of each batch of 16 (the last of an epoch: 11)
    epoch = [16] * 5 + [11]
    assert read_json(tmp_path / "seen0.json") == [(n + 1) // 2 for n in epoch * 2][
        :stats["steps"]]
    assert read_json(tmp_path / "seen1.json") == [n // 2 for n in epoch * 2][:stats["steps"]]
    for r in range(2):
        assert "GlobalBatchNorm" not in read_json(tmp_path / f"types{r}.json")


def _batch_stats_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model``'s logits with BatchNorm in batch-statistics mode. Two trainings that differ
    only in float rounding are compared here, not weight by weight: the bias of a norm
    followed by a 1x1 conv and another norm has an exactly zero gradient, Adam scales its
    rounding noise up to full-size steps, and those biases (and the running means
    downstream) drift apart by ~1e-2 without changing this function."""
    from torch.nn.modules.batchnorm import _BatchNorm

    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.train()
            m.track_running_stats = False
    with torch.no_grad():
        return model(x)


def test_torchrun_run_matches_one_process(run_copy) -> None:
    """`lana run` under torchrun (2 ranks, gloo) redoes phase 1 (after one rank was killed
    mid-phase) and phase 3 of a finished one-process run: the candidate weights are bit-identical (per-candidate seeds, the
    same batches on every rank) and the index complete. Phase 3 (DDP, BatchNorm over the
    global batch by lana.distill.sync_bn) equals the one-process fine-tuning up to float rounding,
    which Adam blows up in the few weights whose exact gradient is zero (see
    _batch_stats_logits); so the checks are on the update as a whole (direction and size)
    and on the fine-tuned network's outputs. The weight-by-weight check (1e-5), on a model
    without such weights, is test_ddp_training_matches_one_process."""
    run_dir, cfg = run_copy
    ref_weights = {key: load_tensors(D.weight_path(run_dir, *key))
                   for key in _trained(run_dir)}
    ref_index = read_json(run_dir / "distill" / "index.json")
    sdir = run_dir / "students" / "speedup1.5"
    ref_ft = load_tensors(sdir / "finetuned.safetensors")
    ref_summary = read_json(run_dir / "summary.json")
    shutil.rmtree(run_dir / "distill")
    for name in ("finetune.json", "finetuned.safetensors", "export.json"):
        (sdir / name).unlink()
    shutil.rmtree(sdir / "model")
    search_mtime = (sdir / "search.json").stat().st_mtime_ns

    # First rank 1 is killed after saving its first candidate (torchrun stops rank 0 too);
    # the re-run keeps what was saved and trains the rest.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "lana.cli", "distill", str(run_dir)]
    killed = subprocess.run(cmd, env=_env(LANA_TEST_KILL_AT="distill:saved-one",
                                          LANA_TEST_KILL_RANK="1"),
                            capture_output=True, text=True, timeout=240, cwd=REPO)
    assert killed.returncode != 0
    saved = {p: p.stat().st_mtime_ns for p in (run_dir / "distill").rglob("*.safetensors")}
    assert saved
    res = _torchrun("-m", "lana.cli", "run", str(run_dir / "config.yaml"), "--out",
                    str(run_dir))
    assert all(p.stat().st_mtime_ns == m for p, m in saved.items())
    assert "phase 1: distilling" in res.stderr
    index = read_json(run_dir / "distill" / "index.json")
    assert index.keys() == ref_index.keys()
    for i in index:
        assert index[i].keys() == ref_index[i].keys()
        for spec, entry in index[i].items():
            assert entry["nmse"] == pytest.approx(ref_index[i][spec]["nmse"], rel=1e-6)
    for key, state in ref_weights.items():
        assert _equal_states(state, load_tensors(D.weight_path(run_dir, *key))), key
    assert (sdir / "search.json").stat().st_mtime_ns == search_mtime  # not recomputed
    ft = load_tensors(sdir / "finetuned.safetensors")
    assert ft.keys() == ref_ft.keys()
    # Phase 3 moved the weights from their phase-1 values the same way in both runs:
    # the two updates point the same way and have the same size.
    run = Run(run_dir)
    init = run.assemble(ref_summary["students"][0]["choices"]).state_dict()
    keys = [k for k in ft if ft[k].is_floating_point() and "running_" not in k]
    d_ref = torch.cat([(ref_ft[k] - init[k]).flatten() for k in keys])
    d_ddp = torch.cat([(ft[k] - init[k]).flatten() for k in keys])
    cos = torch.nn.functional.cosine_similarity(d_ref, d_ddp, dim=0).item()
    ratio = (d_ddp.norm() / d_ref.norm()).item()
    assert cos > 0.99 and 0.99 < ratio < 1.01, (cos, ratio)  # observed 0.9995, 1.00003
    # The fine-tuned networks compute the same function (observed: 4e-4 on logits up to 4).
    student = run.assemble(ref_summary["students"][0]["choices"])
    ref_student = copy.deepcopy(student)
    student.load_state_dict(ft)
    ref_student.load_state_dict(ref_ft)
    x = next(run.splits.test.batches(32))[0]
    a, b = _batch_stats_logits(ref_student, x), _batch_stats_logits(student, x)
    assert (a - b).abs().max() < 1e-3 * a.abs().max(), (a - b).abs().max()
    summary = read_json(run_dir / "summary.json")
    assert summary["students"][0]["choices"] == ref_summary["students"][0]["choices"]
    assert abs(summary["students"][0]["accuracy"] - ref_summary["students"][0]["accuracy"]) \
        <= 0.1
    assert not list(run_dir.rglob("*checkpoint*"))
    assert verify_tree(run_dir) == []


def _trained(run_dir: Path) -> list[tuple[int, str]]:
    layers = read_json(run_dir / "candidates.json")["layers"]
    return [(i, s) for i, layer in enumerate(layers) for s in layer["ops"]
            if s not in D.UNTRAINED]


# ------------------------------------------------------------------ SIGKILL and resume

MICRO = {
    "seed": 0, "threads": 1, "model": {"name": "lana:tiny_effnet"},
    "data": {"name": "synthetic", "image_size": 16, "train_samples": 128, "val_samples": 32,
             "test_samples": 32},
    "teacher_training": {"epochs": 1, "batch_size": 32, "checkpoint_every": 2},
    "space": {"ops": ["teacher", "identity", "cb_k3"]},
    "distill": {"steps": 4, "batch_size": 16, "checkpoint_every": 2},
    # No drift checks: they could re-time LUT entries, which the kill test expects kept.
    "latency": {"backend": "torch", "max_seconds": 0.005, "warmup": 1, "drift_every": 0},
    "score": {"samples": 16},
    # A budget every architecture meets: the choice then depends on scores only, not on
    # latency timings that differ between the two runs (which is also why no candidate is
    # left out for being no cheaper than the teacher's layer: timings would decide that).
    "search": {"k": 1, "eval_samples": 16, "budget": {"latency_ms": 10000.0},
               "skip_dominated": False},
    "finetune": {"epochs": 1, "batch_size": 32, "checkpoint_every": 2},
}

# Each kill point, and the sign that the re-run resumed there instead of starting over.
# Latency is measured before phase 1, which leaves out what it shows cannot help.
KILLS = [("teacher:3", "teacher-checkpoint.pt: resuming at step 2"),
         ("profile:layer0", None),  # the LUT entries measured before the kill are kept
         ("distill:3", "phase 1: resuming a group"),
         ("score:computed", None),
         ("search:computed", None),
         ("finetune:3", "finetune-checkpoint.pt: resuming at step 2"),
         ("export:saved", None)]
# Phase 1 killed between two saved candidates: test_sigkill_one_torchrun_rank_in_phase1.
# Stages without a step loop are killed once computed, before their file is written
# (<stage>:computed, Run._stage); profile between two layers, export after writing the
# student's files.
def _micro(tmp_path: Path, name: str) -> Path:
    cfg = {**MICRO, "teacher_training": {**MICRO["teacher_training"],
                                         "cache_dir": str(tmp_path / f"cache-{name}")}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _lana_forked(log: Path, *args: str, kill_at: str | None = None) -> tuple[int, str]:
    """``lana ARGS`` in a child forked from this process; returns (exit code, its output).

    The child is a real process that SIGKILL ends as it would end a fresh `lana`, but it
    inherits the imported torch and lana, which saves ~10 s of start-up per attempt."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)
            os.environ.update(_env(**({"LANA_TEST_KILL_AT": kill_at} if kill_at else {})))
            if not kill_at:
                os.environ.pop("LANA_TEST_KILL_AT", None)
            code = main(list(args))
        except BaseException:  # noqa: BLE001 - reported through the log and exit code
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), log.read_text()


def test_sigkill_in_every_phase_then_resume_gives_the_same_result(tmp_path: Path) -> None:
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    from lana.config import load_config

    Run(ref_dir, load_config(_micro(tmp_path, "ref"))).all()  # uninterrupted, in-process
    torch.set_num_threads(1)
    cfg = str(_micro(tmp_path, "run"))
    saved: dict[str, int] = {}
    expect = None
    lut: dict = {}
    for point, resumed in [*KILLS, (None, None)]:
        code, out = _lana_forked(tmp_path / "attempt.log", "run", cfg, "--out", str(run_dir),
                                 kill_at=point)
        assert code == (-signal.SIGKILL if point else 0), (point, out[-3000:])
        if expect:  # the run after a kill resumed from the killed one's checkpoint
            assert expect in out, (point, expect, out[-3000:])
        expect = resumed
        # work saved by earlier attempts is never redone
        for rel, mtime in saved.items():
            assert (run_dir / rel).stat().st_mtime_ns == mtime, (point, rel)
        saved = {str(p.relative_to(run_dir)): p.stat().st_mtime_ns
                 for p in run_dir.rglob("*") if p.is_file() and _is_result(p)}
        for key, entry in lut.items():  # latencies measured before a kill are kept
            assert read_json(run_dir / "lut.json")["entries"][key] == entry, (point, key)
        if point == "profile:layer0":
            lut = read_json(run_dir / "lut.json")["entries"]
            assert lut and not (run_dir / "latency.json").exists()

    for rel in ["teacher.safetensors", "students/ms10000/finetuned.safetensors",
                *(str(D.weight_path(Path(), *k)) for k in _trained(ref_dir))]:
        assert _equal_states(load_tensors(ref_dir / rel), load_tensors(run_dir / rel)), rel
    assert read_json(run_dir / "scores.json")["scores"] == \
        read_json(ref_dir / "scores.json")["scores"]
    a, b = read_json(ref_dir / "summary.json"), read_json(run_dir / "summary.json")
    assert a["students"][0]["choices"] == b["students"][0]["choices"]
    assert a["students"][0]["accuracy"] == b["students"][0]["accuracy"]
    assert a["teacher"]["accuracy"] == b["teacher"]["accuracy"]
    assert not list(run_dir.rglob("*checkpoint*"))
    assert verify_tree(run_dir) == []
    memory = read_json(run_dir / "memory.json")
    assert memory["distill_peak_rss_mb"] > 50 and b["peak_rss_mb"] == memory
    # phase 1's automatic grouping and its estimate are reported
    assert memory["distill_groups"] >= 1 and memory["distill_max_memory_mb"] == 1024
    assert 0 < memory["distill_group_estimate_mb"] <= 1024


def _is_result(p: Path) -> bool:
    # Files a later attempt may legitimately rewrite: bookkeeping, not results. (The
    # search stage writes library.json, its input, first; killed before search.json, it
    # writes it again. lut.json entries are checked one by one.)
    return not (p.name.startswith(".") or "checkpoint" in p.name or p.name in (
        "timings.json", "memory.json", "config.yaml", "lana.lock", "index.json", "index.lock",
        "lut.json", "summary.json", "library.json") or p.name.endswith((".sha256", ".tmp"))
        or p.parent.name == "model")  # files of the exported student, the last stage


# ------------------------------------------------------------------ checksums, corrupt files

def test_corrupt_files_are_named_and_recomputed_on_request(
        run_copy, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = run_copy
    scores = run_dir / "scores.json"
    good = read_json(scores)
    weight = D.weight_path(run_dir, 1, "cb_k3")
    good_weight = load_tensors(weight)
    scores.write_text(scores.read_text().replace("0", "1", 3))  # a silent edit
    weight.write_bytes(weight.read_bytes()[:-10])  # truncated
    assert main(["score", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "scores.json" in err and "--recompute-corrupt" in err
    with pytest.raises(Exception, match="cb_k3.safetensors"):
        verify_tree(run_dir)
    assert main(["distill", str(run_dir), "--recompute-corrupt"]) == 0
    assert (weight.parent / "cb_k3.safetensors.corrupt").exists()
    assert _equal_states(good_weight, load_tensors(weight))  # retrained, identically
    assert main(["score", str(run_dir)]) == 0
    assert read_json(scores)["scores"] == good["scores"]
    assert verify_tree(run_dir) == []


def test_checksum_sidecar_is_sha256sum_compatible(tmp_path: Path) -> None:
    from lana.core.io import write_json

    write_json(tmp_path / "a.json", {"x": 1})
    line = checksum_path(tmp_path / "a.json").read_text()
    assert line.endswith("  a.json\n")
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "-c", "--quiet", "a.json.sha256"], cwd=tmp_path,
                       check=True)


# ------------------------------------------------------------------ run lock

def test_second_process_is_locked_out_and_stale_lock_is_taken_over(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lana.core.io import run_lock\n"
         f"with run_lock({str(run_dir)!r}):\n print('locked', flush=True); time.sleep(60)"],
        env=_env(), stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["distill", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "another lana run" in err
        with pytest.raises(Exception, match=str(holder.pid)):
            with run_lock(run_dir):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert str(holder.pid) in (run_dir / "lana.lock").read_text()  # left behind by the kill
    stale_tmp = run_dir / "distill" / ".index.json.x1y2.tmp"  # a killed writer's temporary
    stale_tmp.parent.mkdir()
    stale_tmp.write_text("{half")
    with run_lock(run_dir):  # the dead holder's lock is taken over
        assert str(os.getpid()) in (run_dir / "lana.lock").read_text()
        with run_lock(run_dir):  # re-entrant in one process
            pass
    assert not stale_tmp.exists()
    assert "no longer running" in capsys.readouterr().err


def test_concurrent_index_updates_lose_nothing(tmp_path: Path) -> None:
    """Writers adding entries to one phase-1 index at once, as ranks do (threads here, to
    keep the test fast: each update opens the lock file anew, so flock excludes threads
    exactly as it excludes processes)."""
    import threading

    def writer(r: int) -> None:
        for k in range(25):
            D._update_index(tmp_path, [], {(r, f"op{k}"): 0.5}, 3)

    threads = [threading.Thread(target=writer, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    index = read_json(tmp_path / "distill" / "index.json")
    assert {(int(i), s) for i, row in index.items() for s in row} == {
        (r, f"op{k}") for r in range(4) for k in range(25)}


# ------------------------------------------------------------------ phase-1 memory plan

def test_automatic_groups_stay_within_the_memory_budget(seq_chain) -> None:
    from lana.config import DistillConfig

    todo = [(i, s) for i in range(4) for s in ("cb_k3", "cb_k5", "ir_k3_e1", "ir_k3_e6")]
    one = {key: D.candidate_memory_mb(seq_chain, *key, batch_size=64) for key in todo}
    # Activations scale with the batch; the weights' share does not.
    assert all(0 < one[k] < D.candidate_memory_mb(seq_chain, *k, batch_size=128)
               < 2 * one[k] for k in todo)
    budget = 3 * max(one.values())
    groups, est = D.plan_groups(seq_chain, todo, DistillConfig(batch_size=64,
                                                               max_memory_mb=budget))
    assert [c for g in groups for c in g] == todo and len(groups) > 1
    for g, mb in zip(groups, est, strict=True):
        assert mb == pytest.approx(sum(one[k] for k in g)) and mb <= budget
    for g, nxt in zip(groups[:-1], groups[1:], strict=True):  # as full as the budget allows
        assert sum(one[k] for k in g) + one[nxt[0]] > budget
    # A resumed run (the first group done) forms the same remaining groups.
    rest, _ = D.plan_groups(seq_chain, todo[len(groups[0]):],
                            DistillConfig(batch_size=64, max_memory_mb=budget))
    assert rest == groups[1:]
    # A candidate over the budget trains alone; a fixed group_size ignores the budget.
    tiny, _ = D.plan_groups(seq_chain, todo, DistillConfig(batch_size=64, max_memory_mb=1e-6))
    assert tiny == [[k] for k in todo]
    fixed, _ = D.plan_groups(seq_chain, todo, DistillConfig(batch_size=64, group_size=5,
                                                            max_memory_mb=1e-6))
    assert [len(g) for g in fixed] == [5, 5, 5, 1]


# ------------------------------------------------------------------ DDP teacher, killed

def _fork_gloo_ranks(log_dir: Path, target, **env: str) -> list[tuple[int, str]]:
    """``target()`` on 2 ranks forked from this process, joined in a gloo group through a
    fresh file store; returns each rank's (exit code, output). Forked, not started: no
    interpreter start-up or imports (~10 s each under torchrun here)."""
    import tempfile

    store = tempfile.mktemp(dir=log_dir, prefix="store-")
    pids = []
    for rank in range(2):
        pid = os.fork()
        if pid == 0:  # a rank: never returns into pytest
            code = 70
            try:
                fd = os.open(log_dir / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)
                os.environ.update(_env(**env))
                torch.distributed.init_process_group("gloo", init_method=f"file://{store}",
                                                     rank=rank, world_size=2)
                target()
                torch.distributed.destroy_process_group()
                code = 0
            except BaseException:  # noqa: BLE001 - reported through the log and exit code
                import traceback

                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    return [(c, (log_dir / f"rank{r}.log").read_text()) for r, c in enumerate(codes)]


def test_ddp_teacher_killed_resumes_on_every_rank(tmp_path: Path) -> None:
    """A run's teacher trained by 2 ranks together (DDP, lana.pipeline.teacher.on_every_rank as
    `lana run`/`distill` under torchrun do) computes what the one-process teacher does;
    killed after a checkpoint, rank 0 wrote it, both ranks resume from it, and the
    teacher equals the uninterrupted 2-rank one bit for bit."""
    from lana.config import load_config
    from lana.pipeline.teacher import on_every_rank

    def teacher(name: str):
        # The config file is written here, once, before the fork: two ranks rewriting it
        # at once let one read it half-written (a different 'data' section; 2 of 3 failed).
        cfg = _micro(tmp_path, name)
        return lambda: on_every_rank(Run(tmp_path / name, load_config(cfg)))

    whole = _fork_gloo_ranks(tmp_path, teacher("whole"))
    for code, out in whole:  # both ranks trained
        assert code == 0 and "teacher: training" in out, out[-2000:]
    run = Run(tmp_path / "one", load_config(_micro(tmp_path, "one")))
    ref = run.teacher  # trained in one process
    ddp = copy.deepcopy(ref)
    ddp.load_state_dict(load_tensors(tmp_path / "whole" / "teacher.safetensors"))
    x = next(run.splits.test.batches(32))[0]
    a, b = _batch_stats_logits(ref, x), _batch_stats_logits(ddp, x)
    # Observed ~1e-4 on logits up to ~8 (see _batch_stats_logits for why not 1e-5).
    assert (a - b).abs().max() < 1e-3 * a.abs().max(), (a - b).abs().max()

    killed = _fork_gloo_ranks(tmp_path, teacher("killed"), LANA_TEST_KILL_AT="teacher:3")
    assert [c for c, _ in killed] == [-signal.SIGKILL] * 2
    assert (tmp_path / "killed" / "teacher-checkpoint.pt").exists()
    resumed = _fork_gloo_ranks(tmp_path, teacher("killed"))
    for code, out in resumed:
        assert code == 0 and "teacher-checkpoint.pt: resuming at step 2" in out, out[-2000:]
    a = load_tensors(tmp_path / "whole" / "teacher.safetensors")
    b = load_tensors(tmp_path / "killed" / "teacher.safetensors")
    assert _equal_states(a, b)
    assert not (tmp_path / "killed" / "teacher-checkpoint.pt").exists()
