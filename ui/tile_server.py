"""The viewer's tile routes on the Streamlit server.

The Slide page's deep-zoom viewer needs tiles made on request at ``/_interp/wsi/{path}``. Two ways:

- **Supported** (Streamlit >= 1.53's ``st.App``): ``serve.py`` builds ``st.App("app.py", routes=routes())``
  and ``streamlit run serve.py`` (``make app``) serves the app with the route in Streamlit's own router.
- **Fallback** for ``streamlit run app.py``: ``ensure_routes()`` finds the running Starlette application
  (once per process, through ``gc``: Streamlit internals, no public API) and inserts the route at the
  front of its router. If that fails (another Streamlit version, another server), the page says the
  viewer is unavailable and shows the stitched maps instead (``ui.slide_page``).

The route only forwards to ``interp_core.slides.tile_service.TileService.handle``: slides are admitted by
``register_slide`` (slide roots checked there) and requested by opaque id, and every reply is a
tile, a JSON description or a one-line 4xx message. Starlette runs the synchronous handler in its
thread pool, so tile decoding never blocks the server's event loop.
"""
from __future__ import annotations

import gc
import threading
import warnings
from typing import Any

from interp_core.slides.roots import SlideRoots
from interp_core.slides.tile_service import TileService

PREFIX = "/_interp/wsi"
_SERVICE: TileService | None = None
_LOCK = threading.Lock()
_MOUNTED = False


def service() -> TileService:
    """The process-wide tile service (slide roots from the environment; a new service, with an
    empty cache, when the configured roots change, so a changed ``$INTERP_SLIDES_DIR`` takes effect)."""
    global _SERVICE
    roots = SlideRoots.from_env()
    with _LOCK:
        if _SERVICE is None or _SERVICE.roots != roots:
            _SERVICE = TileService(roots)
        return _SERVICE


def _base_path() -> str:
    from streamlit import config
    base = (config.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}" if base else ""


def url_prefix() -> str:
    """The tile routes' path as the browser sees it (the server's base URL path included)."""
    return _base_path() + PREFIX


def _endpoint(request: Any) -> Any:
    from starlette.responses import Response
    parts = [p for p in request.path_params["path"].split("/") if p]
    status, ctype, body = service().handle(parts)
    headers = {"Cache-Control": "private, max-age=3600"} if status == 200 else {"Cache-Control": "no-store"}
    return Response(body, status_code=status, media_type=ctype, headers=headers)


def _is_starlette(obj: Any, cls: type) -> bool:
    """``isinstance(obj, cls)``, False for a weak proxy whose object is gone (``ReferenceError``)."""
    try:
        return isinstance(obj, cls)
    except ReferenceError:
        return False


def routes() -> list:
    """The tile route for ``st.App(..., routes=routes())`` (``serve.py``); marks it mounted, so the page
    does not look for the server through ``gc``."""
    global _MOUNTED, HOW
    from starlette.routing import Route
    with _LOCK:
        _MOUNTED, HOW = True, "st.App"
    return [Route(_base_path() + PREFIX + "/{path:path}", _endpoint, methods=["GET"])]


#: How the route was mounted: "st.App" (serve.py), "gc" (found the running server), "" (not mounted).
HOW = ""
#: Why ``ensure_routes`` failed, for the page's message.
FAILURE = ""


def ensure_routes() -> bool:
    """Add the tile route to the running Streamlit server once; True when it is there.

    True at once when ``serve.py`` mounted it (``routes``). False outside a server (``AppTest``, bare
    mode) or when the running server cannot be found (``FAILURE`` says why): the page then shows the
    stitched maps instead of the viewer.
    """
    global _MOUNTED, HOW, FAILURE
    with _LOCK:
        if _MOUNTED:
            return True
        try:
            from starlette.applications import Starlette
            from starlette.routing import Route
        except ImportError as e:
            FAILURE = f"Starlette is not importable ({e})"
            return False
        with warnings.catch_warnings():  # isinstance on every object touches lazy modules' deprecated names
            warnings.simplefilter("ignore")
            apps = [o for o in gc.get_objects() if _is_starlette(o, Starlette)]
        path = _base_path() + PREFIX + "/{path:path}"
        for app in apps:
            table = app.router.routes
            if any(getattr(r, "path", None) == path for r in table):
                _MOUNTED, HOW = True, HOW or "gc"
                continue
            if not any("_stcore" in str(getattr(r, "path", "")) for r in table):
                continue  # not Streamlit's own application
            table.insert(0, Route(path, _endpoint, methods=["GET"]))
            _MOUNTED, HOW = True, "gc"
        if not _MOUNTED:
            FAILURE = (f"no running Streamlit server application found in this process "
                       f"({len(apps)} Starlette application(s) seen)")
        return _MOUNTED


_COMPONENT: Any = None
#: OpenSeadragon as ``make viewer`` installs it (npm, into the component's folder).
VIEWER_JS = ("node_modules", "openseadragon", "build", "openseadragon", "openseadragon.min.js")


def viewer_installed() -> bool:
    """True when ``make viewer`` has installed OpenSeadragon next to the component, as a real file inside
    the component's folder (Streamlit's component route does not serve files a symbolic link leads out of
    the folder to, so a linked ``node_modules`` would leave the viewer without OpenSeadragon)."""
    from pathlib import Path
    folder = Path(__file__).resolve().parent / "slide_viewer"
    js = folder.joinpath(*VIEWER_JS)
    return js.is_file() and js.resolve().is_relative_to(folder)


def viewer(args: dict, *, key: str) -> Any:
    """The two-pane OpenSeadragon viewer (``ui/slide_viewer``, a custom component); returns the last
    click ``{row, col, x, y, n}`` (``n`` counts clicks) or None."""
    global _COMPONENT
    from pathlib import Path

    import streamlit.components.v1 as components
    if _COMPONENT is None:
        folder = Path(__file__).resolve().parent / "slide_viewer"
        _COMPONENT = components.declare_component("slide_viewer", path=str(folder))
    return _COMPONENT(**args, key=key, default=None)
