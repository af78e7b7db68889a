"""Tiles of a slide through the model: ``SlideTiles`` reads them (a map-style dataset a DataLoader
streams, ``workers`` processes each with its own reader), ``explain_tiles`` predicts and attributes
them in batches, ``_stitch`` area-averages each tile's map into its footprint of a downsampled map.
The grid and the stitching rules are in the ``slides.explain`` module docstring.
"""
from __future__ import annotations

import copy
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..attribution import attribution_state, predict_and_attribute
from .._utils.device import model_device, pick_device
from ..errors import InterpError
from .reader import SlideReader


def _placed_model(model: nn.Module, device: Any) -> tuple[nn.Module, torch.device]:
    """The model on ``device``; a copy when it lives elsewhere (a cached, shared model is never moved)."""
    current = model_device(model)
    if device is None:
        return model, current
    if isinstance(device, str):
        dev = pick_device(device)
    else:
        dev = torch.device(device)
    if dev.type == current.type and (dev.index is None or dev.index == current.index):
        return model, current
    return copy.deepcopy(model).to(dev), dev


def _num_classes(model: nn.Module, tile: int, device: torch.device) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
        return int(n)
    with attribution_state(model), torch.no_grad():
        return int(model(torch.ones(1, 3, tile, tile, device=device)).shape[1])


class SlideTiles(Dataset):
    """The tiles ``(r, c)`` of ``cells`` (int ``[n, 2]``) of a slide as a map-style dataset.

    Item ``k``: ``(uint8 tensor [T, T, 3], k)``, the tile with its top-left corner at
    ``(c * stride, r * stride)``, read when asked (``slide.read_region``). Workers of a DataLoader
    each use their own copy of the reader; ``OpenSlideReader`` opens a file handle per process.
    """

    def __init__(self, slide: SlideReader, cells: np.ndarray, stride: int, tile_size: int):
        self.slide = slide
        self.cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
        self.stride = int(stride)
        self.tile_size = int(tile_size)

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        r, c = (int(v) for v in self.cells[k])
        t = self.tile_size
        region = self.slide.read_region(c * self.stride, r * self.stride, t, t)
        if not isinstance(region, np.ndarray) or region.shape != (t, t, 3) or region.dtype != np.uint8:
            got = f"{region.dtype} {list(region.shape)}" if isinstance(region, np.ndarray) else type(region).__name__
            raise InterpError(f"the slide reader returned {got} for a {t}x{t} region; expected uint8 [{t}, {t}, 3]")
        return torch.from_numpy(np.ascontiguousarray(region)), k


def _tile_batches(slide: SlideReader, todo: np.ndarray, stride: int, tile_size: int, batch_size: int,
                  workers: int = 0) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
    """Batches ``(tile indices [(r, c)], uint8 [b, T, T, 3])`` of the tiles marked in ``todo``, raster
    order, read through a DataLoader with ``workers`` worker processes (0: in this process)."""
    cells = np.argwhere(todo)
    if not len(cells):
        return
    loader = DataLoader(SlideTiles(slide, cells, stride, tile_size), batch_size=batch_size, shuffle=False,
                        num_workers=workers, persistent_workers=False)
    for tiles, ks in loader:
        yield [(int(cells[k, 0]), int(cells[k, 1])) for k in ks.tolist()], tiles


def _footprint(origin: int, tile_size: int, d: int) -> tuple[int, int]:
    return origin // d, -(-(origin + tile_size) // d)


def _resample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[b, h, w]`` -> ``[b, *size]``: area average when shrinking, bilinear when growing."""
    if tuple(maps.shape[-2:]) == size:
        return maps
    if maps.shape[-2] >= size[0] and maps.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(maps[:, None], size)[:, 0]
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def explain_tiles(model: nn.Module, slide: SlideReader, cells: np.ndarray, *, stride: int, tile_size: int,
                  method: str = "saliency", target: int | None = None, batch_size: int = 64,
                  input_size: int | None = None, method_options: dict[str, Any] | None = None, workers: int = 0,
                  device: torch.device | None = None,
                  interpolation: str = "bilinear") -> Iterator[tuple[list[tuple[int, int]], np.ndarray, torch.Tensor]]:
    """Predict and attribute the tiles ``cells`` (int ``[n, 2]`` of ``(row, col)``, in that order), in batches.

    Yields ``(indices [(r, c)], probs float32 [b, C], maps float32 CPU tensor [b, S, S])`` with
    ``S`` the model's input side (``input_size`` or ``tile_size``); each map explains ``target``
    (None: the tile's predicted class). The model is used as given (``device``: where it lives),
    in eval mode per batch (``attribution_state``). ``interpolation`` (bilinear, bicubic, nearest):
    how tiles are resized to ``input_size`` (the run's own, ``runs.run_interpolation``).
    """
    dev = model_device(model) if device is None else device
    opts = dict(method_options or {})
    todo = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    if not len(todo):
        return
    loader = DataLoader(SlideTiles(slide, todo, stride, tile_size), batch_size=batch_size, shuffle=False,
                        num_workers=workers, persistent_workers=False)
    for batch, ks in loader:
        idx = [(int(todo[k, 0]), int(todo[k, 1])) for k in ks.tolist()]
        x = batch.to(dev).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        if input_size is not None and input_size != tile_size:
            x = F.interpolate(x, size=(input_size, input_size), mode=interpolation,
                              **({} if interpolation == "nearest" else
                                 {"align_corners": False, "antialias": input_size < tile_size})).clamp_(0.0, 1.0)
        p, _, maps = predict_and_attribute(model, x, method, target, **opts)
        yield idx, p.cpu().numpy(), maps.float().cpu()


def _stitch(maps: torch.Tensor, idx: list[tuple[int, int]], stride: int, tile_size: int, d: int,
            acc: np.ndarray, cnt: np.ndarray) -> None:
    """Area-average each tile map into its footprint at ``1/d`` and add it to ``acc``/``cnt`` (cropped)."""
    ht, wt = acc.shape
    groups: dict[tuple[int, int], list[int]] = {}
    boxes = []
    for k, (r, c) in enumerate(idx):
        fy0, fy1 = _footprint(r * stride, tile_size, d)
        fx0, fx1 = _footprint(c * stride, tile_size, d)
        boxes.append((fy0, fy1, fx0, fx1))
        groups.setdefault((fy1 - fy0, fx1 - fx0), []).append(k)
    for size, ks in groups.items():
        small = _resample(maps[ks], size).numpy()
        for j, k in enumerate(ks):
            fy0, fy1, fx0, fx1 = boxes[k]
            y1, x1 = min(fy1, ht), min(fx1, wt)
            acc[fy0:y1, fx0:x1] += small[j, :y1 - fy0, :x1 - fx0]
            cnt[fy0:y1, fx0:x1] += 1
