"""Batch normalisation over the global batch of every rank (torchrun), so a distributed run
normalises exactly as one process with the whole batch would: statistics from one all-gather
(Chan et al.'s parallel formula), gradients through them with one all-reduce."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def global_batch_stats(x: torch.Tensor, world_size: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-channel ``(mean, biased var, N)`` of ``x`` ``[B,C,...]`` over every rank's batch (one
    all-gather). Local ``(n_r, m_r, M2_r)`` are combined with Chan et al.'s parallel formula:
    ``mean = sum n_r m_r / N``, ``M2 = sum M2_r + sum n_r (m_r - mean)^2``, ``var = M2 / N``;
    exact for any split, in float64."""
    c = x.shape[1]
    dims = [0, *range(2, x.dim())]
    n_local = float(x.numel() // c) if x.numel() else 0.0
    with torch.no_grad():
        var_l, mean_l = torch.var_mean(x.detach().double(), dim=dims, unbiased=False)
        local = torch.cat([torch.full((1,), n_local, dtype=torch.float64, device=x.device), mean_l, var_l * n_local])
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(gathered, local)
        allv = torch.stack(gathered)  # [W, 1 + 2C]
        counts, means, m2 = allv[:, :1], allv[:, 1:1 + c], allv[:, 1 + c:]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (m2.sum(0) + (counts * (means - mean) ** 2).sum(0)) / n
    return mean, var, float(n)


class _CrossRankBatchNormFn(torch.autograd.Function):
    """``y = (x - mean) * invstd * w + b`` with global-batch ``mean``, ``invstd`` (treated as
    functions of every rank's ``x`` in the backward pass). Backward, with ``xhat`` the normalised
    input and sums over all ranks (one all-reduce):
    ``dx = w * invstd * (dy - sum(dy) / N - xhat * sum(dy * xhat) / N)``; ``dw``, ``db`` are this
    rank's sums (DistributedDataParallel averages them, as for any parameter).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, n):  # type: ignore[override]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xhat = (x.float() - mean.float().view(shape)) * invstd.float().view(shape)
        y = xhat if weight is None else xhat * weight.float().view(shape) + bias.float().view(shape)
        ctx.save_for_backward(xhat, invstd.float(), weight)
        ctx.n = float(n)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        xhat, invstd, weight = ctx.saved_tensors
        dims = [0, *range(2, xhat.dim())]
        shape = [1, -1] + [1] * (xhat.dim() - 2)
        g = gy.float()
        sum_dy = g.sum(dims)
        sum_dy_xhat = (g * xhat).sum(dims)
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both)
        c = sum_dy.numel()
        scale = invstd if weight is None else invstd * weight.float()
        dx = scale.view(shape) * (g - (both[:c] / ctx.n).view(shape) - xhat * (both[c:] / ctx.n).view(shape))
        dw = sum_dy_xhat.to(weight.dtype) if weight is not None else None
        db = sum_dy.to(weight.dtype) if weight is not None else None
        return dx.to(gy.dtype), dw, db, None, None, None


class CrossRankBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that, in train mode inside a process group of more than one rank, normalises
    with the statistics of the whole global batch (:func:`global_batch_stats`) and updates its
    running statistics with them (unbiased variance ``var * N / (N - 1)``), as a single process
    with the global batch would. Eval mode and single processes: plain BatchNorm. Same parameters
    and buffers as BatchNorm2d, so its weights load into the ordinary model.

    ``torch.nn.SyncBatchNorm`` does the same on GPUs only (its kernels are CUDA-only); this one
    works with gloo on the CPU and with NCCL on GPUs. ``--sync-bn``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not self.training:
            # plain eval-mode BatchNorm, written without input checks so torch.fx can trace it
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.running_mean is None, 0.0, self.eps)
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        mean, var, n = global_batch_stats(x, dist.get_world_size())
        invstd = torch.rsqrt(var + self.eps)
        y = _CrossRankBatchNormFn.apply(x, self.weight, self.bias, mean, invstd, n)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var * (n / max(1.0, n - 1.0))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return y
