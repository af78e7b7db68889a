"""The run directory (DESIGN.md): config, weights, history, resumable checkpoint.

Everything is JSON or safetensors, written atomically (temp file in the same folder, fsync,
``os.replace``), so a killed process never leaves a half-written file that breaks loading.
A run loads from any working directory with ``load_run(path)``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import nn

from ._utils.hashing import file_sha1
from ._utils.io import atomic_write
from .errors import RunError
from .models import create_model, is_known_arch, list_models

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
HISTORY = "history.jsonl"
PROGRESS = "progress.json"
CHECKPOINT_DIR = "checkpoint"
FORMAT_VERSION = 1
REQUIRED_CONFIG_KEYS = ("format_version", "arch", "num_classes", "classes", "image_size", "objective")
#: The repository this package lives in: paths inside it are recorded relative to the run.
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Config keys that hold a path the run depends on (its dataset, the run it started from, weights).
PATH_KEYS = ("data", "init", "weights")


# -- paths a run records ---------------------------------------------------------------------
def portable_path(path: str | Path, run_dir: str | Path) -> str:
    """How a run records a path it depends on: relative to the run folder when both lie inside
    this repository (so a shipped run means the same on every clone), absolute otherwise."""
    target, run = Path(path).resolve(), Path(run_dir).resolve()
    try:
        target.relative_to(REPO_ROOT)
        run.relative_to(REPO_ROOT)
    except ValueError:
        return str(target)
    return Path(os.path.relpath(target, run)).as_posix()


def recorded_path(config: dict, key: str, run_dir: str | Path) -> Path | None:
    """The absolute path a run's ``config[key]`` names (``None`` when unset). Relative values are
    relative to the run folder; absolute ones (older runs, data outside the repository) as stored."""
    value = config.get(key)
    if not value:
        return None
    p = Path(str(value))
    return p if p.is_absolute() else (Path(run_dir) / p).resolve()


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean_json(o: Any) -> Any:
    """Replace NaN/inf floats by None so files stay strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean_json(v) for v in o]
    return o


def write_json(path: str | Path, obj: Any) -> None:
    """Write strict JSON atomically."""
    data = json.dumps(_clean_json(obj), indent=2, default=_json_default, allow_nan=False).encode()
    atomic_write(path, lambda f: f.write(data))


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    """Write one strict-JSON object per line, atomically (e.g. ``history.jsonl``)."""
    data = "".join(json.dumps(_clean_json(r), default=_json_default, allow_nan=False) + "\n" for r in records).encode()
    atomic_write(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> None:
    """Write a text file (UTF-8) atomically, e.g. a predictions CSV."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning any problem into a ``RunError`` naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: unreadable JSON ({e})") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors to safetensors atomically (contiguous CPU copies)."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    data = save_bytes(clean, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file on the CPU (never pickle)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: weights file not found")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise RunError(f"{path}: not a valid safetensors file ({str(e)[:160]})") from None


def save_model_weights(model: nn.Module, path: str | Path, config: dict | None = None) -> None:
    """Write a model's state dict as safetensors atomically (with arch metadata)."""
    meta = {"format": "pt"}
    if config:
        meta.update({"arch": str(config.get("arch")), "num_classes": str(config.get("num_classes"))})
    save_tensors(path, model.state_dict(), meta)


# -- config --------------------------------------------------------------------------------
def validate_config(cfg: Any, where: str = CONFIG) -> dict:
    """Check a run config has what is needed to rebuild its model; raise ``RunError`` otherwise."""
    if not isinstance(cfg, dict):
        raise RunError(f"{where}: expected a JSON object")
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in cfg]
    if missing:
        raise RunError(f"{where}: missing key(s) {', '.join(missing)}")
    if not isinstance(cfg["arch"], str) or not is_known_arch(cfg["arch"]):
        raise RunError(f"{where}: unknown architecture {cfg['arch']!r} (known: {', '.join(sorted(list_models()))}, "
                       "timm/NAME, torchvision/NAME)")
    classes = cfg["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise RunError(f"{where}: 'classes' must be a list of class names")
    if not isinstance(cfg["num_classes"], int) or cfg["num_classes"] != len(classes) or cfg["num_classes"] < 2:
        raise RunError(f"{where}: num_classes={cfg['num_classes']!r} does not match the {len(classes)} class names")
    if not isinstance(cfg["image_size"], int) or not 8 <= cfg["image_size"] <= 4096:
        raise RunError(f"{where}: image_size must be an integer between 8 and 4096")
    return cfg


def run_interpolation(cfg: dict) -> str:
    """How tiles of another size are resized for this run's model (``arch_options.interpolation``
    for timm/torchvision models, from timm's ``pretrained_cfg``; bilinear otherwise)."""
    return str((cfg.get("arch_options") or {}).get("interpolation") or "bilinear")


def build_model(cfg: dict) -> nn.Module:
    """A freshly initialised model of the architecture a config names."""
    return create_model(cfg["arch"], cfg["num_classes"], **cfg.get("arch_options", {}))


def load_weights_into(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Strictly load a state dict, explaining architecture mismatches in one line."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        hint = (f"missing {len(missing)} tensor(s) (e.g. {missing[0]})" if missing else "") + \
               ("; " if missing and unexpected else "") + \
               (f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "")
        raise RunError(f"{where}: weights are for another architecture than {getattr(model, 'arch', '?')}: {hint}")
    for k, v in tensors.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise RunError(f"{where}: tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)} "
                           "(wrong architecture or class count)")
        if not torch.isfinite(v).all() and v.is_floating_point():
            raise RunError(f"{where}: tensor {k} contains NaN or inf")
    model.load_state_dict(tensors, strict=True)


# -- loading -------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    """A run read from disk: its model (eval mode), config, history and location."""

    path: Path
    config: dict
    model: nn.Module
    history: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])


def run_identity(run: LoadedRun) -> dict[str, Any]:
    """What identifies a run's model: its name, path, architecture, classes, input size and the SHA-1
    of its weights file (so a retrained run in the same folder is a different model)."""
    weights = run.path / WEIGHTS
    return {"name": run.name, "path": str(run.path), "arch": run.config.get("arch"),
            "objective": run.config.get("objective"), "classes": run.classes,
            "image_size": int(run.config["image_size"]),
            "weights_sha1": file_sha1(weights) if weights.is_file() else None}


def read_config(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: run directory not found")
    return validate_config(read_json(run_dir / CONFIG), str(run_dir / CONFIG))


def read_history(run_dir: str | Path) -> list[dict]:
    """Per-epoch records of ``history.jsonl``; a torn last line is ignored."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def load_run(run_dir: str | Path, device: torch.device | str = "cpu", cam_layer: str | None = None) -> LoadedRun:
    """Rebuild a run's model from config.json + model.safetensors; eval mode, on ``device``.
    ``cam_layer`` names the module Grad-CAM uses (as in ``named_modules()`` of the timm or
    torchvision network; default: found automatically)."""
    run_dir = Path(run_dir).resolve()
    cfg = read_config(run_dir)
    model = build_model(cfg)
    load_weights_into(model, load_tensors(run_dir / WEIGHTS), str(run_dir / WEIGHTS))
    if cam_layer:
        model.set_cam_layer(cam_layer)
    model.to(device).eval()
    return LoadedRun(run_dir, cfg, model, read_history(run_dir))


def run_status(run_dir: str | Path) -> dict:
    """``{"state": "finished"|"running"|"stopped"|"diverged"|"failed"|"new", ...}`` from progress.json."""
    run_dir = Path(run_dir)
    p = run_dir / PROGRESS
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            pass
    if (run_dir / WEIGHTS).is_file():
        return {"state": "finished"}
    return {"state": "new"}


def is_run(path: str | Path) -> bool:
    p = Path(path)
    return (p / CONFIG).is_file() and (p / WEIGHTS).is_file()


def find_runs(root: str | Path) -> list[Path]:
    """Run directories (with config.json and weights) below ``root``, sorted by path, no symlinks followed."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for cfg in sorted(root.rglob(CONFIG)):
        d = cfg.parent
        if CHECKPOINT_DIR in d.parts or any(part.startswith(".") for part in d.relative_to(root).parts):
            continue
        if is_run(d) and not any(p.is_symlink() for p in [d, *d.parents] if root in p.parents or p == root):
            found.append(d)
    return found


def safe_child(root: str | Path, name: str) -> Path:
    """Resolve ``name`` inside ``root``; refuse absolute paths, ``..`` and symlinks leading outside."""
    root_r = Path(root).resolve()
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise RunError(f"{name!r}: must be a relative path inside {root}")
    target = (root_r / name).resolve()
    if target != root_r and root_r not in target.parents:
        raise RunError(f"{name!r}: resolves outside {root}")
    return target
