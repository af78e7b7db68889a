"""Browser test on imported models: a real ``streamlit run`` server whose only runs were made by
``import-model`` (a timm ResNet from a .pth state dict, a ViT from .safetensors); Home shows the
"Add your model" form, Explore draws both models' maps, Metrics computes, Slide renders.
Screenshots go to ``tests/app/screenshots/byom-*.png``."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests._fixtures.browser import CHROMIUM, CHROMIUM_ARGS, settle, streamlit_server
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(__file__).resolve().parent / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium"),
]


def _tree(root: Path) -> Path:
    from interp_core.models.import_model import import_model
    from interp_core.models import create_model
    from interp_core.testing import make_tiny_dataset
    sample = root / "sample_data"
    make_tiny_dataset(sample / "data" / "synthetic-he", n_per_class=6, size=32, classes=("normal", "tumor"))
    torch.manual_seed(0)
    net = create_model("timm/test_resnet", 1000, image_size=32).net
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, root / "resnet.pth")
    vit = create_model("timm/test_vit", 2, image_size=32).net
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(root / "vit.safetensors"))
    runs = sample / "runs" / "synthetic-he"
    import_model("timm/test_resnet", root / "resnet.pth", ["normal", "tumor"], runs / "imported-resnet", image_size=32)
    import_model("timm/test_vit", root / "vit.safetensors", ["normal", "tumor"], runs / "imported-vit", image_size=32)
    return sample


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser-byom")
    sample = _tree(tmp)
    env = {**os.environ, "INTERP_SAMPLE_DATA": str(sample), "INTERP_RUNS_DIR": str(tmp / "runs"),
           "INTERP_DATA_DIR": str(tmp / "data"), "PYTHONPATH": str(REPO)}
    with streamlit_server(tmp, env) as url:
        yield url


def _check(page, name: str) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{name}: {exceptions.first.inner_text()[:500]}"
    assert "Something went wrong" not in page.locator('[data-testid="stMain"]').inner_text(), name


def _shoot(page, name: str) -> None:
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1440, "height": int(min(max(900, height + 40), 4000))})
    time.sleep(0.8)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"byom-{name}.png"))
    page.set_viewport_size({"width": 1440, "height": 900})


def test_imported_models_in_chromium(server):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server)
        settle(page)
        _check(page, "home")
        main = page.locator('[data-testid="stMain"]').inner_text()
        assert "Add your model" in main and "Trained models found" in main  # the table itself is a canvas
        _shoot(page, "home")
        page.goto(f"{server}/explore")
        settle(page)
        _check(page, "explore")
        text = page.locator('[data-testid="stMain"]').inner_text()
        assert "imported-resnet" in text and "imported-vit" in text and "Grad-CAM layer" in text
        assert page.locator('[data-testid="stImage"] img').count() >= 5  # tile + 2 models x 2 methods
        _shoot(page, "explore")
        page.goto(f"{server}/metrics")
        settle(page)
        page.get_by_role("button", name="Compute for").click()
        settle(page, timeout=600)
        _check(page, "metrics")
        assert page.locator('[data-testid="stPlotlyChart"]').count() >= 4
        _shoot(page, "metrics")
        page.goto(f"{server}/slide")
        settle(page)
        _check(page, "slide")
        browser.close()
