"""Resources (issue #7, item 5): evaluation and slide tiling stream their input in batches, so the
memory they hold does not grow with the number of tiles.

The measure is exact and cheap: every image tensor a dataset hands out (every region a slide reader
returns) is tracked with ``weakref.finalize``, and the largest number alive at once is recorded.
Streaming keeps it at about one batch whatever the dataset size; loading everything first makes it
the dataset size. ``bench/memory.py`` measures the peak RSS on 5,000 tiles.
"""
from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from interp_core.data import TileDataset
from interp_core.evaluation.evaluate import EvalSettings, evaluate_run
from interp_core.models import create_model
from interp_core.slides.explain import explain_slide
from interp_core.testing import make_tiny_dataset


class LiveCounter:
    """Counts objects handed out and the most alive at the same time."""

    def __init__(self):
        self.live = self.peak = self.calls = 0

    def track(self, obj) -> None:
        self.calls += 1
        self.live += 1
        self.peak = max(self.peak, self.live)
        weakref.finalize(obj, self._gone)

    def _gone(self) -> None:
        self.live -= 1


@pytest.fixture(scope="module")
def big_data(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("res") / "ds", n_per_class=300, size=16,
                             splits=("train", "test"), groups=False)


def _evaluate_counting(run: Path, data: Path, n: int, monkeypatch, explanations: bool) -> list[LiveCounter]:
    """Evaluate ``n`` tiles; one counter per pass over them (predictions, then explanation metrics)."""
    passes = [LiveCounter()]
    original = TileDataset.__getitem__

    def getitem(self, i):
        if passes[-1].calls == n:
            passes.append(LiveCounter())
        item = original(self, i)
        passes[-1].track(item["image"])
        return item

    monkeypatch.setattr(TileDataset, "__getitem__", getitem)
    try:
        res = evaluate_run(run, data, EvalSettings(split="test", limit=n, batch_size=8, n_steps=2,
                                                   explanations=explanations), device=torch.device("cpu"))
    finally:
        monkeypatch.setattr(TileDataset, "__getitem__", original)
    assert res["n_tiles"] == n
    assert sum(c.live for c in passes) == 0  # nothing kept after the call
    return passes


def test_evaluate_predictions_stream_the_dataset(tiny_run, big_data, monkeypatch):
    small = _evaluate_counting(tiny_run, big_data, 150, monkeypatch, explanations=False)
    large = _evaluate_counting(tiny_run, big_data, 600, monkeypatch, explanations=False)
    assert [c.calls for c in small] == [150] and [c.calls for c in large] == [600]  # each tile read once
    # at most one prediction batch (128 tiles) alive, for 150 tiles as for 600
    assert small[0].peak <= 128 and large[0].peak <= 128, (small[0].peak, large[0].peak)


def test_evaluate_explanation_metrics_stream_the_dataset(tiny_run, big_data, monkeypatch):
    small = _evaluate_counting(tiny_run, big_data, 24, monkeypatch, explanations=True)
    large = _evaluate_counting(tiny_run, big_data, 96, monkeypatch, explanations=True)
    assert [c.calls for c in small] == [24, 24] and [c.calls for c in large] == [96, 96]
    # the explanation pass holds one batch (8 tiles) at a time, for 24 tiles as for 96
    assert small[1].peak <= 8 and large[1].peak <= 8, (small[1].peak, large[1].peak)


class ProceduralSlide:
    """A slide that exists only as a formula (tissue stripes on glass): it cannot be loaded whole,
    so the tiler must read it region by region. Every region handed out is tracked."""

    def __init__(self, side: int, counter: LiveCounter):
        self._side, self.counter = side, counter

    @property
    def size(self) -> tuple[int, int]:
        return self._side, self._side

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        yy, xx = np.mgrid[y:y + h, x:x + w]
        tissue = ((xx // 24 + yy // 40) % 3 == 0) & (xx < self._side) & (yy < self._side) & (xx >= 0) & (yy >= 0)
        out = np.full((h, w, 3), 255, np.uint8)
        out[tissue] = (180, 90, 160)
        self.counter.track(out)
        return out


def test_explain_slide_streams_the_tiles():
    torch.manual_seed(0)
    model = create_model("smallcnn", 2).eval()
    peaks = []
    for side in (192, 384):
        counter = LiveCounter()
        res = explain_slide(model, ProceduralSlide(side, counter), tile_size=16, batch_size=16, downsample=8,
                            skip_background=False)
        assert res.n_computed == (side // 16) ** 2
        assert counter.live == 0
        peaks.append(counter.peak)
    # one region at a time is read and copied into the batch buffer: the number alive stays at
    # most a batch, for 144 tiles as for 576
    assert max(peaks) <= 16, peaks
