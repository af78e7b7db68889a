"""Explanation-quality metrics, batched in torch, one per-sample tensor ``[B]`` each (NaN = undefined).

Organised by category as in Quantus; every metric is registered in :data:`METRICS` with its
metadata (category, direction, which form of the attribution it reads, reference).

- accuracy: ``accuracy``, ``group_accuracy``, ``worst_group_accuracy``
- complexity: ``sparseness`` (Gini), ``complexity`` (entropy)
- localisation: ``pointing_game``, ``relevance_mass_accuracy``, ``relevance_rank_accuracy``,
  ``artifact_mass``
- faithfulness: ``deletion_auc``, ``insertion_auc`` (with curves), ``symmetric_relevance_gain``
  (least- minus most-relevant-first deletion AUC)
- robustness: ``max_sensitivity``
- randomisation: ``model_randomisation`` (cascading, Spearman per layer)

``summarise`` turns per-sample values into the ``{"mean", "std", "n"}`` the CLI stores.
"""
from __future__ import annotations

from .accuracy import accuracy, group_accuracy, worst_group_accuracy
from .base import METRICS, MetricInfo, get_metric, list_metrics, metric_table, register_metric
from .baselines import gaussian_blur, make_baseline
from .complexity import complexity, sparseness
from .correlation import pearson, rankdata, spearman
from .faithfulness import (
    PerturbationCurve,
    SymmetricRelevanceGain,
    chunk_bounds,
    deletion_auc,
    insertion_auc,
    least_relevant_first_deletion,
    pixel_ranks,
    symmetric_relevance_gain,
)
from .localisation import artifact_mass, pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
from .randomisation import RandomisationResult, model_randomisation, randomisable_layers
from .robustness import max_sensitivity
from .summary import summarise

__all__ = [
    "METRICS", "MetricInfo", "PerturbationCurve", "RandomisationResult", "SymmetricRelevanceGain",
    "accuracy", "artifact_mass", "chunk_bounds", "complexity", "deletion_auc", "gaussian_blur",
    "get_metric", "group_accuracy", "insertion_auc", "least_relevant_first_deletion", "list_metrics", "make_baseline",
    "max_sensitivity", "metric_table",
    "model_randomisation", "pearson", "pixel_ranks", "pointing_game", "randomisable_layers", "rankdata",
    "register_metric", "relevance_mass_accuracy", "relevance_rank_accuracy", "sparseness", "spearman",
    "summarise", "symmetric_relevance_gain", "worst_group_accuracy",
]
