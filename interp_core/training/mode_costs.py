"""Measured cost of each training mode (``exact`` / ``fast``), read from the speed benchmark's results.

``bench/objective_speed.py --out docs/results/objective_speed.md`` also writes
``docs/results/objective_speed.json``: one record per table row, with the objective, its options
fully resolved (defaults filled) at measuring time, the row's kind and its ratios to ERM and to the
bare forward/backward floor, per thread count, in wall and in CPU time. :func:`mode_costs` picks, for each mode, the rows
measured at the objective's *current* defaults plus that mode, so a cost measured under other
defaults (or not measured at all) is not shown rather than shown wrongly. The Train page labels its
mode picker with these strings; no number is copied into code.

The ratio shown is the process's CPU time with one thread: the compute an epoch costs. The wall-time
ratio of a (niced) benchmark on a shared machine also counts the time spent waiting for a core,
which varies with the other jobs' load (both are in the report).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .objectives import get_objective, options_from_dict

#: The speed benchmark's machine-readable results, beside its markdown report.
SPEED_RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results" / "objective_speed.json"

#: Row kinds that give the cost of a whole training epoch (or an average over a schedule), in
#: the order shown, with how each is described.
EPOCH_KINDS = {"epoch": "", "avg schedule": " on average over its refresh schedule",
               "avg 3-epoch fine-tune": " on average over a 3-epoch fine-tune",
               "avg long run": " in a long run"}


def _resolved(objective: str, options: dict[str, Any]) -> dict[str, Any]:
    opts = dataclasses.asdict(options_from_dict(get_objective(objective), options))
    return json.loads(json.dumps(opts, default=str))


def measured_rows(objective: str, mode: str, *, threads: int = 1, path: str | Path = SPEED_RESULTS
                  ) -> list[dict[str, Any]]:
    """The benchmark's epoch rows of ``objective`` at its current defaults with ``mode`` set,
    measured with ``threads`` threads, in :data:`EPOCH_KINDS` order ([] if the file is absent)."""
    p = Path(path)
    if not p.is_file():
        return []
    want = _resolved(objective, {"mode": mode})
    rows = [r for r in json.loads(p.read_text()).get("rows", [])
            if r.get("objective") == objective and r.get("threads") == threads and r.get("kind") in EPOCH_KINDS
            and r.get("resolved_options") == want]
    order = list(EPOCH_KINDS)
    return sorted(rows, key=lambda r: order.index(r["kind"]))


def mode_costs(objective: str, modes: list[str] | tuple[str, ...], *, threads: int = 1,
               path: str | Path = SPEED_RESULTS) -> dict[str, str]:
    """``{mode: text}`` for each of ``modes`` measured at the current defaults, e.g.
    ``"2.04x an ERM epoch (2.23x the forward/backward floor), CPU time, 1 thread"``; modes
    without a measurement are left out."""
    out = {}
    for mode in modes:
        rows = measured_rows(objective, mode, threads=threads, path=path)
        if rows:
            parts = [f"{r['cpu_x_erm']:.2f}x an ERM epoch{EPOCH_KINDS[r['kind']]} "
                     f"({r['cpu_x_floor']:.2f}x the forward/backward floor)" for r in rows]
            out[mode] = "; ".join(parts) + f", CPU time, {threads} thread{'s' if threads > 1 else ''}"
    return out
