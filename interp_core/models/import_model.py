"""``import-model``: a run directory from a user's own weights for any timm/torchvision architecture.

The run holds ``config.json`` (architecture, classes, input size, normalisation, interpolation;
``objective: "imported"``, no absolute paths) and ``model.safetensors`` (the wrapped model: the
network's tensors under ``net.`` plus the normalisation buffers), so every command and page that
takes a RUN accepts it, and ``train --init RUN`` fine-tunes it (SCAAT, SGT, ECE, ERM).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..errors import InterpError, RunError
from . import create_model, is_zoo_name
from .weights import load_into_network, read_state_dict
from .zoo import options_for_config
from ..runs import CONFIG, FORMAT_VERSION, PROGRESS, WEIGHTS, is_run, save_model_weights, validate_config, write_json


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_model(arch: str, weights: str | Path, classes: Sequence[str], out: str | Path, *,
                 image_size: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, interpolation: str | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Build ``arch`` (``timm/NAME`` or ``torchvision/NAME``) for ``classes``, load ``weights``
    into it and write the run directory ``out``. Returns ``{"run", "arch", "image_size",
    "mean", "std", "interpolation", "cam_layer", "notes"}``."""
    if not is_zoo_name(arch):
        raise InterpError(f"--arch must be timm/NAME or torchvision/NAME (got {arch!r})")
    classes = [str(c) for c in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes) or any(not c.strip() for c in classes):
        raise InterpError(f"--classes needs at least 2 distinct, non-empty names (got {classes})")
    if image_size is not None and not 8 <= int(image_size) <= 4096:
        raise InterpError(f"--image-size must be between 8 and 4096 (got {image_size})")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (overwrite and is_run(out)):
        raise RunError(f"{out}: exists and is not empty; choose another --out")
    weights = Path(weights)
    tensors = read_state_dict(weights)
    model = create_model(arch, len(classes), mean=mean, std=std, image_size=image_size, interpolation=interpolation)
    notes = load_into_network(model.net, tensors, str(weights))
    model.eval()
    opts = options_for_config(model)
    cfg = validate_config({
        "format_version": FORMAT_VERSION, "interp_core_version": __version__,
        "arch": arch, "arch_options": opts, "num_classes": len(classes), "classes": classes,
        "image_size": opts["image_size"], "objective": "imported", "epochs": 0, "prior_epochs": 0,
        "imported_from": {"file": weights.name, "sha256": _sha256(weights), "notes": notes},
    })
    out.mkdir(parents=True, exist_ok=True)
    save_model_weights(model, out / WEIGHTS, cfg)
    write_json(out / CONFIG, cfg)
    write_json(out / PROGRESS, {"state": "finished", "imported": True, "updated": time.time()})
    return {"run": str(out), "arch": arch, "image_size": opts["image_size"], "mean": opts["mean"], "std": opts["std"],
            "interpolation": opts["interpolation"], "cam_layer": model.auto_cam_layer_name, "notes": notes}
