"""Resumable training state: ``RUN/checkpoint/epoch_NNNN/`` folders plus a ``latest.json`` pointer.

A checkpoint is written into a fresh folder, then the pointer is replaced atomically, then older
folders are removed. A kill at any instant leaves the pointer naming a complete checkpoint.
Optimizer state is flattened into safetensors (``state.<param>.<name>``) with its param-group
hyper-parameters in JSON, so nothing is ever unpickled.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import RunError
from .._utils.io import remove_stale_temp_files
from ..runs import CHECKPOINT_DIR, load_tensors, load_weights_into, read_json, save_tensors, write_json

LATEST = "latest.json"


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = val
            else:
                scalars.setdefault(str(pid), {})[name] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = val
    for pid, sc in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(sc)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: Path, epoch_done: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    objective_tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write the state after ``epoch_done`` epochs; keep only this checkpoint afterwards.

    If writing fails (disk full, read-only folder) the new folder is removed again and the error
    propagates: the pointer still names the previous, complete checkpoint.
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    name = f"epoch_{epoch_done:04d}"
    folder = root / name
    if folder.exists():  # a half-written folder of an attempt killed before its pointer switch
        shutil.rmtree(folder)
    remove_stale_temp_files(root)
    try:
        folder.mkdir(parents=True)
        save_tensors(folder / "model.safetensors", model.state_dict())
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        save_tensors(folder / "optimizer.safetensors", opt_tensors)
        if objective_tensors:
            save_tensors(folder / "objective.safetensors", objective_tensors)
        write_json(folder / "state.json", {**state, "epoch_done": epoch_done, "optimizer": opt_meta})
        write_json(root / LATEST, {"dir": name, "epoch_done": epoch_done})
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    for old in root.iterdir():
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The folder the pointer names, or None when the run has no checkpoint yet."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not (root / LATEST).is_file():
        return None
    ptr = read_json(root / LATEST)
    folder = root / str(ptr.get("dir", ""))
    if not (folder / "state.json").is_file():
        raise RunError(f"{root / LATEST}: points to a missing checkpoint {folder.name!r}")
    return folder


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore model and optimizer in place; return ``(state, objective_tensors)``."""
    state = read_json(folder / "state.json")
    load_weights_into(model, load_tensors(folder / "model.safetensors"), str(folder / "model.safetensors"))
    opt_tensors = load_tensors(folder / "optimizer.safetensors")
    try:
        optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, state["optimizer"]))
    except (KeyError, ValueError) as e:
        raise RunError(f"{folder}: optimizer state does not match this run ({e})") from None
    obj = load_tensors(folder / "objective.safetensors") if (folder / "objective.safetensors").is_file() else {}
    return state, obj
