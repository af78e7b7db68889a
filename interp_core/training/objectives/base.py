"""The objective interface: how one batch becomes a loss, plus optional per-epoch work.

The training loop (``interp_core.training.loop``) owns data, optimiser, schedule, validation,
checkpoints and resume; an objective owns only its loss and its own state. Options are a
dataclass whose fields become ``train`` flags (``--field-name``) and are stored in config.json.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..._registry import Registry
from ...errors import InterpError
from ..distributed import SINGLE, DistInfo


@dataclass
class StepContext:
    """Where training is when a batch is processed.

    ``progress`` is fractional epochs done so far (``epoch + i / steps_per_epoch``), used by
    ramps such as SCAAT's adaptive ``eps`` budget.
    """

    epoch: int
    step: int
    steps_per_epoch: int
    device: torch.device
    generator: torch.Generator  # seeded; use it for every random draw on the CPU path
    prior_epochs: int = 0  # epochs the model was trained before this run (its --init runs')

    @property
    def progress(self) -> float:
        return self.epoch + self.step / max(1, self.steps_per_epoch)

    @property
    def model_progress(self) -> float:
        """Fractional epochs the *model* has been trained, counting its ``--init`` runs' epochs.

        Warm-ups use this [ours]: their rationale (a fresh model's saliency is noise) does not
        hold for a model fine-tuned from a trained baseline, so fine-tuning skips them.
        """
        return self.prior_epochs + self.progress


@dataclass
class EpochContext:
    """What ``begin_epoch`` may use: the model, an un-augmented, unshuffled loader over the
    training set (batches are dicts with ``image``, ``label``, ``index``), the device, the run
    directory (for side files such as ``consistency.npz``), the training samples' ids (paths
    relative to the dataset root, aligned with ``index``) and a seeded generator.

    Under torchrun (``dist.enabled``): ``model`` is the plain module (not the DDP wrapper),
    ``train_eval_loader`` covers only this rank's share of the training set, ``run_dir`` is None
    except on rank 0 (the only writer), and per-sample results are combined with
    :func:`~interp_core.training.distributed.all_gather_rows` over ``dist``."""

    epoch: int
    total_epochs: int
    model: nn.Module
    train_eval_loader: Any
    device: torch.device
    run_dir: Any
    generator: torch.Generator
    sample_ids: list[str] = dataclasses.field(default_factory=list)
    progress: bool = True
    prior_epochs: int = 0  # see StepContext.model_progress
    dist: DistInfo = SINGLE


class Objective:
    """Base class. Subclasses set ``name``, ``Options`` and implement ``batch_loss``."""

    name: ClassVar[str] = "?"
    description: ClassVar[str] = ""

    @dataclass
    class Options:
        pass

    def __init__(self, options: "Objective.Options", num_train: int):
        self.options = options
        self.num_train = num_train

    # -- per epoch -------------------------------------------------------------------------
    def begin_epoch(self, ctx: EpochContext) -> dict[str, float]:
        """Work before an epoch's batches (e.g. ECE's refresh); returns history extras."""
        return {}

    # -- per batch -------------------------------------------------------------------------
    def batch_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        """Return ``(loss, extras)`` for one batch; the model is in train mode on entry and
        must be in train mode on exit. ``extras`` are averaged over the epoch into history."""
        raise NotImplementedError

    # -- resumable state (tensors go to safetensors, the rest must be JSON-able) -----------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


_REGISTRY: Registry[type[Objective]] = Registry("objective", sort_names=True)
_OBJECTIVES: dict[str, type[Objective]] = _REGISTRY.entries


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator adding an objective to the registry under ``cls.name`` (a second one is refused)."""
    _REGISTRY.add(cls.name, cls)
    return cls


def objective_names() -> list[str]:
    """Registered objective names, alphabetical."""
    return _REGISTRY.names()


def list_objectives() -> dict[str, str]:
    """Objective names with a one-line description each, alphabetical."""
    return {name: (_OBJECTIVES[name].description or "").strip().split("\n")[0] for name in _REGISTRY.names()}


def get_objective(name: str) -> type[Objective]:
    """The objective class registered as ``name``, or an ``InterpError`` listing the valid names."""
    return _REGISTRY.get(name)


def field_type(f: dataclasses.Field) -> type:
    """The scalar type of an options field (annotations may be strings: ``"float | None"``)."""
    ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for name, t in (("bool", bool), ("float", float), ("int", int), ("str", str)):
        if name in str(ann).replace("None", ""):
            return t
    default = f.default if f.default is not dataclasses.MISSING else None
    return type(default) if default is not None else str


def _coerce(value: Any, ftype: type) -> Any:
    if ftype is bool and isinstance(value, str):
        low = value.strip().lower()
        if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"expected a boolean, got {value!r}")
        return low in ("1", "true", "yes", "on")
    if ftype is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected an integer, got {value!r}")
    if ftype is float and isinstance(value, str) and value.strip().lower() in ("none", "auto", ""):
        return None
    return ftype(value)


def options_from_dict(cls: type[Objective], values: dict[str, Any]) -> Objective.Options:
    """Build ``cls.Options`` from a dict, rejecting unknown keys and coercing types."""
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    unknown = set(values) - set(fields)
    if unknown:
        raise InterpError(f"objective {cls.name!r} has no option(s) {', '.join(sorted(unknown))}; "
                          f"valid: {', '.join(sorted(fields)) or 'none'}")
    kwargs = {}
    for k, v in values.items():
        if v is None:
            continue
        try:
            kwargs[k] = _coerce(v, field_type(fields[k]))
        except (TypeError, ValueError) as e:
            raise InterpError(f"option {k}={v!r} for objective {cls.name!r}: {e}") from None
    opts = cls.Options(**kwargs)
    validate = getattr(opts, "validate", None)
    if callable(validate):
        validate()
    return opts
