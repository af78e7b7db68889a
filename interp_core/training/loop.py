"""The training loop shared by every objective: data, optimiser, cosine schedule, validation,
best-by-validation weights, history, progress file, checkpoints and resume.

Determinism: the shuffle order, the augmentation and the objective's random draws of epoch ``e``
are all functions of ``(seed, e)``, and a checkpoint is taken after each epoch, so a run killed
at any point and resumed produces the same weights as an uninterrupted run on the CPU.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import __version__
from ..data import dataset_classes, infer_image_size, open_split
from ..device import autocast, memory_format, pick_device, seed_everything, use_amp
from ..errors import InterpError, RunError, TrainingDiverged
from ..models import create_model
from ..runs import (CONFIG, FORMAT_VERSION, HISTORY, PROGRESS, WEIGHTS, LoadedRun, load_run, load_tensors,
                    load_weights_into, read_history, read_json, save_model_weights, validate_config, write_json,
                    write_jsonl)
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .objectives import get_objective, options_from_dict
from .objectives.base import EpochContext, StepContext

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
    lr = cfg.lr if cfg.lr is not None else (DEFAULT_LR_FINETUNE if init_run else DEFAULT_LR_SCRATCH)
    stored = {
        "format_version": FORMAT_VERSION,
        "interp_core_version": __version__,
        "arch": arch,
        "arch_options": {},
        "num_classes": len(classes),
        "classes": classes,
        "image_size": int(image_size),
        "data": str(Path(cfg.data).resolve()),
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
        "init": str(Path(cfg.init).resolve()) if cfg.init else None,
        "prior_epochs": (int(init_run.config["epochs"]) + int(init_run.config.get("prior_epochs", 0))) if init_run else 0,
        "weights": str(Path(cfg.weights).resolve()) if cfg.weights else None,
        "val_fraction": cfg.val_fraction,
        "max_grad_norm": cfg.max_grad_norm,
    }
    return validate_config(stored), init_run


def _lr_at(cfg: dict, epoch: int) -> float:
    if cfg["schedule"] == "constant":
        return cfg["lr"]
    return 0.5 * cfg["lr"] * (1 + math.cos(math.pi * epoch / cfg["epochs"]))


def _make_optimizer(cfg: dict, model: nn.Module) -> torch.optim.Optimizer:
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                               weight_decay=cfg["weight_decay"], nesterov=True)
    return torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def _to_device(batch: dict[str, torch.Tensor], device: torch.device, fmt: torch.memory_format) -> dict[str, torch.Tensor]:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    out["image"] = out["image"].contiguous(memory_format=fmt)
    return out


@torch.no_grad()
def evaluate_loss_accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a loader, in eval mode (mode restored)."""
    was_training = model.training
    model.eval()
    total, loss_sum, correct = 0, 0.0, 0
    try:
        for batch in loader:
            x, y = batch["image"].to(device), batch["label"].to(device)
            with autocast(device):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += y.numel()
    finally:
        model.train(was_training)
    return loss_sum / max(1, total), correct / max(1, total)


class _ProgressFile:
    """Throttled writes of ``progress.json`` so a dashboard can poll a running job."""

    def __init__(self, run_dir: Path, every_s: float | None = None):
        self.path = run_dir / PROGRESS
        # INTERP_PROGRESS_EVERY (seconds) lets tests and fast jobs see every step
        self.every_s = float(os.environ.get("INTERP_PROGRESS_EVERY", "1.0")) if every_s is None else every_s
        self.last = 0.0

    def write(self, force: bool = False, **info: Any) -> None:
        now = time.time()
        if force or now - self.last >= self.every_s:
            self.last = now
            write_json(self.path, {**info, "updated": now})


def _same_settings(stored: dict, new: dict) -> list[str]:
    return [k for k in RESUME_KEYS if stored.get(k) != new.get(k)]


def train(cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume, or report finished) the run ``cfg.out``; see the module docstring."""
    log = log or (lambda m: print(m, file=sys.stderr))
    run_dir = Path(cfg.out)
    device = pick_device(cfg.device)
    stored_cfg, init_run = _resolve_config(cfg)

    resume_folder = None
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / CONFIG).is_file():
            raise RunError(f"{run_dir}: exists, is not empty and is not a run; choose another --out")
        old = read_json(run_dir / CONFIG)
        diff = _same_settings(old, stored_cfg)
        if diff:
            raise RunError(f"{run_dir}: an existing run with different settings ({', '.join(diff)}); "
                           "use the same command to resume it or another --out")
        state = read_json(run_dir / PROGRESS) if (run_dir / PROGRESS).is_file() else {}
        if state.get("state") == "finished" and (run_dir / WEIGHTS).is_file():
            log(f"{run_dir}: run already finished ({old['epochs']} epochs); nothing to do")
            return TrainResult(run_dir, read_history(run_dir), already_finished=True)
        resume_folder = latest_checkpoint(run_dir)
        stored_cfg = old
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG, stored_cfg)

    gen = seed_everything(cfg.seed)
    image_size = stored_cfg["image_size"]
    train_ds = open_split(cfg.data, "train", image_size=image_size, augment=True, seed=cfg.seed,
                          val_fraction=cfg.val_fraction)
    train_eval_ds = open_split(cfg.data, "train", image_size=image_size, augment=False, seed=cfg.seed,
                               val_fraction=cfg.val_fraction)
    val_ds = open_split(cfg.data, "val", image_size=image_size, seed=cfg.seed, val_fraction=cfg.val_fraction)
    if len(train_ds) < 2:
        raise InterpError(f"{cfg.data}: the train split needs at least 2 images")

    model = create_model(stored_cfg["arch"], stored_cfg["num_classes"])
    if init_run is not None:
        model.load_state_dict(init_run.model.state_dict())
    elif cfg.weights:
        load_weights_into(model, load_tensors(cfg.weights), cfg.weights)
    fmt = memory_format(device)
    model.to(device).to(memory_format=fmt)
    optimizer = _make_optimizer(stored_cfg, model)
    obj_cls = get_objective(stored_cfg["objective"])
    objective = obj_cls(options_from_dict(obj_cls, stored_cfg["objective_options"]), num_train=len(train_ds))

    history: list[dict] = []
    start_epoch, best = 0, {"val_accuracy": -1.0, "val_loss": math.inf, "epoch": None}
    if resume_folder is not None:
        state, obj_tensors = load_checkpoint(resume_folder, model, optimizer)
        objective.load_state_tensors(obj_tensors)
        start_epoch = int(state["epoch_done"])
        history = list(state.get("history", []))
        best = state.get("best", best)
        log(f"{run_dir}: resuming after epoch {start_epoch} of {stored_cfg['epochs']}")

    scaler = torch.amp.GradScaler("cuda", enabled=use_amp(device) and not torch.cuda.is_bf16_supported()) \
        if device.type == "cuda" else None
    pin = device.type == "cuda"
    val_loader = DataLoader(val_ds, batch_size=max(256, cfg.batch_size), shuffle=False,
                            num_workers=cfg.workers, pin_memory=pin)
    train_eval_loader = DataLoader(train_eval_ds, batch_size=max(256, cfg.batch_size), shuffle=False,
                                   num_workers=cfg.workers, pin_memory=pin)
    pfile = _ProgressFile(run_dir)
    epochs = stored_cfg["epochs"]
    prior_epochs = int(stored_cfg.get("prior_epochs", 0))
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        lr = _lr_at(stored_cfg, epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr
        train_ds.set_epoch(epoch)
        epoch_gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=epoch_gen,
                            drop_last=len(train_ds) > cfg.batch_size, num_workers=cfg.workers, pin_memory=pin)
        step_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        pfile.write(force=True, state="running", epoch=epoch, epochs=epochs, step=0, steps=len(loader),
                    phase="epoch start", pid=_pid())
        extras_epoch = objective.begin_epoch(EpochContext(
            epoch=epoch, total_epochs=epochs, model=model, train_eval_loader=train_eval_loader, device=device,
            run_dir=run_dir, generator=step_gen, sample_ids=train_eval_ds.ids, progress=progress,
            prior_epochs=prior_epochs))
        model.train()
        sums: dict[str, float] = {}
        n_batches, loss_sum, seen, correct = 0, 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, file=sys.stderr,
                   leave=False, dynamic_ncols=True)
        for step, batch in enumerate(bar):
            batch = _to_device(batch, device, fmt)
            ctx = StepContext(epoch=epoch, step=step, steps_per_epoch=len(loader), device=device, generator=step_gen,
                              prior_epochs=prior_epochs)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                loss, extras = objective.batch_loss(model, batch, ctx)
            if not torch.isfinite(loss):
                _diverged(run_dir, pfile, epoch, step, "loss", history)
            if scaler is not None and scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf)
            if not torch.isfinite(gnorm):
                _diverged(run_dir, pfile, epoch, step, "gradients", history)
            if scaler is not None and scaler.is_enabled():
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            loss_sum += loss.item()
            n_batches += 1
            for k, v in extras.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}")
            pfile.write(state="running", epoch=epoch, epochs=epochs, step=step + 1, steps=len(loader),
                        train_loss=loss_sum / n_batches, phase="train", pid=_pid())
        bar.close()
        pfile.write(force=True, state="running", epoch=epoch, epochs=epochs, step=len(loader), steps=len(loader),
                    phase="validation", pid=_pid())
        val_loss, val_acc = evaluate_loss_accuracy(model, val_loader, device)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, n_batches), "val_loss": val_loss,
                  "val_accuracy": val_acc, "lr": lr, "epoch_seconds": time.time() - t0}
        record.update({k: v / max(1, n_batches) for k, v in sums.items()})
        record.update(extras_epoch)
        if (val_acc, -val_loss) > (best["val_accuracy"], -best["val_loss"]):
            best = {"val_accuracy": val_acc, "val_loss": val_loss, "epoch": epoch + 1}
            save_model_weights(model, run_dir / WEIGHTS, stored_cfg)
        record["best_epoch"] = best["epoch"]
        history.append(record)
        save_checkpoint(run_dir, epoch + 1, model, optimizer, objective.state_tensors(),
                        {"history": history, "best": best})
        write_jsonl(run_dir / HISTORY, history)
        log(f"epoch {epoch + 1}/{epochs}: train_loss {record['train_loss']:.4f}  val_loss {val_loss:.4f}  "
            f"val_acc {val_acc:.4f}  ({record['epoch_seconds']:.1f}s)")
    pfile.write(force=True, state="finished", epoch=epochs, epochs=epochs, step=0, steps=0, phase="done",
                best_epoch=best["epoch"], best_val_accuracy=best["val_accuracy"])
    return TrainResult(run_dir, history, best_epoch=best["epoch"], best_val_accuracy=best["val_accuracy"])


def _pid() -> int:
    return os.getpid()


def _diverged(run_dir: Path, pfile: _ProgressFile, epoch: int, step: int, what: str, history: list[dict]) -> None:
    msg = (f"training diverged: non-finite {what} at epoch {epoch + 1}, step {step + 1}; stopped. "
           f"The last good weights are kept in {run_dir / WEIGHTS if (run_dir / WEIGHTS).exists() else run_dir}; "
           "try a lower --lr")
    pfile.write(force=True, state="diverged", epoch=epoch, message=msg)
    raise TrainingDiverged(msg)
