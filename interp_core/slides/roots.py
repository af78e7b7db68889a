"""The folders whose slides the viewer may serve (``SlideRoots``): a slide is served only if its
real path (symbolic links resolved) lies under one of them; ``..`` segments are refused outright,
so a dashboard shared behind a proxy cannot be made to read arbitrary files of its host.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InterpError
from .wsi import find_slides

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Environment variable naming extra slide folders (``os.pathsep``-separated).
SLIDES_ENV = "INTERP_SLIDES_DIR"


class SlideAccessError(InterpError):
    """A slide path outside the configured slide roots (or otherwise not servable)."""


# -- roots -------------------------------------------------------------------------------------
def default_slide_roots() -> list[Path]:
    """``<sample data>/slides`` (``$INTERP_SAMPLE_DATA/slides`` or the repository's ``sample_data/slides``)
    followed by every folder of ``$INTERP_SLIDES_DIR`` (``os.pathsep``-separated)."""
    sample = Path(os.environ.get("INTERP_SAMPLE_DATA", REPO_ROOT / "sample_data")) / "slides"
    extra = [Path(p).expanduser() for p in os.environ.get(SLIDES_ENV, "").split(os.pathsep) if p.strip()]
    return [sample, *extra]


@dataclass(frozen=True)
class SlideRoots:
    """The folders whose slides may be served; ``resolve`` checks a path against them."""

    roots: tuple[Path, ...]

    @classmethod
    def from_env(cls) -> SlideRoots:
        """The default roots (``default_slide_roots``)."""
        return cls(tuple(default_slide_roots()))

    def existing(self) -> list[Path]:
        """The roots that exist, resolved (symbolic links followed)."""
        out = []
        for r in self.roots:
            try:
                rr = Path(r).expanduser().resolve(strict=True)
            except OSError:
                continue
            if rr.is_dir() and rr not in out:
                out.append(rr)
        return out

    def resolve(self, path: str | Path) -> Path:
        """The real path of slide ``path`` if it is a file under one of the roots, else ``SlideAccessError``.

        A relative path is looked up inside each root in turn. Refused, with a message saying why:
        any ``..`` segment; a path whose real location (after following symbolic links) is outside
        every root; a missing file; a folder.
        """
        raw = str(path).strip()
        if not raw:
            raise SlideAccessError("no slide path given")
        if "\x00" in raw:
            raise SlideAccessError("a slide path cannot contain a NUL character")
        p = Path(raw).expanduser()
        if ".." in p.parts or ".." in raw.replace("\\", "/").split("/"):
            raise SlideAccessError(f"{raw}: '..' segments are not allowed in a slide path")
        roots = self.existing()
        if not roots:
            raise SlideAccessError("no slide folder exists (sample_data/slides or $INTERP_SLIDES_DIR)")
        candidates = [p] if p.is_absolute() else [r / p for r in roots]
        for c in candidates:
            try:
                real = c.resolve(strict=True)
            except OSError:
                continue
            if not any(real == r or real.is_relative_to(r) for r in roots):
                raise SlideAccessError(f"{raw}: outside the slide folders ({', '.join(str(r) for r in roots)}); "
                                       f"add its folder to ${SLIDES_ENV} to open it")
            if not real.is_file():
                raise SlideAccessError(f"{raw}: not a file")
            return real
        if p.is_absolute() and not any(p == r or p.is_relative_to(r) for r in roots):
            raise SlideAccessError(f"{raw}: outside the slide folders ({', '.join(str(r) for r in roots)}); "
                                   f"add its folder to ${SLIDES_ENV} to open it")
        raise SlideAccessError(f"{raw}: no such slide file in the slide folders")

    def list_slides(self, limit: int = 500) -> list[Path]:
        """Whole-slide files under the roots (real paths, links out of a root left out)."""
        out: list[Path] = []
        for r in self.existing():
            for p in find_slides(r, limit=limit):
                try:
                    out.append(self.resolve(p))
                except SlideAccessError:
                    continue
        return sorted(set(out))[:limit]
