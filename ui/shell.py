"""Keep the app in ``st.navigation`` mode even though its pages live in a folder called ``pages/``.

Streamlit treats a ``pages/`` folder next to the entry point as the legacy multipage layout until
some session has called ``st.navigation``: on a fresh server, the first request to ``/explore`` runs
``pages/explore.py`` on its own (no page config, no shared sidebar, a file-name menu), and
``AppTest`` resets that flag before every run. ``leave_legacy_pages_mode()`` (first line of
``app.py`` and of every page) switches the flag off and reruns, so ``app.py`` always runs first.
"""
from __future__ import annotations

import streamlit as st


def leave_legacy_pages_mode() -> None:
    """Rerun through ``app.py`` when Streamlit started this run in legacy ``pages/`` mode."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - another Streamlit layout: nothing to fix
        return
    if getattr(PagesManager, "uses_pages_directory", None):
        PagesManager.uses_pages_directory = False
        st.rerun()
