"""Consistency page section ``ui/consistency_groups.py``: per-group box plot and minority AUROC."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from interp_core.data import open_split
from interp_core.metrics.bias import auroc, consistency_groups
from interp_core.testing import make_tiny_dataset

ROOT = Path(__file__).resolve().parents[2]


def _script(run_dir: str, data_dir: str, root: str) -> None:
    import sys
    from types import SimpleNamespace
    sys.path.insert(0, root)
    from ui import consistency_groups as cg
    cg.render(SimpleNamespace(path=run_dir, data_path=data_dir))


@pytest.fixture()
def ece_run(tmp_path: Path) -> tuple[Path, Path, float]:
    """A tiny dataset whose groups are class|even/odd (even is the majority: ties go by name) and a
    hand-written consistency.npz with two refreshes; returns (run, data, AUROC of the last one)."""
    data = make_tiny_dataset(tmp_path / "d", n_per_class=6, size=16, classes=("a", "b"))
    train = open_split(data, "train")
    n = len(train)
    rng = np.random.default_rng(0)
    e = rng.uniform(0.3, 1.0, size=(2, n)).astype(np.float32)
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "consistency.npz", sample_ids=np.asarray(train.ids, dtype=np.str_),
             labels=np.asarray(train.labels, dtype=np.int64), refresh_epochs=np.array([1, 2], dtype=np.int64),
             consistency=e, weights=np.ones_like(e), pred_changed=np.zeros((2, n), dtype=bool))
    minority = np.array([g.endswith("|odd") for g in train.groups])
    return run, data, auroc(1 - e[1].astype(float), minority)


def test_consistency_groups_core(ece_run) -> None:
    run, data, expected = ece_run
    res = consistency_groups(run, data)
    assert res["aligned"] == {0: "a|even", 1: "b|even"}
    assert res["per_refresh"][-1]["auroc_1_minus_E"] == pytest.approx(expected)
    assert consistency_groups(data, data) is None  # no consistency.npz there


def test_section_shows_box_plot_and_auroc(ece_run) -> None:
    from streamlit.testing.v1 import AppTest
    run, data, expected = ece_run
    at = AppTest.from_function(_script, args=(str(run), str(data), str(ROOT)), default_timeout=120).run()
    assert not at.exception, [x.value for x in at.exception]
    m = [x for x in at.metric if x.label.startswith("AUROC")]
    assert len(m) == 1 and float(m[0].value) == pytest.approx(expected, abs=5e-4)
    assert len(at.get("plotly_chart")) == 2  # box plot per group + AUROC per refresh


def test_section_explains_when_the_groups_mark_no_look(tmp_path: Path) -> None:
    from streamlit.testing.v1 import AppTest
    data = make_tiny_dataset(tmp_path / "d", n_per_class=4, size=16, classes=("a", "b"), groups=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "consistency.npz").write_bytes(b"")  # never read: no groups
    at = AppTest.from_function(_script, args=(str(run), str(data), str(ROOT)), default_timeout=120).run()
    assert not at.exception, [x.value for x in at.exception]
    assert any("do not mark a look" in i.value for i in at.info)
