"""The viewer's tile routes, added to the running Streamlit server.

Streamlit (1.67, Starlette/uvicorn) serves the app; the Slide page's deep-zoom viewer needs tiles
made on request, so ``ensure_routes()`` inserts one route, ``/_interp/wsi/{path}``, at the front
of the running Starlette application's router (found once per process). The route only forwards
to ``interp_core.slides.deepzoom.TileService.handle``: slides are admitted by ``register_slide`` (slide
roots checked there) and requested by opaque id, and every reply is a tile, a JSON description or
a one-line 4xx message. Starlette runs the synchronous handler in its thread pool, so tile
decoding never blocks the server's event loop.
"""
from __future__ import annotations

import gc
import threading
import warnings
from typing import Any

from interp_core.slides.deepzoom import SlideRoots, TileService

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


def ensure_routes() -> bool:
    """Add the tile route to the running Streamlit server once; True when it is there.

    False outside a server (``AppTest``, bare mode): the page still works, the viewer has no
    tiles to show.
    """
    global _MOUNTED
    with _LOCK:
        if _MOUNTED:
            return True
        try:
            from starlette.applications import Starlette
            from starlette.routing import Route
        except ImportError:
            return False
        with warnings.catch_warnings():  # isinstance on every object touches lazy modules' deprecated names
            warnings.simplefilter("ignore")
            apps = [o for o in gc.get_objects() if _is_starlette(o, Starlette)]
        path = _base_path() + PREFIX + "/{path:path}"
        for app in apps:
            routes = app.router.routes
            if any(getattr(r, "path", None) == path for r in routes):
                _MOUNTED = True
                continue
            if not any("_stcore" in str(getattr(r, "path", "")) for r in routes):
                continue  # not Streamlit's own application
            routes.insert(0, Route(path, _endpoint, methods=["GET"]))
            _MOUNTED = True
        return _MOUNTED


_COMPONENT: Any = None
#: OpenSeadragon as ``make viewer`` installs it (npm, into the component's folder).
VIEWER_JS = ("node_modules", "openseadragon", "build", "openseadragon", "openseadragon.min.js")


def viewer_installed() -> bool:
    """True when ``make viewer`` has installed OpenSeadragon next to the component."""
    from pathlib import Path
    return Path(__file__).resolve().parent.joinpath("slide_viewer", *VIEWER_JS).is_file()


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
