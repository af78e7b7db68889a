"""An interrupted metrics computation (a closed Metrics tab, a crash) resumes inside its metrics phase:
the tiles already scored are read back from ``eval_cache/<key>.partial.npz`` and only the rest are
computed; the result equals an uninterrupted run's (the consistency attack's random state included)."""
from __future__ import annotations

import shutil

import pytest
import torch

from interp_core.evaluate import CACHE_DIR, EvalSettings, cached_evaluate, partial_progress
from interp_core.explanation_metrics import read_checkpoint

CPU = torch.device("cpu")


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from interp_core.testing import make_tiny_dataset
    return make_tiny_dataset(tmp_path_factory.mktemp("d") / "ds", n_per_class=6, size=16, classes=("normal", "tumor"))


def _strip(res: dict) -> dict:
    res = {k: v for k, v in res.items() if k not in ("run", "run_name")}
    res["details"] = {k: v for k, v in res["details"].items() if k != "seconds"}
    return res


@pytest.mark.parametrize("expensive", [False, True])
def test_interrupted_metrics_resume_with_the_remaining_batches_only(data, fake_run, tmp_path, expensive):
    s = EvalSettings(split="test", attribution="saliency", batch_size=4, expensive=expensive)  # 12 tiles, 3 batches
    whole_run, cut_run = tmp_path / "whole", tmp_path / "cut"
    shutil.copytree(fake_run, whole_run)
    shutil.copytree(fake_run, cut_run)
    whole = cached_evaluate(whole_run, data, s, device=CPU)

    def stop_after_first_batch(done: int, total: int) -> None:
        if done >= 4:
            raise Interrupted

    with pytest.raises(Interrupted):
        cached_evaluate(cut_run, data, s, device=CPU, progress=stop_after_first_batch)
    assert partial_progress(cut_run, data, s) == (4, 12)
    assert not list((cut_run / CACHE_DIR).glob("*.json"))  # nothing finished yet

    seen: list[int] = []
    resumed = cached_evaluate(cut_run, data, s, device=CPU, progress=lambda done, total: seen.append(done))
    assert seen == [8, 12]  # only batches 2 and 3 were computed
    assert _strip(resumed) == _strip(whole)
    assert partial_progress(cut_run, data, s) is None  # removed once the result is stored
    assert not list((cut_run / CACHE_DIR).glob("*.partial.npz"))


def test_a_checkpoint_of_other_tiles_is_not_used(data, fake_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    s = EvalSettings(split="test", attribution="saliency", batch_size=4)

    def stop(done: int, total: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        cached_evaluate(run, data, s, device=CPU, progress=stop)
    partial = next((run / CACHE_DIR).glob("*.partial.npz"))
    assert read_checkpoint(partial, "another computation") is None
    assert read_checkpoint(partial)["done"] == 4
    partial.write_bytes(b"damaged")  # a damaged checkpoint is ignored: everything is recomputed
    seen: list[int] = []
    cached_evaluate(run, data, s, device=CPU, progress=lambda done, total: seen.append(done))
    assert seen == [4, 8, 12]
