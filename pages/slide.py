"""Slide: a whole-slide file in two linked deep-zoom viewers (OpenSeadragon), two runs' maps overlaid,
explain-slide in the background, a tile's detail on click, GeoJSON export for QuPath."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import streamlit as st

from interp_core.viz import figures
from interp_core.attribution import METHODS
from interp_core.slides.deepzoom import COLORMAPS, SlideAccessError, SlideRoots, TileMaps, colormap_lut
from interp_core.errors import InterpError
from interp_core.slides.explain import open_slide
from interp_core.slides.job import assemble, job_log_tail, read_progress, results_dir, start_background
from ui import cache, shell, sidebar, text, tile_server
from ui import state as S
from ui.errors import guard, need

shell.leave_legacy_pages_mode()

OVERLAYS = {"none": "no overlay", "probability": "class probability per tile", "saliency": "saliency (stitched)",
            "entropy": "uncertainty (predictive entropy)", "tissue": "tissue mask"}


@st.cache_resource(show_spinner=False, max_entries=8)
def slide_maps(out: str, pieces_done: int, complete: bool, normalize: str):
    """The maps of a job folder so far (re-read when a piece lands or the job completes); shared, read-only."""
    return assemble(out, normalize=normalize)


def default_pair(entries: list, dataset: str | None) -> list[str]:
    """Baseline vs its SCAAT retrain of ``dataset`` when shipped; else the first two runs."""
    pool = [e for e in entries if e.dataset == dataset] or entries
    base = [e.key for e in pool if e.config.get("objective") == "erm"]
    scaat = [e.key for e in pool if e.config.get("objective") == "scaat"]
    pair = (base[:1] + scaat[:1]) if base and scaat else [e.key for e in pool[:2]]
    return pair if len(pair) == 2 else (pair * 2)[:2]


st.title("Slide: deep zoom, two runs linked")
st.markdown("A whole-slide file in two viewers, pan and zoom linked: scroll to zoom down to the scanner's pixels, "
            "drag to pan. Each viewer overlays one run's maps; **Explain** computes them in the background, tile "
            "by tile, and the overlay fills in as pieces finish. Click a tile for its detail below.")
sel = sidebar.selection()
need(bool(sel.all_runs), text.NO_RUNS)

# -- slide (only under the slide folders) -----------------------------------------------------------
roots = SlideRoots.from_env()
found = roots.list_slides()
names = [str(p) for p in found]
if S.get(S.Slide.FILE) not in names:
    S.put(S.Slide.FILE, next((n for n in names if Path(n).stem == "synthetic-he"), names[0] if names else ""))
f1, f2 = st.columns([1, 1])
if names:
    f1.selectbox("Slide", names, key=S.Slide.FILE, format_func=lambda p: Path(p).name)
S.init(S.Slide.PATH, "")
typed = f2.text_input("Or a slide path inside the slide folders", key=S.Slide.PATH, **S.KEEP,
                      placeholder="case1.svs",
                      help="Slides are read only from the shipped sample_data/slides and the folders listed in "
                           "$INTERP_SLIDES_DIR (separated by ':'). .svs, .ndpi, .mrxs, .scn, tiled .tif/.tiff, ...")
chosen = typed.strip() or S.get(S.Slide.FILE, "")
need(bool(chosen), "No slide found in the slide folders; add one to sample_data/slides or $INTERP_SLIDES_DIR.")
try:
    slide_path = roots.resolve(chosen)
    svc = tile_server.service()
    sid = svc.register_slide(slide_path)
except (SlideAccessError, InterpError) as e:
    st.error(str(e), icon=":material/block:")
    st.stop()
served = tile_server.ensure_routes()
dz = svc.slide(sid)
info = dz.info()

# -- runs, method, level ----------------------------------------------------------------------------
by_key = {r.key: r for r in sel.all_runs}
dataset_guess = next((d for d in {r.dataset for r in sel.all_runs if r.dataset}
                      if slide_path.stem.startswith(d)), None)
pair = default_pair(sel.all_runs, dataset_guess)
for i, key in enumerate((S.Slide.RUN_A, S.Slide.RUN_B)):
    if S.get(key) not in by_key:
        S.put(key, pair[i])
c1, c2, c3, c4 = st.columns([2.2, 2.2, 1.4, 1.2])
run_a = c1.selectbox("Left viewer: run", list(by_key), key=S.Slide.RUN_A, format_func=lambda k: by_key[k].label)
run_b = c2.selectbox("Right viewer: run", list(by_key), key=S.Slide.RUN_B, format_func=lambda k: by_key[k].label)
S.init(S.Slide.METHOD, "saliency")
method = c3.selectbox("Saliency method", list(METHODS), key=S.Slide.METHOD, **S.KEEP,
                      help="Attribution computed for every tile by explain-slide.")
base_reader = open_slide(slide_path)
levels = getattr(base_reader, "level_dimensions", [base_reader.size])
S.init(S.Slide.LEVEL, 0)
if S.get(S.Slide.LEVEL) not in range(len(levels)):
    S.put(S.Slide.LEVEL, 0)
level = c4.selectbox("Level tiled", list(range(len(levels))), key=S.Slide.LEVEL, **S.KEEP,
                     format_func=lambda i: f"{i} ({levels[i][0]}x{levels[i][1]})",
                     help="Pyramid level cut into model-input tiles: the magnification the model was trained at.")
keys = [run_a, run_b]
sizes = [int(by_key[k].config.get("image_size", 64)) for k in keys]
S.init(S.Slide.STRIDE, "tile")
stride_mode = st.radio("Tile step", ["tile", "half"], key=S.Slide.STRIDE, horizontal=True, **S.KEEP,
                       format_func={"tile": "one tile (no overlap)", "half": "half a tile (overlapping tiles "
                                                                             "averaged)"}.get)
outs, progs = [], []
for k, size in zip(keys, sizes):
    stride = size if stride_mode == "tile" else max(1, size // 2)
    out = results_dir(by_key[k].path, slide_path, level=level, method=method, tile_size=size, stride=stride)
    outs.append(out)
    progs.append(read_progress(out))

# -- jobs ------------------------------------------------------------------------------------------
missing = [i for i, p in enumerate(progs) if not p["complete"] and not p["running"]]
b1, b2 = st.columns([1, 3])
if missing and b1.button("Explain the slide", key=S.Slide.COMPUTE, type="primary",
                         help="Runs explain-slide for each run in the background (resumable: a stopped job continues "
                              "where it left off). Results are kept in the run folder and reused by the command."):
    for i in missing:
        stride = sizes[i] if stride_mode == "tile" else max(1, sizes[i] // 2)
        start_background(by_key[keys[i]].path, slide_path, outs[i], level=level, method=method, stride=stride,
                         device=sel.device)
    S.put(S.Slide.STARTED, time.time())
    st.rerun()
for i, p in enumerate(progs):
    if not p["complete"] and not p["running"]:
        tail = job_log_tail(outs[i])
        if tail:
            b2.warning(f"{by_key[keys[i]].label}: the last job stopped: {tail.splitlines()[-1]}", icon=":material/error:")


@st.fragment(run_every=2.0)
def job_progress() -> None:
    """Progress bars while jobs run; a full rerun when a piece lands (the overlays fill in)."""
    now = [read_progress(o) for o in outs]
    for i, p in enumerate(now):
        if p["running"] or (p["total"] and not p["complete"]):
            frac = p["done"] / p["total"] if p["total"] else 0.0
            st.progress(frac, text=f"{by_key[keys[i]].label}: {p['done']:,}/{p['total']:,} tissue tiles"
                                   + (" (running)" if p["running"] else " (stopped: press Explain to resume)"))
    if [(p["done"], p["complete"]) for p in now] != [(p["done"], p["complete"]) for p in progs]:
        st.rerun()


just_started = time.time() - S.get(S.Slide.STARTED, 0.0) < 60 and not all(p["complete"] for p in progs)
if any(p["running"] for p in progs) or just_started:
    job_progress()

# -- overlays ------------------------------------------------------------------------------------
o1, o2, o3, o4, o5 = st.columns([2, 1.6, 1.6, 1.4, 1.4])
S.init(S.Slide.SHOW, "saliency")
show = o1.selectbox("Overlay", list(OVERLAYS), key=S.Slide.SHOW, format_func=OVERLAYS.get, **S.KEEP)
S.init(S.Slide.NORMALIZE, "slide")
normalize = o2.selectbox("Saliency scale", ["slide", "tile"], key=S.Slide.NORMALIZE, **S.KEEP,
                         format_func={"slide": "slide-wide (one scale)", "tile": "per tile (own max)"}.get,
                         help="Slide-wide: one scale for every tile, no seams, tiles the model relies on more stand "
                              "out. Per tile: each tile's own pattern, seams between tiles.")
maps = []
for o, p in zip(outs, progs):
    m = None
    if p["done"] or p["complete"]:
        with guard(f"reading {o.name}"):
            m = slide_maps(str(o), int(p["done"]), bool(p["complete"]), normalize)
    maps.append(m)
classes = next((m.result.classes for m in maps if m is not None), by_key[run_a].config.get("classes", ["?"]))
if S.get(S.Slide.CLASS) not in classes:
    S.put(S.Slide.CLASS, "tumor" if "tumor" in classes else classes[-1])
cls = o3.selectbox("Class", classes, key=S.Slide.CLASS, disabled=show != "probability")
default_cmap = {"probability": "viridis", "saliency": "inferno", "entropy": "magma", "tissue": "Greens"}.get(show,
                                                                                                                "inferno")
if S.get(S.Slide.CMAP) not in COLORMAPS or S.get(S.Slide.CMAP_FOR) != show:
    S.put(S.Slide.CMAP, default_cmap)
    S.put(S.Slide.CMAP_FOR, show)
cmap = o4.selectbox("Colour map", list(COLORMAPS), key=S.Slide.CMAP)
S.init(S.Slide.ALPHA, 0.5)
alpha = o5.slider("Opacity", 0.0, 1.0, key=S.Slide.ALPHA, step=0.05, **S.KEEP)


def overlay_values(m) -> np.ndarray | None:
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


values = [overlay_values(m) for m in maps]
finite = [v[np.isfinite(v)] for v in values if v is not None and np.isfinite(v).any()]
if show == "saliency" and finite:
    both = np.concatenate(finite)
    signed = bool(both.min() < 0)
    top = float(np.percentile(np.abs(both), 99.5)) or 1.0
    vmin, vmax, label = (-top if signed else 0.0), top, f"saliency ({'slide-wide' if normalize == 'slide' else 'per tile'})"
elif show == "entropy":
    vmin, vmax, label = 0.0, float(np.log(max(2, len(classes)))), "entropy (nats)"
elif show == "probability":
    vmin, vmax, label = 0.0, 1.0, f"p({cls})"
else:
    vmin, vmax, label = 0.0, 1.0, "tissue"
oids = []
for v, m in zip(values, maps):
    if v is None:
        oids.append(None)
        continue
    ds = float(m.plan["level_downsample"])
    native = None
    if show == "saliency":  # deeper than the stitched map, each tile's map as computed
        native = TileMaps(m.tile_cells, m.native_maps(normalize), m.plan["tile_size"] * ds, m.plan["stride"] * ds,
                          tuple(m.plan["grid"]))
    oids.append(svc.register_overlay(sid, v, ds * int(m.plan["downsample"]), vmin=vmin, vmax=vmax, cmap=cmap,
                                     native=native))

ref_plan = next((m.plan for m in maps if m is not None), None)
grid = None
if ref_plan is not None:
    ds = float(ref_plan["level_downsample"])
    grid = {"tile": ref_plan["tile_size"] * ds, "stride": ref_plan["stride"] * ds, "rows": ref_plan["grid"][0],
            "cols": ref_plan["grid"][1]}
lut = colormap_lut(cmap)
ramp = [f"rgb({r},{g},{b})" for r, g, b in lut[::32].tolist() + [lut[-1].tolist()]]
titles = []
for k, m, p in zip(keys, maps, progs):
    state = "done" if p["complete"] else (f"{p['done']:,}/{p['total']:,} tiles" if p["total"] else "not explained yet")
    titles.append(f"{by_key[k].label} · {state}")
selected = S.get(S.Slide.TILE)
if not tile_server.viewer_installed():
    st.warning("The deep-zoom viewer (OpenSeadragon) is not installed: run `make viewer` (npm) once.",
               icon=":material/warning:")
if not served:
    st.info("The tile server is not running in this session (the page is being tested without a server).")
click = tile_server.viewer(
    {"base": tile_server.url_prefix(), "slide": {**info, "id": sid},
     "panes": [{"title": t, "overlay": o} for t, o in zip(titles, oids)], "opacity": alpha,
     "legend": {"ramp": ramp, "vmin": f"{vmin:.3g}", "vmax": f"{vmax:.3g}", "label": label},
     "grid": grid, "selected": list(selected) if selected else None, "height": 540},
    key=S.Slide.VIEWER)
mpp = f"{info['mpp']:.3g} µm/px" if info["mpp"] else "no microns-per-pixel in the file"
st.caption(f"{slide_path.name}: {info['width']:,}x{info['height']:,} px at level 0, {mpp}; Deep Zoom tiles are made "
           f"when the viewer asks for them and cached. Both viewers use the same colour scale.")
if isinstance(click, dict) and grid and click.get("n") != S.get(S.Slide.CLICK_N):
    S.put(S.Slide.CLICK_N, click.get("n"))
    S.put(S.Slide.TILE, (int(click["row"]), int(click["col"])))
    st.rerun()

# -- exports ---------------------------------------------------------------------------------------
ex = st.columns(len(keys))
for i, (col, k, o, p) in enumerate(zip(ex, keys, outs, progs)):
    gj = o / "tiles.geojson"
    if p["complete"] and gj.is_file():
        col.download_button(f"GeoJSON for QuPath: {by_key[k].label}", gj.read_bytes(),
                            file_name=f"{slide_path.stem}-{Path(by_key[k].rel or by_key[k].path.name).name}-tiles.geojson",
                            mime="application/geo+json", key=f"slide.geojson.{i}",
                            help="One polygon per computed tile in level-0 pixels; class = predicted class; "
                                 "measurements = class probabilities, entropy and saliency mass (File > Import).")

# -- tile detail -----------------------------------------------------------------------------------
selected = S.get(S.Slide.TILE)
if not selected or ref_plan is None:
    st.caption("Click a tile in a viewer (once the slide is explained) to see its detail here.")
    st.stop()
row, colx = selected
T, stride_l = int(ref_plan["tile_size"]), int(ref_plan["stride"])
st.subheader(f"Tile row {row}, column {colx}")
with guard("reading the tile"):
    reader = open_slide(slide_path, level=level)
    tile_img = reader.read_region(colx * stride_l, row * stride_l, T, T)
S.init(S.Slide.DETAIL_METHOD, method)
d1, d2 = st.columns([1, 3])
dmethod = d1.selectbox("Attribution method for the detail", list(METHODS), key=S.Slide.DETAIL_METHOD, **S.KEEP)
refs = [cache.ref(by_key[k], sel.device) for k in keys]
panels, rows_metrics, norm_maps = [], [], []
for k, r, m in zip(keys, refs, maps):
    with guard(f"explaining the tile with {by_key[k].label}"):
        probs = cache.probs(r, tile_img)
        target = int(np.argmax(probs))
        a = cache.attribution(r, tile_img, dmethod, target)
        met = cache.tile_metrics(r, tile_img, dmethod, target, None)
        top = float(np.abs(a).max()) or 1.0
        norm_maps.append(a / top)
        panels.append((by_key[k].label, probs, a))
        stored = {}
        if m is not None and np.isfinite(m.result.probs[row, colx, 0]):
            pr = m.result.probs[row, colx]
            total = float(np.nansum(m.tile_saliency))
            stored = {"explain-slide p(pred)": float(pr.max()),
                      "entropy (nats)": float(-(pr * np.log(np.maximum(pr, 1e-30))).sum()),
                      "saliency mass (share of slide)": float(m.tile_saliency[row, colx]) / total if total else None}
        rows_metrics.append({"run": by_key[k].label, "prediction": r.classes[target], "confidence": float(probs.max()),
                             **stored, **{kk: v for kk, v in met.items() if v is not None}})
cols = st.columns(4)
cols[0].image(tile_img, caption=f"tile at level {level} ({T}x{T} px)", width="stretch")
for c, (label, probs, a) in zip(cols[1:3], panels):
    rng = (float(-np.abs(a).max()), float(np.abs(a).max())) if a.min() < 0 else (0.0, float(a.max()) or 1.0)
    c.image(figures.heat_rgb(a, "RdBu_r" if a.min() < 0 else "inferno", *rng), width="stretch",
            caption=f"{label}: {dmethod} map, p = {probs.max():.2f}")
if len(norm_maps) == 2 and norm_maps[0].shape == norm_maps[1].shape:
    diff = norm_maps[1] - norm_maps[0]
    cols[3].image(figures.heat_rgb(diff, "RdBu_r", -1.0, 1.0), width="stretch",
                  caption="change: right minus left (each map / its max; red = more relevance on the right)")
st.dataframe(rows_metrics, hide_index=True)
if st.button("Open this tile in Explore", key=S.Slide.TO_EXPLORE,
             help="Explore opens it as an uploaded image, with every method and metric."):
    S.put(S.Explore.FROM_SLIDE, (tile_img, f"{slide_path.stem}-r{row}-c{colx}.png", []))
    S.put(S.Explore.SOURCE, "upload")
    st.switch_page("pages/explore.py")
