"""The training loop shared by every objective: data, optimiser, cosine schedule, validation,
best-by-validation weights, history, progress file, checkpoints and resume.

Determinism: the shuffle order, the augmentation and the objective's random draws of epoch ``e``
are all functions of ``(seed, e)``, and a checkpoint is taken after each epoch, so a run killed
at any point and resumed produces the same weights as an uninterrupted run on the CPU.

Several processes (``torchrun --nproc_per_node N -m interp_core train ...``): the same function
runs in every process; :mod:`interp_core.training.distributed` holds the machinery (global
batch kept at ``--batch-size``, DistributedDataParallel, the sharded shuffle, rank 0 the only
writer, validation and the ECE refresh sharded and reduced, every decision identical on all
ranks). Resume works as for one process; the run directory must be on a filesystem every
process sees.

Speed switches (``--precision``, ``--channels-last``, ``--compile``, pinned memory and
non-blocking copies on CUDA) live in :mod:`interp_core._utils.device` and change speed and float
rounding, not the algorithm.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import open_split
from .._utils.device import (autocast, loader_transfer, memory_format, needs_grad_scaler, resolve_precision,
                             seed_everything)
from ..errors import InterpError, RunError, TrainingDiverged
from ..models.weights import load_into_network, read_state_dict
from .._utils.io import is_temp_file, remove_stale_temp_files
from ..runs import (CONFIG, HISTORY, PROGRESS, WEIGHTS, LoadedRun, build_model, load_tensors, load_weights_into,
                    read_history, read_json, run_interpolation, save_model_weights, write_json, write_jsonl)
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import (SINGLE, DistInfo, StepSync, all_reduce_sum, barrier, broadcast_tensor,
                          convert_cross_rank_batchnorm, describe, init_distributed, per_rank_batch_size, rank_seed, ranks_agree,
                          shard, shutdown_distributed, train_sampler, wrap_model)
from .objectives import get_objective, options_from_dict
from .objectives.base import EpochContext, StepContext
from .config import TrainConfig, TrainResult, _resolve_config, _same_settings


def _lr_at(cfg: dict, epoch: int) -> float:
    if cfg["schedule"] == "constant":
        return cfg["lr"]
    return 0.5 * cfg["lr"] * (1 + math.cos(math.pi * epoch / cfg["epochs"]))


def _make_optimizer(cfg: dict, model: nn.Module) -> torch.optim.Optimizer:
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                               weight_decay=cfg["weight_decay"], nesterov=True)
    return torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])


def _to_device(batch: dict[str, torch.Tensor], device: torch.device, fmt: torch.memory_format,
               non_blocking: bool = False) -> dict[str, torch.Tensor]:
    out = {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}
    out["image"] = out["image"].contiguous(memory_format=fmt)
    return out


@torch.no_grad()
def evaluate_loss_accuracy(model: nn.Module, loader: DataLoader, device: torch.device, *, precision: str = "auto",
                           dist: DistInfo = SINGLE) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a loader, in eval mode (mode restored).

    Under torchrun each rank passes its shard; the sums (loss, correct, count) are all-reduced
    in float64, so every rank gets the same numbers and the whole-set mean.
    """
    was_training = model.training
    model.eval()
    total, loss_sum, correct = 0, 0.0, 0
    try:
        for batch in loader:
            x, y = batch["image"].to(device), batch["label"].to(device)
            with autocast(device, precision=precision):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += y.numel()
    finally:
        model.train(was_training)
    sums = all_reduce_sum(torch.tensor([loss_sum, float(correct), float(total)], dtype=torch.float64), dist)
    loss_sum, correct, total = float(sums[0]), int(sums[1]), int(sums[2])
    return loss_sum / max(1, total), correct / max(1, total)


def _compile(model: nn.Module, backend: str) -> nn.Module:
    """``torch.compile(model, backend=backend)`` (``--compile``); compilation itself happens at
    the first call. The eval-mode saliency/attack passes and validation use the plain module."""
    try:
        return torch.compile(model, backend=backend)
    except Exception as e:  # noqa: BLE001 - unknown backend, unsupported platform
        raise InterpError(f"--compile: torch.compile failed ({type(e).__name__}: {e})") from None


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


def train(cfg: TrainConfig, *, progress: bool = True, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume, or report finished) the run ``cfg.out``; see the module docstring.

    Under torchrun (``WORLD_SIZE`` > 1 in the environment) this joins the process group (or uses
    the one already initialised), trains data-parallel, and leaves a group it created on return.
    """
    import torch.distributed as tdist
    owned = not (tdist.is_available() and tdist.is_initialized())
    info, device = init_distributed(cfg.device)
    try:
        return _train(cfg, info, device, progress=progress and info.is_main,
                      log=(log or (lambda m: print(m, file=sys.stderr))) if info.is_main else (lambda m: None))
    finally:
        if owned:
            shutdown_distributed(info)


def _train(cfg: TrainConfig, info: DistInfo, device: torch.device, *, progress: bool,
           log: Callable[[str], None]) -> TrainResult:
    run_dir = Path(cfg.out)
    main = info.is_main
    stored_cfg, init_run = _resolve_config(cfg)
    precision = resolve_precision(device, cfg.precision)
    rank_batch = per_rank_batch_size(cfg.batch_size, info)
    stored_cfg, resume_folder, finished = _inspect_run_dir(run_dir, stored_cfg, info)
    if finished:
        log(f"{run_dir}: run already finished ({stored_cfg['epochs']} epochs); nothing to do")
        return TrainResult(run_dir, read_history(run_dir), already_finished=True)
    _start_run_dir(cfg, run_dir, stored_cfg, info, device, rank_batch, log)

    seed_everything(cfg.seed)
    train_ds, train_eval_ds, val_ds = _open_splits(cfg, stored_cfg, info)
    model, fmt = _build_model(cfg, stored_cfg, init_run, info, device, log)
    optimizer = _make_optimizer(stored_cfg, model)
    obj_cls = get_objective(stored_cfg["objective"])
    objective = obj_cls(options_from_dict(obj_cls, stored_cfg["objective_options"]), num_train=len(train_ds))

    start_epoch, history, best = _resume(resume_folder, model, optimizer, objective, run_dir, stored_cfg, log)
    train_model = wrap_model(model, info, device)  # `model` stays the plain module (eval passes, saving)
    if cfg.compile:
        train_model = _compile(train_model, cfg.compile_backend)

    scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(device, precision) else None
    xfer = loader_transfer(device)
    val_loader = DataLoader(shard(val_ds, info), batch_size=max(256, cfg.batch_size), shuffle=False,
                            num_workers=cfg.workers, pin_memory=xfer["pin_memory"])
    train_eval_loader = DataLoader(shard(train_eval_ds, info), batch_size=max(256, cfg.batch_size), shuffle=False,
                                   num_workers=cfg.workers, pin_memory=xfer["pin_memory"])
    # the permutation of epoch e is randperm(n) seeded seed * 100003 + e, for one process as for N
    # (runs checkpointed before this sampler was introduced shuffled otherwise: resuming one of
    # those continues with a different order than it would have had)
    sampler = train_sampler(train_ds, info, cfg.seed * 100003)
    step_sync = StepSync(model, info, average_buffers=not (cfg.sync_bn and info.enabled))
    pfile = _ProgressFile(run_dir) if main else None
    epochs = stored_cfg["epochs"]
    prior_epochs = int(stored_cfg.get("prior_epochs", 0))
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        lr = _lr_at(stored_cfg, epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loader = DataLoader(train_ds, batch_size=rank_batch, sampler=sampler, drop_last=len(train_ds) > cfg.batch_size,
                            num_workers=cfg.workers, pin_memory=xfer["pin_memory"])
        step_gen = torch.Generator().manual_seed(rank_seed(cfg.seed * 7919 + epoch, info))
        _progress(pfile, force=True, state="running", epoch=epoch, epochs=epochs, step=0, steps=len(loader),
                  phase="epoch start", pid=_pid(), processes=info.world_size)
        extras_epoch = objective.begin_epoch(EpochContext(
            epoch=epoch, total_epochs=epochs, model=model, train_eval_loader=train_eval_loader, device=device,
            run_dir=run_dir if main else None, generator=step_gen, sample_ids=train_eval_ds.ids, progress=progress,
            prior_epochs=prior_epochs, dist=info))
        loss_sum, n_batches, sums = _train_epoch(
            cfg, info, device, run_dir, pfile, history, train_model=train_model, model=model, loader=loader,
            objective=objective, optimizer=optimizer, scaler=scaler, step_sync=step_sync, fmt=fmt, xfer=xfer,
            precision=precision, epoch=epoch, epochs=epochs, step_gen=step_gen, prior_epochs=prior_epochs,
            progress=progress)
        _progress(pfile, force=True, state="running", epoch=epoch, epochs=epochs, step=len(loader), steps=len(loader),
                  phase="validation", pid=_pid(), processes=info.world_size)
        val_loss, val_acc = evaluate_loss_accuracy(model, val_loader, device, precision=precision, dist=info)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(1, n_batches), "val_loss": val_loss,
                  "val_accuracy": val_acc, "lr": lr, "epoch_seconds": time.time() - t0}
        record.update({k: v / max(1, n_batches) for k, v in sums.items()})
        record.update(extras_epoch)
        best = _end_epoch(run_dir, info, stored_cfg, model, optimizer, objective, history, record, best,
                          epoch=epoch, val_loss=val_loss, val_acc=val_acc)
        log(f"epoch {epoch + 1}/{epochs}: train_loss {record['train_loss']:.4f}  val_loss {val_loss:.4f}  "
            f"val_acc {val_acc:.4f}  ({record['epoch_seconds']:.1f}s)")
    _progress(pfile, force=True, state="finished", epoch=epochs, epochs=epochs, step=0, steps=0, phase="done",
              best_epoch=best["epoch"], best_val_accuracy=best["val_accuracy"])
    barrier(info)
    return TrainResult(run_dir, history, best_epoch=best["epoch"], best_val_accuracy=best["val_accuracy"])


def _inspect_run_dir(run_dir: Path, stored_cfg: dict, info: DistInfo) -> tuple[dict, Path | None, bool]:
    """``(config, checkpoint folder to resume or None, finished)`` of ``run_dir``: the stored config when
    it holds a run with the same settings (else ``RunError``). Every rank inspects the run directory
    before rank 0 writes anything (``ranks_agree`` syncs them)."""
    resume_folder, finished = None, False
    if run_dir.exists() and any(not is_temp_file(p) for p in run_dir.iterdir()):
        if not (run_dir / CONFIG).is_file():
            raise RunError(f"{run_dir}: exists, is not empty and is not a run; choose another --out")
        old = read_json(run_dir / CONFIG)
        diff = _same_settings(old, stored_cfg, run_dir)
        if diff:
            raise RunError(f"{run_dir}: an existing run with different settings ({', '.join(diff)}); "
                           "use the same command to resume it or another --out")
        state = read_json(run_dir / PROGRESS) if (run_dir / PROGRESS).is_file() else {}
        finished = state.get("state") == "finished" and (run_dir / WEIGHTS).is_file()
        if not finished:
            resume_folder = latest_checkpoint(run_dir)
        stored_cfg = old
    decision = -1 if finished else (int(read_json(resume_folder / "state.json")["epoch_done"]) if resume_folder else 0)
    if not ranks_agree(decision, info):
        raise RunError(f"{run_dir}: the processes see different states of the run directory; --out must be on a "
                       "filesystem shared by every node")
    return stored_cfg, resume_folder, finished


def _start_run_dir(cfg: TrainConfig, run_dir: Path, stored_cfg: dict, info: DistInfo, device: torch.device,
                   rank_batch: int, log: Callable[[str], None]) -> None:
    """Rank 0 creates the run directory (stale temporary files removed) and writes its config; under
    torchrun the data-parallel setup is logged."""
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(run_dir)
        write_json(run_dir / CONFIG, stored_cfg)
    if info.enabled:
        log(f"data-parallel: {describe(info, device)}; {rank_batch} samples per process and step "
            f"(global batch {cfg.batch_size}){'; BatchNorm over the global batch' if cfg.sync_bn else ''}")


def _resume(resume_folder: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, objective: Any,
            run_dir: Path, stored_cfg: dict, log: Callable[[str], None]) -> tuple[int, list[dict], dict]:
    """``(first epoch to run, history, best so far)``: from the checkpoint ``resume_folder`` (model,
    optimiser and objective state loaded; every rank loads the same one), else a fresh start."""
    history: list[dict] = []
    start_epoch, best = 0, {"val_accuracy": -1.0, "val_loss": math.inf, "epoch": None}
    if resume_folder is not None:  # every rank loads the same checkpoint
        state, obj_tensors = load_checkpoint(resume_folder, model, optimizer)
        objective.load_state_tensors(obj_tensors)
        start_epoch = int(state["epoch_done"])
        history = list(state.get("history", []))
        best = state.get("best", best)
        log(f"{run_dir}: resuming after epoch {start_epoch} of {stored_cfg['epochs']}")
    return start_epoch, history, best


def _open_splits(cfg: TrainConfig, stored_cfg: dict, info: DistInfo) -> tuple[Any, Any, Any]:
    """``(train with augmentation, train without, validation)`` at the run's image size and interpolation."""
    image_size = stored_cfg["image_size"]
    interp = run_interpolation(stored_cfg)
    train_ds = open_split(cfg.data, "train", image_size=image_size, augment=True, seed=cfg.seed, interpolation=interp,
                          val_fraction=cfg.val_fraction)
    train_eval_ds = open_split(cfg.data, "train", image_size=image_size, augment=False, seed=cfg.seed, interpolation=interp,
                               val_fraction=cfg.val_fraction)
    val_ds = open_split(cfg.data, "val", image_size=image_size, seed=cfg.seed, val_fraction=cfg.val_fraction,
                        interpolation=interp)
    if len(train_ds) < max(2, info.world_size):
        raise InterpError(f"{cfg.data}: the train split needs at least {max(2, info.world_size)} images")
    return train_ds, train_eval_ds, val_ds


def _build_model(cfg: TrainConfig, stored_cfg: dict, init_run: LoadedRun | None, info: DistInfo,
                 device: torch.device, log: Callable[[str], None]) -> tuple[nn.Module, torch.memory_format]:
    """The model with its starting weights (``--init`` run, ``--weights`` file or fresh), on ``device``
    in its memory format; ``(model, memory format)``."""
    model = build_model(stored_cfg)
    if init_run is not None:
        model.load_state_dict(init_run.model.state_dict())
    elif cfg.weights and hasattr(model, "net"):  # timm/torchvision: the network's own state dict, read safely
        for note in load_into_network(model.net, read_state_dict(cfg.weights), cfg.weights):
            log(note)
    elif cfg.weights:
        load_weights_into(model, load_tensors(cfg.weights), cfg.weights)
    if cfg.sync_bn and info.enabled:
        if (stored_cfg.get("objective_options") or {}).get("bn_stats") == "clean":
            # the clean half's recorded statistics would be this rank's, not the global batch's
            raise InterpError("--bn-stats clean does not combine with --sync-bn under torchrun; use separate or joint")
        convert_cross_rank_batchnorm(model)  # same parameters and buffers, so checkpoints are unchanged
    fmt = memory_format(device, cfg.channels_last)
    model.to(device).to(memory_format=fmt)
    return model, fmt


def _train_epoch(cfg: TrainConfig, info: DistInfo, device: torch.device, run_dir: Path, pfile: _ProgressFile | None,
                 history: list[dict], *, train_model: nn.Module, model: nn.Module, loader: DataLoader, objective: Any,
                 optimizer: torch.optim.Optimizer, scaler: Any, step_sync: StepSync, fmt: torch.memory_format,
                 xfer: dict[str, bool], precision: str, epoch: int, epochs: int, step_gen: torch.Generator,
                 prior_epochs: int, progress: bool) -> tuple[float, int, dict[str, float]]:
    """One epoch of optimiser steps; ``(sum of the step losses, steps, sums of the objective's extras)``.
    A non-finite loss or gradient stops the run (``TrainingDiverged``)."""
    train_model.train()
    sums: dict[str, float] = {}
    n_batches, loss_sum = 0, 0.0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, file=sys.stderr,
               leave=False, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        batch = _to_device(batch, device, fmt, xfer["non_blocking"])
        ctx = StepContext(epoch=epoch, step=step, steps_per_epoch=len(loader), device=device, generator=step_gen,
                          prior_epochs=prior_epochs)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision=precision):
            loss, extras = objective.batch_loss(train_model, batch, ctx)
        if not info.enabled and not torch.isfinite(loss):
            _diverged(run_dir, pfile, epoch, step, "loss", history)
        # DDP all-reduces the gradients inside this one backward; no rank may stop before it
        (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_value, extras = step_sync(loss, extras)  # rank means; BatchNorm buffers averaged
        if not math.isfinite(loss_value):
            _diverged(run_dir, pfile, epoch, step, "loss", history)
        if scaler is not None:
            scaler.unscale_(optimizer)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf)
        if not torch.isfinite(gnorm) and scaler is None:  # fp16: the scaler skips the step and rescales
            _diverged(run_dir, pfile, epoch, step, "gradients", history)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        loss_sum += loss_value
        n_batches += 1
        for k, v in extras.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}")
        _progress(pfile, state="running", epoch=epoch, epochs=epochs, step=step + 1, steps=len(loader),
                  train_loss=loss_sum / n_batches, phase="train", pid=_pid(), processes=info.world_size)
    bar.close()
    return loss_sum, n_batches, sums


def _end_epoch(run_dir: Path, info: DistInfo, stored_cfg: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
               objective: Any, history: list[dict], record: dict, best: dict, *, epoch: int, val_loss: float,
               val_acc: float) -> dict:
    """Keep the best weights (by validation accuracy, then loss), append ``record`` to ``history``,
    checkpoint the epoch (rank 0) and wait for it on every rank; return the best so far."""
    improved = (val_acc, -val_loss) > (best["val_accuracy"], -best["val_loss"])
    # the reduced numbers are identical on every rank already; rank 0's decision is broadcast anyway
    improved = bool(broadcast_tensor(torch.tensor([int(improved)]), info)[0])
    if improved:
        best = {"val_accuracy": val_acc, "val_loss": val_loss, "epoch": epoch + 1}
        if info.is_main:
            save_model_weights(model, run_dir / WEIGHTS, stored_cfg)
    record["best_epoch"] = best["epoch"]
    history.append(record)
    if info.is_main:
        save_checkpoint(run_dir, epoch + 1, model, optimizer, objective.state_tensors(),
                        {"history": history, "best": best})
        write_jsonl(run_dir / HISTORY, history)
    barrier(info)  # the other ranks wait until rank 0 has written the epoch
    return best


def _progress(pfile: _ProgressFile | None, force: bool = False, **info: Any) -> None:
    """Write progress.json on rank 0 (the only process with a progress file)."""
    if pfile is not None:
        pfile.write(force=force, **info)


def _pid() -> int:
    return os.getpid()


def _diverged(run_dir: Path, pfile: _ProgressFile | None, epoch: int, step: int, what: str, history: list[dict]) -> None:
    msg = (f"training diverged: non-finite {what} at epoch {epoch + 1}, step {step + 1}; stopped. "
           f"The last good weights are kept in {run_dir / WEIGHTS if (run_dir / WEIGHTS).exists() else run_dir}; "
           "try a lower --lr")
    _progress(pfile, force=True, state="diverged", epoch=epoch, message=msg)
    raise TrainingDiverged(msg)

