"""The shared sidebar: dataset, runs (models) and compute device, drawn once by ``app.py``.

Pages read the resolved choice with ``selection()``; the widgets' values live under
``ui.state.Sidebar`` keys so Home's guided example can set them before switching page.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st
import torch

from interp_core.errors import InterpError

from interp_core import catalog

from . import cache, text
from . import state as S
from .errors import need


@dataclass
class Selection:
    """The sidebar's choice for this script run."""

    dataset: catalog.DatasetEntry | None
    runs: list[catalog.RunEntry]
    device: str
    device_label: str
    datasets: list[catalog.DatasetEntry] = field(default_factory=list)
    all_runs: list[catalog.RunEntry] = field(default_factory=list)
    compatible: list[catalog.RunEntry] = field(default_factory=list)

    def refs(self) -> list[cache.ModelRef]:
        """The chosen runs as cached-model references on the chosen device."""
        return [cache.ref(r, self.device) for r in self.runs]


def available_devices() -> list[str]:
    """``auto`` plus the devices this machine has."""
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


_DEVICE_NAMES = {"auto": "Automatic (GPU if present)", "cpu": "CPU", "cuda": "NVIDIA GPU (CUDA)",
                 "mps": "Apple GPU (MPS)"}


def _device_block() -> tuple[str, str]:
    S.init(S.Sidebar.DEVICE, "auto")
    name = st.sidebar.selectbox("Compute device", available_devices(), key=S.Sidebar.DEVICE,
                                format_func=lambda d: _DEVICE_NAMES.get(d, d),
                                help="Where the models run. Automatic uses a GPU when there is one.")
    try:
        label = cache.device_description(name)
    except InterpError as e:
        st.sidebar.error(str(e))
        name, label = "cpu", cache.device_description("cpu")
    gpu = label.startswith(("cuda", "mps"))
    st.sidebar.caption(f"{':material/memory:' if gpu else ':material/computer:'} Running on **{label}**"
                       + ("" if gpu else " — no GPU in use; the small shipped models are fast enough on a CPU."))
    return name, label


def draw() -> Selection:
    """Draw the sidebar and store the resolved ``Selection`` for the page."""
    datasets = cache.datasets()
    all_runs = cache.runs()
    st.sidebar.markdown("### What to look at")
    dataset = None
    if not datasets:
        st.sidebar.warning("No dataset found. Put one in `sample_data/data/` or `data/` "
                           "(folders `train/`, `val/`, `test/` with one sub-folder per class).")
    else:
        names = [d.name for d in datasets]
        S.init(S.Sidebar.DATASET, "synthetic-he" if "synthetic-he" in names else names[0])
        if st.session_state[S.Sidebar.DATASET] not in names:
            st.session_state[S.Sidebar.DATASET] = names[0]
        by_name = {d.name: d for d in datasets}
        chosen = st.sidebar.selectbox("Dataset", names, key=S.Sidebar.DATASET,
                                      format_func=lambda n: by_name[n].label,
                                      help="The tiles to look at and to compute metrics on.")
        dataset = by_name[chosen]

    compatible: list[catalog.RunEntry] = []
    runs: list[catalog.RunEntry] = []
    if dataset is not None:
        summary = cache.dataset_summary(str(dataset.path))
        compatible = catalog.compatible_runs(all_runs, summary["classes"], dataset.name) if summary["classes"] \
            else [r for r in all_runs if r.dataset == dataset.name]
        keys = [r.key for r in compatible]
        by_key = {r.key: r for r in compatible}
        if S.get(S.Sidebar.RUNS_FOR) != dataset.name or S.Sidebar.RUNS not in st.session_state:
            st.session_state[S.Sidebar.RUNS] = [r.key for r in catalog.default_runs(compatible, dataset.name)]
            S.put(S.Sidebar.RUNS_FOR, dataset.name)
        else:  # drop runs that disappeared (deleted, or a failed job)
            st.session_state[S.Sidebar.RUNS] = [k for k in st.session_state[S.Sidebar.RUNS] if k in by_key]
        if not compatible:
            st.sidebar.warning(f"No trained model for **{dataset.name}** yet. Start one on the **Train** page.")
        chosen_keys = st.sidebar.multiselect(
            "Models to compare", keys, key=S.Sidebar.RUNS,
            format_func=lambda k: catalog.picker_label(by_key[k], dataset.name),
            help="Trained runs whose classes match the dataset. Pick two or more to compare them side by "
                 "side, e.g. the baseline and its SCAAT and ECE retrains.")
        runs = [by_key[k] for k in chosen_keys if k in by_key]
        # chips show the whole run name (wrapping) instead of cutting it where names differ
        st.html("<style>[data-testid='stSidebar'] [data-tag]{max-width:100%;height:auto}"
                "[data-testid='stSidebar'] [data-tag] > span{max-width:none;white-space:normal;"
                "overflow:visible;text-overflow:clip;overflow-wrap:anywhere}</style>")
    device, label = _device_block()
    sel = Selection(dataset, runs, device, label, datasets, all_runs, compatible)
    S.put(S.Sidebar.SELECTION, sel)
    return sel


def selection() -> Selection:
    """The sidebar's choice of this run (drawn by ``app.py`` before the page)."""
    sel = S.get(S.Sidebar.SELECTION)
    if sel is None:  # a page run on its own (tests): draw the sidebar now
        sel = draw()
    return sel


def loaded_refs(sel: Selection) -> list[cache.ModelRef]:
    """The chosen runs whose models load; a run that does not load gets an error box and is left out."""
    good = []
    for entry, r in zip(sel.runs, sel.refs()):
        try:
            r.load()
        except InterpError as e:
            st.error(f"{entry.label}: {e}", icon=":material/error:")
            continue
        good.append(r)
    return good


def require_runs(sel: Selection, *, dataset: bool = False) -> None:
    """Stop the page with a message saying what to do when there are no runs, none is chosen, or
    (``dataset=True``) no dataset is chosen."""
    if dataset:
        need(sel.dataset is not None, text.NO_DATASET)
    need(bool(sel.all_runs), text.NO_RUNS)
    need(bool(sel.runs), text.PICK_RUNS)


def require_loaded_refs(sel: Selection) -> list[cache.ModelRef]:
    """``require_runs`` plus: every chosen model loads (the ones that do not are named)."""
    require_runs(sel)
    refs = loaded_refs(sel)
    need(len(refs) == len(sel.runs), "Remove the model that does not load from the sidebar to continue.")
    return refs
