"""The settings of explanation consistency (METHODS.md section 3): the background split, the
attack's budget and steps, the similarity; shared by the ``ece`` objective, ``evaluate`` and the
dashboard, and read back from an ``ece`` run's config (:func:`consistency_options_for`)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import InterpError
from .perturb import default_step_size, parse_threshold
from .similarity import SIMILARITIES


@dataclass
class ConsistencyOptions:
    """Settings of the consistency measurement (shared by the ``ece`` objective and ``evaluate``)."""

    threshold: str = field(default="0.5", metadata={"help": (
        "[ours] background = heatmap < tau on the max-normalised heatmap: a number in (0,1] or "
        "'mean' (each sample's mean heatmap value)")})
    eps: float = field(default=8 / 255, metadata={"help": "[ours] L-inf budget of ECE's background attack (images in [0,1])"})
    steps: int = field(default=3, metadata={"help": "[ours] PGD steps K of ECE's background attack"})
    alpha: float | None = field(default=None, metadata={"help": "[ours] PGD step size of ECE's background attack; unset: 2.5 * eps / steps"})
    similarity: str = field(default="cosine", metadata={"help": (
        "[ours] similarity of the two heatmaps: cosine, pearson or topk_iou")})
    topk_fraction: float = field(default=0.1, metadata={"help": "[ours] fraction of pixels in the top set for topk_iou"})
    random_start: bool = field(default=False, metadata={"help": (
        "[ours] start PGD at a uniform random point of the eps-ball on the background instead of at x "
        "(off: deterministic, and the first step reuses the clean forward pass)")})

    def __post_init__(self) -> None:
        # CLI and config values may arrive as strings; coerce the ones argparse cannot type.
        if isinstance(self.alpha, str):
            self.alpha = None if self.alpha.strip().lower() in ("", "none", "auto") else float(self.alpha)
        if not isinstance(self.threshold, str):
            self.threshold = str(self.threshold)

    def validate(self) -> None:
        """Raise InterpError for values outside their domain."""
        parse_threshold(self.threshold)
        if not 0.0 <= float(self.eps) <= 1.0:
            raise InterpError(f"eps must be in [0, 1], got {self.eps}")
        if int(self.steps) < 0 or int(self.steps) != self.steps:
            raise InterpError(f"steps must be an integer >= 0, got {self.steps}")
        if self.alpha is not None and not float(self.alpha) > 0:
            raise InterpError(f"alpha must be > 0 (or unset for 2.5 * eps / steps), got {self.alpha}")
        if self.similarity not in SIMILARITIES:
            raise InterpError(f"unknown similarity {self.similarity!r}; choose one of {', '.join(SIMILARITIES)}")
        if not 0.0 < float(self.topk_fraction) <= 1.0:
            raise InterpError(f"topk_fraction must be in (0, 1], got {self.topk_fraction}")

    @property
    def step_size(self) -> float:
        """The PGD step ``alpha`` actually used."""
        return default_step_size(self.eps, self.steps) if self.alpha is None else float(self.alpha)

    def consistency_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`explanation_consistency` taken from these options."""
        return {f.name: getattr(self, f.name) for f in fields(ConsistencyOptions)}


def consistency_options_for(config: dict[str, Any] | None) -> ConsistencyOptions:
    """The consistency settings ``evaluate`` scores a run with: those an ``ece`` run trained with
    (its ``config.json``'s ``objective_options``, the :class:`ConsistencyOptions` fields of them),
    the defaults for any other run, so an ECE run is measured the way it was optimised."""
    if not config or config.get("objective") != "ece":
        return ConsistencyOptions()
    names = {f.name for f in fields(ConsistencyOptions)}
    opts = ConsistencyOptions(**{k: v for k, v in (config.get("objective_options") or {}).items() if k in names})
    opts.validate()
    return opts

