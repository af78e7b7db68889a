"""An interrupted metrics computation (a closed Metrics tab, a crash) resumes inside its metrics phase:
the tiles already scored are read back from ``eval_cache/<key>.partial.npz`` and only the rest are
computed; the result equals an uninterrupted run's (the consistency attack's random state included)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from interp_core.evaluation.evaluate import CACHE_DIR, EvalSettings, cached_evaluate, partial_progress
from interp_core.evaluation.explanation_metrics import read_checkpoint

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


def _copy(fake_run, dst, random_start: bool):
    shutil.copytree(fake_run, dst)
    if random_start:  # an ECE run whose consistency attack starts at random: the generator's state matters
        cfg = json.loads((dst / "config.json").read_text())
        cfg.update(objective="ece", objective_options={"random_start": True})
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("expensive,random_start", [(False, False), (True, True)])
def test_interrupted_metrics_resume_with_the_remaining_batches_only(data, fake_run, tmp_path, expensive,
                                                                     random_start, monkeypatch):
    s = EvalSettings(split="test", attribution="saliency", batch_size=4, expensive=expensive)  # 12 tiles, 3 batches
    whole_run = _copy(fake_run, tmp_path / "whole", random_start)
    cut_run = _copy(fake_run, tmp_path / "cut", random_start)
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
    if random_start:  # the check can fail: a resume that forgot the attack's random state gives other values
        from interp_core.evaluation import explanation_metrics as EM
        lost_run = _copy(fake_run, tmp_path / "lost", random_start)
        with pytest.raises(Interrupted):
            cached_evaluate(lost_run, data, s, device=CPU, progress=stop_after_first_batch)
        real = EM.read_checkpoint

        def forgetful(path, ident=None):
            state = real(path, ident)
            if state is not None:
                state["generator"] = torch.Generator().manual_seed(s.seed).get_state().numpy()
            return state

        monkeypatch.setattr(EM, "read_checkpoint", forgetful)
        lost = cached_evaluate(lost_run, data, s, device=CPU)
        assert lost["details"]["per_tile"]["explanation_consistency"][4:] != \
            whole["details"]["per_tile"]["explanation_consistency"][4:]


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
