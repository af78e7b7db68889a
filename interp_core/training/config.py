"""A training run's settings: ``TrainConfig`` (what the command line gives), the config stored in
``config.json`` with its defaults filled in and checked (``_resolve_config``), and the settings that
must match to resume a run directory (``_same_settings``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..data import dataset_classes, infer_image_size, open_split
from .._utils.device import CHANNELS_LAST_MODES, PRECISIONS
from ..errors import InterpError, RunError
from ..models import is_zoo_name, zoo_defaults
from ..runs import FORMAT_VERSION, PATH_KEYS, LoadedRun, load_run, portable_path, recorded_path, validate_config
from .objectives import get_objective, options_from_dict

#: Learning rates (METHODS.md section 5: fine-tuning at 1e-3 was unstable, 1e-4 stable).
DEFAULT_LR_SCRATCH = 1e-3
DEFAULT_LR_FINETUNE = 1e-4
#: Settings that must match to resume an existing run directory.
RESUME_KEYS = ("data", "objective", "objective_options", "arch", "epochs", "batch_size", "lr", "optimizer",
               "weight_decay", "schedule", "seed", "init", "image_size", "val_fraction")


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in config.json)."""

    data: str
    out: str
    objective: str = "erm"
    objective_options: dict[str, Any] = field(default_factory=dict)
    arch: str | None = None  # default smallcnn, or the init run's
    epochs: int = 5
    batch_size: int = 64
    lr: float | None = None  # default: 1e-3 from scratch, 1e-4 when fine-tuning (--init)
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    seed: int = 0
    init: str | None = None
    weights: str | None = None
    image_size: int | None = None
    val_fraction: float = 0.2
    workers: int = 0
    device: str = "auto"
    max_grad_norm: float | None = None
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (device.resolve_precision)
    channels_last: str = "auto"  # auto (CUDA and CPU) | on | off
    compile: bool = False  # wrap the training model in torch.compile
    compile_backend: str = "inductor"
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    already_finished: bool = False
    best_epoch: int | None = None
    best_val_accuracy: float | None = None


def _check(cfg: TrainConfig) -> None:
    if cfg.epochs < 1:
        raise InterpError(f"--epochs must be at least 1 (got {cfg.epochs})")
    if cfg.batch_size < 2:
        raise InterpError(f"--batch-size must be at least 2 for BatchNorm (got {cfg.batch_size})")
    if cfg.lr is not None and not (0 < cfg.lr < 10):
        raise InterpError(f"--lr must be positive and sensible (got {cfg.lr})")
    if cfg.optimizer not in ("adamw", "sgd"):
        raise InterpError(f"--optimizer must be adamw or sgd (got {cfg.optimizer!r})")
    if cfg.schedule not in ("cosine", "constant"):
        raise InterpError(f"--schedule must be cosine or constant (got {cfg.schedule!r})")
    if not 0 < cfg.val_fraction < 1:
        raise InterpError("--val-fraction must be in (0, 1)")
    if cfg.precision not in PRECISIONS:
        raise InterpError(f"--precision must be one of {', '.join(PRECISIONS)} (got {cfg.precision!r})")
    if cfg.channels_last not in CHANNELS_LAST_MODES:
        raise InterpError(f"--channels-last must be one of {', '.join(CHANNELS_LAST_MODES)} (got {cfg.channels_last!r})")


def _resolve_config(cfg: TrainConfig) -> tuple[dict, LoadedRun | None]:
    """Fill defaults (arch and lr from --init), validate options; return the config dict to store."""
    _check(cfg)
    init_run = load_run(cfg.init) if cfg.init else None
    arch = cfg.arch or (init_run.config["arch"] if init_run else "smallcnn")
    if init_run and arch != init_run.config["arch"]:
        raise RunError(f"--arch {arch} differs from the --init run's architecture {init_run.config['arch']}")
    classes = dataset_classes(cfg.data) if not str(cfg.data).endswith(".npz") else open_split(cfg.data, "train").classes
    if init_run and init_run.classes != classes:
        raise RunError(f"the --init run was trained on classes {init_run.classes}, the data has {classes}")
    obj_cls = get_objective(cfg.objective)
    options = options_from_dict(obj_cls, cfg.objective_options)
    image_size = cfg.image_size or (init_run.config["image_size"] if init_run else None)
    if image_size is None:
        image_size = infer_image_size(open_split(cfg.data, "train"))
    arch_options = dict(init_run.config.get("arch_options") or {}) if init_run else {}
    if "image_size" in arch_options:
        arch_options["image_size"] = int(image_size)
    if is_zoo_name(arch) and not init_run:  # timm/torchvision: normalisation and interpolation of the architecture
        d = zoo_defaults(arch)
        arch_options = {"mean": d["mean"], "std": d["std"], "image_size": int(image_size),
                        "interpolation": d["interpolation"]}
    lr = cfg.lr if cfg.lr is not None else (DEFAULT_LR_FINETUNE if init_run else DEFAULT_LR_SCRATCH)
    stored = {
        "format_version": FORMAT_VERSION,
        "interp_core_version": __version__,
        "arch": arch,
        "arch_options": arch_options,
        "num_classes": len(classes),
        "classes": classes,
        "image_size": int(image_size),
        "data": portable_path(cfg.data, cfg.out),
        "objective": cfg.objective,
        "objective_options": dataclasses.asdict(options),
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": lr,
        "optimizer": cfg.optimizer,
        "weight_decay": cfg.weight_decay,
        "momentum": cfg.momentum,
        "schedule": cfg.schedule,
        "seed": cfg.seed,
        "init": portable_path(cfg.init, cfg.out) if cfg.init else None,
        "prior_epochs": (int(init_run.config["epochs"]) + int(init_run.config.get("prior_epochs", 0))) if init_run else 0,
        "weights": portable_path(cfg.weights, cfg.out) if cfg.weights else None,
        "val_fraction": cfg.val_fraction,
        "max_grad_norm": cfg.max_grad_norm,
        # engineering settings of the first launch (speed and rounding, not the algorithm); old runs lack them
        "precision": cfg.precision,
        "channels_last": cfg.channels_last,
        "compile": bool(cfg.compile),
        "sync_bn": bool(cfg.sync_bn),
    }
    return validate_config(stored), init_run


#: settings that change the computation but came after runs were first written: a run stored
#: without them used these values
RESUME_KEYS_WITH_DEFAULTS = {"precision": "auto", "sync_bn": False}


def _same_settings(stored: dict, new: dict, run_dir: Path) -> list[str]:
    """Names of the settings that differ between a stored run and the command resuming it (paths
    compared as the files they name, so a run recorded with absolute paths resumes too)."""
    def value(cfg: dict, k: str) -> Any:
        return recorded_path(cfg, k, run_dir) if k in PATH_KEYS else cfg.get(k)
    differ = [k for k in RESUME_KEYS if value(stored, k) != value(new, k)]
    return differ + [k for k, d in RESUME_KEYS_WITH_DEFAULTS.items() if stored.get(k, d) != new.get(k, d)]
