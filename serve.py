"""The app with the Slide page's tile route, through Streamlit's supported ASGI entry point (``st.App``).

    streamlit run serve.py        (what ``make app`` runs)

``app.py`` stays the script (pages, sidebar); this file only adds the viewer's tile route
(``ui.tile_server.routes``) to Streamlit's router. ``streamlit run app.py`` still works: the route is
then added to the running server by ``ui.tile_server.ensure_routes`` (Streamlit internals), and
where that fails the Slide page shows the stitched maps instead of the deep-zoom viewer.
"""
from __future__ import annotations

import streamlit as st

from ui.tile_server import routes

app = st.App("app.py", routes=routes())
