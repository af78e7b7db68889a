"""Multi-process data-parallel training (``torchrun``): process group, sharding, collectives.

``torchrun --nproc_per_node N -m interp_core train ...`` starts N processes with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` in their environment; :func:`init_distributed` turns that into a
process group (NCCL on CUDA, gloo on the CPU) and a device per process. The training loop then

- keeps the *global* batch equal to ``--batch-size``: each of the ``W`` ranks takes
  ``batch_size / W`` samples (:func:`per_rank_batch_size`), so one optimiser step sees the same
  samples as a single process would (:func:`train_sampler`: the same permutation, strided across
  ranks), and DistributedDataParallel averages the per-rank mean-loss gradients, which is the
  gradient of the global-batch mean loss;
- wraps the model in DistributedDataParallel (:func:`wrap_model`) with ``broadcast_buffers=False``:
  BatchNorm running statistics are averaged across ranks after every step instead
  (:func:`StepSync`), which for the running mean equals the single-process value exactly (an
  exponential average is linear and the mean of equal-sized per-rank means is the global mean),
  while broadcasting would keep rank 0's statistics only;
- optionally (``--sync-bn``) normalises each BatchNorm with the statistics of the whole global
  batch (:class:`CrossRankBatchNorm`, works with gloo on the CPU and NCCL on GPUs, unlike
  ``torch.nn.SyncBatchNorm`` which is GPU-only); without it each rank normalises with its own
  ``batch_size / W`` samples, the usual DDP behaviour;
- shards validation and the ECE refresh (:func:`shard`), reducing sums (:func:`all_reduce_sum`)
  and gathering per-sample rows (:func:`all_gather_rows`) so every rank holds identical numbers
  and takes identical decisions (best epoch, weights, divergence stop);
- lets rank 0 alone write the run directory; the others wait at :func:`barrier`.

Nothing here pickles: every collective moves tensors.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Dataset, DistributedSampler, Subset

from .._utils.device import pick_device
from ..errors import InterpError
from .cross_rank_bn import CrossRankBatchNorm


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run directory and logs."""
        return self.rank == 0


SINGLE = DistInfo()


def env_dist_info(environ: dict[str, str] | None = None) -> DistInfo:
    """The ``DistInfo`` torchrun put in the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``);
    a single process when ``WORLD_SIZE`` is unset or 1."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise InterpError(f"malformed torchrun environment (WORLD_SIZE/RANK/LOCAL_RANK): {e}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise InterpError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def init_distributed(device_name: str = "auto", timeout_s: float = 1800.0) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes and pick this process's device.

    CUDA: device ``cuda:LOCAL_RANK`` and the NCCL backend (one GPU per process). Otherwise the
    device ``pick_device`` chooses (CPU) and gloo. A single process (no ``WORLD_SIZE`` > 1)
    joins nothing. Idempotent: an already initialised group is reused.
    """
    info = env_dist_info()
    device = pick_device(device_name)
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise InterpError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} GPU(s) on this node; "
                              "use --nproc_per_node <= the GPU count")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    elif device.type == "mps":
        raise InterpError("multi-process training is not supported on MPS; use --device cpu or a CUDA machine")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    if dist.get_world_size() != info.world_size or dist.get_rank() != info.rank:
        raise InterpError("the process group does not match WORLD_SIZE/RANK in the environment")
    return info, device


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group (after a final barrier so no rank exits while others still talk)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait until every rank arrives (no-op for a single process)."""
    if info.enabled:
        dist.barrier()


# -- data ----------------------------------------------------------------------------------------
def per_rank_batch_size(global_batch: int, info: DistInfo) -> int:
    """``global_batch / world_size``; an InterpError when it does not divide (the global batch
    would otherwise silently change, and with it the results)."""
    if global_batch % info.world_size:
        raise InterpError(f"--batch-size {global_batch} is not divisible by the {info.world_size} processes; "
                          f"choose a multiple of {info.world_size}")
    return global_batch // info.world_size


def train_sampler(dataset: Dataset, info: DistInfo, seed: int) -> DistributedSampler:
    """The training shuffle: a DistributedSampler whose permutation at epoch ``e`` is
    ``randperm(n, generator seeded seed + e)``, exactly the permutation a single-process
    ``RandomSampler`` with that generator draws, strided across ranks (rank ``r`` takes positions
    ``r, r + W, ...``). With per-rank batches of ``B / W``, the union of the ranks' ``k``-th
    batches is the single process's ``k``-th batch of ``B``. Call ``set_epoch`` every epoch.

    ``drop_last=True`` on the sampler: it trims the permutation to a multiple of ``W`` instead of
    padding it with repeated samples (padding would count some samples twice in a step); the
    loader's own ``drop_last`` then drops the incomplete global batch as a single process does.
    """
    return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed,
                              drop_last=True)


def shard(dataset: Dataset, info: DistInfo) -> Dataset:
    """Rank ``r``'s share ``r, r + W, r + 2W, ...`` of a dataset, without padding or repeats, so
    sums over the shards are sums over the dataset (validation, the ECE refresh)."""
    if not info.enabled:
        return dataset
    return Subset(dataset, list(range(info.rank, len(dataset), info.world_size)))


# -- model ---------------------------------------------------------------------------------------
def wrap_model(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module`` (itself for a single process).

    ``broadcast_buffers=False``: BatchNorm buffers are averaged after every step by
    :class:`StepSync` (or are identical already with :class:`CrossRankBatchNorm`), so rank 0's
    buffers need not overwrite the others' at every forward. Parameters are broadcast from rank 0
    once, at construction.
    """
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, broadcast_buffers=False)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or ``torch.compile`` wrappers.

    The saliency-guided objectives run their eval-mode saliency and attack passes on it:
    those passes take input gradients only (``torch.autograd.grad`` w.r.t. the input), and
    running them through the DDP wrapper would prepare a gradient all-reduce that never happens.
    """
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        elif type(model).__name__ == "DistributedDataParallel" and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            break
    return model


def convert_cross_rank_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` (in place) by :class:`CrossRankBatchNorm`
    sharing its parameters and buffers; returns ``module``. ``--sync-bn``."""
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = CrossRankBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            new.train(child.training)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            setattr(module, name, new)
        else:
            convert_cross_rank_batchnorm(child)
    return module


# -- collectives ---------------------------------------------------------------------------------
def comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL (it moves CUDA tensors only),
    the CPU for gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise sum over ranks (a copy, on ``values``' device; the input for a single
    process). Every rank gets the same bits, so decisions taken from the result agree everywhere."""
    if not info.enabled:
        return values
    out = values.detach().to(comm_device(), copy=True)
    dist.all_reduce(out)
    return out.to(values.device)


def broadcast_tensor(values: torch.Tensor, info: DistInfo, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``values`` on every rank (a copy, on ``values``' device)."""
    if not info.enabled:
        return values
    out = values.detach().to(comm_device(), copy=True)
    dist.broadcast(out, src)
    return out.to(values.device)


def all_gather_rows(rows: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate every rank's ``[n_r, k]`` rows (``n_r`` may differ) into ``[sum n_r, k]``, in
    rank order, identical on every rank (on ``rows``' device). Sizes are exchanged first, rows
    padded to the largest."""
    if not info.enabled:
        return rows
    dev = comm_device()
    n = torch.tensor([rows.shape[0]], dtype=torch.long, device=dev)
    sizes = [torch.empty_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    most = int(max(int(s) for s in sizes))
    padded = torch.zeros((most, *rows.shape[1:]), dtype=rows.dtype, device=dev)
    padded[: rows.shape[0]] = rows.to(dev)
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)]).to(rows.device)


def batchnorm_buffers(module: nn.Module) -> list[torch.Tensor]:
    """The floating running statistics (mean, var) of every BatchNorm layer in ``module``."""
    out: list[torch.Tensor] = []
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None:
            out += [m.running_mean, m.running_var]
    return out


class StepSync:
    """The per-step agreement between ranks, in one all-reduce of a small vector:
    the mean of the ranks' losses and extras (equal per-rank batches, so the mean of per-rank
    means is the global-batch mean that a single process reports) and, unless BatchNorm is
    already cross-rank, the average of the ranks' BatchNorm running statistics.

    A non-finite loss on any rank makes the averaged loss non-finite on every rank, so all
    ranks stop at the same step (one rank raising alone would leave the others waiting).
    """

    def __init__(self, module: nn.Module, info: DistInfo, average_buffers: bool):
        self.info = info
        self.buffers = batchnorm_buffers(module) if average_buffers else []

    def __call__(self, loss: torch.Tensor, extras: dict[str, float]) -> tuple[float, dict[str, float]]:
        """``(mean loss, mean extras)`` over ranks; averages the BatchNorm buffers in place."""
        keys = sorted(extras)
        if not self.info.enabled:
            return float(loss.detach()), {k: float(extras[k]) for k in keys}
        head = torch.tensor([float(loss.detach())] + [float(extras[k]) for k in keys], dtype=torch.float64)
        dev = comm_device()
        flat = torch.cat([head.to(dev)] + [b.detach().double().flatten().to(dev) for b in self.buffers])
        dist.all_reduce(flat)
        flat /= self.info.world_size
        offset = head.numel()
        with torch.no_grad():
            for b in self.buffers:
                b.copy_(flat[offset: offset + b.numel()].view_as(b).to(b.dtype))
                offset += b.numel()
        values = flat[: head.numel()].cpu().tolist()
        return values[0], dict(zip(keys, values[1:]))


def rank_seed(seed: int, info: DistInfo) -> int:
    """Seed of rank ``r``'s random stream derived from a single-process seed: ``seed`` itself on
    rank 0 (a single process is unchanged), distinct streams elsewhere. The objectives' random
    draws (SGT's fill values, SCAAT's random start, tie-breaks) are therefore independent across
    ranks, not slices of the single-process draws: the same procedure, different samples of it."""
    return int(seed) + 1_000_003 * int(info.rank)


def ranks_agree(value: int, info: DistInfo) -> bool:
    """True when every rank holds the same integer ``value`` (min == max across ranks)."""
    if not info.enabled:
        return True
    t = torch.tensor([value, -value], dtype=torch.long, device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0]) == -int(t[1])


def describe(info: DistInfo, device: torch.device) -> str:
    """One line for the log: backend, world size, device."""
    if not info.enabled:
        return f"single process on {device}"
    return f"{info.world_size} processes ({dist.get_backend()}), rank {info.rank} on {device}"


__all__: Iterable[str] = [
    "DistInfo", "SINGLE", "env_dist_info", "init_distributed", "shutdown_distributed", "barrier",
    "per_rank_batch_size", "train_sampler", "shard", "wrap_model", "unwrap_model",
    "convert_cross_rank_batchnorm", "comm_device", "all_reduce_sum", "broadcast_tensor", "all_gather_rows",
    "batchnorm_buffers", "StepSync", "rank_seed", "ranks_agree", "describe",
]
