"""One tile analysed as the Explore and Consistency pages show it: fitted to the model's input,
predicted, explained, its per-tile metrics, relevance shares, change maps and consistency.

Every function takes plain arrays and a model and returns plain arrays/dicts, so the dashboard's
cached wrappers (``ui.cache``) can key them on simple values and the tests can call them directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics as M
from .._utils.device import model_device
from ..attribution import METHODS, attribute, draw_contour, mask_contour
from ..consistency.score import explanation_consistency
from ..errors import InterpError

#: Uploads larger than this many times the model's input side are cut into tiles, not resized.
TILE_INSTEAD_OF_RESIZE = 2.0
#: Deletion steps of the per-tile metric on Explore (the Metrics page uses evaluate's 32): a quick
#: estimate, half the forward passes, so a new tile is explained within the latency target.
TILE_DELETION_STEPS = 16


def to_tensor(image: np.ndarray, size: int | None = None, device: torch.device | str = "cpu",
              mode: str = "bilinear") -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float ``[1, 3, size, size]`` in [0, 1] (resized with ``mode``, the model's
    interpolation, antialiased, if needed)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)[None]
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        kw = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
        x = F.interpolate(x, size=(size, size), mode=mode, **kw).clamp_(0, 1)
    return x.to(device)


def _mode(model: nn.Module) -> str:
    """The interpolation a model's tiles are resized with (timm/torchvision models carry theirs)."""
    return str(getattr(model, "interpolation", "bilinear"))


def cam_layer_choices(model: nn.Module) -> list[str]:
    """Module names offered for Grad-CAM (timm/torchvision models: their network's names)."""
    if hasattr(model, "layer_choices"):
        return model.layer_choices()
    return [n for n, _ in model.named_modules() if n.startswith("features") and n.count(".") < 2]


def has_layer(model: nn.Module, name: str) -> bool:
    """Whether ``name`` names a module of ``model`` (see ``cam_layer_choices``)."""
    if hasattr(model, "resolve_layer"):
        try:
            model.resolve_layer(name)
            return True
        except Exception:  # noqa: BLE001 - InterpError: not this model's
            return False
    return name in dict(model.named_modules())


def map_at(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map resized (bilinear) to the tile's ``(h, w)``: Explore shows maps at the tile's resolution."""
    if tuple(a.shape) == tuple(shape):
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()


def resize_mask(mask: np.ndarray | None, size: int) -> np.ndarray | None:
    """A bool mask resized (nearest) to ``size x size``; None stays None."""
    if mask is None:
        return None
    if mask.shape == (size, size):
        return mask.astype(bool)
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    return (F.interpolate(t, size=(size, size), mode="nearest")[0, 0] > 0.5).numpy()


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` resized to ``size x size`` (antialiased), uint8."""
    if image.shape[:2] == (size, size):
        return image
    x = to_tensor(image, size)[0]
    return (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


@torch.no_grad()
def predict_probs(model: nn.Module, image: np.ndarray, size: int) -> np.ndarray:
    """Softmax probabilities ``[C]`` of one tile (model in eval mode; it is never put in train mode)."""
    x = to_tensor(image, size, model_device(model), _mode(model))
    return torch.softmax(model(x).float(), 1)[0].cpu().numpy()


#: Options the dashboard gives a method instead of its library default (none: the pages use the core's
#: defaults, so Explore and Metrics compute the same maps; occlusion's default baseline is the blurred tile).
PAGE_METHOD_OPTIONS: dict[str, dict] = {}
_BASELINE_TEXT = {"blur": "the same window of the blurred tile (as the deletion metric does), not with black: a "
                          "black window on pink tissue looks like a nucleus to the model",
                  "zeros": "black"}
METHOD_NOTES: dict[str, str] = {
    "occlusion": "Occlusion replaces each window with "
                 + _BASELINE_TEXT.get(str(METHODS["occlusion"].options["baseline"]),
                                      f"the value {METHODS['occlusion'].options['baseline']}") + ".",
}


def explain_tile(model: nn.Module, image: np.ndarray, size: int, method: str, target: int,
                 cam_layer: str | None = None) -> np.ndarray:
    """Attribution map ``[size, size]`` (float32) of ``method`` for class ``target`` (with
    ``PAGE_METHOD_OPTIONS``; occlusion uses the core default, the blurred tile); ``cam_layer`` (Grad-CAM only,
    when the model has a module of that name) replaces the automatic layer."""
    x = to_tensor(image, size, model_device(model), _mode(model))
    opts = dict(PAGE_METHOD_OPTIONS.get(method, {}))
    if cam_layer and method == "gradcam" and has_layer(model, cam_layer):
        opts["layer"] = cam_layer
    return attribute(model, x, method, target=int(target), **opts)[0].cpu().numpy().astype(np.float32)


def relevance_shares(a: np.ndarray, evidence: np.ndarray | None, artifact: np.ndarray | None) -> dict[str, float | None]:
    """Share of the map's positive relevance inside the marked evidence and inside the artifact
    (``relevance_mass_accuracy`` and ``artifact_mass`` of ``interp_core.metrics``, on ``max(a, 0)``);
    None where the tile has no such region (or an empty one). Masks are resized to the map."""
    at = torch.from_numpy(np.asarray(a, np.float32))[None]
    out: dict[str, float | None] = {"evidence": None, "artifact": None}
    for key, mask, fn in (("evidence", evidence, M.relevance_mass_accuracy), ("artifact", artifact, M.artifact_mass)):
        m = resize_mask(mask, a.shape[0])
        if m is not None and m.any():
            v = float(fn(at, torch.from_numpy(m)[None])[0])
            out[key] = v if math.isfinite(v) else None
    return out


def change_map(after: np.ndarray, before: np.ndarray) -> np.ndarray:
    """``after / max(after) - before / max(before)`` on ``max(a, 0)``: where the retrained model's map
    gained (positive) or lost (negative) weight, each map first taken as a share of its own maximum,
    so two models whose gradients differ in scale compare fairly. In ``[-1, 1]``."""
    def unit(a: np.ndarray) -> np.ndarray:
        a = np.clip(np.asarray(a, np.float64), 0, None)
        m = a.max(initial=0.0)
        return a / m if m > 0 else np.zeros_like(a)
    return (unit(after) - unit(before)).astype(np.float32)


def tile_metrics(model: nn.Module, image: np.ndarray, size: int, a: np.ndarray, target: int,
                 mask: np.ndarray | None, deletion_steps: int = TILE_DELETION_STEPS) -> dict[str, float | None]:
    """Sparseness, pointing game (only with a non-empty mask) and deletion AUC of one map.

    ``None`` marks a metric that does not apply (no mask, or an empty one). Deletion uses
    ``deletion_steps`` chunks (see ``TILE_DELETION_STEPS``).
    """
    dev = model_device(model)
    x = to_tensor(image, size, dev, _mode(model))
    at = torch.from_numpy(a)[None].to(dev)
    out: dict[str, float | None] = {"sparseness": float(M.sparseness(at)[0])}
    m = resize_mask(mask, size)
    if m is not None and m.any():
        out["pointing_game"] = float(M.pointing_game(at, torch.from_numpy(m)[None].to(dev))[0])
    else:
        out["pointing_game"] = None
    out["deletion_auc"] = float(M.deletion_auc(model, x, at, int(target), n_steps=deletion_steps).auc[0])
    return {k: (None if v is None or not math.isfinite(v) else v) for k, v in out.items()}


# -- uploads -----------------------------------------------------------------------------------
@dataclass
class FittedImage:
    """An uploaded image fitted to a model's input: one or more candidate tiles and a note saying how."""

    tiles: list[np.ndarray]
    positions: list[tuple[int, int]]  # (row, col) of each tile in the grid; (0, 0) when resized
    grid: tuple[int, int]
    mode: str  # "as is" | "resized" | "tiled"
    note: str
    tissue: list[float] = field(default_factory=list)


def _tissue_share(tile: np.ndarray) -> float:
    """Share of non-white, coloured pixels: a cheap stand-in to put tissue tiles first."""
    t = tile.astype(np.int16)
    sat = t.max(axis=2) - t.min(axis=2)
    return float(((sat > 20) & (t.mean(axis=2) < 235)).mean())


def fit_to_input(image: np.ndarray, size: int, mode: str = "auto") -> FittedImage:
    """Fit an uploaded ``[H, W, 3]`` image to a ``size x size`` model input.

    ``auto``: an image at most ``TILE_INSTEAD_OF_RESIZE`` times the input side is resized
    (aspect ratio not kept when it is not square), a larger one is cut into non-overlapping
    tiles at full resolution (edge tiles padded with white). ``resize`` / ``tile`` force a mode.
    """
    h, w = image.shape[:2]
    if mode not in ("auto", "resize", "tile"):
        raise InterpError(f"unknown fitting mode {mode!r}")
    if (h, w) == (size, size):
        return FittedImage([image], [(0, 0)], (1, 1), "as is", f"The image is already {size}x{size} pixels, "
                           "the model's input size; used as is.", [1.0])
    big = max(h, w) > TILE_INSTEAD_OF_RESIZE * size
    if mode == "resize" or (mode == "auto" and not big):
        kept = "" if h == w else " (the image is not square, so it is stretched)"
        return FittedImage([resize_image(image, size)], [(0, 0)], (1, 1), "resized",
                           f"Resized from {w}x{h} to {size}x{size} pixels, the model's input size{kept}.", [1.0])
    rows, cols = -(-h // size), -(-w // size)
    padded = np.full((rows * size, cols * size, 3), 255, np.uint8)
    padded[:h, :w] = image
    tiles, pos, tissue = [], [], []
    for r in range(rows):
        for c in range(cols):
            t = padded[r * size:(r + 1) * size, c * size:(c + 1) * size].copy()
            tiles.append(t)
            pos.append((r, c))
            tissue.append(_tissue_share(t))
    note = (f"Cut into {rows}x{cols} tiles of {size}x{size} pixels at full resolution (the image is "
            f"{w}x{h}, more than {TILE_INSTEAD_OF_RESIZE:g} times the model's input); pick a tile below. "
            "Edge tiles are padded with white.")
    return FittedImage(tiles, pos, (rows, cols), "tiled", note, tissue)


# -- consistency ---------------------------------------------------------------------------------
@dataclass
class TileConsistency:
    """What the Consistency page draws for one model and tile (numpy, CPU)."""

    score: float
    pred: int
    pred_adv: int
    heatmap: np.ndarray
    heatmap_adv: np.ndarray
    background: np.ndarray
    x_adv: np.ndarray  # uint8 [H, W, 3]
    perturbation: np.ndarray  # uint8 [H, W, 3], |x_adv - x| amplified to the full range
    max_change: float  # largest pixel change, in 1/255 units

    @property
    def pred_changed(self) -> bool:
        return self.pred != self.pred_adv


def tile_consistency(model: nn.Module, image: np.ndarray, size: int, target: int | None, *, eps: float,
                     steps: int, threshold: str, similarity: str = "cosine", seed: int = 0) -> TileConsistency:
    """Explanation consistency of one tile (``interp_core.consistency.score``), as arrays for display."""
    dev = model_device(model)
    x = to_tensor(image, size, dev)
    t = None if target is None else torch.tensor([int(target)], device=dev)
    gen = torch.Generator().manual_seed(seed)
    res = explanation_consistency(model, x, t, threshold=threshold, eps=eps, steps=steps, similarity=similarity,
                                  generator=gen)
    xa = res.x_adv[0].detach().float().cpu().clamp(0, 1)
    x0 = x[0].detach().float().cpu()
    diff = (xa - x0).abs()
    peak = float(diff.max())
    amp = diff / peak if peak > 0 else diff
    to_u8 = lambda t: (t.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)  # noqa: E731
    return TileConsistency(score=float(res.score[0]), pred=int(res.pred[0]), pred_adv=int(res.pred_adv[0]),
                           heatmap=res.heatmap[0].float().cpu().numpy(),
                           heatmap_adv=res.heatmap_adv[0].float().cpu().numpy(),
                           background=res.background[0].cpu().numpy().astype(bool), x_adv=to_u8(xa),
                           perturbation=to_u8(amp), max_change=peak * 255.0)


def background_view(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The tile with its attackable background tinted blue and outlined, so it shows on any stain
    (white on white did not)."""
    img = resize_image(image, background.shape[0]).astype(np.float32)
    tint = np.array([40.0, 110.0, 255.0], np.float32)
    out = np.where(background[..., None], 0.45 * img + 0.55 * tint, img)
    return draw_contour(np.clip(out + 0.5, 0, 255).astype(np.uint8), mask_contour(background), (0, 40, 160))


