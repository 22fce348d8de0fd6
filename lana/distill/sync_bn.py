"""BatchNorm over the global batch of a torchrun job, on every backend (gloo CPUs included).

Data-parallel training splits each global batch across ranks; a plain BatchNorm then
normalises each rank's share by that share's statistics, which changes the result.
``torch.nn.SyncBatchNorm`` fixes this on CUDA only. :func:`synced_batchnorm` swaps every
BatchNorm of a model for a synchronised one for the duration of a ``with`` block:
torch's SyncBatchNorm (via timm's converter, which keeps the activation of timm's
BatchNormAct2d) on CUDA, and :class:`GlobalBatchNorm` elsewhere. GlobalBatchNorm computes
the mean and variance over all ranks with one differentiable all-reduce (sums, sums of
squares and the count, in float64), so autograd all-reduces the gradient terms in the
backward pass exactly as SyncBatchNorm's hand-written backward does, and updates the
running statistics as one BatchNorm over the global batch would (unbiased variance over
the global count). The swapped modules share their parameters and buffers with the
originals, keep their state-dict keys, and are swapped back when the block ends, so the
trained model is a normal model with plain BatchNorm layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradient over ranks: each rank's loss
    depends on every rank's input through the shared statistics."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return t
    return _AllReduceSum.apply(t, group)


def global_batch_norm(x: torch.Tensor, bn: nn.Module, group=None) -> torch.Tensor:
    """``bn``'s batch normalisation of ``x`` with the statistics of the global batch (this
    rank's ``x`` and every other rank's), updating ``bn``'s running statistics in training
    mode. Without a process group it equals ``F.batch_norm`` in training mode."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    c = x.shape[1]
    local_n = x.numel() // c
    # One all-reduce (one more in backward) of the sums, the sums of squares and the count,
    # in float64: E[x^2] - E[x]^2 then keeps ~16 - log10(mean^2/var) digits, far more than
    # float32 data has, and a rank waits on the others once per norm, not twice.
    xd = x.double()
    sums = _all_reduce(torch.cat([xd.sum(dims), xd.pow(2).sum(dims),
                                  xd.new_tensor([local_n])]), group)
    n = int(sums[-1].item())  # float64 holds counts exactly up to 2**53
    if n <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"size {list(x.shape)} ({n} values over all ranks)")
    mean = sums[:c] / n
    var = (sums[c:2 * c] / n - mean.pow(2)).clamp_min(0)
    invstd = torch.rsqrt(var + bn.eps)
    y = (x - mean.view(shape).to(x.dtype)) * invstd.view(shape).to(x.dtype)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                      else bn.momentum)
            bn.running_mean.mul_(1 - factor).add_(mean.to(x.dtype), alpha=factor)
            bn.running_var.mul_(1 - factor).add_((var * n / (n - 1)).to(x.dtype),
                                                 alpha=factor)
    return y


class GlobalBatchNorm(nn.Module):
    """Stands in for a BatchNorm (``nn.BatchNorm1d/2d/3d`` or timm's ``BatchNormAct2d``)
    while a model trains data-parallel: normalises by the global batch's statistics
    (see :func:`global_batch_norm`). It holds the original's very parameters, buffers and
    submodules (timm's ``drop``/``act``) under the same names, so optimisers, DDP and
    checkpoints see no difference."""

    def __init__(self, bn: _BatchNorm, group=None) -> None:
        super().__init__()
        for key in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            setattr(self, key, getattr(bn, key))
        self.group = group
        for key, p in bn._parameters.items():
            self.register_parameter(key, p)
        for key, b in bn._buffers.items():
            self.register_buffer(key, b, persistent=key not in bn._non_persistent_buffers_set)
        for key, child in bn.named_children():
            self.add_module(key, child)
        self.train(bn.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.running_mean is None:
            y = global_batch_norm(x, self, self.group)
        else:  # eval mode: the running statistics, as every BatchNorm
            y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                             False, 0.0, self.eps)
        # timm's BatchNormAct2d applies dropout and its activation after the norm.
        if hasattr(self, "drop"):
            y = self.drop(y)
        if hasattr(self, "act"):
            y = self.act(y)
        return y


def _convertible(m: nn.Module) -> bool:
    from timm.layers import BatchNormAct2d

    # Subclasses with other forward() logic are not known to be safe to swap.
    return type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, BatchNormAct2d)


def _sync_module(bn: _BatchNorm, group) -> nn.Module:
    if bn.weight is not None and bn.weight.is_cuda or bn.running_mean is not None \
            and bn.running_mean.is_cuda:
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(bn, group)  # torch's SyncBatchNorm (NCCL)
    return GlobalBatchNorm(bn, group)


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module, group=None) -> Iterator[int]:
    """Within the block, every BatchNorm of ``model`` normalises over the global batch of
    ``group`` (default: all ranks); yields how many were swapped. Afterwards the original
    modules are back in place, holding the trained parameters and running statistics.
    Call it on every rank (the norms all-reduce in every training-mode forward)."""
    swapped: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
    skipped: set[str] = set()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, _BatchNorm) or isinstance(child, nn.SyncBatchNorm):
                continue
            if not _convertible(child):
                skipped.add(type(child).__name__)
                continue
            new = _sync_module(child, group)
            parent.add_module(name, new)
            swapped.append((parent, name, child, new))
    if skipped:
        from lana.core.progress import log

        log(f"[yellow]BatchNorm types {sorted(skipped)} are not synchronised across ranks "
            "(their statistics come from each rank's share of the batch)[/yellow]")
    try:
        yield len(swapped)
    finally:
        for parent, name, original, new in reversed(swapped):
            # Point the original at the tensors the stand-in trained (they are the same
            # objects unless something like .to() replaced them meanwhile).
            for key in original._parameters:
                original._parameters[key] = new._parameters[key]
            for key in original._buffers:
                original._buffers[key] = new._buffers[key]
            original.train(new.training)
            parent.add_module(name, original)
