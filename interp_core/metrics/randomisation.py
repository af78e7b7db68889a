"""Randomisation: a sanity check that an explanation depends on the learned weights (Adebayo et al. 2018)."""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from ..errors import InterpError
from .._utils.device import model_device
from ._inputs import Method, as_map, check_images, eval_mode, resolve_method, resolve_target
from .base import register_metric
from .correlation import spearman


class RandomisationResult(NamedTuple):
    """Cascading randomisation: headline score per sample and the per-layer table for plotting."""

    score: torch.Tensor        # [B] headline: mean over layers (or the last layer, see ``reduce``)
    per_layer: torch.Tensor    # [L, B] Spearman(original map, map after randomising layers 1..l)
    layers: list[str]          # L module names, in randomisation order (top first)


def randomisable_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters and have ``reset_parameters``, top (head) first.

    Order is the reverse of ``named_modules()`` registration order, as Quantus' ``top_down``
    order (Linear, Conv and BatchNorm layers for the models here).
    """
    names = [name for name, m in model.named_modules()
             if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def _reset(module: nn.Module, seed: int) -> None:
    """``module.reset_parameters()`` under a private, seeded RNG (the global RNG state is untouched)."""
    devices = [p.device for p in module.parameters() if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=sorted({d.index or 0 for d in devices})):
        torch.manual_seed(seed)
        module.reset_parameters()


@register_metric(
    category="randomisation", higher_is_better=False, attribution_form="absolute",
    description="Spearman correlation of |maps| between the trained model and cascading randomised copies",
    reference="Adebayo et al. 2018, Sanity checks for saliency maps",
    requires=("model", "x", "method"), headline=lambda r: r.score, expensive=True,
)
@torch.no_grad()
def model_randomisation(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int | None = None,
                        method: Method = "saliency", seed: int = 0, reduce: str = "mean",
                        layers: list[str] | None = None, method_options: dict | None = None) -> RandomisationResult:
    """Cascading model-parameter randomisation; lower is better (a low score means the method passes).

    A deep copy of ``model`` (the caller's model is never changed) has its layers re-initialised one
    after another from the top (head) down (``randomisable_layers``; each with its own
    ``reset_parameters`` under seed ``seed + l``). After each layer ``l`` the maps of the
    randomised copy are computed for the same ``target`` (default: prediction of the original
    model) and compared with the original maps: ``rho_l = Spearman(|a|, |a_l|)`` per sample (ranks
    with average ties; NaN where a map is constant). Headline ``score``: ``reduce="mean"``
    (default, [ours]) averages ``rho_l`` over the layers ignoring NaN, i.e. the normalised area
    under the cascade curve, which rewards a method whose maps decorrelate early;
    ``reduce="last"`` is the fully randomised model only. ``per_layer [L, B]`` and ``layers`` are
    the table to plot. ``method``: a name (see ``max_sensitivity``) or a callable.
    """
    check_images(x)
    if reduce not in ("mean", "last"):
        raise InterpError(f"reduce must be 'mean' or 'last', got {reduce!r}")
    explain = resolve_method(method, **(method_options or {}))
    device = model_device(model)
    x = x.to(device)
    order = randomisable_layers(model) if layers is None else list(layers)
    if not order:
        raise InterpError("the model has no layer with parameters and reset_parameters() to randomise")
    with eval_mode(model):
        t = resolve_target(model, x, target)
        with torch.enable_grad():
            original = as_map(explain(model, x, t)).abs()
    randomised = copy.deepcopy(model).eval()
    modules = dict(randomised.named_modules())
    unknown = [name for name in order if name not in modules or not hasattr(modules[name], "reset_parameters")]
    if unknown:
        raise InterpError(f"cannot randomise layer(s) {', '.join(map(repr, unknown))}; "
                          f"choose from {', '.join(randomisable_layers(model))}")
    rows = []
    for l, name in enumerate(order):
        _reset(modules[name], seed + l)
        with torch.enable_grad():
            a = as_map(explain(randomised, x, t)).abs()
        rows.append(spearman(original, a))
    per_layer = torch.stack(rows).float()
    score = per_layer.nanmean(0) if reduce == "mean" else per_layer[-1]
    return RandomisationResult(score, per_layer, order)
