"""The Slide page's widgets: slide and run pickers, job controls, overlay controls, the linked viewers,
exports and a tile's detail. What to show is computed in ``interp_core.slides.view`` (Streamlit-free);
this module only draws it and keeps the choices in session state."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from interp_core.viz import images
from interp_core.attribution import METHODS
from interp_core.slides.deepzoom import COLORMAPS
from interp_core.slides.roots import SlideAccessError, SlideRoots
from interp_core.errors import InterpError
from interp_core.slides.explain import open_slide
from interp_core.slides.job import job_log_tail, read_progress, results_dir, start_background
from interp_core.slides.maps import assemble
from interp_core.slides.view import (OVERLAY_CMAPS, OVERLAYS, change_map, css_ramp, dataset_for_slide, default_pair,
                                    job_state, native_tile_maps, overlay_scale, overlay_values, stitched_view,
                                    stored_tile_metrics, tile_stride, viewer_grid)
from ui import cache, tile_server
from ui import state as S
from ui.errors import guard, need


@st.cache_resource(show_spinner=False, max_entries=8)
def slide_maps(out: str, pieces_done: int, complete: bool, normalize: str):
    """The maps of a job folder so far (re-read when a piece lands or the job completes); shared, read-only."""
    return assemble(out, normalize=normalize)


@dataclass
class SlideView:
    """The slide the page shows: its path, the tile service's id for it and the slide's description."""
    path: Path
    sid: str
    info: dict[str, Any]
    served: bool


@dataclass
class Jobs:
    """The two viewers' runs and explain-slide folders (left, right)."""
    keys: list[str]
    sizes: list[int]
    level: int
    method: str
    step: str
    outs: list[Path] = field(default_factory=list)
    progs: list[dict[str, Any]] = field(default_factory=list)


def pick_slide() -> SlideView:
    """Slide picker (files under the slide folders) and a typed path; a refused path stops the page
    with its one-line message."""
    roots = SlideRoots.from_env()
    names = [str(p) for p in roots.list_slides()]
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
    return SlideView(slide_path, sid, svc.slide(sid).info(), served)


def pick_runs(sel: Any, slide: SlideView, by_key: dict[str, Any]) -> Jobs:
    """Left/right run (default: the slide's dataset's baseline and SCAAT retrain), saliency method,
    pyramid level and tile step; the job folders and their progress."""
    dataset = dataset_for_slide({r.dataset for r in sel.all_runs if r.dataset}, slide.path)
    pair = default_pair(sel.all_runs, dataset)
    for i, key in enumerate((S.Slide.RUN_A, S.Slide.RUN_B)):
        if S.get(key) not in by_key:
            S.put(key, pair[i])
    c1, c2, c3, c4 = st.columns([2.2, 2.2, 1.4, 1.2])
    run_a = c1.selectbox("Left viewer: run", list(by_key), key=S.Slide.RUN_A, format_func=lambda k: by_key[k].label)
    run_b = c2.selectbox("Right viewer: run", list(by_key), key=S.Slide.RUN_B, format_func=lambda k: by_key[k].label)
    S.init(S.Slide.METHOD, "saliency")
    method = c3.selectbox("Saliency method", list(METHODS), key=S.Slide.METHOD, **S.KEEP,
                          help="Attribution computed for every tile by explain-slide.")
    base_reader = open_slide(slide.path)
    levels = getattr(base_reader, "level_dimensions", [base_reader.size])
    # the options are the labels themselves: with a level index as value, the browser kept showing the
    # previous slide's label ("0 (2560x1920)") after another slide was chosen
    labels = [f"{i} ({w}x{h})" for i, (w, h) in enumerate(levels)]
    if S.get(S.Slide.LEVEL) not in labels:
        S.put(S.Slide.LEVEL, labels[0])
    level = labels.index(c4.selectbox("Level tiled", labels, key=S.Slide.LEVEL, **S.KEEP,
                                      help="Pyramid level cut into model-input tiles: the magnification the "
                                           "model was trained at."))
    keys = [run_a, run_b]
    S.init(S.Slide.STRIDE, "tile")
    step = st.radio("Tile step", ["tile", "half"], key=S.Slide.STRIDE, horizontal=True, **S.KEEP,
                    format_func={"tile": "one tile (no overlap)", "half": "half a tile (overlapping tiles "
                                                                          "averaged)"}.get)
    jobs = Jobs(keys, [int(by_key[k].config.get("image_size", 64)) for k in keys], level, method, step)
    for k, size in zip(keys, jobs.sizes):
        out = results_dir(by_key[k].path, slide.path, level=level, method=method, tile_size=size,
                          stride=tile_stride(size, step))
        jobs.outs.append(out)
        jobs.progs.append(read_progress(out))
    return jobs


def job_controls(jobs: Jobs, slide: SlideView, by_key: dict[str, Any], device: str) -> None:
    """*Explain the slide* (background jobs for the runs without results), the last failed job's
    message, and progress bars that redraw the page as pieces land."""
    missing = [i for i, p in enumerate(jobs.progs) if not p["complete"] and not p["running"]]
    b1, b2 = st.columns([1, 3])
    if missing and b1.button("Explain the slide", key=S.Slide.COMPUTE, type="primary",
                             help="Runs explain-slide for each run in the background (resumable: a stopped job "
                                  "continues where it left off). Results are kept in the run folder and reused by "
                                  "the command."):
        for i in missing:
            start_background(by_key[jobs.keys[i]].path, slide.path, jobs.outs[i], level=jobs.level,
                             method=jobs.method, stride=tile_stride(jobs.sizes[i], jobs.step), device=device)
        S.put(S.Slide.STARTED, time.time())
        st.rerun()
    for i, p in enumerate(jobs.progs):
        if not p["complete"] and not p["running"]:
            tail = job_log_tail(jobs.outs[i])
            if tail:
                b2.warning(f"{by_key[jobs.keys[i]].label}: the last job stopped: {tail.splitlines()[-1]}",
                           icon=":material/error:")

    @st.fragment(run_every=2.0)
    def job_progress() -> None:
        """Progress bars while jobs run; a full rerun when a piece lands (the overlays fill in)."""
        now = [read_progress(o) for o in jobs.outs]
        for i, p in enumerate(now):
            if p["running"] or (p["total"] and not p["complete"]):
                frac = p["done"] / p["total"] if p["total"] else 0.0
                st.progress(frac, text=f"{by_key[jobs.keys[i]].label}: {p['done']:,}/{p['total']:,} tissue tiles"
                                       + (" (running)" if p["running"] else " (stopped: press Explain to resume)"))
        if [(p["done"], p["complete"]) for p in now] != [(p["done"], p["complete"]) for p in jobs.progs]:
            st.rerun()

    just_started = time.time() - S.get(S.Slide.STARTED, 0.0) < 60 and not all(p["complete"] for p in jobs.progs)
    if any(p["running"] for p in jobs.progs) or just_started:
        job_progress()


@dataclass
class OverlayChoice:
    show: str
    normalize: str
    cls: str
    cmap: str
    alpha: float
    classes: list[str]
    maps: list[Any]


def overlay_controls(jobs: Jobs, default_classes: list[str]) -> OverlayChoice:
    """Overlay, saliency scale, class, colour map and opacity; the job folders' maps so far."""
    o1, o2, o3, o4, o5 = st.columns([2, 1.6, 1.6, 1.4, 1.4])
    S.init(S.Slide.SHOW, "saliency")
    show = o1.selectbox("Overlay", list(OVERLAYS), key=S.Slide.SHOW, format_func=OVERLAYS.get, **S.KEEP)
    S.init(S.Slide.NORMALIZE, "slide")
    normalize = o2.selectbox("Saliency scale", ["slide", "tile"], key=S.Slide.NORMALIZE, **S.KEEP,
                             format_func={"slide": "slide-wide (one scale)", "tile": "per tile (own max)"}.get,
                             help="Slide-wide: one scale for every tile, no seams, tiles the model relies on more "
                                  "stand out. Per tile: each tile's own pattern, seams between tiles.")
    maps = []
    for o, p in zip(jobs.outs, jobs.progs):
        m = None
        if p["done"] or p["complete"]:
            with guard(f"reading {o.name}"):
                m = slide_maps(str(o), int(p["done"]), bool(p["complete"]), normalize)
        maps.append(m)
    classes = next((m.result.classes for m in maps if m is not None), default_classes)
    if S.get(S.Slide.CLASS) not in classes:
        S.put(S.Slide.CLASS, "tumor" if "tumor" in classes else classes[-1])
    cls = o3.selectbox("Class", classes, key=S.Slide.CLASS, disabled=show != "probability")
    if S.get(S.Slide.CMAP) not in COLORMAPS or S.get(S.Slide.CMAP_FOR) != show:
        S.put(S.Slide.CMAP, OVERLAY_CMAPS.get(show, "inferno"))
        S.put(S.Slide.CMAP_FOR, show)
    cmap = o4.selectbox("Colour map", list(COLORMAPS), key=S.Slide.CMAP)
    S.init(S.Slide.ALPHA, 0.5)
    alpha = o5.slider("Opacity", 0.0, 1.0, key=S.Slide.ALPHA, step=0.05, **S.KEEP)
    return OverlayChoice(show, normalize, cls, cmap, alpha, list(classes), maps)


def linked_viewers(slide: SlideView, jobs: Jobs, ov: OverlayChoice, by_key: dict[str, Any]) -> dict | None:
    """Register the overlays, draw the two linked viewers, record a clicked tile; returns the grid
    (level-0 pixels) of the results, None before any."""
    svc = tile_server.service()
    values = [overlay_values(m, ov.show, ov.cls, ov.normalize) for m in ov.maps]
    vmin, vmax, label = overlay_scale(values, ov.show, ov.normalize, ov.classes, ov.cls)
    oids = []
    for v, m in zip(values, ov.maps):
        if v is None:
            oids.append(None)
            continue
        native = native_tile_maps(m, ov.normalize) if ov.show == "saliency" else None
        oids.append(svc.register_overlay(slide.sid, v, float(m.plan["level_downsample"]) * int(m.plan["downsample"]),
                                         vmin=vmin, vmax=vmax, cmap=ov.cmap, native=native))
    ref_plan = next((m.plan for m in ov.maps if m is not None), None)
    grid = viewer_grid(ref_plan)
    titles = [f"{by_key[k].label} · {job_state(p)}" for k, p in zip(jobs.keys, jobs.progs)]
    selected = S.get(S.Slide.TILE)
    unavailable = viewer_unavailable(slide)
    if unavailable:
        st.warning(f"The deep-zoom viewer is unavailable: {unavailable}. Showing the stitched maps instead (no deep "
                   "zoom; pick a tile's row and column below for its detail).", icon=":material/warning:")
        for c, t, v, m in zip(st.columns(len(titles)), titles, values, ov.maps):
            c.image(stitched_view(slide.path, m, v, vmin, vmax, ov.cmap, ov.alpha), caption=t, width="stretch")
        st.caption(f"Colour scale: {label}, {vmin:.3g} to {vmax:.3g}.")
        if grid:
            r1, r2, _ = st.columns([1, 1, 4])
            row = r1.number_input("Tile row", 0, int(grid["rows"]) - 1, key=S.Slide.FALLBACK_ROW)
            col = r2.number_input("Tile column", 0, int(grid["cols"]) - 1, key=S.Slide.FALLBACK_COL)
            if st.button("Show this tile", key=S.Slide.FALLBACK_SHOW):
                S.put(S.Slide.TILE, (int(row), int(col)))
        caption(slide)
        return ref_plan
    click = tile_server.viewer(
        {"base": tile_server.url_prefix(), "slide": {**slide.info, "id": slide.sid},
         "panes": [{"title": t, "overlay": o} for t, o in zip(titles, oids)], "opacity": ov.alpha,
         "legend": {"ramp": css_ramp(ov.cmap), "vmin": f"{vmin:.3g}", "vmax": f"{vmax:.3g}", "label": label},
         "grid": grid, "selected": list(selected) if selected else None, "height": 540},
        key=S.Slide.VIEWER)
    caption(slide)
    if isinstance(click, dict) and grid and click.get("n") != S.get(S.Slide.CLICK_N):
        S.put(S.Slide.CLICK_N, click.get("n"))
        S.put(S.Slide.TILE, (int(click["row"]), int(click["col"])))
        st.rerun()
    return ref_plan


def caption(slide: SlideView) -> None:
    info = slide.info
    mpp = f"{info['mpp']:.3g} µm/px" if info["mpp"] else "no microns-per-pixel in the file"
    st.caption(f"{slide.path.name}: {info['width']:,}x{info['height']:,} px at level 0, {mpp}; Deep Zoom tiles are "
               f"made when the viewer asks for them and cached. Both viewers use the same colour scale.")


def viewer_unavailable(slide: SlideView) -> str:
    """Why the deep-zoom viewer cannot work in this session ("" when it can)."""
    if not tile_server.viewer_installed():
        return "OpenSeadragon is not installed (run `make viewer` once: npm)"
    if not slide.served:
        return (f"the tile route could not be added to this Streamlit server ({tile_server.FAILURE or 'not mounted'}); "
                "start the app with `make app` (`streamlit run serve.py`)")
    return ""


def exports(slide: SlideView, jobs: Jobs, by_key: dict[str, Any]) -> None:
    """A GeoJSON download per finished run."""
    for i, (col, k, o, p) in enumerate(zip(st.columns(len(jobs.keys)), jobs.keys, jobs.outs, jobs.progs)):
        gj = o / "tiles.geojson"
        if p["complete"] and gj.is_file():
            name = Path(by_key[k].rel or by_key[k].path.name).name
            col.download_button(f"GeoJSON for QuPath: {by_key[k].label}", gj.read_bytes(),
                                file_name=f"{slide.path.stem}-{name}-tiles.geojson",
                                mime="application/geo+json", key=f"slide.geojson.{i}",
                                help="One polygon per computed tile in level-0 pixels; class = predicted class; "
                                     "measurements = class probabilities, entropy and saliency mass (File > Import).")


def tile_detail(slide: SlideView, jobs: Jobs, ov: OverlayChoice, ref_plan: dict | None, by_key: dict[str, Any],
                device: str) -> None:
    """The clicked tile at full resolution, both runs' predictions and maps (any method), the change
    view, the per-tile metrics and a button to open it in Explore."""
    selected = S.get(S.Slide.TILE)
    if not selected or ref_plan is None:
        st.caption("Click a tile in a viewer (once the slide is explained) to see its detail here.")
        return
    row, colx = selected
    T, stride_l = int(ref_plan["tile_size"]), int(ref_plan["stride"])
    st.subheader(f"Tile row {row}, column {colx}")
    with guard("reading the tile"):
        reader = open_slide(slide.path, level=jobs.level)
        tile_img = reader.read_region(colx * stride_l, row * stride_l, T, T)
    S.init(S.Slide.DETAIL_METHOD, jobs.method)
    d1, _ = st.columns([1, 3])
    dmethod = d1.selectbox("Attribution method for the detail", list(METHODS), key=S.Slide.DETAIL_METHOD, **S.KEEP)
    refs = [cache.ref(by_key[k], device) for k in jobs.keys]
    panels, rows_metrics = [], []
    for k, r, m in zip(jobs.keys, refs, ov.maps):
        with guard(f"explaining the tile with {by_key[k].label}"):
            probs = cache.probs(r, tile_img)
            target = int(np.argmax(probs))
            a = cache.attribution(r, tile_img, dmethod, target)
            met = cache.tile_metrics(r, tile_img, dmethod, target, None)
            panels.append((by_key[k].label, probs, a))
            rows_metrics.append({"run": by_key[k].label, "prediction": r.classes[target],
                                 "confidence": float(probs.max()), **stored_tile_metrics(m, row, colx),
                                 **{kk: v for kk, v in met.items() if v is not None}})
    cols = st.columns(4)
    cols[0].image(tile_img, caption=f"tile at level {jobs.level} ({T}x{T} px)", width="stretch")
    for c, (label, probs, a) in zip(cols[1:3], panels):
        rng = (float(-np.abs(a).max()), float(np.abs(a).max())) if a.min() < 0 else (0.0, float(a.max()) or 1.0)
        c.image(images.heat_rgb(a, "RdBu_r" if a.min() < 0 else "inferno", *rng), width="stretch",
                caption=f"{label}: {dmethod} map, p = {probs.max():.2f}")
    diff = change_map(panels[0][2], panels[1][2]) if len(panels) == 2 else None
    if diff is not None:
        cols[3].image(images.heat_rgb(diff, "RdBu_r", -1.0, 1.0), width="stretch",
                      caption="change: right minus left (each map / its max; red = more relevance on the right)")
    st.dataframe(rows_metrics, hide_index=True)
    if st.button("Open this tile in Explore", key=S.Slide.TO_EXPLORE,
                 help="Explore opens it as an uploaded image, with every method and metric."):
        S.put(S.Explore.FROM_SLIDE, (tile_img, f"{slide.path.stem}-r{row}-c{colx}.png", []))
        S.put(S.Explore.SOURCE, "upload")
        st.switch_page("pages/explore.py")
