"""JTT (Just Train Twice): the error set, its upweighting, the identification stage, state, refusals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from interp_core.errors import InterpError
from interp_core.models import create_model
from interp_core.training.objectives.base import EpochContext, StepContext, get_objective, options_from_dict
from interp_core.training.objectives.jtt import ERRORS_FILE, JTT, jtt_weights

N = 12


class _Dicts(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": self.y[i], "index": torch.tensor(i)}


@pytest.fixture()
def setup(tmp_path: Path):
    torch.manual_seed(0)
    model = create_model("smallcnn", 2, width=4)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(N, 3, 32, 32, generator=g), torch.randint(0, 2, (N,), generator=g)
    loader = DataLoader(_Dicts(x, y), batch_size=5, shuffle=False)
    ids = [f"train/c{int(y[i])}/{i:03d}.png" for i in range(N)]

    def ctx(epoch: int, prior_epochs: int = 8) -> EpochContext:
        return EpochContext(epoch=epoch, total_epochs=3, model=model, train_eval_loader=loader,
                            device=torch.device("cpu"), run_dir=tmp_path, generator=torch.Generator().manual_seed(7),
                            sample_ids=ids, progress=False, prior_epochs=prior_epochs)

    return model, x, y, ctx, tmp_path


def test_weights_hand_values() -> None:
    w = jtt_weights(torch.tensor([True, False, False, False]), 5.0)
    # raw 5, 1, 1, 1 -> mean 2 -> 2.5, 0.5, 0.5, 0.5
    assert torch.allclose(w, torch.tensor([2.5, 0.5, 0.5, 0.5]))
    assert torch.allclose(jtt_weights(torch.zeros(3, dtype=torch.bool), 20.0), torch.ones(3))


def test_registered_options_and_refusals() -> None:
    assert get_objective("jtt") is JTT
    opts = options_from_dict(JTT, {"identify_epochs": "2", "lambda_up": "6"})
    assert opts.identify_epochs == 2 and opts.lambda_up == 6.0
    for bad in ({"lambda_up": 0.5}, {"identify_epochs": -1}, {"identify_lr": 0}):
        with pytest.raises(InterpError):
            options_from_dict(JTT, bad)


def test_error_set_is_the_misclassified_samples_and_they_are_upweighted(setup) -> None:
    """T = 0 (fine-tuning): the model as the run starts finds the errors; check by hand."""
    model, x, y, ctx, run_dir = setup
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    model.train()
    errors = pred != y
    assert 0 < int(errors.sum()) < N, "the hand case needs both errors and correct samples"
    obj = JTT(JTT.Options(identify_epochs=0, lambda_up=4.0), N)
    extras = obj.begin_epoch(ctx(0))
    assert torch.equal(obj.error, errors)
    assert extras["error_set_size"] == float(errors.sum())
    raw = torch.where(errors, 4.0, 1.0)
    assert torch.allclose(obj.weights, raw / raw.mean())
    w_err, w_ok = float(obj.weights[errors][0]), float(obj.weights[~errors][0])
    assert w_err == pytest.approx(4.0 * w_ok)
    # the loss of a batch is mean_i v_i CE_i, by index
    batch = {"image": x[[1, 5, 9]], "label": y[[1, 5, 9]], "index": torch.tensor([1, 5, 9])}
    loss, _ = obj.batch_loss(model, batch, StepContext(0, 0, 1, torch.device("cpu"), torch.Generator()))
    ce = F.cross_entropy(model(batch["image"]), batch["label"], reduction="none")
    assert float(loss.detach()) == pytest.approx(float((obj.weights[[1, 5, 9]] * ce).mean().detach()), rel=1e-5)
    z = np.load(run_dir / ERRORS_FILE, allow_pickle=False)
    assert z["error"].tolist() == errors.tolist() and len(z["sample_ids"]) == N
    # identified once: a later epoch keeps the error set even if the model changed
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    obj.begin_epoch(ctx(1))
    assert torch.equal(obj.error, errors)


def test_identification_trains_a_copy_and_leaves_the_model(setup) -> None:
    model, x, y, ctx, _ = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    obj = JTT(JTT.Options(identify_epochs=3, lambda_up=3.0, identify_batch_size=4, identify_lr=1e-2), N)
    extras = obj.begin_epoch(ctx(0, prior_epochs=0))
    assert "identify_seconds" in extras
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.isfinite(obj.p_true).all() and ((obj.p_true >= 0) & (obj.p_true <= 1)).all()
    # p_true < 0.5 exactly on the errors (two classes)
    assert torch.equal(obj.error, obj.p_true < 0.5)


def test_from_scratch_needs_T(setup) -> None:
    *_, ctx, _ = setup
    with pytest.raises(InterpError, match="identify_epochs"):
        JTT(JTT.Options(identify_epochs=0), N).begin_epoch(ctx(0, prior_epochs=0))


def test_state_round_trip(setup) -> None:
    *_, ctx, _ = setup
    obj = JTT(JTT.Options(identify_epochs=0, lambda_up=6.0), N)
    assert obj.state_tensors() == {}
    obj.begin_epoch(ctx(0))
    other = JTT(JTT.Options(identify_epochs=0, lambda_up=6.0), N)
    other.load_state_tensors(obj.state_tensors())
    assert other.identified and torch.equal(other.error, obj.error) and torch.equal(other.weights, obj.weights)
    with pytest.raises(InterpError):
        JTT(JTT.Options(), N + 1).load_state_tensors(obj.state_tensors())


def test_every_option_has_help() -> None:
    import dataclasses
    for f in dataclasses.fields(JTT.Options):
        assert f.metadata.get("help"), f.name
