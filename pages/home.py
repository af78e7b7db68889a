"""Home: what the tool does, the device in use, what was found on disk, a one-click guided example."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from interp_core import catalog

from ui import byom, cache, shell, sidebar, text
from ui import state as S
from ui.errors import guard

shell.leave_legacy_pages_mode()

sel = sidebar.selection()


def _start_guided() -> None:
    """Button callback (runs before the rerun, so it may set the sidebar's widget values)."""
    try:
        _prepare_guided()
    except Exception as e:  # noqa: BLE001 - shown as a message on the rerun
        S.put(S.Home.GUIDED, f"error: {e}")


def _prepare_guided() -> None:
    ds = next((d for d in sel.datasets if d.name == "synthetic-he"), None) or next(
        (d for d in sel.datasets if "tumor" in cache.dataset_summary(str(d.path))["classes"]), None)
    if ds is None:
        S.put(S.Home.GUIDED, "no-data")
        return
    classes = cache.dataset_summary(str(ds.path))["classes"]
    runs = catalog.compatible_runs(sel.all_runs, classes, ds.name)
    base = next((r for r in runs if r.objective == "erm" and r.dataset == ds.name), None)
    scaat = next((r for r in runs if r.objective == "scaat" and r.dataset == ds.name), None)
    if base is None or scaat is None:
        S.put(S.Home.GUIDED, "no-runs")
        return
    S.put(S.Sidebar.DATASET, ds.name)
    S.put(S.Sidebar.RUNS, [base.key, scaat.key])
    S.put(S.Sidebar.RUNS_FOR, ds.name)
    split = "test"
    data = cache.split(str(ds.path), split)
    probs = cache.split_predictions(cache.ref(base, S.get(S.Sidebar.DEVICE, "auto")), str(ds.path), split)
    tumor = data.classes.index("tumor") if "tumor" in data.classes else len(data.classes) - 1
    candidates = [i for i, lab in enumerate(data.labels) if lab == tumor]
    right = [i for i in candidates if int(np.argmax(probs[i])) == tumor]
    pick = max(right or candidates or [0], key=lambda i: float(probs[i][tumor]))
    for key, value in ((S.Explore.SOURCE, "dataset"), (S.Explore.SPLIT, split), (S.Explore.TILE, pick),
                       (S.Explore.CLASSES, list(data.classes)), (S.Explore.CORRECTNESS, "all"),
                       (S.Explore.CONFIDENCE, (0.0, 1.0)), (S.Explore.METHODS, ["saliency", "gradcam"]),
                       (S.Explore.TARGET, "predicted"), (S.Explore.PAGE, 1)):
        S.put(key, value)
    S.put(S.Home.GUIDED, "go")


st.title("Saliency explorer for pathology models")
st.markdown(text.WHAT_THE_TOOL_DOES)
st.markdown(text.WHAT_IS_SALIENCY)

gpu = sel.device_label.startswith(("cuda", "mps"))
c1, c2, c3 = st.columns(3)
c1.metric("Computing on", "GPU" if gpu else "CPU", help=sel.device_label)
c1.caption(sel.device_label if gpu else f"{sel.device_label}. No GPU in use: fine for the shipped small models; "
           "training and slides are faster on a GPU.")
c2.metric("Datasets found", len(sel.datasets))
c3.metric("Trained models found", len(sel.all_runs))

st.subheader("Guided example")
st.markdown("One click opens **Explore** on a tumour tile and shows the baseline model next to its SCAAT retrain, "
            "with two kinds of saliency map side by side.")
st.button("Show me: a tumour tile, baseline vs SCAAT", type="primary", icon=":material/play_arrow:",
          on_click=_start_guided, key=S.Home.GUIDED + ".button")
status = S.get(S.Home.GUIDED)
if status == "go":
    S.put(S.Home.GUIDED, None)
    st.switch_page("pages/explore.py")
elif status == "no-data":
    st.warning("The guided example needs the shipped `synthetic-he` dataset, which was not found.")
elif isinstance(status, str) and status.startswith("error: "):
    st.error(f"The guided example could not start: {status[7:]}")
elif status == "no-runs":
    st.warning("The guided example needs a baseline (ERM) and a SCAAT model trained on `synthetic-he`. "
               "Train them on the **Train** page, or restore `sample_data/runs/`.")

with guard("reading the shipped SCAAT evaluation"):
    sentence = cache.shipped_scaat_effect(sel)
    if sentence:
        st.markdown(sentence)

st.subheader("Datasets")
if not sel.datasets:
    st.info(text.NO_DATASET)
else:
    with guard("listing the datasets"):
        rows = []
        for d in sel.datasets:
            s = cache.dataset_summary(str(d.path))
            rows.append({"dataset": d.label, "classes": ", ".join(s["classes"]),
                         **{f"{k} tiles": s["splits"].get(k) for k in ("train", "val", "test")},
                         "evidence masks": "yes" if s["masks"] else "no", "groups": "yes" if s["groups"] else "no",
                         "about": d.description})
        st.dataframe(pd.DataFrame(rows), hide_index=True)

st.subheader("Trained models")
if not sel.all_runs:
    st.info(text.NO_RUNS)
else:
    with guard("listing the models"):
        st.dataframe(pd.DataFrame([catalog.run_summary_row(r) for r in sel.all_runs]), hide_index=True)
        st.caption("Shipped models live in `sample_data/runs/`; the ones you train go to `runs/`.")

st.subheader("Add your model")
st.markdown("Any **timm** or **torchvision** classifier with your own weights (`.safetensors`, or a PyTorch "
            "state dict `.pt`/`.pth`/`.bin`, read without running any code). Nothing is downloaded. The model then "
            "appears in every page, and the Train page can fine-tune it with SCAAT, SGT or ECE.")
with st.form(S.Home.IMPORT + ".form"):
    k = S.Home.IMPORT
    f1, f2 = st.columns(2)
    arch = f1.text_input("Architecture", placeholder="timm/resnet50", key=k + ".arch",
                         help="timm/NAME or torchvision/NAME, e.g. " + ", ".join(byom.EXAMPLES))
    run_name = f2.text_input("Name of the new model", placeholder="my-resnet50", key=k + ".name")
    upload = st.file_uploader("Weights file", type=["safetensors", "pt", "pth", "bin", "ckpt"], key=k + ".upload")
    wpath = st.text_input("...or the weights file's path on this machine", key=k + ".path",
                          help="For files larger than the upload limit shown above.")
    classes_text = st.text_input("Class names, in the order of the model's outputs (comma-separated)",
                                 placeholder="normal, tumor", key=k + ".classes")
    g1, g2, g3, g4 = st.columns(4)
    size = g1.number_input("Input size (px; 0: the architecture's)", 0, 4096, 0, key=k + ".size")
    mean_text = g2.text_input("Mean (optional)", placeholder="0.485 0.456 0.406", key=k + ".mean")
    std_text = g3.text_input("Std (optional)", placeholder="0.229 0.224 0.225", key=k + ".std")
    interp = g4.selectbox("Resize tiles with", ["", "bilinear", "bicubic", "nearest"], key=k + ".interp",
                          format_func=lambda v: v or "the architecture's")
    if st.form_submit_button("Add model", icon=":material/add:"):
        with guard("adding your model"), st.spinner("Building the model and loading the weights..."):
            info = byom.import_from_form(name=run_name, arch=arch, classes=classes_text, weights_path=wpath,
                                         upload_name=upload.name if upload else "",
                                         upload_bytes=upload.getvalue() if upload else None,
                                         image_size=int(size), mean=mean_text, std=std_text, interpolation=interp)
            S.put(k, info)
            cache.runs.clear()
            st.rerun()
added = S.get(S.Home.IMPORT)
if isinstance(added, dict):
    st.success(f"Added **{Path(added['run']).name}** ({added['arch']}, {added['image_size']} px, "
               f"{added['interpolation']} resizing; Grad-CAM layer `{added['cam_layer']}`). It is listed under "
               "Trained models and selectable in the sidebar.")
    for note in added.get("notes", []):
        st.info(note)

st.subheader("Pages")
st.markdown(
    "- **Explore**: one tile, models side by side, their predictions and saliency maps.\n"
    "- **Consistency**: does the heatmap survive a harmful change to the background?\n"
    "- **Metrics**: accuracy and map quality over a whole dataset, with charts.\n"
    "- **Train**: retrain a model (SCAAT, ECE, SGT or plain) in the background.\n"
    "- **Slide**: a large image cut into tiles, with a map of predictions and saliency.\n"
    "- **Report**: a self-contained HTML report to share.")
