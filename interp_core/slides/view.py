"""What the Slide page shows, computed outside Streamlit (the page and ``ui/slide_page.py`` only draw
it): overlays and their colour scale, the viewers' default pair of runs, the tile grid, a tile's
stored metrics, the stitched fallback view.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .deepzoom import TileMaps, colormap_lut
from .explain import open_slide, read_thumbnail
from .maps import SlideMaps, map_downsample, overlay_nan

#: The Slide page's overlays: id -> label.
OVERLAYS = {"none": "no overlay", "probability": "class probability per tile", "saliency": "saliency (stitched)",
            "entropy": "uncertainty (predictive entropy)", "tissue": "tissue mask"}
#: Each overlay's default colour map.
OVERLAY_CMAPS = {"probability": "viridis", "saliency": "inferno", "entropy": "magma", "tissue": "Greens"}


def default_pair(entries: list, dataset: str | None) -> list[str]:
    """Keys of the two runs the viewers show first: ``dataset``'s baseline (objective ``erm``) and its
    SCAAT retrain when both exist; else the first two runs (the same one twice when there is one).
    ``entries`` have ``key``, ``dataset`` and ``config`` (``interp_core.catalog`` entries)."""
    pool = [e for e in entries if e.dataset == dataset] or entries
    base = [e.key for e in pool if e.config.get("objective") == "erm"]
    scaat = [e.key for e in pool if e.config.get("objective") == "scaat"]
    pair = (base[:1] + scaat[:1]) if base and scaat else [e.key for e in pool[:2]]
    return pair if len(pair) == 2 else (pair * 2)[:2]


def dataset_for_slide(datasets: set[str], slide: str | Path) -> str | None:
    """The dataset a slide is named after (``synthetic-he.tiff`` -> ``synthetic-he``), or None.
    The longest matching name wins (``synthetic-he-biased`` over ``synthetic-he``)."""
    stem = Path(slide).stem
    hits = [d for d in datasets if d and stem.startswith(d)]
    return max(hits, key=len) if hits else None


def tile_stride(size: int, step: str) -> int:
    """The page's tile step: ``"tile"`` (no overlap) or ``"half"`` (half a tile; overlaps averaged)."""
    return size if step == "tile" else max(1, size // 2)


def overlay_values(m: SlideMaps | None, show: str, cls: str, normalize: str) -> np.ndarray | None:
    """The map a viewer overlays for ``show`` (see ``OVERLAYS``), NaN where nothing was computed; None
    for no overlay or no results yet."""
    if m is None or show == "none":
        return None
    r = m.result
    if show == "probability":
        return r.prob_map(r.classes.index(cls)) if cls in r.classes else None
    if show == "saliency":
        return m.saliency[normalize]
    if show == "entropy":
        return m.entropy
    return r.tissue_map.astype(np.float32)


def overlay_scale(values: list[np.ndarray | None], show: str, normalize: str, classes: list[str],
                  cls: str) -> tuple[float, float, str]:
    """One colour scale ``(vmin, vmax, label)`` for both viewers: saliency from 0 (or ``-top`` when
    signed) to the 99.5th percentile of ``|value|`` over both maps; entropy 0..log(classes) nats;
    probability and tissue 0..1."""
    finite = [v[np.isfinite(v)] for v in values if v is not None and np.isfinite(v).any()]
    if show == "saliency" and finite:
        both = np.concatenate(finite)
        top = float(np.percentile(np.abs(both), 99.5)) or 1.0
        return (-top if both.min() < 0 else 0.0), top, \
            f"saliency ({'slide-wide' if normalize == 'slide' else 'per tile'})"
    if show == "entropy":
        return 0.0, float(np.log(max(2, len(classes)))), "entropy (nats)"
    if show == "probability":
        return 0.0, 1.0, f"p({cls})"
    return 0.0, 1.0, "tissue"


def native_tile_maps(m: SlideMaps, normalize: str) -> TileMaps:
    """Each tile's saliency map as computed, placed in level-0 pixels (``deepzoom.TileMaps``): what the
    viewer shows deeper than the stitched map."""
    ds = float(m.plan["level_downsample"])
    return TileMaps(m.tile_cells, m.native_maps(normalize), m.plan["tile_size"] * ds, m.plan["stride"] * ds,
                    tuple(m.plan["grid"]))


def viewer_grid(plan: dict[str, Any] | None) -> dict[str, float] | None:
    """The tile grid in level-0 pixels (the viewer maps a click to a tile with it), None before results."""
    if plan is None:
        return None
    ds = float(plan["level_downsample"])
    return {"tile": plan["tile_size"] * ds, "stride": plan["stride"] * ds, "rows": plan["grid"][0],
            "cols": plan["grid"][1]}


def css_ramp(cmap: str) -> list[str]:
    """The colour map as 9 CSS colours (the legend's gradient)."""
    lut = colormap_lut(cmap)
    return [f"rgb({r},{g},{b})" for r, g, b in lut[::32].tolist() + [lut[-1].tolist()]]


def job_state(p: dict[str, Any]) -> str:
    """A viewer title's job state: done, tiles so far, or not explained yet."""
    return "done" if p["complete"] else (f"{p['done']:,}/{p['total']:,} tiles" if p["total"] else "not explained yet")


def stored_tile_metrics(m: SlideMaps | None, row: int, col: int) -> dict[str, float | None]:
    """What explain-slide stored for tile (row, col): p(predicted class), entropy (nats) and the
    tile's share of the slide's |saliency|; empty when the tile was not computed."""
    if m is None or not np.isfinite(m.result.probs[row, col, 0]):
        return {}
    pr = m.result.probs[row, col]
    total = float(np.nansum(m.tile_saliency))
    return {"explain-slide p(pred)": float(pr.max()),
            "entropy (nats)": float(-(pr * np.log(np.maximum(pr, 1e-30))).sum()),
            "saliency mass (share of slide)": float(m.tile_saliency[row, col]) / total if total else None}


def change_map(left: np.ndarray, right: np.ndarray) -> np.ndarray | None:
    """Right minus left, each map divided by its own maximum ``|value|`` (None when shapes differ)."""
    if left.shape != right.shape:
        return None
    return right / (float(np.abs(right).max()) or 1.0) - left / (float(np.abs(left).max()) or 1.0)


def stitched_view(slide: str | Path, m: SlideMaps | None, values: np.ndarray | None, vmin: float, vmax: float,
                  cmap: str, alpha: float, map_side: int = 1024) -> np.ndarray:
    """uint8 RGB: the stitched overlay on the slide's thumbnail (the job's own thumbnail when there are
    results, else one of at most ``map_side`` px a side), what the page shows when the deep-zoom
    viewer is unavailable."""
    if m is not None:
        thumb = m.result.thumbnail
    else:
        reader = open_slide(slide)
        thumb = read_thumbnail(reader, map_downsample(reader.size, map_side))
    if values is None or values.shape != thumb.shape[:2]:
        return thumb
    return overlay_nan(thumb, values, vmin, vmax, cmap=cmap, alpha=float(alpha))
