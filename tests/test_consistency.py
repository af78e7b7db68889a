"""Similarity functions, explanation_consistency and dataset_consistency (interp_core.consistency.score)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr
from torch import nn

import interp_core.consistency.score as score_mod
from interp_core.attribution.cam import class_activation_map
from interp_core.consistency.options import ConsistencyOptions
from interp_core.consistency.score import dataset_consistency, explanation_consistency, max_normalise, rebatch
from interp_core.consistency.similarity import cosine_similarity, map_similarity, pearson_similarity, topk_iou
from interp_core._utils.device import torch_threads
from interp_core.errors import InterpError
from interp_core.models import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is fastest and immune to a busy shared CPU."""
    with torch_threads(1):
        yield


# -- similarity functions ------------------------------------------------------------------------
def test_cosine_hand_values() -> None:
    a = torch.tensor([[[1.0, 0.0]], [[1.0, 2.0]], [[3.0, 0.0]]])
    b = torch.tensor([[[1.0, 1.0]], [[2.0, 4.0]], [[0.0, 5.0]]])
    assert torch.allclose(cosine_similarity(a, b), torch.tensor([1 / math.sqrt(2), 1.0, 0.0]), atol=1e-7)


def test_pearson_hand_value() -> None:
    # x = [1,2,3], y = [1,3,2]: centred (-1,0,1), (-1,1,0): r = 1 / 2
    assert pearson_similarity(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 3.0, 2.0]])).item() == pytest.approx(0.5)


def test_cosine_and_pearson_against_numpy_scipy() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 7, 9, generator=g), torch.rand(5, 7, 9, generator=g) ** 3
    cos, pr = cosine_similarity(a, b), pearson_similarity(a, b)
    for i in range(5):
        u, v = a[i].flatten().double().numpy(), b[i].flatten().double().numpy()
        assert cos[i].item() == pytest.approx(float(u @ v / np.linalg.norm(u) / np.linalg.norm(v)), abs=1e-6)
        assert pr[i].item() == pytest.approx(float(pearsonr(u, v)[0]), abs=1e-6)
    assert ((cos >= 0) & (cos <= 1)).all()  # non-negative maps


def test_topk_iou_hand_values() -> None:
    a = torch.tensor([[4.0, 3.0, 2.0, 1.0]] * 4)
    b = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0], [4.0, 1.0, 3.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    # k = 2: {0,1} vs {0,1}, {2,3}, {0,2}, all four (ties are all in)
    assert torch.allclose(topk_iou(a, b, 0.5), torch.tensor([1.0, 0.0, 1 / 3, 0.5]))
    assert topk_iou(a[:1], b[2:3], 0.25).item() == 1.0  # k = 1: both top pixels are index 0
    assert topk_iou(a[:1], b[1:2], 0.3).item() == 0.0  # k = ceil(1.2) = 2
    with pytest.raises(InterpError):
        topk_iou(a, b, 0.0)


def test_degenerate_maps_are_defined() -> None:
    z, c, r = torch.zeros(1, 4, 4), torch.full((1, 4, 4), 0.7), torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert cosine_similarity(z, z).item() == 1.0 and cosine_similarity(z, r).item() == 0.0
    assert pearson_similarity(c, z).item() == 1.0 and pearson_similarity(c, r).item() == 0.0
    assert pearson_similarity(r, c).item() == 0.0
    for name in ("cosine", "pearson", "topk_iou"):
        for u, v in ((z, z), (z, r), (c, c), (c, r)):
            assert torch.isfinite(map_similarity(u, v, name)).all()
    with pytest.raises(InterpError):
        map_similarity(r, r, "spearman")
    with pytest.raises(InterpError):
        cosine_similarity(r, r[:, :2])


def test_max_normalise() -> None:
    h = torch.tensor([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = max_normalise(h)
    assert torch.equal(out[0], h[0] / 4) and torch.equal(out[1], h[1])


# -- explanation_consistency ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    m = create_model("smallcnn", 2, width=4)
    m.train()
    with torch.no_grad():
        m(torch.rand(16, 3, 32, 32))
    return m


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.rand(6, 3, 32, 32, generator=g), torch.randint(0, 2, (6,), generator=g)


@pytest.mark.parametrize("similarity", ["cosine", "pearson", "topk_iou"])
def test_model_with_itself_unperturbed_is_one(model, batch, similarity) -> None:
    x, y = batch
    res = explanation_consistency(model, x, y, eps=0.0, similarity=similarity)
    assert torch.allclose(res.score, torch.ones(6), atol=1e-6)
    assert torch.equal(res.x_adv, x) and not res.pred_changed.any()


class _SpatiallyFlat(nn.Module):
    """Features constant over space, so every CAM is a constant map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True).expand(-1, -1, *x.shape[-2:]) + 1.0  # no upsampling


def test_empty_background_gives_one_through_the_attack_path(batch) -> None:
    """A constant heatmap has nothing below its mean: x_adv == x and E == 1 without NaN."""
    from interp_core.models import TileClassifier

    x, y = batch
    flat = TileClassifier(_SpatiallyFlat(), 3, 2)
    with torch.no_grad():
        flat.head.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]))  # class 1: all-zero CAM
    for similarity in ("cosine", "pearson", "topk_iou"):
        res = explanation_consistency(flat, x, torch.tensor([0, 1, 0, 1, 0, 1]), threshold="mean", similarity=similarity)
        assert not res.background.any()
        assert torch.equal(res.x_adv, x)
        assert torch.equal(res.score, torch.ones(6))


def test_heatmaps_background_and_score_are_what_they_claim(model, batch) -> None:
    x, y = batch
    model.eval()
    res = explanation_consistency(model, x, y, threshold="0.5")
    h_ref = max_normalise(class_activation_map(model, x, y))
    h_adv_ref = max_normalise(class_activation_map(model, res.x_adv, y))
    assert torch.allclose(res.heatmap, h_ref, atol=1e-5)
    assert torch.allclose(res.heatmap_adv, h_adv_ref, atol=1e-5)
    assert torch.equal(res.background, res.heatmap < 0.5)
    fg = ~res.background[:, None].expand_as(x)
    assert torch.equal(res.x_adv[fg], x[fg])
    assert (res.x_adv - x).abs().max().item() <= 8 / 255 + 1e-7
    assert torch.allclose(res.score, cosine_similarity(res.heatmap, res.heatmap_adv))
    assert ((res.score >= 0) & (res.score <= 1)).all()
    assert (res.score < 1 - 1e-4).any()  # the attack moved some heatmap
    with torch.no_grad():
        assert torch.equal(res.pred_changed, model(x).argmax(1) != model(res.x_adv).argmax(1))
    assert res.heatmap.shape == (6, 32, 32) and res.x_adv.shape == x.shape and res.score.shape == (6,)


def test_mean_threshold_and_target_default(model, batch) -> None:
    x, y = batch
    model.eval()
    res = explanation_consistency(model, x, None, threshold="mean")
    pred = model(x).argmax(1)
    assert torch.equal(res.target, pred)
    h = max_normalise(class_activation_map(model, x, pred))
    assert torch.equal(res.background, res.heatmap < res.heatmap.mean((1, 2), keepdim=True))
    assert torch.allclose(res.heatmap, h, atol=1e-5)


def test_no_parameter_grad_mode_restored_and_detached(model, batch) -> None:
    x, y = batch
    model.train()
    for p in model.parameters():
        p.grad = None
    res = explanation_consistency(model, x, y)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert not any(t.requires_grad for t in (res.score, res.x_adv, res.heatmap, res.heatmap_adv))


class _NoCamModel(nn.Module):
    """Hides forward_features/head so explanation_consistency must take the Grad-CAM path."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _captum_gradcam(model: nn.Module, x: torch.Tensor, method: str, target: torch.Tensor) -> torch.Tensor:
    from captum.attr import LayerGradCam

    assert method == "gradcam"
    a = LayerGradCam(model, model.inner.features).attribute(x, target=target, relu_attributions=True)
    return F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def test_gradcam_fallback_matches_cam_path(model, batch, monkeypatch) -> None:
    """Grad-CAM == CAM after max-normalisation for GAP + linear heads, so both paths agree."""
    x, y = batch
    monkeypatch.setattr(score_mod, "attribute", _captum_gradcam)
    wrapped = _NoCamModel(model)
    wrapped.train()
    via_gradcam = explanation_consistency(wrapped, x, y)
    via_cam = explanation_consistency(model, x, y)
    assert wrapped.training
    assert torch.allclose(via_gradcam.heatmap, via_cam.heatmap, atol=1e-4)
    assert torch.allclose(via_gradcam.x_adv, via_cam.x_adv, atol=1e-5)
    assert torch.allclose(via_gradcam.score, via_cam.score, atol=1e-4)


# -- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{"threshold": "high"}, {"threshold": "0"}, {"eps": 2.0}, {"steps": -1},
                                {"alpha": 0.0}, {"similarity": "l2"}, {"topk_fraction": 0.0}])
def test_options_validate(kw) -> None:
    with pytest.raises(InterpError):
        ConsistencyOptions(**kw).validate()


def test_options_coercion_and_step_size() -> None:
    o = ConsistencyOptions(alpha="0.01", threshold=0.3)  # type: ignore[arg-type]
    o.validate()
    assert o.alpha == 0.01 and o.threshold == "0.3" and o.step_size == 0.01
    assert ConsistencyOptions(eps=0.03, steps=3).step_size == pytest.approx(0.025)
    assert ConsistencyOptions(alpha="none").alpha is None  # type: ignore[arg-type]


# -- dataset level -------------------------------------------------------------------------------
def _loader(x: torch.Tensor, y: torch.Tensor, bs: int, offset: int = 100) -> list[dict[str, torch.Tensor]]:
    return [{"image": x[i:i + bs], "label": y[i:i + bs], "index": torch.arange(i, min(len(x), i + bs)) + offset}
            for i in range(0, len(x), bs)]


def test_rebatch_regroups_in_order() -> None:
    x, y = torch.arange(13.0)[:, None], torch.arange(13)
    sizes = [len(b["image"]) for b in rebatch(_loader(x, y, 5), 4)]
    assert sizes == [4, 4, 4, 1]
    merged = torch.cat([b["index"] for b in rebatch(_loader(x, y, 5), 4)])
    assert torch.equal(merged, torch.arange(13) + 100)
    assert [len(b["image"]) for b in rebatch(_loader(x, y, 5), None)] == [5, 5, 3]
    assert [len(b["image"]) for b in rebatch(_loader(x, y, 5), 20)] == [13]


def test_dataset_consistency_matches_batches(model, batch) -> None:
    x, y = batch
    opts = ConsistencyOptions(similarity="pearson")
    out = dataset_consistency(model, _loader(x, y, 4), opts, batch_size=3, device="cpu")
    ref = explanation_consistency(model, x, y, **opts.consistency_kwargs())
    assert torch.allclose(out.scores, ref.score, atol=1e-5)
    assert torch.equal(out.indices, torch.arange(6) + 100) and torch.equal(out.labels, y)
    assert torch.equal(out.pred_changed, ref.pred_changed)
    assert out.mean == pytest.approx(float(ref.score.mean()), abs=1e-5)
    no_index = [{"image": b["image"], "label": b["label"]} for b in _loader(x, y, 4)]
    assert torch.equal(dataset_consistency(model, no_index).indices, torch.arange(6))


def test_inference_copy_is_the_same_function_and_leaves_the_model_alone(model, batch) -> None:
    from interp_core.consistency.score import inference_copy

    x, _ = batch
    model.train()
    fast = inference_copy(model)
    assert model.training and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert not any(p.requires_grad for p in fast.parameters()) and all(p.requires_grad for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-5)
        assert torch.allclose(fast.forward_features(x), model.forward_features(x), atol=1e-5)


def test_evaluate_scores_an_ece_run_with_its_own_consistency_settings(tiny_data, tiny_run, tmp_path):
    import json
    import shutil

    from interp_core.consistency.options import ConsistencyOptions, consistency_options_for
    from interp_core.evaluation.evaluate import EvalSettings, evaluate_run

    assert consistency_options_for({"objective": "erm", "objective_options": {"threshold": "mean"}}) == \
        ConsistencyOptions()
    opts = consistency_options_for({"objective": "ece", "objective_options": {
        "threshold": "mean", "steps": 1, "eps": 4 / 255, "beta": 0.3, "refresh_every": 2}})
    assert (opts.threshold, opts.steps, opts.eps) == ("mean", 1, 4 / 255)
    assert opts.similarity == "cosine"  # unset fields keep the defaults
    run = tmp_path / "ece"
    shutil.copytree(tiny_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(objective="ece", objective_options={"threshold": "mean", "steps": 1, "eps": 4 / 255})
    (run / "config.json").write_text(json.dumps(cfg))
    s = EvalSettings(limit=4, batch_size=4)
    got = evaluate_run(run, tiny_data, s, device=torch.device("cpu"))["details"]["consistency_settings"]
    assert (got["threshold"], got["steps"], got["eps"]) == ("mean", 1, 4 / 255)
    plain = evaluate_run(tiny_run, tiny_data, s, device=torch.device("cpu"))["details"]["consistency_settings"]
    assert plain == ConsistencyOptions().consistency_kwargs()
