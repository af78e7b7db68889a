"""Shared Streamlit helpers of the dashboard (``app.py`` and ``pages/``).

- ``state``: every session-state key, namespaced per page;
- ``sidebar``: the shared sidebar (dataset, models, device);
- ``cache``: cached loaders (models with ``st.cache_resource``, results with ``st.cache_data``);
- ``widgets``: tile pickers, gallery, uploads; ``errors``: messages instead of tracebacks;
- ``shell``: keeps Streamlit in ``st.navigation`` mode; ``text``: plain-language texts;
- ``catalog`` and ``compute``: Streamlit-free glue (what is on disk; per-tile computations).
"""
