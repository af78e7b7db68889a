"""The single-process pieces of interp_core.training.distributed (no process group needed)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import RandomSampler

from interp_core.errors import InterpError
from interp_core.models import create_model
from interp_core.training.distributed import (DistInfo, convert_cross_rank_batchnorm, env_dist_info,
                                              per_rank_batch_size, shard, train_sampler, unwrap_model)


def test_env_dist_info():
    assert env_dist_info({}) == DistInfo(0, 1, 0)
    info = env_dist_info({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (3, 4, 1, True, False)
    with pytest.raises(InterpError, match="inconsistent"):
        env_dist_info({"WORLD_SIZE": "2", "RANK": "2"})


def test_global_batch_must_divide():
    assert per_rank_batch_size(64, DistInfo(0, 4, 0)) == 16
    with pytest.raises(InterpError, match="not divisible by the 2 processes"):
        per_rank_batch_size(9, DistInfo(0, 2, 0))


def test_sampler_deals_the_single_process_permutation_across_ranks():
    """Rank r's k-th batch of B/W plus the other ranks' k-th batches = the single process's k-th
    batch of B, which is RandomSampler's permutation with the generator seeded seed + epoch."""
    data, seed, epoch, world, batch = list(range(23)), 7 * 100003, 2, 2, 8
    single = list(RandomSampler(data, generator=torch.Generator().manual_seed(seed + epoch)))
    per_rank = []
    for r in range(world):
        s = train_sampler(data, DistInfo(r, world, r), seed)
        s.set_epoch(epoch)
        per_rank.append(list(s))
    assert len(per_rank[0]) == len(per_rank[1]) == 11  # trimmed to a multiple of W, no repeats
    b = batch // world
    for k in range(len(single) // batch):
        union = sorted(per_rank[0][k * b:(k + 1) * b] + per_rank[1][k * b:(k + 1) * b])
        assert union == sorted(single[k * batch:(k + 1) * batch])


def test_shard_covers_the_dataset_once():
    data = list(range(7))
    parts = [list(shard(data, DistInfo(r, 3, r))) for r in range(3)]
    assert sorted(sum(parts, [])) == data and [len(p) for p in parts] == [3, 2, 2]
    assert shard(data, DistInfo()) is data


def test_cross_rank_batchnorm_is_batchnorm_outside_a_process_group():
    torch.manual_seed(0)
    model = create_model("smallcnn", 2)
    ref = create_model("smallcnn", 2)
    ref.load_state_dict(model.state_dict())
    convert_cross_rank_batchnorm(model)
    assert sum(type(m).__name__ == "CrossRankBatchNorm" for m in model.modules()) == 4
    assert model.state_dict().keys() == ref.state_dict().keys()  # checkpoints load into the plain model
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(model(x), ref(x))  # train mode, single process
    torch.testing.assert_close(model.state_dict()["features.1.running_mean"], ref.state_dict()["features.1.running_mean"])
    model.eval(), ref.eval()
    torch.testing.assert_close(model(x), ref(x))


def test_unwrap_model_through_compile():
    m = nn.Linear(2, 2)
    assert unwrap_model(torch.compile(m, backend="eager")) is m
    assert unwrap_model(m) is m
