"""Consistency: the background attack of explanation consistency, before/after heatmaps, the score;
for ECE runs, how per-tile consistency evolved over training and the least consistent tiles."""
from __future__ import annotations

import numpy as np
import streamlit as st

from interp_core.viz import figures
from interp_core.attribution import overlay
from interp_core.consistency.history import least_consistent
from interp_core.runs import safe_child
from interp_core.evaluation import tile_analysis as compute
from ui import cache, shell, sidebar, text, widgets
from ui import state as S
from ui.errors import guard, need

shell.leave_legacy_pages_mode()

st.title("Explanation consistency")
st.markdown(text.CONSISTENCY_INTRO)
sel = sidebar.selection()
refs = sidebar.require_loaded_refs(sel)

# -- the tile: the one chosen on Explore, or one picked here ----------------------------------------
shared = S.get(S.Shared.TILE)
tile: widgets.ChosenTile | None = None
c1, c2 = st.columns([1, 3])
if sel.dataset is not None:
    split = widgets.split_picker(S.Consistency.SPLIT, sel.dataset.path, container=c1)
    with guard("opening the dataset"):
        ds = cache.split(str(sel.dataset.path), split)
        default = shared.index if shared is not None and shared.kind == "dataset" and shared.split == split \
            and shared.dataset == sel.dataset.name else 0
        index = widgets.tile_select(S.Consistency.TILE, ds, default=default or 0, container=c2)
        tile = widgets.dataset_tile(sel.dataset.path, sel.dataset.name, split, index)
if shared is not None and shared.kind == "upload":
    if st.toggle(f"Use the image uploaded on Explore ({shared.title})", value=True):
        tile = shared
need(tile is not None, "Choose a dataset in the sidebar, or upload an image on the Explore page.")

c1, c2, c3, c4 = st.columns(4)
S.init(S.Consistency.EPS, 8)
eps255 = c1.slider("Attack strength eps (in 1/255 steps)", 0, 32, key=S.Consistency.EPS,
                   help="The largest change allowed per pixel and colour, in steps of 1/255 of the intensity "
                        "range. 8 is barely visible.", **S.KEEP)
S.init(S.Consistency.STEPS, 3)
steps = c2.slider("Attack steps", 0, 10, key=S.Consistency.STEPS,
                  help="How many times the attack adjusts the perturbation (0: no attack).", **S.KEEP)
S.init(S.Consistency.MEAN_THRESHOLD, False)
use_mean = c4.toggle("Threshold: each tile's mean", key=S.Consistency.MEAN_THRESHOLD,
                     help="Call background every pixel below the tile's mean heatmap value, instead of a fixed "
                          "threshold.", **S.KEEP)
S.init(S.Consistency.THRESHOLD, 0.5)
tau = c3.slider("Background threshold", 0.05, 0.95, key=S.Consistency.THRESHOLD, step=0.05, disabled=use_mean,
                help="Pixels whose heatmap value (0-1) is below this count as background and may be attacked.",
                **S.KEEP)
threshold = "mean" if use_mean else f"{tau:.2f}"

st.subheader(tile.title)
for r, entry in zip(refs, sel.runs):
    with st.container(border=True), guard(f"measuring the consistency of {entry.label}"):
        classes = r.classes
        target = classes.index(tile.label) if tile.label in classes else None
        res = cache.consistency(r, tile.image, target, eps255 / 255.0, steps, threshold)
        h1, h2, h3 = st.columns([2, 1, 1])
        h1.markdown(f"**{entry.label}**  \nExplains **{classes[res.pred if target is None else target]}** "
                    f"({'true class' if target is not None else 'predicted class'}); Grad-CAM heatmap, 0-1.")
        h2.metric("Consistency score", f"{res.score:.3f}", help="Similarity of the heatmaps before and after the "
                  "attack (cosine, 0-1). Higher is better.")
        h3.metric("Prediction changed", "yes" if res.pred_changed else "no",
                  delta=f"{classes[res.pred]} → {classes[res.pred_adv]}" if res.pred_changed else None,
                  delta_color="inverse", delta_arrow="off", help="Did the background attack flip the model's answer?")
        size = res.heatmap.shape[0]
        img = compute.resize_image(tile.image, size)
        amp = 255.0 / res.max_change if res.max_change > 0 else 1.0
        cols = st.columns(5)
        cols[0].image(overlay(img, res.heatmap, cmap="jet", alpha=0.5, vmin=0, vmax=1), width="stretch",
                      caption="heatmap before")
        cols[1].image(compute.background_view(img, res.background), width="stretch",
                      caption=f"background (tinted blue, outlined; {res.background.mean():.0%} of pixels) may change")
        cols[2].image(res.x_adv, width="stretch", caption="after the background attack")
        cols[3].image(res.perturbation, width="stretch",
                      caption=f"the change, amplified ×{amp:.0f} (max {res.max_change:.1f}/255)")
        cols[4].image(overlay(res.x_adv, res.heatmap_adv, cmap="jet", alpha=0.5, vmin=0, vmax=1), width="stretch",
                      caption="heatmap after")

# -- ECE runs: consistency over training ------------------------------------------------------------
st.header("Consistency during ECE training")
ece = [r for r in sel.all_runs if (r.path / "consistency.npz").is_file()
       and (sel.dataset is None or r.dataset == sel.dataset.name)]  # only the selected dataset's runs
if not ece:
    st.info("No model trained with ECE was found for this dataset. ECE training records every tile's consistency at each refresh; "
            "start one on the **Train** page (objective: ECE).")
    st.stop()
chosen = [r.key for r in sel.runs if r in ece]
by_key = {r.key: r for r in ece}
S.init(S.Consistency.ECE_RUN, chosen[0] if chosen else ece[0].key)
key = st.selectbox("ECE model", list(by_key), key=S.Consistency.ECE_RUN, format_func=lambda k: by_key[k].label,
                   **S.KEEP)
run = by_key[key]
with guard("reading the consistency history"):
    hist = cache.consistency_history(run.key, (run.path / "consistency.npz").stat().st_mtime)
    need(hist is not None and len(hist.refresh_epochs) > 0, "This run has no refresh recorded yet.")
    c1, c2 = st.columns([3, 1])
    c1.plotly_chart(figures.consistency_distribution_figure(hist.refresh_epochs, hist.consistency),
                    key="consistency.dist")
    last = hist.consistency[-1]
    c2.metric("Refreshes", len(hist.refresh_epochs))
    c2.metric("Mean consistency, last refresh", f"{float(np.mean(last)):.3f}")
    c2.metric("Tiles below 0.5", int((last < 0.5).sum()))
    w = hist.weights[-1]
    c2.metric("Weights, last refresh", f"{float(w.min()):.2f} to {float(w.max()):.2f}",
              help="ECE's training weights (mean 1): the least consistent tiles get the largest.")
    st.subheader("Least consistent training tiles (last refresh)")
    st.caption("These tiles get the most weight in ECE training: their heatmap changes most when only their "
               "background is disturbed.")
    S.init(S.Consistency.GALLERY_SIZE, 12)
    k = st.slider("How many", 6, 36, key=S.Consistency.GALLERY_SIZE, step=6, **S.KEEP)
    if run.data_path is None or not run.data_path.is_dir():
        st.info("The tiles this model was trained on are not available here as image files, so they cannot be "
                "shown.")
    else:
        cols = st.columns(6)
        classes = run.classes
        for j, i in enumerate(least_consistent(hist, k)):
            sid = hist.sample_ids[i]
            lab = int(hist.labels[i]) if hist.labels is not None and hist.labels[i] >= 0 else None
            with cols[j % 6], guard(f"showing {sid}"):
                img = cache.file_image(str(safe_child(run.data_path, sid)))
                st.image(img, width="stretch",
                         caption=f"E={last[i]:.2f} · weight {hist.weights[-1][i]:.2f}"
                                 + (f" · {classes[lab]}" if lab is not None and lab < len(classes) else ""))

# -- ECE runs on data with a look: consistency per group and the minority AUROC (ui/consistency_groups.py)
from ui import consistency_groups  # noqa: E402

consistency_groups.render(run)
