"""Explore: one tile, several models side by side, one or more attribution methods."""
from __future__ import annotations

import numpy as np
import streamlit as st

from interp_core.viz import images
from interp_core.attribution import COLORMAPS, METHODS, draw_contour, mask_contour, overlay, shared_range
from interp_core.evaluation.verdict import default_reference, share_lines
from interp_core.evaluation import tile_analysis as compute
from ui import cache, shell, sidebar, text, widgets
from ui import state as S
from ui import verdict as uiv
from ui.errors import guard, need

shell.leave_legacy_pages_mode()


def _pad_to(img: np.ndarray, height: int) -> np.ndarray:
    """``img`` padded with white rows (or cut) to ``height``."""
    if img.shape[0] >= height:
        return img[:height]
    return np.vstack([img, np.full((height - img.shape[0], *img.shape[1:]), 255, np.uint8)])


st.title("Explore a tile")
st.markdown(text.WHAT_IS_SALIENCY)
sel = sidebar.selection()
refs = sidebar.require_loaded_refs(sel)
if len(refs) == 1:
    st.info("Only one model is chosen. Add a second one in the sidebar to compare them side by side.")
size0 = refs[0].image_size

# -- the image -------------------------------------------------------------------------------
S.init(S.Explore.SOURCE, "dataset" if sel.dataset else "upload")
source = st.segmented_control("Image", ["dataset", "upload"], key=S.Explore.SOURCE, required=True,
                              format_func={"dataset": "Tile from the dataset", "upload": "Upload an image"}.get,
                              **S.KEEP)
tile: widgets.ChosenTile | None = None
if source == "dataset":
    need(sel.dataset is not None, text.NO_DATASET)
    path = sel.dataset.path
    c1, c2, c3, c4 = st.columns([1, 2, 1, 2])
    split = widgets.split_picker(S.Explore.SPLIT, path, container=c1)
    with guard("opening the dataset"):
        ds = cache.split(str(path), split)
        if not set(S.get(S.Explore.CLASSES, ["?"])) <= set(ds.classes):
            S.put(S.Explore.CLASSES, list(ds.classes))
        classes = c2.multiselect("Classes", ds.classes, key=S.Explore.CLASSES, **S.KEEP)
        S.init(S.Explore.CORRECTNESS, "all")
        correctness = c3.selectbox("Prediction", ["all", "correct", "wrong"], key=S.Explore.CORRECTNESS,
                                   help=f"Right or wrong according to {sel.runs[0].label}.", **S.KEEP)
        S.init(S.Explore.CONFIDENCE, (0.0, 1.0))
        conf = c4.slider("Confidence of the prediction", 0.0, 1.0, key=S.Explore.CONFIDENCE, step=0.05, **S.KEEP)
        probs_split = cache.split_predictions(refs[0], str(path), split) if refs[0].classes == ds.classes else None
        S.init(S.Explore.TILE, 0)
        matching = widgets.filter_tiles(ds, classes, correctness, conf, probs_split)
        widgets.follow_filter(S.Explore.TILE, matching)  # a filter that hides the tile shown moves to a match
        with st.expander("Tile gallery", expanded=True):
            widgets.gallery(path, ds, matching,
                            tile_key=S.Explore.TILE, page_key=S.Explore.PAGE, probs=probs_split,
                            classes_of_probs=ds.classes, model_label=sel.runs[0].label)
        index = widgets.tile_select(S.Explore.TILE, ds, label="Tile shown")
        tile = widgets.dataset_tile(path, sel.dataset.name, split, index)
        if not ds.has_masks:
            st.caption("This dataset has no evidence masks, so the pointing game cannot be scored.")
else:
    with guard("reading the upload"):
        up = widgets.upload_picker(S.Explore.UPLOAD)
        if up is None and S.get(S.Explore.FROM_SLIDE) is not None:  # a tile opened from the Slide page
            up = S.get(S.Explore.FROM_SLIDE)
        if up is None:
            st.info("Upload a PNG, JPEG or TIFF image of tissue. Large images are cut into tiles of the "
                    f"model's input size ({size0}x{size0} pixels); small ones are resized.")
        else:
            tile = widgets.fitted_upload_tile(up[0], up[1], size0, mode_key=S.Explore.FIT_MODE,
                                              tile_key=S.Explore.UPLOAD_TILE)
if tile is None:
    st.stop()
S.put(S.Shared.TILE, tile)

# -- methods and display -----------------------------------------------------------------------
c1, c2, c3, c4, c5 = st.columns([3, 2, 2, 1.5, 1.5])
S.init(S.Explore.METHODS, ["saliency", "gradcam"])
methods = c1.multiselect("Attribution methods", list(METHODS), key=S.Explore.METHODS,
                         help="\n".join(f"- **{k}**: {v.description} ({v.cost})" for k, v in METHODS.items()), **S.KEEP)
S.init(S.Explore.ALPHA, 0.5)
alpha = c2.slider("Heatmap opacity", 0.0, 1.0, key=S.Explore.ALPHA, step=0.05, **S.KEEP)
S.init(S.Explore.CLIP, 99.0)
clip = c3.slider("Clip at percentile", 90.0, 100.0, key=S.Explore.CLIP, step=0.5,
                 help="Values above this percentile get the top colour, so a few extreme pixels do not wash "
                      "out the rest. The colour scale is shared by all models of a row.", **S.KEEP)
S.init(S.Explore.CMAP, "jet")
cmap = c4.selectbox("Colours", list(COLORMAPS), key=S.Explore.CMAP, **S.KEEP)
classes0 = refs[0].classes
reference = uiv.reference_picker(S.Explore.REFERENCE, sel.runs, container=st.columns([2, 3])[0])
ref_i = next((i for i, e in enumerate(sel.runs) if reference is not None and e.key == reference.key), 0)
ref_is_parent = reference is not None and reference.key == default_reference({e.key: e.config for e in sel.runs})
S.init(S.Explore.TARGET, "predicted")
target_choice = c5.selectbox("Explain class", ["predicted", *classes0], key=S.Explore.TARGET,
                             help="Explain each model's own prediction, or the same class for every model.", **S.KEEP)
need(bool(methods), "Choose at least one attribution method.")
cam_layer = None
if "gradcam" in methods:  # Grad-CAM's layer, by module name; a model without that name keeps its own
    layer_names = list(dict.fromkeys(n for r in refs for n in cache.cam_layers(r)))
    S.init(S.Explore.CAM_LAYER, "")
    cam_layer = st.selectbox("Grad-CAM layer", ["", *layer_names], key=S.Explore.CAM_LAYER,
                             format_func=lambda n: n or "automatic (last spatial feature map)", **S.KEEP) or None
    lacking = [e.label for r, e in zip(refs, sel.runs) if cam_layer and cam_layer not in cache.cam_layers(r)]
    if lacking:
        st.caption(f"No module `{cam_layer}` in {', '.join(lacking)}: Grad-CAM uses its automatic layer there.")

# -- predictions ---------------------------------------------------------------------------------
st.subheader(tile.title)
cols = st.columns(len(refs) + 1)
has_evidence = tile.mask is not None and bool(tile.mask.any())
cols[0].image(tile.image, caption="the tile" + (" (white outline on the maps: evidence)" if has_evidence else ""),
              width="stretch")
targets: list[int] = []
for r, entry, col in zip(refs, sel.runs, cols[1:]):
    with col, guard(f"predicting with {entry.label}"):
        classes = r.classes
        p = cache.probs(r, tile.image)
        k = int(np.argmax(p))
        mark = "" if tile.label is None else (" :green[correct]" if classes[k] == tile.label else " :red[wrong]")
        st.markdown(f"**{entry.label}**  \nPrediction: **{classes[k]}** ({p[k]:.0%}){mark}")
        for name, v in zip(classes, p):
            st.progress(float(v), text=f"{name}: {v:.1%}")
        t = k if target_choice == "predicted" or target_choice not in classes else classes.index(target_choice)
        targets.append(t)
need(len(targets) == len(refs), "A model could not predict this tile; see the message above.")

# -- overlays, one row per method, shared colour scale per row; the metrics fill in afterwards -------
S.init(S.Explore.METRICS, True)
show_metrics = st.toggle("Per-tile metrics under each map", key=S.Explore.METRICS,
                         help="\n\n".join(text.METRIC_HELP[k] for k in ("sparseness", "deletion_auc", "pointing_game"))
                         + f"\n\nDeletion is estimated with {compute.TILE_DELETION_STEPS} steps here.", **S.KEEP)
has_artifact = tile.artifact is not None and bool(tile.artifact.any())
others = [i for i in range(len(refs)) if i != ref_i] if len(refs) > 1 else []
st.caption("Colour scale (**share of the row's maximum**): the maps of a row share one scale, in shares of the row's largest "
           "value (1 = the strongest pixel of any model in the row); values above the clip percentile get the top "
           "colour.")
if others:
    why = " (the model the others were retrained from)" if ref_is_parent else " (the reference chosen above)"
    st.caption(f"**Change** columns: each other model's map minus {sel.runs[ref_i].label}'s{why}, both as a share "
               "of their own maximum, on a scale centred on 0: red where the new map puts more weight, blue where "
               "it puts less, white where nothing changed.")
for method in methods:
    if method in compute.METHOD_NOTES:
        st.caption(f":material/info: {compute.METHOD_NOTES[method]}")
rows, labels, bars, pending = [], [], [], []
tile_row = [images.Panel(tile.image, "tile", f"true: {tile.label}" if tile.label else "")]
for r, entry, t in zip(refs, sel.runs, targets):
    p = cache.probs(r, tile.image)
    k = int(np.argmax(p))
    tile_row.append(images.Panel(tile.image, entry.label, "\n".join(
        f"{c}: {v:.1%}" + (" (predicted)" if j == k else "") for j, (c, v) in enumerate(zip(r.classes, p)))))
for method in methods:
    with guard(f"computing {method}"):
        layer = cam_layer if method == "gradcam" else None
        maps = [compute.map_at(cache.attribution(r, tile.image, method, t, layer), tile.image.shape[:2])
                for r, t in zip(refs, targets)]
        top = max(float(np.abs(a).max(initial=0.0)) for a in maps) or 1.0
        maps_n = [a / top for a in maps]  # shares of the row's largest value, so the colour bar reads 0-1
        vmin, vmax = shared_range(maps_n, clip)
        st.markdown(f"#### {method}  \n:gray[{METHODS[method].description}]")
        cols = st.columns([4] * len(refs) + [4] * len(others) + [2.4] * (2 if others else 1))
        row = []
        for r, entry, t, a, col in zip(refs, sel.runs, targets, maps_n, cols):
            size = a.shape[0]
            img = compute.resize_image(tile.image, size)
            mask = compute.resize_mask(tile.mask, size) if has_evidence else None
            ov = overlay(img, a, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax, mask=mask)
            art = compute.resize_mask(tile.artifact, size) if has_artifact else None
            if art is not None:
                ov = draw_contour(ov, mask_contour(art), (0, 255, 255))
            share = compute.relevance_shares(a, tile.mask, tile.artifact)
            where = " · ".join(f"{v:.0%} {w}" for w, v in (("inside the evidence", share["evidence"]),
                                                          ("on the artifact", share["artifact"])) if v is not None)
            col.image(ov, caption=f"{entry.label} · explains {r.classes[t]}", width="stretch")
            if where:
                col.caption(f"Relevance {where}")
            panel = images.Panel(ov, entry.label, share_lines(share))
            pending.append((col.empty(), panel, r, method, t))
            row.append(panel)
        bar = images.colorbar_png_array(cmap, vmin, vmax, label="share of row max", length=200)
        cols[len(refs) + len(others)].image(bar, caption="share of the row's maximum")
        diffs = [compute.change_map(maps[i], maps[ref_i]) for i in others]
        lim = max([float(np.abs(d).max(initial=0.0)) for d in diffs] + [1e-6])  # one scale per row, centred on 0
        for j, (i, d) in enumerate(zip(others, diffs)):
            size = d.shape[0]
            img = compute.resize_image(tile.image, size)
            ch = overlay(img, d, cmap="RdBu_r", alpha=max(alpha, 0.7), vmin=-lim, vmax=lim)
            name = sel.runs[i].label.split(" / ")[-1]
            cols[len(refs) + j].image(ch, caption=f"change: {name} - {sel.runs[ref_i].label.split(' / ')[-1]}",
                                      width="stretch")
            row.append(images.Panel(ch, f"change {name}", f"red: more weight\nblue: less (±{lim:.2f})"))
        cbar = None
        if others:
            cbar = images.colorbar_png_array("RdBu_r", -lim, lim, label="change", length=200)
            cols[-1].image(cbar, caption="change")
        rows.append(row)
        labels.append(method)
        bars.append(bar if cbar is None else np.hstack([bar, np.full((bar.shape[0], 6, 3), 255, np.uint8),
                                                        _pad_to(cbar, bar.shape[0])]))
if has_artifact:
    st.caption("Cyan outline: the artifact (e.g. a pen mark) marked in the dataset; a good map puts little there.")

for slot, panel, r, method, t in pending if show_metrics else []:
    with slot.container(), guard(f"scoring {method}"):
        m = cache.tile_metrics(r, tile.image, method, t, tile.mask, cam_layer if method == "gradcam" else None)
        pg = m["pointing_game"]
        pg_text = ("n/a (no evidence marked)" if tile.mask is not None else "n/a (no mask)") if pg is None \
            else ("hit" if pg >= 0.5 else "miss")
        st.caption(f"Sparseness **{m['sparseness']:.3f}** ↑ · Deletion AUC **{m['deletion_auc']:.3f}** ↓ · "
                   f"Pointing game **{pg_text}**")
        panel.caption = "\n".join(x for x in (panel.caption, f"sparseness {m['sparseness']:.3f}",
                                               f"deletion AUC {m['deletion_auc']:.3f}", f"pointing game {pg_text}")
                                   if x)

if rows:
    with guard("building the PNG"):
        png = images.compose_png([tile_row, *rows], row_labels=["predictions", *labels], colorbars=[None, *bars],
                                  title=" · ".join([tile.title, *(["white outline: evidence"] if has_evidence else []),
                                                    *(["cyan outline: artifact"] if has_artifact else [])]))
        st.download_button("Download this figure (PNG)", png, file_name="explore.png", mime="image/png",
                           icon=":material/download:", on_click="ignore")
