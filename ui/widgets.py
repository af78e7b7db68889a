"""Widgets shared by several pages: split and tile pickers, the thumbnail gallery, image upload."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import streamlit as st

from interp_core.data import load_rgb
from interp_core.errors import DataError

from interp_core.evaluation import tile_analysis as compute

from . import cache
from . import state as S

GALLERY_PAGE = 12
UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff"]


@dataclass
class ChosenTile:
    """The image a page works on, at its stored size, and what is known about it."""

    image: np.ndarray
    title: str
    mask: np.ndarray | None = None
    label: str | None = None  # true class name, when known
    kind: str = "dataset"  # "dataset" | "upload"
    dataset: str | None = None
    split: str | None = None
    index: int | None = None
    notes: list[str] = field(default_factory=list)
    artifact: np.ndarray | None = None  # known spurious region (e.g. a pen mark), when the dataset marks it


def splits_of(path: Path) -> list[str]:
    """Splits a dataset offers (val is carved from train when missing; a MedMNIST .npz has all three)."""
    if Path(path).suffix.lower() == ".npz":
        return ["test", "val", "train"]
    have = [s for s in ("test", "val", "train") if (Path(path) / s).is_dir()]
    if "train" in have and "val" not in have:
        have.insert(1 if "test" in have else 0, "val")
    return have


def split_picker(key: str, path: Path, *, label: str = "Split", container=st) -> str:
    """A select box over the dataset's splits (test first)."""
    options = splits_of(path)
    S.init(key, options[0] if options else "test")
    names = {"test": "test (held out)", "val": "validation", "train": "training"}
    return container.selectbox(label, options, key=key, format_func=lambda s: names.get(s, s),
                               help="Which part of the dataset to pick tiles from.", **S.KEEP)


def split_size(path: Path, split: str) -> int:
    """Number of tiles in a split (1 if it cannot be opened: the page shows the error where it opens it)."""
    try:
        return max(1, len(cache.split(str(path), split)))
    except Exception:  # noqa: BLE001
        return 1


def tile_caption(ds, i: int) -> str:
    """``#12 · tumor · 00012.png``."""
    return f"#{i} · {ds.classes[ds.labels[i]]} · {Path(ds.ids[i]).name}"


def tile_select(key: str, ds, *, label: str = "Tile", default: int = 0, container=st) -> int:
    """A select box over every tile of a split (the authoritative tile choice)."""
    n = len(ds)
    S.init(key, min(default, n - 1))
    if not isinstance(st.session_state[key], int) or not 0 <= st.session_state[key] < n:
        st.session_state[key] = 0
    return container.selectbox(label, list(range(n)), key=key, format_func=lambda i: tile_caption(ds, i), **S.KEEP)


def _pick(key: str, index: int) -> None:
    st.session_state[key] = index


def gallery(path: Path, ds, indices: list[int], *, tile_key: str, page_key: str, probs: np.ndarray | None,
            classes_of_probs: list[str] | None = None, model_label: str = "") -> None:
    """Thumbnails of ``indices`` (one page of ``GALLERY_PAGE``) with a button each that shows the tile;
    ✓/✗ marks whether ``model_label``'s prediction (``probs``) is right."""
    if not indices:
        st.info("No tile matches these filters. Widen the confidence range or choose other classes.")
        return
    n_pages = max(1, -(-len(indices) // GALLERY_PAGE))
    S.init(page_key, 1)
    if st.session_state[page_key] > n_pages:
        st.session_state[page_key] = 1
    cols_top = st.columns([3, 1])
    cols_top[0].caption(f"{len(indices)} tile(s) match. Click a thumbnail (or the number under it) to explain it"
                        + (f"; ✓/✗: right or wrong according to {model_label}." if probs is not None else "."))
    page = cols_top[1].number_input("Gallery page", 1, n_pages, key=page_key, **S.KEEP) if n_pages > 1 else 1
    shown = indices[(page - 1) * GALLERY_PAGE: page * GALLERY_PAGE]
    caps, tips = [], []
    for i in shown:
        truth = ds.classes[ds.labels[i]]
        cap, tip = truth, f"Show tile #{i} ({truth})"
        if probs is not None and classes_of_probs is not None:
            k = int(np.argmax(probs[i]))
            cap += " ✓" if classes_of_probs[k] == truth else " ✗"
            tip += f": predicted {classes_of_probs[k]} ({probs[i][k]:.0%}) by {model_label}"
        caps.append(cap)
        tips.append(tip)
    # the thumbnails themselves are clickable: one picture with a clickable cell per tile
    from interp_core.viz import figures, images
    grid_key = f"{page_key}.grid.{ds.split}.{page}.{len(indices)}"
    current = st.session_state.get(tile_key)
    fig = figures.clickable_grid_figure(
        images.mosaic([cache.tile(str(path), ds.split, i)[0] for i in shown], GALLERY_PAGE, 64),
        (1, GALLERY_PAGE), 64, pitch=68, labels=[f"#{i} · {c}" for i, c in zip(shown, caps)],
        selected=shown.index(current) if current in shown else None, height=110)
    event = st.plotly_chart(fig, key=grid_key, on_select="rerun", selection_mode="points",
                            config={"displayModeBar": False})
    picked_thumbnail(event, grid_key, shown, tile_key)
    cols = st.columns(GALLERY_PAGE, gap="small")
    current = st.session_state.get(tile_key)
    for j, i in enumerate(shown):
        cols[j % len(cols)].button(f"#{i} {caps[j][-1] if caps[j][-1] in '✓✗' else ''}".strip(),
                                   key=f"{S.Explore.PICK_PREFIX}{ds.split}.{i}", help=tips[j], on_click=_pick,
                                   args=(tile_key, i), type="primary" if current == i else "secondary",
                                   width="stretch")


def picked_thumbnail(event, grid_key: str, shown: list[int], tile_key: str) -> int | None:
    """Apply a click on a clickable grid (``figures.clickable_grid_figure``): the tile clicked becomes the
    one shown. A selection is applied once (it stays in the chart's state across reruns, and must not
    override a tile picked another way afterwards). Returns the tile picked by this click, if any."""
    from interp_core.viz import figures
    cell = figures.clicked_cell(event)
    last_key = f"{grid_key}.last"
    if cell is None:
        st.session_state[last_key] = None
        return None
    if st.session_state.get(last_key) == cell or not 0 <= cell < len(shown):
        return None
    st.session_state[last_key] = cell
    st.session_state[tile_key] = shown[cell]
    st.rerun()  # redraw the gallery and the tile with the new choice


def filter_tiles(ds, classes: list[str], correctness: str, conf_range: tuple[float, float],
                 probs: np.ndarray | None) -> list[int]:
    """Indices of tiles whose class is in ``classes`` and whose prediction passes the filters."""
    keep = []
    lo, hi = conf_range
    for i, lab in enumerate(ds.labels):
        if ds.classes[lab] not in classes:
            continue
        if probs is not None:
            k = int(np.argmax(probs[i]))
            if correctness == "correct" and k != lab or correctness == "wrong" and k == lab:
                continue
            if not lo <= float(probs[i][k]) <= hi:
                continue
        keep.append(i)
    return keep


@st.cache_data(show_spinner=False, max_entries=16)
def _decode_upload(data: bytes, name: str) -> tuple[np.ndarray, list[str]]:
    img = load_rgb(data, name=name)
    return img.array, img.notes


def upload_picker(key: str, *, label: str = "Upload an image") -> tuple[np.ndarray, str, list[str]] | None:
    """An upload decoded safely to RGB, or None (nothing uploaded). Bad files show a clear message."""
    f = st.file_uploader(label, type=UPLOAD_TYPES, key=key,
                         help="PNG, JPEG or TIFF. Corrupt, empty or too large images are refused with a message.")
    if f is None:
        return None
    data = f.getvalue()
    try:
        arr, notes = _decode_upload(data, f.name)
    except DataError as e:
        st.error(f"This image cannot be used: {e}", icon=":material/broken_image:")
        return None
    for n in notes:
        st.info(f"Note: {n}.", icon=":material/info:")
    return arr, f.name, notes


def fitted_upload_tile(image: np.ndarray, name: str, size: int, *, mode_key: str, tile_key: str) -> ChosenTile:
    """Fit an upload to the model input (resized or tiled, with a note) and let the user pick a tile."""
    modes = {"auto": "Automatic", "resize": "Resize the whole image", "tile": "Cut into tiles"}
    S.init(mode_key, "auto")
    mode = st.radio("Fit to the model's input", list(modes), key=mode_key, format_func=modes.get, horizontal=True,
                    **S.KEEP)
    fit = compute.fit_to_input(image, size, mode)
    st.caption(f":material/crop: {fit.note}")
    idx = 0
    if fit.mode == "tiled":
        best = int(np.argmax(fit.tissue))
        S.init(tile_key, best)
        if not 0 <= st.session_state[tile_key] < len(fit.tiles):
            st.session_state[tile_key] = best
        # the whole image with its tile grid: a click on a tile picks it
        from interp_core.viz import figures, images
        rows, cols = fit.grid
        cell = max(16, int(size * min(3.0, 720 / (max(rows, cols) * size))))  # small uploads enlarged, up to 3x
        grid_key = f"{tile_key}.grid.{hashlib.sha1(image.tobytes()).hexdigest()[:8]}.{rows}x{cols}"
        fig = figures.clickable_grid_figure(
            images.mosaic(fit.tiles, cols, cell, gap=0), (rows, cols), cell, lines=True,
            labels=[f"row {r + 1}, column {c + 1} ({t:.0%} tissue)" for (r, c), t in zip(fit.positions, fit.tissue)],
            selected=st.session_state[tile_key], height=min(720, rows * cell) + 20)
        st.caption("The whole image with the model's tile grid: click a tile to explain it (framed: the tile shown).")
        event = st.plotly_chart(fig, key=grid_key, on_select="rerun", selection_mode="points",
                                config={"displayModeBar": False})
        picked_thumbnail(event, grid_key, list(range(len(fit.tiles))), tile_key)
        idx = st.selectbox("Tile of the upload", list(range(len(fit.tiles))), key=tile_key,
                           format_func=lambda i: f"row {fit.positions[i][0] + 1}, column {fit.positions[i][1] + 1}"
                           f" ({fit.tissue[i]:.0%} tissue)", **S.KEEP)
    digest = hashlib.sha1(image.tobytes()).hexdigest()[:8]
    r, c = fit.positions[idx]
    title = name + (f" (tile {r + 1},{c + 1})" if fit.mode == "tiled" else "")
    return ChosenTile(fit.tiles[idx], title, kind="upload", notes=[fit.note], index=idx, split=digest)


def dataset_tile(path: Path, dataset_name: str, split: str, index: int) -> ChosenTile:
    """Tile ``index`` of a split, with its mask and true class."""
    ds = cache.split(str(path), split)
    img, mask = cache.tile(str(path), split, index)
    return ChosenTile(img, f"{dataset_name} · {split} · {tile_caption(ds, index)}", mask=mask,
                      label=ds.classes[ds.labels[index]], dataset=dataset_name, split=split, index=index,
                      artifact=cache.artifact(str(path), split, index))


def follow_filter(tile_key: str, indices: list[int]) -> None:
    """Show the first matching tile when the filters exclude the tile shown (call before ``tile_select``)."""
    if indices and st.session_state.get(tile_key) not in indices:
        st.session_state[tile_key] = indices[0]
