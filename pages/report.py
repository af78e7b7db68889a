"""Report: build the self-contained HTML comparison report (``compare``) and download it."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import streamlit as st

from interp_core.attribution import METHODS
from interp_core.viz.report import build_report
from ui import shell, sidebar, widgets
from ui import verdict as uiv
from ui import state as S
from ui.errors import guard

shell.leave_legacy_pages_mode()

st.title("Report")
st.markdown("Build a single HTML file that compares the chosen models on the chosen dataset. It opens with the "
            "verdict (did retraining help, by how much, and where it got worse, with 95% intervals), then the "
            "metric table with the better direction of each metric, the charts, the training curves and example "
            "tiles drawn at random with their saliency maps and colour scales. It opens in any browser without a network connection, so it can be e-mailed or "
            "archived. Results already computed on the **Metrics** page with the same settings are reused.")
sel = sidebar.selection()
sidebar.require_runs(sel, dataset=True)
st.markdown("**Models:** " + ", ".join(r.label for r in sel.runs) + f"  \n**Dataset:** {sel.dataset.label}")

c1, c2, c3, c4 = st.columns(4)
reference = uiv.reference_picker(S.Report.REFERENCE, sel.runs, container=c4)
split = widgets.split_picker(S.Report.SPLIT, sel.dataset.path, container=c1)
S.init(S.Report.METHOD, "saliency")
method = c2.selectbox("Attribution method", list(METHODS), key=S.Report.METHOD, **S.KEEP)
S.init(S.Report.LIMIT, widgets.split_size(sel.dataset.path, split))
limit = int(c3.number_input("Tiles (N of the split, each class in turn)", 1, 100_000, step=10, key=S.Report.LIMIT,
                            help="All tiles of the split by default (the same setting as on Metrics reuses its "
                                 "results).", **S.KEEP))
limit = min(limit, widgets.split_size(sel.dataset.path, split))
settings = (tuple(r.key for r in sel.runs), str(sel.dataset.path), split, method, limit,
            reference.key if reference else None)

if st.button("Build the report", type="primary", icon=":material/description:", key=S.Report.BUILD):
    with guard("building the report"):
        bar = st.progress(0.0, text="Evaluating...")

        def report(done: int, total: int) -> None:
            bar.progress(done / total if total else 1.0, text=f"Evaluating: {done}/{total} tiles")

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "report.html"
            info = build_report([r.key for r in sel.runs], sel.dataset.path, out, split=split, attribution=method,
                                limit=limit, device=sel.device, progress=report,
                                reference=reference.key if reference else None)
            S.put(S.Report.RESULT, {"html": out.read_bytes(), "info": info, "settings": settings,
                                    "name": f"report-{sel.dataset.name}-{time.strftime('%Y%m%d-%H%M')}.html"})
        bar.empty()

result = S.get(S.Report.RESULT)
if result is None:
    st.info("Press **Build the report**. It takes a few seconds per model the first time.")
else:
    if result["settings"] != settings:
        st.warning("The settings changed since this report was built; build it again to include them.")
    info = result["info"]
    st.success(f"Report ready: {len(info['runs'])} model(s), {info['n_tiles']} tiles each, "
               f"{info['bytes'] / 1e6:.1f} MB, built in {info['seconds']:.1f} s.", icon=":material/check_circle:")
    for para in info.get("verdict", []):
        st.markdown(para.replace("**Better**", uiv.md_bold("Better")).replace("**Worse**", uiv.md_bold("Worse")))
    st.download_button("Download the report (HTML)", result["html"], file_name=result["name"], mime="text/html",
                       type="primary", icon=":material/download:", on_click="ignore")
    if st.toggle("Preview the report here", key=S.Report.PREVIEW, **S.KEEP):
        st.iframe(result["html"].decode("utf-8"), height=700)
