"""Train page: the exact/fast mode of SCAAT and ECE is offered with its measured cost (issue 16)."""
from __future__ import annotations

import dataclasses
import json

import pytest

from interp_core.training.mode_costs import SPEED_RESULTS
from interp_core.training.objectives import get_objective, options_from_dict


@pytest.mark.parametrize("objective", ["scaat", "ece"])
def test_train_page_offers_the_mode_with_its_cost(h, objective):
    at = h.open_page("train")
    at.selectbox(key="train.objective").set_value(objective).run()
    h.assert_clean(at)
    radio = at.radio(key=f"train.opt.{objective}.mode")
    assert radio.value == "exact"
    # each label carries the mode's epoch cost as bench/objective_speed.py measured it at today's defaults
    rows = [r for r in json.loads(SPEED_RESULTS.read_text())["rows"] if r["objective"] == objective
            and r["threads"] == 1 and r["kind"] in ("epoch", "avg schedule", "avg 3-epoch fine-tune")]
    for mode in ("exact", "fast"):
        defaults = json.loads(json.dumps(dataclasses.asdict(options_from_dict(get_objective(objective), {"mode": mode})),
                                         default=str))
        label = next(str(o) for o in radio.options if str(o).startswith(f"{mode}: "))
        measured = [r for r in rows if r["resolved_options"] == defaults]
        assert measured and all(f"{r['cpu_x_erm']:.2f}x an ERM epoch" in label for r in measured), (label, measured)
    radio.set_value("fast").run()
    h.assert_clean(at)
    assert at.radio(key=f"train.opt.{objective}.mode").value == "fast"
    # the mode is not offered a second time among the other options
    assert not [s for s in at.selectbox if s.key == f"train.opt.{objective}.mode"]


def test_train_page_submits_fast_mode(h):
    at = h.open_page("train")
    at.selectbox(key="train.objective").set_value("scaat").run()
    at.radio(key="train.opt.scaat.mode").set_value("fast").run()
    at.number_input(key="train.epochs").set_value(1).run()
    at.text_input(key="train.name.scaat").set_value("fast-job").run()
    at.button(key="train.start").click().run()
    h.assert_clean(at)
    assert not at.error, [e.value for e in at.error]
    assert any("fast-job" in m.value and "mode fast" in m.value for m in at.markdown), [m.value for m in at.markdown]
    cancel = [b for b in at.button if b.key and b.key.startswith("train.cancel.")]
    at.button(key=cancel[0].key).click().run()
    h.assert_clean(at)
