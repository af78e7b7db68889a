"""Did retraining help? Paired per-tile changes of every metric against a reference run, with intervals.

Two runs evaluated on the same tiles (``evaluate`` stores each metric's per-tile values under
``details["per_tile"]``) are compared tile by tile:

- the change of a metric is ``mean_i(after_i - before_i)`` over the tiles where both are defined;
- its 95% interval is a seeded percentile bootstrap: the *tiles* are resampled with replacement
  (the pairs stay together), the mean difference recomputed ``n_boot`` times, and the 2.5th and
  97.5th percentiles taken (Efron & Tibshirani 1993, ch. 13);
- worst-group accuracy is recomputed on every resample (the minimum over groups of the group
  accuracy), so its interval includes which group is worst changing;
- the call is *better* / *worse* when the interval excludes 0, in the metric's own direction
  (``interp_core.viz.figures.metric_direction``: e.g. a lower deletion AUC is better), else
  *no clear change*. Each metric is tested on its own: with a dozen metrics, one interval in
  twenty missing 0 by chance is expected, which the verdict text says.

A single run's value is given with an interval too, never ``± SD`` (a per-tile spread is not an
uncertainty): a Wilson score interval for proportions (accuracy, pointing game, attack flip rate),
the bootstrap of the mean otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from ..errors import InterpError
from ..viz.figures import METRIC_ORDER, METRIC_TEXT, metric_direction

#: Metrics whose per-tile value is 0 or 1 (their mean is a proportion).
PROPORTIONS = frozenset({"accuracy", "pointing_game", "attack_flip_rate"})
#: Resamples of the bootstrap; with 2000 the percentile endpoints move by about 0.1 standard error between seeds.
N_BOOT = 2000
LEVEL = 0.95

Call = Literal["better", "worse", "no clear change", "changed"]


# -- intervals -------------------------------------------------------------------------------------
def bootstrap_indices(n: int, *, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` tile indices drawn with replacement (``numpy.random.default_rng(seed)``)."""
    if n < 1:
        raise InterpError("a bootstrap needs at least one tile")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates (NaN replicates ignored)."""
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if not s.size:
        return math.nan, math.nan
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(s, [tail, 100.0 - tail])
    return float(lo), float(hi)


def bootstrap_mean_interval(values: Sequence[float], *, n_boot: int = N_BOOT, seed: int = 0,
                            level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaN values dropped first)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return math.nan, math.nan
    idx = bootstrap_indices(v.size, n_boot=n_boot, seed=seed)
    return percentile_interval(v[idx].mean(axis=1), level)


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (Wilson 1927).

    ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``; unlike ``p ± z·SE`` it stays inside
    ``[0, 1]`` and is not empty at ``p = 0`` or ``1``.
    """
    if n <= 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    den = 1 + z * z / n
    return max(0.0, (centre - half) / den), min(1.0, (centre + half) / den)


# -- per-tile values of a result ---------------------------------------------------------------------
def per_tile(result: Mapping[str, Any]) -> dict[str, list] | None:
    """The per-tile values an ``evaluate`` result stores (``file`` ids, each metric, ``group``), or None."""
    pt = (result.get("details") or {}).get("per_tile")
    return pt if pt and pt.get("file") else None


def _values(pt: Mapping[str, list], metric: str, order: np.ndarray) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in pt[metric]], np.float64)[order]


def _worst_group(correct: np.ndarray, groups: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Worst-group accuracy of each resample (rows of ``idx``); a group absent from a resample is skipped."""
    c = correct[idx]
    worst = np.full(idx.shape[0], np.inf)
    for g in np.unique(groups):
        m = groups[idx] == g
        k = m.sum(axis=1)
        acc = np.where(k > 0, (c * m).sum(axis=1) / np.maximum(k, 1), np.inf)
        worst = np.minimum(worst, acc)
    return np.where(np.isfinite(worst), worst, np.nan)


# -- one metric, one run against the reference -------------------------------------------------------
@dataclass
class Change:
    """The paired change of one metric from ``reference`` to ``run`` on the same tiles."""

    metric: str
    run: str
    reference: str
    before: float  # the reference's mean on the paired tiles
    after: float
    diff: float  # after - before
    lo: float
    hi: float
    n: int  # tiles where both are defined
    higher_is_better: bool | None

    @property
    def call(self) -> Call:
        """``better`` / ``worse`` when the interval excludes 0 (in the metric's direction), else
        ``no clear change``; ``changed`` for a metric without a better direction."""
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.lo <= 0.0 <= self.hi:
            return "no clear change"
        if self.higher_is_better is None:
            return "changed"
        return "better" if (self.diff > 0) == self.higher_is_better else "worse"

    def text(self, digits: int = 3) -> str:
        """``+0.051 [+0.043, +0.060]``; tiny changes get more digits (``+0.00012 [+0.00004, +0.00021]``)
        so an interval that excludes 0 never prints as ``[+0.000, +0.000]``."""
        big = max(abs(self.diff), abs(self.lo), abs(self.hi)) if math.isfinite(self.lo) else abs(self.diff)
        while big > 0 and big < 10 ** -digits * 5 and digits < 8:
            digits += 1
        return f"{self.diff:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"

    def as_row(self) -> dict[str, Any]:
        """A flat JSON-friendly row (for tables and ``docs/results``)."""
        return {"run": self.run, "reference": self.reference, "metric": self.metric, "before": self.before,
                "after": self.after, "change": self.diff, "ci_low": self.lo, "ci_high": self.hi, "tiles": self.n,
                "direction": {True: "higher is better", False: "lower is better", None: ""}[self.higher_is_better],
                "verdict": self.call}


def _direction(metric: str) -> bool | None:
    return metric_direction(metric)


def compare(result: Mapping[str, Any], reference: Mapping[str, Any], *, run: str = "run",
            reference_name: str = "reference", n_boot: int = N_BOOT, seed: int = 0,
            level: float = LEVEL) -> list[Change]:
    """Paired changes of every metric both ``evaluate`` results hold per tile, in display order.

    Tiles are matched by file; a metric undefined on a tile (NaN, e.g. the pointing game without
    marked evidence) drops that tile for that metric only. The same resampled tile indices serve
    every metric (one ``seed``), so the intervals are reproducible. Raises ``InterpError`` when a
    result has no per-tile values or the two share no tile.
    """
    a, b = per_tile(result), per_tile(reference)
    if a is None or b is None:
        raise InterpError("these results hold no per-tile values (computed by an older version): compute them again")
    pos_b = {f: i for i, f in enumerate(b["file"])}
    common = [(i, pos_b[f]) for i, f in enumerate(a["file"]) if f in pos_b]
    if not common:
        raise InterpError("the two results share no tile: evaluate both on the same dataset and split")
    ia = np.array([c[0] for c in common])
    ib = np.array([c[1] for c in common])
    idx = bootstrap_indices(len(common), n_boot=n_boot, seed=seed)
    names = [k for k in a if k in b and k not in ("file", "group")]
    order = {k: i for i, k in enumerate(METRIC_ORDER)}
    names.sort(key=lambda k: (order.get(k, len(order)), k))
    out: list[Change] = []
    for k in names:
        va, vb = _values(a, k, ia), _values(b, k, ib)
        d = va - vb
        ok = np.isfinite(d)
        if not ok.any():
            continue
        dd = np.where(ok, d, 0.0)[idx]
        kk = ok[idx].sum(axis=1)
        boot = np.where(kk > 0, dd.sum(axis=1) / np.maximum(kk, 1), np.nan)
        lo, hi = percentile_interval(boot, level)
        out.append(Change(k, run, reference_name, float(vb[ok].mean()), float(va[ok].mean()), float(d[ok].mean()),
                          lo, hi, int(ok.sum()), _direction(k)))
    if "group" in a and "group" in b and "accuracy" in a and "accuracy" in b:
        ga, gb = np.array(a["group"], dtype=object)[ia], np.array(b["group"], dtype=object)[ib]
        if (ga == gb).all():
            groups = np.array([str(g) for g in ga])
            ca, cb = _values(a, "accuracy", ia), _values(b, "accuracy", ib)
            full = np.arange(len(common))[None]
            wa, wb = float(_worst_group(ca, groups, full)[0]), float(_worst_group(cb, groups, full)[0])
            lo, hi = percentile_interval(_worst_group(ca, groups, idx) - _worst_group(cb, groups, idx), level)
            pos = next((j for j, c in enumerate(out) if c.metric == "accuracy"), -1) + 1
            out.insert(pos, Change("worst_group_accuracy", run, reference_name, wb, wa, wa - wb, lo, hi,
                                   len(common), True))
    return out


def value_interval(result: Mapping[str, Any], metric: str, *, n_boot: int = N_BOOT, seed: int = 0,
                   level: float = LEVEL) -> tuple[float, float, float, int] | None:
    """``(mean, lo, hi, n)`` of one run's metric: Wilson for proportions, bootstrap of the mean
    otherwise (worst-group accuracy: bootstrap over tiles); None without per-tile values."""
    pt = per_tile(result)
    if pt is None or (metric not in pt and metric != "worst_group_accuracy"):
        return None
    if metric == "worst_group_accuracy":
        if "group" not in pt:
            return None
        c = _values(pt, "accuracy", np.arange(len(pt["file"])))
        groups = np.array([str(g) for g in pt["group"]])
        full = np.arange(c.size)[None]
        lo, hi = percentile_interval(_worst_group(c, groups, bootstrap_indices(c.size, n_boot=n_boot, seed=seed)),
                                     level)
        return float(_worst_group(c, groups, full)[0]), lo, hi, int(c.size)
    v = _values(pt, metric, np.arange(len(pt[metric])))
    v = v[np.isfinite(v)]
    if not v.size:
        return None
    if metric in PROPORTIONS:
        lo, hi = wilson_interval(int(round(v.sum())), v.size, level)
    else:
        lo, hi = bootstrap_mean_interval(v, n_boot=n_boot, seed=seed, level=level)
    return float(v.mean()), lo, hi, int(v.size)


# -- the reference run -------------------------------------------------------------------------------
def default_reference(configs: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The run the others were fine-tuned from (``config["init"]``), among ``configs`` (run folder ->
    config). ``init`` may be a path of another machine: a run of the same folder name then counts.
    The run most others started from wins; with no ``init`` among them, the first ERM run, else the
    first run; None for no runs."""
    keys = list(configs)
    if not keys:
        return None
    votes: dict[str, int] = {}
    for k, cfg in configs.items():
        init = cfg.get("init")
        if not init:
            continue
        init_p = Path(str(init))
        match = next((o for o in keys if o != k and _same_path(o, init_p)), None)
        match = match or next((o for o in keys if o != k and Path(o).name == init_p.name), None)
        if match:
            votes[match] = votes.get(match, 0) + 1
    if votes:
        return max(keys, key=lambda o: (votes.get(o, 0), -keys.index(o)))
    return next((k for k in keys if configs[k].get("objective") == "erm"), keys[0])


def _same_path(a: str, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


# -- words -----------------------------------------------------------------------------------------
def metric_name(metric: str) -> str:
    """The metric's plain-language name, lower case after the first word (``worst-group accuracy``)."""
    name = METRIC_TEXT.get(metric, (metric.replace("_", " "),))[0]
    return name[0].lower() + name[1:] if not name[:2].isupper() else name


def summary_counts(changes: Sequence[Change]) -> dict[str, list[Change]]:
    """Changes grouped by call: ``better``, ``worse``, ``changed``, ``no clear change``."""
    out: dict[str, list[Change]] = {"better": [], "worse": [], "changed": [], "no clear change": []}
    for c in changes:
        out[c.call].append(c)
    return out


def verdict_sentence(changes: Sequence[Change], *, bold: Callable[[str], str] = lambda s: s) -> str:
    """One run's verdict against the reference, as one paragraph, e.g.
    ``scaat against baseline-erm (200 tiles): better: sparseness (Gini) +0.051 [+0.043, +0.060]; worse:
    worst-group accuracy -0.050 [-0.090, -0.010]; no clear change: accuracy, deletion AUC.``
    ``bold`` marks up the run name and the words better/worse (``**...**`` for Markdown, ``<b>`` for HTML).
    """
    if not changes:
        return ""
    c0 = changes[0]
    n = max(c.n for c in changes)
    parts = summary_counts(changes)
    head = f"{bold(c0.run)} against {c0.reference} ({n} tiles, paired; 95% intervals): "
    if parts["better"] and not parts["worse"]:
        head += f"retraining helped on {len(parts['better'])} of {len(changes)} metrics and made none worse. "
    elif parts["worse"] and not parts["better"]:
        head += f"retraining made {len(parts['worse'])} of {len(changes)} metrics worse and none better. "
    elif parts["better"]:
        head += (f"mixed: {len(parts['better'])} of {len(changes)} metrics better, "
                 f"{len(parts['worse'])} worse. ")
    else:
        head += f"no clear change on any of the {len(changes)} metrics. "
    bits = []
    for key in ("better", "worse", "changed"):
        if parts[key]:
            bits.append(f"{bold(key.capitalize())}: " + "; ".join(f"{metric_name(c.metric)} {c.text()}" for c in parts[key]))
    if parts["no clear change"]:
        bits.append("No clear change: " + ", ".join(f"{metric_name(c.metric)} ({c.text()})"
                                                     for c in parts["no clear change"]))
    return head + ". ".join(bits) + "."


def verdict_note(n_metrics: int) -> str:
    """The caveat every verdict carries: many metrics, each tested on its own."""
    return (f"Each interval is a 95% bootstrap interval over tiles (resampled {N_BOOT} times, seeded). With "
            f"{n_metrics} metrics, about one interval in twenty can miss 0 by chance: read a single borderline "
            "call with care, and confirm a result on other seeds of the training.")


def share_lines(shares: dict[str, float | None]) -> str:
    """The relevance shares of one map (``{"evidence": 0.42, "artifact": 0.1}``, None where the tile
    has no such region) as short caption lines for a figure: ``"42% in evidence\\n10% on artifact"``."""
    lines = {"evidence": "{:.0%} in evidence", "artifact": "{:.0%} on artifact"}
    return "\n".join(fmt.format(shares[k]) for k, fmt in lines.items() if shares.get(k) is not None)
