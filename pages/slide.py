"""Slide: a whole-slide file in two linked deep-zoom viewers (OpenSeadragon), two runs' maps overlaid,
explain-slide in the background, a tile's detail on click, GeoJSON export for QuPath.
Widgets in ``ui/slide_page.py``; what they show from ``interp_core.slides.view``."""
from __future__ import annotations

import streamlit as st

from ui import shell, sidebar, slide_page, text
from ui.errors import need

shell.leave_legacy_pages_mode()

st.title("Slide: deep zoom, two runs linked")
st.markdown("A whole-slide file in two viewers, pan and zoom linked: scroll to zoom down to the scanner's pixels, "
            "drag to pan. Each viewer overlays one run's maps; **Explain** computes them in the background, tile "
            "by tile, and the overlay fills in as pieces finish. Click a tile for its detail below.")
sel = sidebar.selection()
need(bool(sel.all_runs), text.NO_RUNS)
by_key = {r.key: r for r in sel.all_runs}

slide = slide_page.pick_slide()
jobs = slide_page.pick_runs(sel, slide, by_key)
slide_page.job_controls(jobs, slide, by_key, sel.device)
overlay = slide_page.overlay_controls(jobs, by_key[jobs.keys[0]].config.get("classes", ["?"]))
plan = slide_page.linked_viewers(slide, jobs, overlay, by_key)
slide_page.exports(slide, jobs, by_key)
slide_page.tile_detail(slide, jobs, overlay, plan, by_key, sel.device)
