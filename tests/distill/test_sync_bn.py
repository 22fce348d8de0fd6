"""lana.distill.sync_bn: BatchNorm over the global batch of 2 gloo ranks equals a plain BatchNorm on
the concatenated batch, forward, backward and running statistics.

The ranks are forked from the test process (no interpreter start, no torch import: ~1 s),
each joins a gloo group through a file store, runs its share and saves what it computed.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from lana.distill.sync_bn import GlobalBatchNorm, global_batch_norm, synced_batchnorm

WORLD = 2


def _norms() -> dict[str, nn.Module]:
    """BatchNorm variants with non-trivial affine parameters and running statistics."""
    torch.manual_seed(1)
    out = {"bn2d": nn.BatchNorm2d(5), "bn2d_cumulative": nn.BatchNorm2d(5, momentum=None),
           "bn_act": BatchNormAct2d(5, act_layer=nn.ReLU), "bn1d": nn.BatchNorm1d(5)}
    for m in out.values():
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-1, 1)
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return out


def _inputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch of 7 (split 4 + 3: uneven on purpose) with a large mean, where a
    one-pass variance would lose precision, and the upstream gradient of the output."""
    g = torch.Generator().manual_seed(2)
    shape = (7, 5) if name == "bn1d" else (7, 5, 3, 4)
    return torch.randn(*shape, generator=g) * 2 + 30, torch.randn(*shape, generator=g)


def _step(norm: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, steps: int = 3) -> dict:
    """``steps`` training-mode forward/backward passes (running statistics move each time)."""
    holder = nn.Sequential(norm)
    x = x.clone().requires_grad_(True)
    with synced_batchnorm(holder) as n:
        assert n == 1 and isinstance(holder[0], GlobalBatchNorm)
        for _ in range(steps):
            (holder(x) * grad_out).sum().backward()
        y = holder(x).detach()
    assert holder[0] is norm  # the plain module is back, holding the trained state
    return {"y": y, "x_grad": x.grad, "w_grad": norm.weight.grad, "b_grad": norm.bias.grad,
            **{k: v.clone() for k, v in norm.state_dict().items()}}


def _rank_main(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=WORLD)
    try:
        res = {}
        for name, norm in _norms().items():
            x, grad_out = _inputs(name)
            res[name] = _step(norm, x[rank::WORLD], grad_out[rank::WORLD])
        torch.save(res, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _fork_ranks(tmp_path: Path) -> list[dict]:
    pids = []
    for rank in range(WORLD):
        pid = os.fork()
        if pid == 0:  # the child: run one rank, never return into pytest
            code = 1
            try:
                _rank_main(rank, str(tmp_path / "store"), str(tmp_path))
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_two_ranks_equal_one_batchnorm_over_the_concatenated_batch(tmp_path: Path) -> None:
    ranks = _fork_ranks(tmp_path)
    for name, norm in _norms().items():
        x, grad_out = _inputs(name)
        ref = copy.deepcopy(norm).train()
        xr = x.clone().requires_grad_(True)
        for _ in range(3):
            (ref(xr) * grad_out).sum().backward()
        y = ref(xr).detach()
        for r, res in enumerate(ranks):
            got = res[name]
            torch.testing.assert_close(got["y"], y[r::WORLD], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got["x_grad"], xr.grad[r::WORLD], atol=1e-5, rtol=1e-5)
            for key, value in ref.state_dict().items():  # running statistics, batch count
                torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-6)
        # Each rank holds the gradient of its share's loss; DDP sums (averages) them.
        for key, p in (("w_grad", ref.weight), ("b_grad", ref.bias)):
            torch.testing.assert_close(ranks[0][name][key] + ranks[1][name][key], p.grad, atol=1e-4,
                                       rtol=1e-5)


def test_without_a_process_group_it_is_a_plain_batchnorm() -> None:
    for name, norm in _norms().items():
        x, _ = _inputs(name)
        ref, mine = copy.deepcopy(norm), copy.deepcopy(norm)
        y = global_batch_norm(x, mine)
        expected = nn.functional.batch_norm(x, ref.running_mean, ref.running_var, ref.weight,
                                            ref.bias, True, ref.momentum or 1.0, ref.eps)
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.running_var, ref.running_var)
        assert int(mine.num_batches_tracked) == 1


def test_a_batch_of_one_value_per_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        global_batch_norm(torch.randn(1, 3), nn.BatchNorm1d(3))
