"""interp_core: attribution, explanation-quality metrics and interpretability-driven retraining
(SCAAT, explanation-consistency reweighting) for PyTorch image classifiers.

The package never imports Streamlit; the dashboard in ``app.py``/``pages/`` is a thin layer on top.
"""
from __future__ import annotations

__version__ = "0.1.0"
