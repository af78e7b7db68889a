"""Showing problems to a clinician: a one-line message, never a traceback in plain view.

``with guard("drawing the overlays"):`` around a section of a page turns an ``InterpError``
(a problem the user can fix) into ``st.error(message)`` and anything else into a short message
plus a collapsed "Technical details" expander; the rest of the page keeps rendering.
Streamlit's own control flow (``st.stop``, ``st.rerun``, ``st.switch_page``) derives from
``BaseException`` and passes through untouched.
"""
from __future__ import annotations

import contextlib
import traceback
from typing import Iterator

import streamlit as st

from interp_core.errors import InterpError


@contextlib.contextmanager
def guard(what: str = "this section") -> Iterator[None]:
    """Catch errors of a page section and show them without a traceback (see module docstring)."""
    try:
        yield
    except InterpError as e:
        st.error(str(e), icon=":material/error:")
    except MemoryError:
        st.error(f"Not enough memory for {what}. Try fewer tiles, a smaller image or fewer runs.",
                 icon=":material/memory:")
    except Exception as e:  # noqa: BLE001 - the one place an unexpected bug is reported politely
        st.error(f"Something went wrong while {what}. The rest of the page still works; "
                 "the details below help a developer fix it.", icon=":material/bug_report:")
        with st.expander("Technical details"):
            st.code(f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}", language="text")


def need(condition: bool, message: str, *, icon: str = ":material/info:") -> None:
    """Show ``message`` as an info box and stop the page when ``condition`` is false."""
    if not condition:
        st.info(message, icon=icon)
        st.stop()
