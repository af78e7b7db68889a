"""The ``ece`` objective: weights, weighted CE, refresh schedule, consistency.npz, resume."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from interp_core._utils.device import torch_threads
from interp_core.errors import InterpError, TrainingDiverged
from interp_core.models import create_model
from interp_core.training.objectives.base import EpochContext, StepContext, get_objective, options_from_dict
from interp_core.consistency.history import CONSISTENCY_FILE
from interp_core._utils.io import is_temp_file
from interp_core.training.objectives.ece import (ECE, consistency_weights, refresh_due,
                                                 weight_stats, weighted_cross_entropy)

N = 10


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and immune to a busy shared CPU."""
    with torch_threads(1):
        yield


# -- pure functions ------------------------------------------------------------------------------
def test_weights_hand_values_mean_one_and_inverse_rank() -> None:
    w = consistency_weights(torch.tensor([1.0, 0.5, 0.0]), beta=0.1)  # raw 0.1, 0.6, 1.1; mean 0.6
    assert torch.allclose(w, torch.tensor([1 / 6, 1.0, 11 / 6]))
    e = torch.rand(50, generator=torch.Generator().manual_seed(0))
    w = consistency_weights(e, beta=0.1)
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(torch.argsort(w), torch.argsort(-e))  # lowest consistency -> highest weight
    assert (w > 0).all()


def test_weights_degenerate_cases() -> None:
    assert torch.equal(consistency_weights(torch.ones(4), beta=0.0), torch.ones(4))
    assert torch.allclose(consistency_weights(torch.ones(4), beta=0.1), torch.ones(4))
    with pytest.raises(TrainingDiverged):
        consistency_weights(torch.tensor([0.5, float("nan")]))


def test_weight_stats() -> None:
    s = weight_stats(torch.tensor([0.25, 0.25, 0.5, 3.0]))  # mean 1; only 3.0 is above 2
    assert s == {"weight_min": 0.25, "weight_mean": 1.0, "weight_max": 3.0, "weight_share_above_2x_mean": 0.25}


def test_weighted_cross_entropy_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    v = torch.tensor([0.5, 1.5, 1.0])
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.e), math.log(2)]
    expected = (0.5 * ce[0] + 1.5 * ce[1] + 1.0 * ce[2]) / 3
    assert weighted_cross_entropy(logits, y, v).item() == pytest.approx(expected, rel=1e-6)


def test_refresh_schedule() -> None:
    assert [e for e in range(8) if refresh_due(e, 1, 1)] == [1, 2, 3, 4, 5, 6, 7]
    assert [e for e in range(8) if refresh_due(e, 1, 2)] == [1, 3, 5, 7]
    assert [e for e in range(8) if refresh_due(e, 0, 3)] == [0, 3, 6]
    assert [e for e in range(8) if refresh_due(e, 3, 2)] == [3, 5, 7]
    assert [e for e in range(11) if refresh_due(e, 1, 3)] == [1, 4, 7, 10]  # the default, from scratch


def test_refresh_schedule_is_anchored_at_the_first_fine_tuning_epoch() -> None:
    """Fine-tuning a model trained for 8 epochs (model epochs 8, 9, 10 in this run): the first
    refresh is at once, whatever the phase of refresh_every relative to the warm-up."""
    assert [e for e in range(8, 11) if refresh_due(e, 1, 3, prior_epochs=8)] == [8]
    assert [e for e in range(8, 14) if refresh_due(e, 1, 2, prior_epochs=8)] == [8, 10, 12]
    assert [e for e in range(8, 11) if refresh_due(e, 1, 1, prior_epochs=8)] == [8, 9, 10]
    assert [e for e in range(2, 6) if refresh_due(e, 4, 1, prior_epochs=2)] == [4, 5]  # warm-up not over yet


def test_default_refresh_every_is_three_and_says_why() -> None:
    f = {x.name: x for x in dataclasses.fields(ECE.Options)}["refresh_every"]
    assert f.default == 3 and "METHODS.md: 1" in f.metadata["help"]


# -- options -------------------------------------------------------------------------------------
def test_registered_and_options_from_dict() -> None:
    assert get_objective("ece") is ECE
    opts = options_from_dict(ECE, {"threshold": "mean", "beta": "0.2", "refresh_every": "2", "eps": 0.01})
    assert isinstance(opts, ECE.Options)
    assert (opts.threshold, opts.beta, opts.refresh_every, opts.eps) == ("mean", 0.2, 2, 0.01)
    assert opts.warmup_epochs == 1 and opts.similarity == "cosine" and opts.steps == 3
    for bad in ({"beta": -1}, {"refresh_every": 0}, {"warmup_epochs": -1}, {"refresh_batch_size": -1},
                {"similarity": "dice"}, {"threshold": "2"}):
        with pytest.raises(InterpError):
            options_from_dict(ECE, bad)


def test_every_option_has_help() -> None:
    import dataclasses

    for f in dataclasses.fields(ECE.Options):
        assert f.metadata.get("help"), f.name


# -- begin_epoch / batch_loss --------------------------------------------------------------------
@pytest.fixture()
def setup(tmp_path: Path):
    torch.manual_seed(0)
    model = create_model("smallcnn", 2, width=4)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(N, 3, 32, 32, generator=g), torch.randint(0, 2, (N,), generator=g)
    y[:2] = torch.tensor([0, 1])
    loader = [{"image": x[i:i + 4], "label": y[i:i + 4], "index": torch.arange(i, min(N, i + 4))} for i in range(0, N, 4)]
    ids = [f"train/c{int(y[i])}/{i:03d}.png" for i in range(N)]

    def ctx(epoch: int) -> EpochContext:
        return EpochContext(epoch=epoch, total_epochs=6, model=model, train_eval_loader=loader,
                            device=torch.device("cpu"), run_dir=tmp_path, generator=torch.Generator().manual_seed(epoch),
                            sample_ids=ids, progress=False)

    return model, x, y, ids, ctx, tmp_path


def _objective(**kw) -> ECE:
    opts = ECE.Options(**{"refresh_batch_size": 3, **kw})
    return ECE(opts, N)


def test_refresh_schedule_npz_and_history(setup) -> None:
    model, x, y, ids, ctx, run_dir = setup
    obj = _objective(warmup_epochs=1, refresh_every=2, eps=16 / 255)
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    extras = [obj.begin_epoch(ctx(e)) for e in range(4)]
    # the refresh neither trains nor updates BatchNorm statistics nor touches .grad
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [ex["refreshed"] for ex in extras] == [0.0, 1.0, 0.0, 1.0]
    assert extras[0]["weight_min"] == extras[0]["weight_max"] == 1.0  # warm-up: plain CE
    assert "consistency_mean" in extras[1] and "consistency_mean" not in extras[2]
    assert extras[1]["weight_mean"] == pytest.approx(1.0, abs=1e-6)
    assert model.training and all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())

    with np.load(run_dir / CONSISTENCY_FILE, allow_pickle=False) as z:
        assert z["sample_ids"].tolist() == ids
        assert z["labels"].tolist() == y.tolist()
        assert z["refresh_epochs"].tolist() == [2, 4]  # loop epochs 1 and 3, 1-based as history.jsonl
        assert z["consistency"].shape == (2, N) and z["consistency"].dtype == np.float32
        assert z["weights"].shape == (2, N) and z["pred_changed"].shape == (2, N)
        assert np.allclose(z["weights"].mean(1), 1.0, atol=1e-6)
        assert np.all((z["consistency"] >= 0) & (z["consistency"] <= 1))
        # weights are the documented function of E, rank-inverse to it
        assert np.allclose(z["weights"][1], consistency_weights(torch.from_numpy(z["consistency"][1]), 0.1).numpy())
        assert np.allclose(obj.weights.numpy(), z["weights"][1])
        e = z["consistency"][1]
        assert extras[3]["consistency_mean"] == pytest.approx(float(e.mean()), abs=1e-6)
    assert not [p for p in run_dir.iterdir() if is_temp_file(p)]  # no temp file of the atomic write left

    # the scores are those of explanation_consistency on the true labels, by dataset index
    from interp_core.consistency.score import explanation_consistency

    ref = explanation_consistency(model, x, y, eps=16 / 255)
    assert np.allclose(e, ref.score.numpy(), atol=1e-5)


def test_batch_loss_uses_the_refreshed_weights_by_index(setup) -> None:
    model, x, y, ids, ctx, run_dir = setup
    obj = _objective(warmup_epochs=0)
    obj.begin_epoch(ctx(0))
    model.train()
    idx = torch.tensor([7, 2, 5])
    batch = {"image": x[idx], "label": y[idx], "index": idx}
    sctx = StepContext(epoch=0, step=0, steps_per_epoch=3, device=torch.device("cpu"), generator=torch.Generator())
    loss, extras = obj.batch_loss(model, batch, sctx)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(model(x[idx]), y[idx], reduction="none")
    assert loss.item() == pytest.approx(float((obj.weights[idx] * ce).mean()), rel=1e-5)
    assert extras["batch_weight_mean"] == pytest.approx(float(obj.weights[idx].mean()), rel=1e-6)
    assert model.training
    loss.backward()  # the loss trains the model
    assert all(p.grad is not None for p in model.parameters())


def test_before_first_refresh_loss_is_plain_ce(setup) -> None:
    model, x, y, ids, ctx, run_dir = setup
    obj = _objective()
    obj.begin_epoch(ctx(0))  # warm-up epoch
    sctx = StepContext(epoch=0, step=0, steps_per_epoch=1, device=torch.device("cpu"), generator=torch.Generator())
    loss, _ = obj.batch_loss(model, {"image": x, "label": y, "index": torch.arange(N)}, sctx)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(model(x), y).item(), rel=1e-6)
    assert not (run_dir / CONSISTENCY_FILE).exists()


def _checkpoint(obj: ECE, path: Path) -> dict[str, torch.Tensor]:
    save_file(obj.state_tensors(), str(path))  # what the loop does after each epoch
    return load_file(str(path))


def _npz_epochs(run_dir: Path) -> list[int]:
    with np.load(run_dir / CONSISTENCY_FILE, allow_pickle=False) as z:
        assert z["consistency"].shape[0] == len(z["refresh_epochs"]) == z["weights"].shape[0]
        return (z["refresh_epochs"] - 1).tolist()  # back to 0-based loop epochs


def test_resume_does_not_redo_a_finished_refresh(setup) -> None:
    model, x, y, ids, ctx, run_dir = setup
    a = _objective(warmup_epochs=1, refresh_every=1)
    a.begin_epoch(ctx(0))
    a.begin_epoch(ctx(1))  # refresh 1
    state = _checkpoint(a, run_dir / "state.safetensors")

    b = _objective(warmup_epochs=1, refresh_every=1)  # killed and restarted: fresh objective
    b.load_state_tensors(state)
    assert torch.equal(b.weights, a.weights) and b.refresh_epochs.tolist() == [1]
    extras = b.begin_epoch(ctx(1))  # the loop re-enters an epoch whose refresh is already done
    assert extras["refreshed"] == 0.0
    assert _npz_epochs(run_dir) == [1]
    assert b.begin_epoch(ctx(2))["refreshed"] == 1.0
    assert _npz_epochs(run_dir) == [1, 2]
    assert torch.equal(b.consistency[0], a.consistency[0])


def test_resume_after_kill_between_refresh_and_checkpoint(setup) -> None:
    """A refresh written to disk but not checkpointed is redone once, with no duplicate row."""
    model, x, y, ids, ctx, run_dir = setup
    a = _objective(warmup_epochs=1, refresh_every=1)
    for e in range(2):
        a.begin_epoch(ctx(e))
    state = _checkpoint(a, run_dir / "state.safetensors")  # checkpoint after epoch 1
    a.begin_epoch(ctx(2))  # refresh 2 reaches the npz ... then the process is killed
    assert _npz_epochs(run_dir) == [1, 2]

    b = _objective(warmup_epochs=1, refresh_every=1)
    b.load_state_tensors(state)
    assert b.begin_epoch(ctx(2))["refreshed"] == 1.0
    assert _npz_epochs(run_dir) == [1, 2]
    with np.load(run_dir / CONSISTENCY_FILE, allow_pickle=False) as z:
        assert np.allclose(z["consistency"], b.consistency.numpy())


def test_resume_drops_rows_the_state_does_not_know(setup) -> None:
    model, x, y, ids, ctx, run_dir = setup
    a = _objective(warmup_epochs=1, refresh_every=2)
    a.begin_epoch(ctx(0))
    a.begin_epoch(ctx(1))  # refresh 1
    state = _checkpoint(a, run_dir / "state.safetensors")
    a.begin_epoch(ctx(2))
    a.begin_epoch(ctx(3))  # refresh 3, then killed before its checkpoint ... and the loop resumes at 2
    assert _npz_epochs(run_dir) == [1, 3]
    b = _objective(warmup_epochs=1, refresh_every=2)
    b.load_state_tensors(state)
    assert b.begin_epoch(ctx(2))["refreshed"] == 0.0
    assert _npz_epochs(run_dir) == [1]  # the file matches the restored state again

    c = _objective(warmup_epochs=1, refresh_every=2)  # killed during the warm-up: no refresh in state
    c.load_state_tensors(_checkpoint(_objective(), run_dir / "s0.safetensors"))
    c.begin_epoch(ctx(0))
    assert not (run_dir / CONSISTENCY_FILE).exists()


def test_state_size_mismatch_raises(setup) -> None:
    *_, ctx, run_dir = setup
    a = _objective(warmup_epochs=0)
    a.begin_epoch(ctx(0))
    with pytest.raises(InterpError):
        ECE(ECE.Options(), N + 1).load_state_tensors(a.state_tensors())


def test_loader_must_cover_every_sample(setup) -> None:
    model, x, y, ids, ctx, run_dir = setup
    c = ctx(0)
    c.train_eval_loader = c.train_eval_loader[:1]
    with pytest.raises(InterpError, match="covered 4 of 10"):
        _objective(warmup_epochs=0).begin_epoch(c)


# -- through the real training loop --------------------------------------------------------------
class _Killed(Exception):
    pass


def test_train_from_scratch_init_and_resume_after_kill(tiny_data, tiny_run, tmp_path, monkeypatch) -> None:
    from interp_core.runs import read_history
    from interp_core.training import TrainConfig, train

    opts = {"warmup_epochs": 1, "refresh_every": 1}
    quiet = {"progress": False, "log": lambda m: None}
    scratch = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "scratch"), objective="ece", epochs=3,
                                batch_size=8, objective_options=opts), **quiet)
    hist = scratch.history
    assert [h["refreshed"] for h in hist] == [0.0, 1.0, 1.0]
    assert all(h["weight_mean"] == pytest.approx(1.0, abs=1e-5) for h in hist)
    assert "consistency_mean" in hist[1] and "weight_share_above_2x_mean" in hist[0]
    assert _npz_epochs(tmp_path / "scratch") == [1, 2]

    init = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "init"), objective="ece", epochs=1,
                             batch_size=8, init=str(tiny_run), objective_options={"warmup_epochs": 0}), **quiet)
    assert init.history[0]["refreshed"] == 1.0 and _npz_epochs(tmp_path / "init") == [0]

    # kill during loop epoch 2, after its refresh reached consistency.npz but before the checkpoint
    original = ECE.batch_loss

    def dies_in_epoch_2(self, model, batch, ctx):
        if ctx.epoch == 2:
            raise _Killed()
        return original(self, model, batch, ctx)

    cfg = TrainConfig(data=str(tiny_data), out=str(tmp_path / "killed"), objective="ece", epochs=3,
                      batch_size=8, objective_options=opts)
    monkeypatch.setattr(ECE, "batch_loss", dies_in_epoch_2)
    with pytest.raises(_Killed):
        train(cfg, **quiet)
    assert _npz_epochs(tmp_path / "killed") == [1, 2] and len(read_history(tmp_path / "killed")) == 2
    monkeypatch.setattr(ECE, "batch_loss", original)
    resumed = train(cfg, **quiet)
    assert [h["refreshed"] for h in resumed.history] == [0.0, 1.0, 1.0]
    assert _npz_epochs(tmp_path / "killed") == [1, 2]  # epoch 2 redone once, no duplicate row
    with np.load(tmp_path / "killed" / CONSISTENCY_FILE, allow_pickle=False) as z, \
            np.load(tmp_path / "scratch" / CONSISTENCY_FILE, allow_pickle=False) as ref:
        assert z["sample_ids"].tolist() == ref["sample_ids"].tolist()
        assert np.allclose(z["consistency"], ref["consistency"], atol=1e-5)  # same seed: same run
