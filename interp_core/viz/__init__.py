"""What a person looks at: plotly charts and composed PNGs (``figures``) and the self-contained HTML
comparison report (``report``). No Streamlit here."""
