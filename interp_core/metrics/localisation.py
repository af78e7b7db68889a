"""Localisation: does the attribution fall on the annotated evidence (or on a known artifact)?

Masks are ``[B,H,W]`` or ``[B,1,H,W]``, bool or numeric, nonzero = inside. Every metric here is
NaN for a sample whose mask is empty (undefined, and skipped by ``summarise``).
"""
from __future__ import annotations

import torch

from ._inputs import map_and_mask, work_dtype
from .base import register_metric

_NAN = float("nan")
_CLEVR_XAI = "Arras et al. 2022, CLEVR-XAI: a benchmark dataset for the ground truth evaluation of neural network explanations"


def _nan_where(values: torch.Tensor, undefined: torch.Tensor) -> torch.Tensor:
    return torch.where(undefined, torch.full_like(values, _NAN), values).float()


@register_metric(
    category="localisation", higher_is_better=True, attribution_form="raw",
    description="1 if the maximum of a lies inside the mask, else 0",
    reference="Zhang et al. 2018, Top-down neural attention by excitation backprop",
    requires=("a", "mask"),
)
def pointing_game(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pointing-game hit per sample ``[B]`` (1.0 hit, 0.0 miss, NaN for an empty mask); higher is better.

    ``hit = 1[argmax_p a_p in mask]``. Ties for the maximum count as a hit if any tied pixel lies in
    the mask, as in Quantus ``PointingGame`` (raw ``a``, its default ``abs=False``); so a constant or
    all-zero map scores 1 whenever the mask is non-empty. Quantus returns ``True`` instead of NaN
    for an empty mask (it assigns NaN into a bool array); we return NaN.
    """
    a, m = map_and_mask(a, mask)
    v, m = a.flatten(1), m.flatten(1)
    at_max = v == v.max(1, keepdim=True).values
    hit = (at_max & m).any(1).to(v.dtype)
    return _nan_where(hit, ~m.any(1))


def _mass_inside(a: torch.Tensor, mask: torch.Tensor, mask_name: str) -> torch.Tensor:
    """``sum(max(a,0) * mask) / sum(max(a,0))``; NaN for an empty mask or a map with no positive mass."""
    a, m = map_and_mask(a, mask, mask_name)
    v = a.flatten(1).clamp_min(0).to(work_dtype(a.device))
    m = m.flatten(1)
    total = v.sum(1)
    inside = (v * m).sum(1)
    share = inside / torch.where(total > 0, total, torch.ones_like(total))
    return _nan_where(share, ~m.any(1) | (total <= 0))


@register_metric(
    category="localisation", higher_is_better=True, attribution_form="clipped",
    description="share of the positive relevance that lies inside the mask",
    reference=_CLEVR_XAI,
    requires=("a", "mask"),
)
def relevance_mass_accuracy(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Relevance mass accuracy per sample ``[B]`` in ``[0,1]``; higher is better.

    ``RMA = sum_p a+_p * m_p / sum_p a+_p`` with ``a+ = max(a, 0)``. NaN for an empty mask or a map
    with no positive value. Quantus ``RelevanceMassAccuracy`` uses the raw ``a`` by default
    (``abs=False``), so the two agree on non-negative maps (saliency, Grad-CAM) and ours equals
    Quantus applied to ``max(a, 0)`` in general; clipping keeps the share in ``[0,1]``.
    """
    return _mass_inside(a, mask, "mask")


@register_metric(
    category="localisation", higher_is_better=True, attribution_form="raw",
    description="share of the top-|mask| pixels of a that fall inside the mask",
    reference=_CLEVR_XAI,
    requires=("a", "mask"),
)
def relevance_rank_accuracy(a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Relevance rank accuracy per sample ``[B]`` in ``[0,1]``; higher is better.

    With ``k = |mask|`` and ``P_k`` the ``k`` pixels of largest ``a`` (raw, Quantus' default):
    ``RRA = |P_k intersect mask| / k``, as Quantus ``RelevanceRankAccuracy`` (``k`` = mask size).
    Ties at the k-th value are resolved by their expectation under a random order (pixels strictly
    above the k-th value count fully; the remaining ``r`` slots are shared among the ``e`` tied
    pixels, of which ``e_in`` are in the mask, adding ``r * e_in / e``). Quantus breaks ties by
    NumPy's unstable argsort, so the two agree whenever the top-k is unambiguous. A constant map
    thus gets ``k / n`` (chance level) instead of a value that depends on pixel order.
    NaN for an empty mask.
    """
    a, m = map_and_mask(a, mask)
    v, m = a.flatten(1), m.flatten(1)
    k = m.sum(1)
    sorted_v = torch.sort(v, dim=1, descending=True).values
    kth = sorted_v.gather(1, (k - 1).clamp_min(0)[:, None])  # [B,1]
    above, tied = v > kth, v == kth
    n_above = above.sum(1)
    hits_above = (above & m).sum(1)
    n_tied = tied.sum(1)
    hits_tied = (tied & m).sum(1)
    dt = work_dtype(v.device)
    expected = hits_above.to(dt) + (k - n_above).to(dt) * hits_tied.to(dt) / n_tied.clamp_min(1).to(dt)
    rra = expected / k.clamp_min(1).to(dt)
    return _nan_where(rra, k == 0)


@register_metric(
    category="localisation", higher_is_better=False, attribution_form="clipped",
    description="share of the positive relevance that lies on a known spurious region (artifact)",
    reference="project metric; relevance mass (Arras et al. 2022) on the artifact region",
    requires=("a", "region"),
)
def artifact_mass(a: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Share of attribution on a known spurious region per sample ``[B]`` in ``[0,1]``; lower is better.

    ``sum_p a+_p * r_p / sum_p a+_p`` with ``a+ = max(a, 0)``: the same form as
    ``relevance_mass_accuracy`` so the two are comparable. NaN where the region is empty (e.g.
    samples without the artifact) or the map has no positive value.
    """
    return _mass_inside(a, region, "region")
