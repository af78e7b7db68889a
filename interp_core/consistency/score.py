"""Explanation consistency (METHODS.md section 3, steps 1-4; Wu et al. 2024, "Improving Network
Interpretability via Explanation Consistency Evaluation").

``E = sim(H(x), H(x_hat))``: the similarity between the heatmap of a sample and that of a
semantic-preserved adversarial sample ``x_hat`` whose background (``H(x) < tau``) was attacked
with a masked L-inf PGD (:mod:`interp_core.consistency.perturb`). ``H`` is Grad-CAM of the target class
(CAM, computed without gradients, when the head is global-average-pool + linear: the two coincide
after max-normalisation), ReLU, upsampled, max-normalised to ``[0,1]``. Higher is better.

Similarities over the flattened maps (``cosine`` is the default [ours]; ``pearson`` and
``topk_iou`` are the selectable alternatives):

- ``cosine``: ``<a,b> / (|a| |b|)``; in ``[0,1]`` for non-negative heatmaps.
- ``pearson``: cosine of the mean-centred maps; in ``[-1,1]``.
- ``topk_iou``: IoU of the top-``k`` pixel sets, ``k = ceil(fraction * H * W)``; in ``[0,1]``.

Degenerate maps [ours]: a map with no spatial structure (all zero for ``cosine``, constant for
``pearson``) has no direction to compare, so the score is 1 when *both* maps are degenerate (the
explanations agree: neither points anywhere) and 0 when only one is (one points somewhere, the
other does not). No NaN is ever returned for finite maps.

Cost (what :func:`dataset_consistency`, hence the ECE refresh, does to be cheap): ``H(x)`` and the
background come from the first PGD step's forward pass (PGD starts at ``delta = 0``), ``H(x_hat)``
and the new prediction from one no-grad forward, so a batch costs ``K`` forward + input-only
backward passes plus one forward (not ``K + 2`` full passes); CAM needs no gradients; the model
runs as an :func:`inference_copy` (BatchNorm folded, channels-last, no parameter gradients) at a
device-dependent batch size (:func:`default_batch_size`). Recorded in
``docs/results/objective_speed.txt`` (``bench/objective_speed.py``, small CNN, CPU): an ECE epoch
with a refresh took 3.68 s against 0.91 s for an ERM epoch, so a refresh costs about 3 ERM
epochs; with one refresh every 3 epochs ECE averaged 2.04x ERM's epoch time.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from .._utils.device import model_device
from ..errors import InterpError
from ..attribution import attribute
from ..attribution.cam import cam_from_features, class_activation_map, supports_cam
from ..attribution.normalize import normalize_max
from .perturb import background_mask, default_step_size, eval_mode, masked_pgd, parse_threshold
from .options import ConsistencyOptions
from .similarity import SIMILARITIES, map_similarity



# -- options -------------------------------------------------------------------------------------
# -- heatmaps ------------------------------------------------------------------------------------
max_normalise = normalize_max  # per-sample h / max(h); all-zero maps stay zero


@torch.no_grad()
def _cam_from_features(model: nn.Module, feats: torch.Tensor, target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``max_normalise(upsample(ReLU(sum_k w_{y,k} F_k)))`` from an existing feature map (as in
    :func:`interp_core.attribution.cam.class_activation_map`, which recomputes the features)."""
    return max_normalise(cam_from_features(model, feats, target, size))


def _uses_cam(model: nn.Module) -> bool:
    return supports_cam(model) and hasattr(model, "forward_head")


def consistency_heatmap(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``H(x)`` of METHODS.md section 3 step 1: ``[B,H,W]`` in ``[0,1]``, computed in eval mode.

    CAM (no gradients) when the head is GAP + linear, else Grad-CAM from
    ``interp_core.attribution``; ReLU, upsampled to the input size, max-normalised.
    """
    with eval_mode(model):
        if _uses_cam(model):
            h = class_activation_map(model, x, target)
        else:
            with torch.enable_grad():
                h = attribute(model, x, "gradcam", target)
    return max_normalise(h.detach().float().clamp_min(0))


# -- one batch -----------------------------------------------------------------------------------
@dataclass
class ConsistencyResult:
    """Per-sample explanation consistency of a batch and what it was computed from (detached).

    ``score`` ``[B]`` (higher is better), ``x_adv`` ``[B,C,H,W]``, ``heatmap``/``heatmap_adv``
    ``[B,H,W]`` in ``[0,1]``, ``background`` ``[B,H,W]`` bool (the pixels allowed to change),
    ``pred``/``pred_adv`` ``[B]`` and ``pred_changed`` ``[B]`` bool, ``target`` ``[B]``.
    """

    score: torch.Tensor
    x_adv: torch.Tensor
    heatmap: torch.Tensor
    heatmap_adv: torch.Tensor
    background: torch.Tensor
    target: torch.Tensor
    pred: torch.Tensor
    pred_adv: torch.Tensor

    @property
    def pred_changed(self) -> torch.Tensor:
        return self.pred != self.pred_adv


def explanation_consistency(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None = None, *,
                            threshold: float | str = "0.5", eps: float = 8 / 255, steps: int = 3,
                            alpha: float | None = None, similarity: str = "cosine", topk_fraction: float = 0.1,
                            random_start: bool = False, generator: torch.Generator | None = None) -> ConsistencyResult:
    """Explanation consistency ``E = sim(H(x), H(x_hat))`` per sample, METHODS.md section 3 steps 1-4.

    ``target`` ``[B]``: the class explained and attacked (the true label in ECE; None: the class
    predicted on ``x``). Options are those of :class:`ConsistencyOptions` (all [ours] except the
    attack being a background-masked adversarial attack). Runs in eval mode (the caller's modes are
    restored), never touches parameter gradients, works under ``torch.no_grad()``.

    Cost for CAM models: ``K`` forward + input-backward passes (the first at ``x`` also yields
    ``H(x)`` and the background) and one no-grad forward for ``H(x_hat)`` and its prediction.
    """
    parse_threshold(threshold)
    if similarity not in SIMILARITIES:
        raise InterpError(f"unknown similarity {similarity!r}; choose one of {', '.join(SIMILARITIES)}")
    size = tuple(x.shape[-2:])
    x = x.detach()
    attack_kw = dict(eps=eps, steps=steps, alpha=alpha, random_start=random_start, generator=generator)
    with eval_mode(model):  # full precision: E differences between samples are small (METHODS.md 5)
        if _uses_cam(model):
            clean: dict[str, torch.Tensor] = {}

            def mask_from_clean_pass(feats: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
                y = logits.argmax(1) if target is None else target.to(logits.device)
                clean["heatmap"] = _cam_from_features(model, feats, y, size)
                return background_mask(clean["heatmap"], threshold)

            res = masked_pgd(model, x, target, mask_from_clean_pass, **attack_kw)
            h, h_adv = clean["heatmap"], _cam_from_features(model, res.features_adv, res.target, size)
        else:
            if target is None:
                with torch.no_grad():
                    target = model(x).argmax(1)
            h = consistency_heatmap(model, x, target)
            res = masked_pgd(model, x, target, background_mask(h, threshold), **attack_kw)
            h_adv = consistency_heatmap(model, res.x_adv, res.target)
    score = map_similarity(h, h_adv, similarity, topk_fraction)
    return ConsistencyResult(score=score, x_adv=res.x_adv, heatmap=h, heatmap_adv=h_adv,
                             background=res.mask[:, 0], target=res.target,
                             pred=res.pred_clean, pred_adv=res.pred_adv)


# -- one batch, warm-started (ECE's fast refresh) -------------------------------------------------
@dataclass
class CarriedConsistency:
    """Result of :func:`carried_consistency`: ``score`` ``[B]``, ``pred_changed`` ``[B]`` bool, and
    ``delta_next`` ``[B,C,H,W]`` (the carried perturbation after one more ascent step)."""

    score: torch.Tensor
    pred_changed: torch.Tensor
    delta_next: torch.Tensor


def _forward_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, with_grad: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(H(x), logits, dCE/dx or None)`` in one forward (+ input backward when ``with_grad``) for
    CAM models; Grad-CAM models take their heatmap from a separate call."""
    size = tuple(x.shape[-2:])
    x_in = x.detach().clone().requires_grad_(with_grad)
    with torch.set_grad_enabled(with_grad):
        if _uses_cam(model):
            feats = model.forward_features(x_in)
            logits = model.forward_head(feats)
            h = _cam_from_features(model, feats.detach(), target, size)
        else:
            logits = model(x_in)
            h = None
        grad = None
        if with_grad:
            loss = torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_in)
    if h is None:
        h = consistency_heatmap(model, x.detach(), target)
    return h, logits.detach(), grad


def carried_consistency(model: nn.Module, x: torch.Tensor, target: torch.Tensor, delta: torch.Tensor, *,
                        threshold: float | str = "0.5", eps: float = 8 / 255, alpha: float | None = None,
                        steps: int = 3, similarity: str = "cosine", topk_fraction: float = 0.1,
                        **_: Any) -> CarriedConsistency:
    """Explanation consistency against a *carried* background perturbation [ours, ECE fast mode].

    Instead of METHODS.md section 3 step 3's fresh ``K``-step PGD from ``x``, the attack continues
    from ``delta`` (the perturbation this sample reached at its previous refresh, as in
    "adversarial training for free", Shafahi et al. 2019):

    1. ``H(x)`` and the background ``B = H(x) < tau`` from a no-grad forward (eval mode);
    2. ``x_hat = clip(x + delta, x - eps, x + eps) ∩ [0, 1]`` on ``B``, ``x`` elsewhere;
    3. one forward + input backward at ``x_hat`` gives ``H(x_hat)`` (so ``E = sim(H(x), H(x_hat))``),
       the prediction at ``x_hat`` and ``dCE/dx_hat``;
    4. ``delta_next``: one projected sign step ``alpha * sign(dCE/dx_hat)`` from ``x_hat`` on ``B``
       (``alpha`` default ``2.5 eps / steps``, the exact attack's step), ``delta`` unchanged off
       ``B``, for the next refresh.

    So the score is taken at a perturbation one refresh old, which the previous refreshes have
    pushed ``r`` steps in total; the foreground is bit-for-bit ``x``. Cost: one no-grad forward
    plus one forward with an input backward (CAM models), against ``K`` forward + input-backward
    passes and a forward for :func:`explanation_consistency`. Eval mode (restored), no parameter
    gradients.
    """
    parse_threshold(threshold)
    alpha = default_step_size(eps, steps) if alpha is None else float(alpha)
    x = x.detach()
    with eval_mode(model):
        h, logits, _ = _forward_maps(model, x, target, with_grad=False)
        b = background_mask(h, threshold)[:, None].to(x.device)
        lo, hi = (x - eps).clamp_min(0.0), (x + eps).clamp_max(1.0)
        x_hat = torch.where(b, torch.minimum(torch.maximum(x + delta.to(x.dtype), lo), hi), x)
        h_adv, logits_adv, grad = _forward_maps(model, x_hat, target, with_grad=True)
    stepped = torch.minimum(torch.maximum(x_hat + alpha * grad.sign(), lo), hi) - x
    delta_next = torch.where(b, stepped, delta.to(x.dtype))
    score = map_similarity(h, h_adv, similarity, topk_fraction)
    return CarriedConsistency(score=score, pred_changed=logits.argmax(1) != logits_adv.argmax(1),
                              delta_next=delta_next.detach())


# -- a whole dataset -----------------------------------------------------------------------------
@dataclass
class DatasetConsistency:
    """Per-sample consistency over a loader, in loader order, on the CPU.

    ``scores`` ``[N]`` float32, ``pred_changed`` ``[N]`` bool, ``indices`` ``[N]`` long (the
    batches' ``index`` or running positions), ``labels`` ``[N]`` long. Higher is better.
    """

    scores: torch.Tensor
    pred_changed: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor

    @property
    def mean(self) -> float:
        """The dataset-level metric: mean ``E`` (NaN for an empty loader)."""
        return float(self.scores.mean()) if self.scores.numel() else float("nan")


_REBATCH_KEYS = ("image", "label", "index")


def rebatch(loader: Iterable[dict[str, Any]], batch_size: int | None) -> Iterator[dict[str, torch.Tensor]]:
    """Regroup a loader's dict batches (``image``, ``label``, optional ``index``) into batches of
    ``batch_size`` (the last may be smaller); ``None`` keeps the loader's own batches.

    Lets a refresh run at a larger batch than the training loader's without rebuilding it.
    """
    pending: list[dict[str, torch.Tensor]] = []
    count = 0
    for batch in loader:
        part = {k: batch[k] for k in _REBATCH_KEYS if k in batch}
        if batch_size is None:
            yield part
            continue
        pending.append(part)
        count += len(part["image"])
        while count >= batch_size:
            merged = {k: torch.cat([p[k] for p in pending]) for k in pending[0]}
            yield {k: v[:batch_size] for k, v in merged.items()}
            rest = {k: v[batch_size:] for k, v in merged.items()}
            count -= batch_size
            pending = [rest] if count else []
    if pending:
        yield {k: torch.cat([p[k] for p in pending]) for k in pending[0]}


def default_batch_size(device: torch.device | str) -> int:
    """Refresh batch size when none is given: 256 on CUDA, 32 elsewhere.

    Measured on the CPU (small CNN, 64x64 tiles): batches of 16-32 are fastest; at 256 the
    activations fall out of cache and a refresh takes 1.6-1.9x longer.
    """
    return 256 if torch.device(device).type == "cuda" else 32


def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode, channels-last copy of ``model`` with every BatchNorm folded into the conv
    before it and no parameter requiring gradients: the same function (up to float rounding),
    computed cheaper. The caller's model is never modified.

    Folding removes BatchNorm's forward and backward work from every PGD step of a refresh, and
    channels-last (NHWC) speeds up convolutions and max-pooling (measured on the CPU: together
    30% less time per refresh). Uses ``torch.fx`` on ``model.features``; a model it cannot trace
    is copied unfolded.
    """
    fast = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    features = getattr(fast, "features", None)
    if isinstance(features, nn.Module) and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in features.modules()):
        try:
            from torch.fx.experimental.optimization import fuse

            fast.features = fuse(features)
        except Exception:  # noqa: BLE001 - untraceable custom module: the unfolded copy is still correct
            pass
    return fast


def _progress_bar(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled, leave=False,
                dynamic_ncols=True)


def dataset_consistency(model: nn.Module, loader: Iterable[dict[str, Any]], options: ConsistencyOptions | None = None, *,
                        device: torch.device | str | None = None, batch_size: int | None = None,
                        progress: bool = False, generator: torch.Generator | None = None,
                        fold_batchnorm: bool = True, desc: str = "explanation consistency") -> DatasetConsistency:
    """Explanation consistency of every sample of ``loader`` (dict batches with ``image``,
    ``label`` and optionally ``index``), explaining and attacking the true label.

    ``batch_size`` regroups the loader's batches (see :func:`rebatch`; default
    :func:`default_batch_size`); ``progress`` shows a tqdm bar on stderr; ``fold_batchnorm`` runs
    on :func:`inference_copy` of the model with channels-last inputs (the model is always
    evaluated in eval mode, so this changes speed, not results beyond float rounding).
    The ``evaluate`` metric is ``result.mean``; ECE uses the per-sample scores.
    """
    options = options or ConsistencyOptions()
    options.validate()
    if device is None:
        device = model_device(model)
    device = torch.device(device)
    if batch_size is None:
        batch_size = default_batch_size(device)
    if fold_batchnorm:
        model = inference_copy(model)
    layout = torch.channels_last if fold_batchnorm else torch.contiguous_format
    total = len(loader.dataset) if hasattr(loader, "dataset") else None  # type: ignore[attr-defined]
    scores, changed, indices, labels = [], [], [], []
    seen = 0
    with _progress_bar(total, desc, progress) as bar:
        for batch in rebatch(loader, batch_size):
            x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=layout)
            y = batch["label"].to(device, non_blocking=True)
            res = explanation_consistency(model, x, y, generator=generator, **options.consistency_kwargs())
            n = len(x)
            scores.append(res.score.float().cpu())
            changed.append(res.pred_changed.cpu())
            labels.append(batch["label"].cpu().long())
            idx = batch.get("index")
            indices.append(idx.cpu().long() if idx is not None else torch.arange(seen, seen + n))
            seen += n
            bar.update(n)
    if not scores:
        empty = torch.zeros(0)
        return DatasetConsistency(empty, empty.bool(), empty.long(), empty.long())
    return DatasetConsistency(torch.cat(scores), torch.cat(changed), torch.cat(indices), torch.cat(labels))
