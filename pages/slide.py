"""Slide: a large image cut into the model's input tiles; per-tile predictions and saliency stitched
into slide-level maps, two models side by side, zoomable."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import streamlit as st

from interp_core import figures
from interp_core.attribution import METHODS
from interp_core.errors import InterpError
from interp_core.slide import ArraySlide, explain_slide, open_slide
from interp_core.wsi import find_slides
from ui import cache, catalog, shell, sidebar, text, widgets
from ui import state as S
from ui.errors import guard, need

shell.leave_legacy_pages_mode()

MAX_MAP_SIDE = 256  # the saliency map is at most this many pixels per side (plotly stays light)
DEFAULT_MAX_TILES = 2000  # a whole-slide file can hold 100,000 tiles: compute a first part unless asked


def slides_root() -> Path:
    """Where the page looks for whole-slide files: ``sample_data/slides`` (or ``$INTERP_SAMPLE_DATA/slides``)."""
    return catalog.sample_root() / "slides"


@st.cache_data(show_spinner=False)
def shipped_ihc() -> np.ndarray:
    """The full immunohistochemistry image shipped with scikit-image (offline)."""
    from skimage import data
    return np.ascontiguousarray(data.immunohistochemistry()[..., :3]).astype(np.uint8)


st.title("Slide: a large image, tile by tile")
st.markdown("A large image is cut into tiles of the model's input size. Each tile gets a prediction and a "
            "saliency map; they are stitched back together into maps over the whole image. Zoom with the mouse "
            "(drag a box; double-click to reset). Tiles that are mostly glass are skipped.")
sel = sidebar.selection()
need(bool(sel.all_runs), text.NO_RUNS)

S.init(S.Slide.SOURCE, "ihc")
source = st.segmented_control("Image", ["ihc", "file", "upload"], key=S.Slide.SOURCE, required=True,
                              format_func={"ihc": "Shipped immunohistochemistry image",
                                           "file": "Whole-slide file on this machine",
                                           "upload": "Upload an image"}.get, **S.KEEP)
limit = None
if source == "ihc":
    image, name = shipped_ihc(), "immunohistochemistry (scikit-image)"
    reader, digest = ArraySlide(image), hashlib.sha1(image.tobytes()).hexdigest()[:16]
elif source == "upload":
    up = widgets.upload_picker(S.Slide.UPLOAD, label="Upload a large image (PNG, JPEG or TIFF)")
    need(up is not None, "Upload an image to tile it.")
    image, name = up[0], up[1]
    reader, digest = ArraySlide(image), hashlib.sha1(image.tobytes()).hexdigest()[:16]
else:
    root = slides_root()
    found = find_slides(root)
    f1, f2 = st.columns([1, 1])
    S.init(S.Slide.FILE, str(found[0]) if found else "")
    S.init(S.Slide.PATH, "")
    if found:
        f1.selectbox(f"Slides in {root}", [str(p) for p in found], key=S.Slide.FILE,
                     format_func=lambda p: str(Path(p).relative_to(root)), **S.KEEP)
    typed = f2.text_input("Or the path of a slide file", key=S.Slide.PATH, placeholder="/data/slides/case1.svs",
                          help=".svs, .ndpi, .mrxs, .scn, .bif, tiled .tif/.tiff (read with OpenSlide), or a PNG/JPEG. "
                               "Large files are read tile by tile, never uploaded.", **S.KEEP)
    chosen = typed.strip() or S.get(S.Slide.FILE, "")
    need(bool(chosen), f"Type the path of a whole-slide file (none found in {root}).")
    path = Path(chosen).expanduser()
    try:
        base = open_slide(path)
    except InterpError as e:
        st.error(str(e), icon=":material/error:")
        st.stop()
    levels = getattr(base, "level_dimensions", [base.size])
    S.init(S.Slide.LEVEL, 0)
    if S.get(S.Slide.LEVEL) not in range(len(levels)):
        S.put(S.Slide.LEVEL, 0)
    l1, l2 = st.columns([1, 1])
    level = l1.selectbox("Pyramid level", list(range(len(levels))), key=S.Slide.LEVEL,
                         format_func=lambda i: f"{i}: {levels[i][0]}x{levels[i][1]} px", **S.KEEP,
                         help="Tiles are read at this level: pick the one matching the magnification the model "
                              "was trained at.")
    S.init(S.Slide.MAX_TILES, DEFAULT_MAX_TILES)
    limit = int(l2.number_input("Compute at most this many tissue tiles", min_value=1, max_value=200_000, step=500,
                                key=S.Slide.MAX_TILES, **S.KEEP))
    reader = open_slide(path, level=level) if level else base
    name = path.name
    st_ = path.stat()
    digest = f"{path.resolve()}:{st_.st_mtime_ns}:{st_.st_size}:{level}"

# -- models: the ones trained on IHC by default for the IHC image ----------------------------------
by_key = {r.key: r for r in sel.all_runs}
preferred = [r.key for r in sel.all_runs if r.dataset == "ihc"] if source == "ihc" else []
default = (preferred or [r.key for r in sel.runs] or list(by_key))[:2]
if not set(S.get(S.Slide.RUNS, ["?"])) <= set(by_key):
    S.put(S.Slide.RUNS, default)
S.init(S.Slide.RUNS, default)
c1, c2, c3, c4 = st.columns([3, 1.5, 1.5, 1.5])
keys = c1.multiselect("Models (two side by side)", list(by_key), key=S.Slide.RUNS, max_selections=2,
                      format_func=lambda k: by_key[k].label,
                      help="The IHC image suits the models trained on the `ihc` dataset.", **S.KEEP)
need(bool(keys), text.PICK_RUNS.replace("in the sidebar (**Models to compare**)", "above"))
S.init(S.Slide.METHOD, "gradcam")
method = c2.selectbox("Saliency method", list(METHODS), key=S.Slide.METHOD, **S.KEEP)
S.init(S.Slide.SHOW, "probability")
show = c3.selectbox("Map", ["probability", "saliency"], key=S.Slide.SHOW,
                    format_func={"probability": "probability per tile", "saliency": "saliency"}.get, **S.KEEP)
S.init(S.Slide.ALPHA, 0.5)
alpha = c4.slider("Map opacity", 0.0, 1.0, key=S.Slide.ALPHA, step=0.05, **S.KEEP)

w, h = reader.size
downsample = max(1, math.ceil(max(h, w) / MAX_MAP_SIDE))
store = cache.store("slide")
results = {}
for k in keys:
    entry = by_key[k]
    r = cache.ref(entry, sel.device)
    with guard(f"tiling the image with {entry.label}"):
        loaded = r.load()
        size = int(loaded.config["image_size"])
        skey = (r, digest, method, downsample, limit)
        res = store.get(skey)
        if res is None:
            bar = st.progress(0.0, text=f"{entry.label}: preparing the tiles...")

            def report(done: int, total: int, label: str = entry.label) -> None:
                bar.progress(done / total if total else 1.0, text=f"{label}: {done}/{total} tiles")

            res = explain_slide(loaded.model, reader, tile_size=size, method=method, batch_size=64,
                                downsample=downsample, progress=report, classes=loaded.classes, limit=limit)
            store.put(skey, res)
            bar.empty()
        results[k] = res
need(bool(results), "No model could tile this image; see the messages above.")

classes = results[keys[0]].classes
if show == "probability":
    default_cls = "dab_positive" if "dab_positive" in classes else classes[-1]
    if S.get(S.Slide.CLASS) not in classes:
        S.put(S.Slide.CLASS, default_cls)
    cls = st.columns([1, 3])[0].selectbox("Probability of class", classes, key=S.Slide.CLASS, **S.KEEP)

st.caption(f"{name}: {w}x{h} pixels; maps at 1/{downsample} of the image side."
           + (f" At most {limit:,} tissue tiles are computed (raster order)." if limit else ""))
if source == "ihc" and not any(by_key[k].dataset == "ihc" for k in keys):
    st.warning("None of these models was trained on immunohistochemistry tiles (dataset `ihc`), so their "
               "predictions on this image mean little. Pick an `ihc` model if there is one.")
cols = st.columns(len(results))
for col, (k, res) in zip(cols, results.items()):
    entry = by_key[k]
    with col, guard(f"drawing the map of {entry.label}"):
        if show == "probability":
            ci = res.classes.index(cls) if cls in res.classes else 0
            heat, zmin, zmax, bar_title = res.probs[..., ci], 0.0, 1.0, f"p({res.classes[ci]})"
        else:
            heat = res.saliency
            zmin, zmax = figures.finite_range([heat], symmetric=bool(np.nanmin(heat) < 0) if np.isfinite(heat).any()
                                              else False)
            bar_title = "saliency (slide max = 1)"
        fig = figures.slide_figure(res.thumbnail, heat, title=entry.label, zmin=zmin, zmax=zmax, opacity=alpha,
                                   colorbar_title=bar_title, height=480,
                                   colorscale="Viridis" if show == "probability" else "Inferno", hover=bar_title)
        st.plotly_chart(fig, key=f"slide.fig.{k}")
        pred = res.pred[res.tissue] if res.tissue.any() else np.array([], int)
        shares = ", ".join(f"{c}: {np.mean(pred == i):.0%}" for i, c in enumerate(res.classes)) if pred.size else "-"
        st.caption(f"{res.n_computed} of {res.n_tiles} tiles computed ({res.grid_shape[0]}x{res.grid_shape[1]} grid of "
                   f"{res.tile_size}px) in {res.seconds:.1f} s. Tissue tiles predicted as {shares}.")
