"""Composed PNG images for the dashboard and reports, drawn with Pillow from uint8 arrays (no browser
or image-export engine): panels with titles and captions in a grid (``compose_png``), colour bars
with tick labels, heat maps, mosaics of thumbnails.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..attribution import colorbar_image
from ..attribution.overlay import colorize, scale_to_unit
from ..errors import InterpError


def colorbar_png_array(cmap: str, vmin: float, vmax: float, *, length: int = 256, thickness: int = 14,
                       label: str = "attribution", vertical: bool = True, ticks: int = 5) -> np.ndarray:
    """A colour bar with tick labels as uint8 RGB ``[H, W, 3]`` (high values at the top)."""
    from PIL import Image, ImageDraw

    font = _font(11)
    bar = colorbar_image(cmap, height=length, width=thickness, vertical=True)
    if not vmax > vmin:  # a constant map: one value, drawn in the lowest colour
        ticks, vmax = 2, vmin
    values = np.linspace(vmax, vmin, ticks)
    texts = [_fmt(v) for v in values]
    tw = max(_text_size(font, t)[0] for t in texts) + 8
    pad_top = 22
    width = max(thickness + tw + 6, _text_size(font, label)[0] + 6)
    canvas = Image.new("RGB", (width, length + pad_top + 8), "white")
    canvas.paste(Image.fromarray(bar), (2, pad_top))
    d = ImageDraw.Draw(canvas)
    d.text((2, 2), label, fill="black", font=font)
    for v, t in zip(np.linspace(0, length - 1, ticks), texts):
        y = pad_top + int(v)
        d.line([(2 + thickness, y), (6 + thickness, y)], fill="black")
        d.text((8 + thickness, y - 6), t, fill="black", font=font)
    out = np.asarray(canvas)
    return out if vertical else np.ascontiguousarray(np.rot90(out))


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    return f"{v:.2e}" if a < 1e-2 or a >= 1e4 else f"{v:.3g}"


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _text_size(font: Any, text: str) -> tuple[int, int]:
    box = font.getbbox(text)
    return int(box[2] - box[0]), int(box[3] - box[1])


@dataclass
class Panel:
    """One image of a composed figure, with a title above and an optional caption below."""

    image: np.ndarray
    title: str = ""
    caption: str = ""


#: Caption lines drawn under a panel of :func:`compose_png` (e.g. two relevance shares and three metrics).
MAX_CAPTION_LINES = 6


def compose_png(rows: Sequence[Sequence[Panel]], *, row_labels: Sequence[str] | None = None,
                colorbars: Sequence[np.ndarray | None] | None = None, title: str = "", scale: int = 3,
                max_side: int = 256) -> bytes:
    """A grid of panels (one list per row), a label left of each row and a colour bar right of it,
    as PNG bytes. Small tiles are enlarged ``scale`` times (nearest, pixels stay visible), up to
    ``max_side`` pixels.
    """
    from PIL import Image, ImageDraw
    if not rows or not any(rows):
        raise InterpError("nothing to draw: the figure has no panels")
    font, small = _font(14), _font(12)
    side = 0
    for row in rows:
        for p in row:
            side = max(side, max(p.image.shape[:2]))
    cell = int(min(max_side, max(side, side * scale)))
    title_h, gap = 20, 10
    cap_lines = max((len(p.caption.split("\n")) for row in rows for p in row if p.caption), default=0)
    cap_h = 4 + 15 * min(cap_lines, MAX_CAPTION_LINES)
    n_cols = max(len(r) for r in rows)
    label_w = 0
    if row_labels:
        label_w = max(_text_size(font, s)[0] for s in row_labels) + 14
    cb_w = max((cb.shape[1] for cb in (colorbars or []) if cb is not None), default=0)
    top = 30 if title else 6
    row_h = title_h + cell + cap_h + gap
    width = label_w + n_cols * (cell + gap) + (cb_w + gap if cb_w else 0) + gap
    height = top + len(rows) * row_h
    canvas = Image.new("RGB", (int(width), int(height)), "white")
    d = ImageDraw.Draw(canvas)
    if title:
        d.text((gap, 6), title, fill="black", font=font)
    for i, row in enumerate(rows):
        y0 = top + i * row_h
        if row_labels and i < len(row_labels):
            d.text((gap, y0 + title_h + cell // 2 - 7), row_labels[i], fill="black", font=font)
        for j, p in enumerate(row):
            x0 = label_w + gap + j * (cell + gap)
            d.text((x0, y0 + 2), _clip_text(small, p.title, cell), fill="black", font=small)
            img = Image.fromarray(as_rgb_u8(p.image))
            img = img.resize((cell, cell), Image.NEAREST if img.width * 2 <= cell else Image.BILINEAR)
            canvas.paste(img, (x0, y0 + title_h))
            for k, line in enumerate(p.caption.split("\n")[:MAX_CAPTION_LINES]):
                d.text((x0, y0 + title_h + cell + 3 + 15 * k), _clip_text(small, line, cell), fill="#333333",
                       font=small)
        if colorbars and i < len(colorbars) and colorbars[i] is not None:
            cb = colorbars[i]
            cb_img = Image.fromarray(as_rgb_u8(cb))
            if cb_img.height > cell + title_h:
                ratio = (cell + title_h) / cb_img.height
                cb_img = cb_img.resize((max(1, int(cb_img.width * ratio)), cell + title_h), Image.BILINEAR)
            canvas.paste(cb_img, (label_w + gap + n_cols * (cell + gap), y0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _clip_text(font: Any, text: str, width: int) -> str:
    if _text_size(font, text)[0] <= width:
        return text
    while text and _text_size(font, text + "...")[0] > width:
        text = text[:-1]
    return text + "..."


def as_rgb_u8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        a = np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (or [0,1] float) image as PNG bytes."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(as_rgb_u8(image)).save(buf, format="PNG")
    return buf.getvalue()


def heat_rgb(a: np.ndarray, cmap: str = "inferno", vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """A map ``[H, W]`` coloured with ``cmap`` on ``[vmin, vmax]`` as uint8 RGB."""
    return np.rint(colorize(scale_to_unit(np.asarray(a, np.float64), vmin, vmax), cmap) * 255).astype(np.uint8)


def mosaic(images: Sequence[np.ndarray], cols: int, cell: int, *, gap: int = 4) -> np.ndarray:
    """Images side by side, ``cols`` per row, each resized (nearest) to ``cell`` pixels, white gaps."""
    from PIL import Image
    rows = max(1, -(-len(images) // cols))
    out = np.full((rows * (cell + gap) - gap, cols * (cell + gap) - gap, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        im = Image.fromarray(as_rgb_u8(img)).resize((cell, cell), Image.NEAREST)
        out[r * (cell + gap): r * (cell + gap) + cell, c * (cell + gap): c * (cell + gap) + cell] = np.asarray(im)
    return out
