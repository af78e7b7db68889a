"""Streamlit entry point: page config, navigation over ``pages/``, the shared sidebar. Nothing heavy.

Run with ``make app`` (or ``streamlit run app.py``); settings are in ``.streamlit/config.toml``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # AppTest runs the script in-process, from any working directory
    sys.path.insert(0, str(ROOT))

from ui import shell, sidebar  # noqa: E402

shell.leave_legacy_pages_mode()

st.set_page_config(page_title="Saliency explorer for pathology models", page_icon=":material/biotech:",
                   layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/explore.py", title="Explore", icon=":material/image_search:"),
    st.Page("pages/consistency.py", title="Consistency", icon=":material/compare:"),
    st.Page("pages/metrics.py", title="Metrics", icon=":material/bar_chart:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/slide.py", title="Slide", icon=":material/grid_on:"),
    st.Page("pages/report.py", title="Report", icon=":material/description:"),
]

page = st.navigation(PAGES)
sidebar.draw()
page.run()
