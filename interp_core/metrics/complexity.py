"""Complexity: how concentrated an attribution map is (Gini sparseness, entropy complexity)."""
from __future__ import annotations

import torch

from ._inputs import as_map, work_dtype
from .base import register_metric


@register_metric(
    category="complexity", higher_is_better=True, attribution_form="absolute",
    description="Gini index of |a|: 0 for a uniform map, towards 1 when a few pixels hold all relevance",
    reference="Chalasani et al. 2020, Concise explanations of neural networks using adversarial training",
    requires=("a",),
)
def sparseness(a: torch.Tensor) -> torch.Tensor:
    """Gini sparseness per sample ``[B]``; higher is sparser (better).

    With ``|a|`` flattened to ``n`` values sorted ascending, ``a_(1) <= ... <= a_(n)``:
    ``G = sum_i (2i - n - 1) a_(i) / (n * sum_i a_(i))``, in ``[0, 1 - 1/n]``.
    Equals Quantus ``Sparseness`` up to the ``1e-7`` Quantus adds to every value (a difference of at
    most about ``1e-7 * n / sum|a|``). A constant map gives 0; an all-zero map gives 0 as in Quantus (whose
    ``1e-7`` makes it constant) rather than NaN. ``a``: ``[B,H,W]`` or ``[B,C,H,W]`` (see ``as_map``).
    """
    v = as_map(a).flatten(1).abs()
    v = v.to(work_dtype(v.device))
    n = v.shape[1]
    v, _ = torch.sort(v, dim=1)
    i = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    total = v.sum(1)
    g = ((2 * i - n - 1) * v).sum(1) / (n * total)
    return torch.where(total > 0, g, torch.zeros_like(g)).float()


@register_metric(
    category="complexity", higher_is_better=False, attribution_form="absolute",
    description="Shannon entropy (nats) of |a| / sum|a|: 0 for a single pixel, log(H*W) for a uniform map",
    reference="Bhatt et al. 2020, Evaluating and aggregating feature-based model explanations",
    requires=("a",),
)
def complexity(a: torch.Tensor) -> torch.Tensor:
    """Entropy complexity per sample ``[B]``; lower is simpler (better).

    ``p = |a| / sum|a|``, ``C = -sum_i p_i log p_i`` (natural log, ``0 log 0 = 0``), in
    ``[0, log n]``. Equals Quantus ``Complexity``. NaN for an all-zero map (``p`` undefined).
    """
    v = as_map(a).flatten(1).abs()
    v = v.to(work_dtype(v.device))
    total = v.sum(1, keepdim=True)
    p = v / total
    h = -torch.special.xlogy(p, p).sum(1)
    return torch.where(total[:, 0] > 0, h, torch.full_like(h, float("nan"))).float()
