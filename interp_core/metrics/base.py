"""Metric metadata and the registry (Quantus style): every metric says what it measures and how to read it.

``METRICS`` maps a metric's name to its :class:`MetricInfo`; the CLI, the README and the dashboard
print their tables from it and call :meth:`MetricInfo.score` to get the per-sample headline values.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import torch

from .._registry import Registry
from ..errors import InterpError

Category = Literal["accuracy", "complexity", "localisation", "faithfulness", "robustness", "randomisation"]
# Which form of the attribution map a metric actually looks at.
AttributionForm = Literal["absolute", "clipped", "raw", "none"]

ATTRIBUTION_FORMS: dict[str, str] = {
    "absolute": "|a|",
    "clipped": "max(a, 0)",
    "raw": "a as given (signed)",
    "none": "no attribution map",
}


@dataclass(frozen=True)
class MetricInfo:
    """Metadata of one metric plus the function computing it.

    ``requires`` names the inputs ``fn`` needs (its parameter names) from this vocabulary:
    ``a`` (attribution ``[B,H,W]``), ``mask`` (evidence mask), ``region`` (spurious region),
    ``model``, ``x`` (images ``[B,3,H,W]`` in ``[0,1]``), ``target`` (``[B]`` classes),
    ``method`` (attribution method name or callable), ``pred``, ``y``.
    ``headline`` turns ``fn``'s return value into the per-sample tensor ``[B]`` (identity by default;
    e.g. ``.auc`` for deletion/insertion, whose result also carries the curves).
    ``expensive``: the metric attributes the model again many times per sample (an evaluation
    computes it only when asked). ``reuses`` maps a parameter of ``fn`` to an earlier metric whose
    headline it can take instead of recomputing it (SRG reuses the deletion AUC).
    A metric that requires ``method`` attributes the model itself, so an evaluation hands it the
    model as given; the others only evaluate the model as a function (any equivalent copy will do).
    """

    name: str
    fn: Callable[..., Any]
    category: Category
    higher_is_better: bool
    attribution_form: AttributionForm
    description: str
    reference: str
    requires: tuple[str, ...]
    headline: Callable[[Any], torch.Tensor] = field(default=lambda result: result)
    expensive: bool = False
    reuses: Mapping[str, str] = field(default_factory=dict)

    @property
    def direction(self) -> str:
        """'higher is better' or 'lower is better', for tables."""
        return "higher is better" if self.higher_is_better else "lower is better"

    def available(self, inputs: dict[str, Any]) -> bool:
        """True when every required input is present (not None) in ``inputs``."""
        return all(inputs.get(k) is not None for k in self.requires)

    def compute(self, **inputs: Any) -> Any:
        """``fn``'s full result (e.g. a curve with its AUC), called with the required inputs, extra keys ignored.

        Other inputs that ``fn`` accepts by name (``target``, options such as ``n_steps``) are passed
        when given and not None.
        """
        missing = [k for k in self.requires if inputs.get(k) is None]
        if missing:
            raise InterpError(f"metric {self.name!r} needs {', '.join(missing)}")
        accepted = inspect.signature(self.fn).parameters
        kwargs = {k: v for k, v in inputs.items() if k in accepted and v is not None}
        return self.fn(**kwargs)

    def score(self, **inputs: Any) -> torch.Tensor:
        """Per-sample values ``[B]``: the headline of :meth:`compute`."""
        return self.headline(self.compute(**inputs))

    def as_row(self) -> dict[str, str]:
        """A flat JSON-friendly description (no callables), one row of a metrics table."""
        return {
            "name": self.name,
            "category": self.category,
            "direction": self.direction,
            "attribution": ATTRIBUTION_FORMS[self.attribution_form],
            "description": self.description,
            "reference": self.reference,
        }


_METRICS: Registry[MetricInfo] = Registry("metric")
METRICS: dict[str, MetricInfo] = _METRICS.entries
"""Name -> :class:`MetricInfo` in registration order (the registry's live dict; add with :func:`register_metric`)."""


def register_metric(
    *,
    category: Category,
    higher_is_better: bool,
    attribution_form: AttributionForm,
    description: str,
    reference: str,
    requires: tuple[str, ...],
    name: str | None = None,
    headline: Callable[[Any], torch.Tensor] | None = None,
    expensive: bool = False,
    reuses: Mapping[str, str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding a metric function to :data:`METRICS` under its function name (or ``name``)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = name or fn.__name__
        info = _METRICS.add(key, MetricInfo(key, fn, category, higher_is_better, attribution_form, description,
                                            reference, requires, **({"headline": headline} if headline else {}),
                                            expensive=expensive, reuses=dict(reuses or {})))
        fn.info = info  # type: ignore[attr-defined]
        return fn

    return wrap


def get_metric(name: str) -> MetricInfo:
    """The registered metric ``name``, or an ``InterpError`` listing the valid names."""
    return _METRICS.get(name)


def list_metrics() -> dict[str, str]:
    """Metric names with a one-line description each, in registration order."""
    return {name: info.description for name, info in METRICS.items()}


CATEGORIES: tuple[str, ...] = ("accuracy", "complexity", "localisation", "faithfulness", "robustness", "randomisation")


def metric_table(category: str | None = None) -> list[dict[str, str]]:
    """Rows of :meth:`MetricInfo.as_row` for every registered metric, grouped by category (or one)."""
    infos = sorted(METRICS.values(), key=lambda m: CATEGORIES.index(m.category))
    return [m.as_row() for m in infos if category is None or m.category == category]
