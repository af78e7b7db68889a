"""What an ``explain-slide`` job writes for other tools: the PNG and .npy maps of a ``SlideResult``
(``write_maps``) and one GeoJSON polygon per computed tile for QuPath (``tiles_geojson``).
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..attribution import display_range
from ..runs import write_json
from .maps import CLASS_COLORS, SlideMaps, overlay_nan

GEOJSON = "tiles.geojson"


def tiles_geojson(maps: SlideMaps, plan: dict[str, Any]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection QuPath imports: one ``Polygon`` per computed tile in level-0 pixels.

    Tile ``(r, c)`` of level ``L`` (downsample ``ds``) covers level-0 pixels
    ``[c*stride*ds, (c*stride + tile)*ds) x [r*stride*ds, (r*stride + tile)*ds)``, clipped to the
    slide. ``properties``: ``objectType`` "tile", ``classification`` ``{name, color}`` (predicted
    class), ``measurements``: ``prob_<class>`` per class, ``entropy`` (nats), ``saliency_mean_abs``
    (mean ``|map|`` of the tile, raw) and ``saliency_mass`` (the tile's share of the slide's total
    ``|map|``, so the masses sum to 1), and ``row``/``col`` of the grid. ``id``: a UUID (QuPath reads
    the object id as one), the same for the same grid tile of the same run and grid, different for
    another run. The shape follows what QuPath 0.4/0.5 reads (``QuPathTypeAdapters.PathObjectTypeAdapter``:
    ``objectType`` "tile" makes a tile object; a classification object needs ``name`` and an RGB
    ``color`` array; measurements as a name -> number map); see ``docs/slides.md``.
    """
    res = maps.result
    ds = float(plan["level_downsample"])
    W0, H0 = plan["level0_size"]
    T, S = int(plan["tile_size"]), int(plan["stride"])
    total = float(np.nansum(maps.tile_saliency))
    # ids differ between runs and grids, so two runs' files imported into one QuPath image never share an id
    key = (f"interp-core/tile/{plan.get('weights_sha1', '')}/{plan.get('slide_bytes', '')}/L{plan.get('level', 0)}"
           f"/t{T}/s{S}")
    feats = []
    for r, c in zip(*np.nonzero(np.isfinite(res.probs[..., 0]))):
        r, c = int(r), int(c)
        x0, y0 = c * S * ds, r * S * ds
        x1, y1 = min((c * S + T) * ds, W0), min((r * S + T) * ds, H0)
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        p = res.probs[r, c]
        k = int(np.argmax(p))
        ent = float(-np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-30)), 0.0)))
        meas = {f"prob_{name}": float(p[i]) for i, name in enumerate(res.classes)}
        meas.update({"entropy": ent, "saliency_mean_abs": float(maps.tile_saliency[r, c]),
                     "saliency_mass": float(maps.tile_saliency[r, c]) / total if total > 0 else 0.0,
                     "row": r, "col": c})
        color = list(CLASS_COLORS[k % len(CLASS_COLORS)])
        feats.append({"type": "Feature", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{key}/{r}/{c}")),
                      "geometry": {"type": "Polygon", "coordinates": [ring]},
                      "properties": {"objectType": "tile", "classification": {"name": res.classes[k], "color": color},
                                     "measurements": meas}})
    return {"type": "FeatureCollection", "features": feats}


def write_geojson(path: str | Path, collection: dict[str, Any]) -> None:
    """Write a GeoJSON object atomically (strict JSON)."""
    write_json(path, collection)


def write_maps(res: Any, out: Path) -> list[str]:
    """Write the PNG and .npy maps of a ``SlideResult``; return the file names."""
    out.mkdir(parents=True, exist_ok=True)
    thumb = res.thumbnail
    written: list[str] = []

    def png(name: str, arr: np.ndarray) -> None:
        Image.fromarray(arr).save(out / name)
        written.append(name)

    def npy(name: str, arr: np.ndarray) -> None:
        np.save(out / name, arr, allow_pickle=False)
        written.append(name)

    png("thumbnail.png", thumb)
    png("tissue.png", (res.tissue_map.astype(np.uint8) * 255))
    sal = res.saliency
    npy("saliency.npy", sal.astype(np.float32))
    finite = sal[np.isfinite(sal)]
    vmin, vmax = display_range(finite if finite.size else np.zeros(1), clip_percentile=99.0)
    png("saliency.png", overlay_nan(thumb, sal, vmin, vmax, cmap="inferno"))
    npy("probs.npy", res.probs.astype(np.float32))
    npy("prediction.npy", res.pred.astype(np.int64))
    prob_maps = [res.prob_map(i) for i in range(len(res.classes))]
    for name, pm in zip(res.classes, prob_maps):
        png(f"probability_{_safe_name(name)}.png", overlay_nan(thumb, pm, 0.0, 1.0, cmap="viridis"))
    stack = np.stack(prob_maps)
    covered = np.isfinite(stack[0])
    cls = np.where(covered, np.argmax(np.nan_to_num(stack, nan=-1.0), axis=0), -1)
    colors = np.asarray([CLASS_COLORS[i % len(CLASS_COLORS)] for i in range(len(res.classes))], np.uint8)
    pred_img = thumb.copy()
    pred_img[covered] = (0.4 * thumb[covered] + 0.6 * colors[cls[covered]]).astype(np.uint8)
    png("prediction.png", pred_img)
    return written


def _safe_name(name: str) -> str:
    """A class name as a file-name fragment (letters, digits, ``-``, ``_``; others become ``_``)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "class"
