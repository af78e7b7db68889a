"""Each training mode's cost is read from the speed benchmark's results, at the current defaults (issue 16)."""
from __future__ import annotations

import dataclasses
import json

from interp_core.training.mode_costs import SPEED_RESULTS, measured_rows, mode_costs
from interp_core.training.objectives import get_objective, options_from_dict


def _resolved(objective: str, options: dict) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(options_from_dict(get_objective(objective), options)), default=str))


def _row(objective: str, options: dict, kind: str, x_erm: float, x_floor: float, threads: int = 1) -> dict:
    """A row whose CPU-time ratios are the given ones and whose wall-time ratios are other numbers."""
    return {"threads": threads, "objective": objective, "options": options,
            "resolved_options": _resolved(objective, options), "kind": kind, "label": "", "seconds": 1.0,
            "x_erm": x_erm / 2, "x_floor": x_floor / 2, "cpu_x_erm": x_erm, "cpu_x_floor": x_floor}


def test_costs_come_from_rows_at_the_current_defaults_only(tmp_path):
    rows = [
        _row("scaat", {}, "epoch", 3.84, 3.61),
        _row("scaat", {"mode": "fast"}, "epoch", 2.21, 2.08),
        _row("scaat", {"mode": "fast"}, "epoch", 9.0, 9.0, threads=2),  # other thread count
        _row("scaat", {"mode": "fast", "kl_weight": 2.0}, "epoch", 7.0, 7.0),  # not today's defaults
        _row("ece", {}, "refresh epoch", 3.3, 3.1),  # not an epoch-cost kind
        _row("ece", {}, "avg schedule", 1.84, 1.75),
        _row("ece", {"mode": "fast"}, "avg long run", 1.06, 1.01),
        _row("ece", {"mode": "fast"}, "avg 3-epoch fine-tune", 1.24, 1.18),
    ]
    path = tmp_path / "speed.json"
    path.write_text(json.dumps({"rows": rows}))
    assert mode_costs("scaat", ["exact", "fast"], path=path) == {
        "exact": "3.84x an ERM epoch (3.61x the forward/backward floor), CPU time, 1 thread",
        "fast": "2.21x an ERM epoch (2.08x the forward/backward floor), CPU time, 1 thread"}
    ece = mode_costs("ece", ["exact", "fast"], path=path)
    assert ece["exact"] == ("1.84x an ERM epoch on average over its refresh schedule (1.75x the forward/backward "
                            "floor), CPU time, 1 thread")
    # both averages, the fine-tune first (EPOCH_KINDS order, not file order)
    assert ece["fast"].index("3-epoch fine-tune") < ece["fast"].index("long run")
    assert "1.24x an ERM epoch on average over a 3-epoch fine-tune (1.18x" in ece["fast"]
    assert mode_costs("scaat", ["exact", "fast"], threads=2, path=path) == {
        "fast": "9.00x an ERM epoch (9.00x the forward/backward floor), CPU time, 2 threads"}
    # a mode measured only under other defaults has no cost
    only_old = tmp_path / "old.json"
    only_old.write_text(json.dumps({"rows": [rows[3]]}))
    assert mode_costs("scaat", ["exact", "fast"], path=only_old) == {}


def test_no_results_file_no_costs(tmp_path):
    assert mode_costs("scaat", ["exact", "fast"], path=tmp_path / "absent.json") == {}


def test_the_shipped_results_cover_both_modes_at_todays_defaults():
    """docs/results/objective_speed.json was measured at the current defaults of both objectives (re-run
    bench/objective_speed.py with --out docs/results/objective_speed.md after changing a default)."""
    for objective in ("scaat", "ece"):
        for mode in ("exact", "fast"):
            rows = measured_rows(objective, mode, path=SPEED_RESULTS)
            assert rows, (objective, mode)
            assert all(r["cpu_x_erm"] > 0.5 and r["cpu_x_floor"] > 0.5 for r in rows)
