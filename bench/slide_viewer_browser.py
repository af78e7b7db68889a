"""Open a large slide in the Slide page's linked viewers in a real browser and zoom with the mouse wheel
down to level-0 pixels; screenshots and the browser-side tile timings.

    nice -n 10 python bench/slide_viewer_browser.py [--slide bench/out/slides/synthetic-he-20480-s0.tiff]

A ``streamlit run serve.py`` server (the repository's sample data and runs; ``$INTERP_SLIDES_DIR`` = the
slide's folder) and Debian's chromium (tests/_fixtures/browser.py). The page opens the slide by its
typed path; whatever explain-slide results the shipped runs have for it are overlaid (saliency). The
wheel is turned over the centre of the largest lesion (from the generator's ``lesions.geojson``) until
one level-0 pixel is at least 2 screen pixels. Records: time from typing the path to the first view
fully drawn, the Deep Zoom levels requested and drawn by both viewers, whether the right viewer followed
the left, the browser's own response times of slide and overlay tiles (p50/p90; HTTP included), and
screenshots (``docs/screenshots/slide-large-*.png``). Writes ``docs/results/slide_browser.json``/``.md``.
Not part of ``make test`` (minutes on a busy CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from tests._fixtures.browser import (CHROMIUM, CHROMIUM_ARGS, settle, streamlit_server, viewer_frame,  # noqa: E402
                                     wait_for)

SHOTS = REPO / "docs" / "screenshots"
VIEW = "(i) => { const v = window.__viewers[i].viewport; const c = v.getCenter(); return [v.getZoom(), c.x, c.y]; }"
PIXEL = ("(i) => { const v = window.__viewers[i]; return v.world.getItemAt(0).viewportToImageZoom("
         "v.viewport.getZoom(true)); }")  # screen pixels per level-0 pixel
DRAWN = "(i) => window.__viewers[i].world.getItemAt(0).getTilesToDraw().map(t => t.tile.level)"
FULLY = "(i) => window.__viewers[i].world.getItemAt(0).getFullyLoaded()"
WIDTH = "() => window.__viewers[0].world.getItemAt(0).source.width"
TO_SCREEN = ("([i, x, y]) => { const v = window.__viewers[i]; const p = v.world.getItemAt(0)"
             ".imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y)); return [p.x, p.y]; }")


def lesion_centre(slide: Path) -> tuple[float, float]:
    """Centre (level-0 px) of the cell nearest the centroid of the largest lesion of a generated slide."""
    gj = json.loads(slide.with_suffix(".lesions.geojson").read_text())
    best = max(gj["features"], key=lambda f: len(f["geometry"]["coordinates"]))
    cells = np.array([[p[0][0][0] + 32, p[0][0][1] + 32] for p in best["geometry"]["coordinates"]], float)
    c = cells.mean(axis=0)
    x, y = cells[np.argmin(((cells - c) ** 2).sum(axis=1))]
    return float(x), float(y)


def zoom_target(slide: Path) -> tuple[float, float, str]:
    """Where to zoom (level-0 px): a lesion cell both shipped runs have already explained (the one
    nearest the middle of those), else the largest lesion's centre."""
    from PIL import Image

    from interp_core.slides.job import results_dir
    from interp_core.slides.maps import assemble
    cells = np.asarray(Image.open(slide.with_suffix(".lesion_cells.png"))) > 0
    done = np.ones_like(cells)
    for run in ("baseline-erm", "scaat"):
        out = results_dir(REPO / "sample_data/runs/synthetic-he" / run, slide, level=0, method="saliency",
                          tile_size=64, stride=64)
        try:
            probs = assemble(out).result.probs
        except Exception:  # noqa: BLE001 - no results yet
            done[:] = False
            break
        ok = np.zeros_like(cells)
        ok[:probs.shape[0], :probs.shape[1]] = np.isfinite(probs[..., 0])[:cells.shape[0], :cells.shape[1]]
        done &= ok
    both = np.argwhere(cells & done)
    if len(both):
        r, c = both[np.argmin(((both - both.mean(axis=0)) ** 2).sum(axis=1))]
        return float(c * 64 + 32), float(r * 64 + 32), "a lesion cell both runs have explained"
    x, y = lesion_centre(slide)
    return x, y, "the largest lesion's centre (no lesion cell explained yet)"


def shoot(page, name: str) -> str:
    from PIL import Image
    SHOTS.mkdir(parents=True, exist_ok=True)
    raw = Path(tempfile.gettempdir()) / f"slide-large-{name}.png"
    page.screenshot(path=str(raw))
    im = Image.open(raw).convert("RGB")
    im = im.crop((300, 0, im.width, im.height))  # without the sidebar; 256 colours keep the file small
    out = SHOTS / f"slide-large-{name}.png"
    im.quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return str(out.relative_to(REPO))


def pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slide", default=str(REPO / "bench/out/slides/synthetic-he-20480-s0.tiff"))
    p.add_argument("--results", default=str(REPO / "docs/results/slide_browser"))
    p.add_argument("--target", type=float, default=2.0, help="screen pixels per level-0 pixel to reach")
    a = p.parse_args()
    slide = Path(a.slide).resolve()
    from playwright.sync_api import sync_playwright

    import openslide
    W, H = openslide.OpenSlide(str(slide)).dimensions
    tmp = Path(tempfile.mkdtemp(prefix="slide-browser-"))
    env = {**os.environ, "INTERP_SLIDES_DIR": str(slide.parent), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res: dict = {"slide": slide.name, "size": [W, H], "load_average": os.getloadavg()[0]}
    tiles: list[tuple[int, str, float]] = []  # (level, kind, ms)
    bad: list[str] = []
    with streamlit_server(tmp, env, script="serve.py") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})

        def on_finished(req):
            m = re.search(r"/_interp/wsi/[0-9a-f]+/(tiles|overlay/[0-9a-f]+)/(\d+)/\d+_\d+\.(jpeg|webp)", req.url)
            if m:
                t = req.timing
                tiles.append((int(m.group(2)), m.group(1).split("/")[0], t["responseEnd"] - t["requestStart"]))
                r = req.response()
                if r is not None and r.status != 200:
                    bad.append(f"{r.status} {req.url}")

        page.on("requestfinished", on_finished)
        page.goto(f"{url}/slide")
        settle(page)
        box = page.get_by_placeholder("case1.svs")
        t0 = time.monotonic()
        box.fill(slide.name)  # a name inside the slide folders (no host path in the screenshots)
        box.press("Enter")
        settle(page)
        wait_for(lambda: page.get_by_text(f"{slide.name}: {W:,}x{H:,} px").count() > 0, 120, "the typed slide")
        frame = wait_for(lambda: (lambda f: f if f.evaluate(WIDTH) == W else None)(viewer_frame(page, 120)), 120,
                         "the viewer on the typed slide")
        wait_for(lambda: frame.evaluate(FULLY, 0) and frame.evaluate(FULLY, 1), 120, "the first view")
        res["first_view_seconds"] = time.monotonic() - t0
        res["titles"] = [frame.locator(f"#title-{i}").inner_text() for i in (0, 1)]
        res["overlay_drawn"] = any(k == "overlay" for _, k, _ in tiles)
        shots = {"overview": shoot(page, "overview")}
        max_level = frame.evaluate("() => window.__viewers[0].world.getItemAt(0).source.maxLevel")
        x, y, why = zoom_target(slide)
        res["zoom_point_level0"], res["zoom_point"] = [x, y], why
        steps, levels_by_step = 0, []
        while frame.evaluate(PIXEL, 0) < a.target and steps < 40:
            sx, sy = frame.evaluate(TO_SCREEN, [0, x, y])
            ob = frame.locator("#osd-0").bounding_box()
            page.mouse.move(ob["x"] + sx, ob["y"] + sy)
            page.mouse.wheel(0, -300)
            steps += 1
            time.sleep(0.4)
            if steps % 6 == 0:
                wait_for(lambda: frame.evaluate(FULLY, 0), 120, "tiles while zooming")
                levels_by_step.append((steps, round(frame.evaluate(PIXEL, 0), 4), max(frame.evaluate(DRAWN, 0))))
                if len(levels_by_step) == 2:
                    shots["middle"] = shoot(page, "middle")
        wait_for(lambda: frame.evaluate(FULLY, 0) and frame.evaluate(FULLY, 1), 120, "the level-0 tiles")
        time.sleep(1.5)
        res["wheel_steps"] = steps
        res["zoom_trace"] = levels_by_step
        res["screen_px_per_level0_px"] = frame.evaluate(PIXEL, 0)
        res["max_dz_level"] = max_level
        res["drawn_levels"] = [sorted(set(frame.evaluate(DRAWN, i))) for i in (0, 1)]
        left, right = frame.evaluate(VIEW, 0), frame.evaluate(VIEW, 1)
        res["right_followed"] = bool(np.allclose(left, right, rtol=1e-6, atol=1e-9))
        shots["level0"] = shoot(page, "level0")
        res["exceptions"] = page.locator('[data-testid="stException"]').count()
        browser.close()
    res["screenshots"] = shots
    res["bad_responses"] = bad[:10]
    for kind in ("tiles", "overlay"):
        ms = [t for _, k, t in tiles if k == kind]
        deep = [t for lv, k, t in tiles if k == kind and lv >= max_level - 3]
        res[f"{kind}_ms"] = {"n": len(ms), "p50": pct(ms, 50), "p90": pct(ms, 90),
                             "n_deepest4": len(deep), "p50_deepest4": pct(deep, 50), "p90_deepest4": pct(deep, 90)}
    res["requested_levels"] = sorted({lv for lv, k, _ in tiles if k == "tiles"})
    res["load_average_end"] = os.getloadavg()[0]
    out = Path(a.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    ts, ov = res["tiles_ms"], res["overlay_ms"]
    lines = [f"# The Slide page on a {W:,} x {H:,}-px slide in a real browser", "",
             f"Generated by `bench/slide_viewer_browser.py` (`streamlit run serve.py`, Debian chromium, 1500 x 1100 "
             f"window; shared 2-core CPU, load average {res['load_average']:.1f} at start, "
             f"{res['load_average_end']:.1f} at end).", "",
             "| measure | value |", "|---|---|",
             f"| time from typing the slide's path to both viewers fully drawn | {res['first_view_seconds']:.1f} s |",
             f"| wheel steps to reach {res['screen_px_per_level0_px']:.2f} screen px per level-0 px | {steps} |",
             f"| Deep Zoom levels drawn at the end (left / right; deepest = {max_level} = level 0) | "
             f"{res['drawn_levels'][0]} / {res['drawn_levels'][1]} |",
             f"| right viewer followed the left (zoom and centre equal) | {res['right_followed']} |",
             f"| saliency overlay tiles drawn | {res['overlay_drawn']} ({ov['n']} requested) |",
             f"| slide tile response in the browser, p50 / p90 (n = {ts['n']}) | {f(ts['p50'])} / {f(ts['p90'])} ms |",
             f"| overlay tile response in the browser, p50 / p90 (n = {ov['n']}) | {f(ov['p50'])} / {f(ov['p90'])} ms |",
             f"| failed tile responses / page exceptions | {len(bad)} / {res['exceptions']} |", "",
             f"Viewer titles: {res['titles'][0]!r}, {res['titles'][1]!r}. Zoomed at level-0 ({x:.0f}, {y:.0f}): {why}. Trace (wheel steps, screen px per level-0 px, deepest level drawn): "
             f"{levels_by_step}.", "", "Screenshots: " + ", ".join(f"`{v}`" for v in shots.values()) + "."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
