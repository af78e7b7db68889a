"""Explain one image with a run: prediction, probabilities and an attribution map (PNG or .npy).

Shared by the ``explain`` command and the dashboard's upload path. Images enter through
``load_rgb`` and are resized to the run's input size with a note saying so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..attribution import attribute, get_method, overlay, seed_option
from ..data import load_rgb
from .._utils.device import pick_device
from ..errors import InterpError
from ..runs import LoadedRun, load_run, run_interpolation


@dataclass
class PreparedImage:
    """An image as the model sees it: ``tensor`` ``[1,3,S,S]`` in [0,1] and the uint8 ``array``;
    ``original`` is the tile as read (``[H, W, 3]`` uint8), at its own resolution."""

    tensor: torch.Tensor
    array: np.ndarray
    notes: list[str] = field(default_factory=list)
    original: np.ndarray | None = None


def prepare_image(source: str | Path | bytes, image_size: int, name: str | None = None,
                  interpolation: str = "bilinear") -> PreparedImage:
    """Read an image safely and resize it to ``image_size`` (square) with ``interpolation`` (the
    model's: bilinear, bicubic or nearest), noting any change."""
    loaded = load_rgb(source, name=name)
    arr, notes = loaded.array, list(loaded.notes)
    original = arr
    h, w = arr.shape[:2]
    t = torch.from_numpy(arr).permute(2, 0, 1).float().div(255.0)[None]
    if (h, w) != (image_size, image_size):
        notes.append(f"resized from {w}x{h} to the model's input {image_size}x{image_size} ({interpolation})"
                     + (" (aspect ratio changed)" if h != w else ""))
        t = F.interpolate(t, size=(image_size, image_size), mode=interpolation,
                          **({} if interpolation == "nearest" else {"antialias": True, "align_corners": False})
                          ).clamp(0, 1)
        arr = (t[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return PreparedImage(t, arr, notes, original)


def map_to_tile(a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A map ``[H, W]`` at the model's input resized (bilinear) to the tile's ``(h, w)``."""
    if tuple(a.shape[-2:]) == tuple(size):
        return a
    return F.interpolate(a[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]


def resolve_target(target: str | int | None, classes: list[str]) -> int | None:
    """A class index from a name or an index (as text or int); None stays None."""
    if target is None or target == "":
        return None
    if isinstance(target, str) and target in classes:
        return classes.index(target)
    try:
        k = int(target)
    except (TypeError, ValueError):
        raise InterpError(f"unknown target class {target!r}; choose one of {', '.join(classes)} "
                          f"or an index 0..{len(classes) - 1}") from None
    if not 0 <= k < len(classes):
        raise InterpError(f"target class index {k} out of range 0..{len(classes) - 1}")
    return k


def explain_image(run: str | Path | LoadedRun, image: str | Path, out: str | Path, *, method: str = "saliency",
                  target: str | int | None = None, device: str = "auto", alpha: float = 0.5,
                  seed: int = 0) -> dict[str, Any]:
    """Write the attribution map of ``image`` to ``out`` (.png overlay or .npy float32 ``[H,W]``), at
    the tile's own resolution (computed at the model's input size, resized back bilinearly)."""
    out = Path(out)
    if out.suffix.lower() not in (".png", ".npy"):
        raise InterpError(f"--out must end in .png or .npy (got {out.name!r})")
    get_method(method)
    dev = pick_device(device)
    loaded = run if isinstance(run, LoadedRun) else load_run(run, dev)
    model = loaded.model.to(dev)
    prep = prepare_image(image, loaded.config["image_size"], name=str(image), interpolation=run_interpolation(loaded.config))
    k = resolve_target(target, loaded.classes)
    x = prep.tensor.to(dev)
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), 1)[0].cpu()
    tgt = int(probs.argmax()) if k is None else k
    a = attribute(model, x, method, target=tgt, **seed_option(method, seed))[0].cpu()
    tile = prep.original if prep.original is not None else prep.array
    a = map_to_tile(a, tuple(tile.shape[:2]))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npy":
        np.save(out, a.numpy().astype(np.float32), allow_pickle=False)
    else:
        Image.fromarray(overlay(tile, a.numpy(), alpha=alpha)).save(out)
    return {"out": str(out), "run": loaded.name, "method": method, "prediction": loaded.classes[int(probs.argmax())],
            "probabilities": {c: float(p) for c, p in zip(loaded.classes, probs)},
            "target": loaded.classes[tgt], "notes": prep.notes}
