"""interp_core.evaluation.verdict: paired bootstrap changes, Wilson intervals, calls in each metric's direction."""
from __future__ import annotations

import math

import numpy as np
import pytest

from interp_core.evaluation import verdict as V
from interp_core.errors import InterpError


def _result(files, **per_tile):
    return {"details": {"per_tile": {"file": list(files), **{k: list(v) for k, v in per_tile.items()}}}}


def test_wilson_interval_hand_case():
    # 8 of 10 at 95% (z = 1.959964): centre (0.8 + z²/20) / (1 + z²/10), half-width z sqrt(0.016 + z²/400) / (1 + z²/10)
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    lo, hi = V.wilson_interval(8, 10)
    assert lo == pytest.approx(centre - half, abs=1e-12) and hi == pytest.approx(centre + half, abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)  # the textbook value
    assert V.wilson_interval(10, 10)[1] == pytest.approx(1.0) and V.wilson_interval(0, 10)[0] == pytest.approx(0.0)
    assert V.wilson_interval(0, 10)[1] > 0.2  # not empty at p = 0, unlike p ± z SE


def test_bootstrap_mean_interval_matches_an_explicit_numpy_loop():
    v = np.random.default_rng(3).normal(0.4, 0.2, size=57)
    lo, hi = V.bootstrap_mean_interval(v, n_boot=500, seed=7)
    rng = np.random.default_rng(7)
    draws = rng.integers(0, v.size, size=(500, v.size))
    means = [float(np.mean([v[j] for j in row])) for row in draws]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    # and it agrees with the normal-theory interval of the mean within a few percent of its width
    se = v.std(ddof=1) / math.sqrt(v.size)
    assert lo == pytest.approx(v.mean() - 1.96 * se, abs=0.25 * 1.96 * se)
    assert hi == pytest.approx(v.mean() + 1.96 * se, abs=0.25 * 1.96 * se)


def test_constant_paired_difference_has_a_point_interval_and_respects_direction():
    files = [f"t{i}.png" for i in range(20)]
    base = np.linspace(0.1, 0.5, 20)
    ref = _result(files, sparseness=base, deletion_auc=base, complexity=base)
    run = _result(files, sparseness=base + 0.05, deletion_auc=base + 0.05, complexity=base)
    ch = {c.metric: c for c in V.compare(run, ref, run="scaat", reference_name="erm")}
    assert ch["sparseness"].diff == pytest.approx(0.05)
    assert (ch["sparseness"].lo, ch["sparseness"].hi) == pytest.approx((0.05, 0.05))
    assert ch["sparseness"].call == "better"  # higher Gini is better
    assert ch["deletion_auc"].call == "worse"  # higher deletion AUC is worse
    assert ch["complexity"].call == "no clear change"  # zero difference
    assert ch["sparseness"].before == pytest.approx(base.mean()) and ch["sparseness"].after == pytest.approx(
        base.mean() + 0.05)


def test_paired_change_matches_reference_loop_with_missing_values_and_shuffled_tiles():
    rng = np.random.default_rng(0)
    n = 40
    files = [f"t{i}.png" for i in range(n)]
    a = rng.random(n)
    b = a + rng.normal(0.02, 0.05, n)
    b_list = [None if i % 7 == 0 else float(x) for i, x in enumerate(b)]  # undefined on some tiles
    perm = rng.permutation(n)  # the reference stores its tiles in another order
    ref = _result([files[i] for i in perm], pointing_game=[a[i] for i in perm])
    run = _result(files, pointing_game=b_list)
    (c,) = V.compare(run, ref, n_boot=300, seed=5)
    draws = np.random.default_rng(5).integers(0, n, size=(300, n))
    d = np.array([np.nan if v is None else v - a[i] for i, v in enumerate(b_list)])
    means = [np.nanmean(d[row]) for row in draws]
    assert (c.lo, c.hi) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    assert c.diff == pytest.approx(np.nanmean(d)) and c.n == int(np.isfinite(d).sum())


def test_worst_group_change_is_recomputed_on_every_resample():
    files = [f"t{i}.png" for i in range(12)]
    groups = ["a"] * 6 + ["b"] * 6
    before = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]  # a 1.0, b 0.667 -> worst 0.667
    after = [1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1]  # a 0.5, b 1.0 -> worst 0.5
    ch = {c.metric: c for c in V.compare(_result(files, accuracy=after, group=groups),
                                         _result(files, accuracy=before, group=groups), n_boot=400, seed=1)}
    w = ch["worst_group_accuracy"]
    assert (w.before, w.after, w.diff) == pytest.approx((4 / 6, 0.5, 0.5 - 4 / 6))
    draws = np.random.default_rng(1).integers(0, 12, size=(400, 12))
    g = np.array(groups)

    def worst(c, row):
        return min(np.mean([c[j] for j in row if g[j] == k]) for k in "ab" if (g[row] == k).any())

    ref = [worst(after, r) - worst(before, r) for r in draws]
    assert (w.lo, w.hi) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])), abs=1e-12)
    assert list(ch)[:2] == ["accuracy", "worst_group_accuracy"]
    mean, lo, hi, n = V.value_interval(_result(files, accuracy=before, group=groups), "worst_group_accuracy")
    assert mean == pytest.approx(4 / 6) and lo <= mean <= hi and n == 12


def test_value_interval_uses_wilson_for_proportions_and_bootstrap_otherwise():
    files = [f"t{i}.png" for i in range(10)]
    r = _result(files, accuracy=[1] * 8 + [0] * 2, sparseness=np.linspace(0, 1, 10))
    assert V.value_interval(r, "accuracy")[1:3] == pytest.approx(V.wilson_interval(8, 10))
    assert V.value_interval(r, "sparseness")[1:3] == pytest.approx(V.bootstrap_mean_interval(np.linspace(0, 1, 10)))
    assert V.value_interval({"accuracy": {"mean": 1}}, "accuracy") is None


def test_compare_refuses_results_without_per_tile_values_or_shared_tiles():
    with pytest.raises(InterpError, match="per-tile"):
        V.compare({"details": {}}, _result(["a"], accuracy=[1]))
    with pytest.raises(InterpError, match="share no tile"):
        V.compare(_result(["a"], accuracy=[1]), _result(["b"], accuracy=[1]))


def test_default_reference_is_the_run_the_others_started_from():
    cfgs = {"/x/erm": {"objective": "erm"}, "/x/scaat": {"objective": "scaat", "init": "/other/machine/erm"},
            "/x/ece": {"objective": "ece", "init": "/x/erm"}, "/x/sgt": {"objective": "sgt"}}
    assert V.default_reference(cfgs) == "/x/erm"
    assert V.default_reference({"/x/b": {"objective": "scaat"}, "/x/a": {"objective": "erm"}}) == "/x/a"
    assert V.default_reference({"/x/b": {"objective": "scaat"}}) == "/x/b"
    assert V.default_reference({}) is None


def test_verdict_sentence_names_better_worse_and_unchanged_metrics():
    mk = lambda m, d, lo, hi, hib: V.Change(m, "scaat", "erm", 0.5, 0.5 + d, d, lo, hi, 200, hib)  # noqa: E731
    changes = [mk("accuracy", 0.005, -0.01, 0.02, True), mk("worst_group_accuracy", -0.05, -0.09, -0.01, True),
               mk("sparseness", 0.051, 0.043, 0.060, True), mk("deletion_auc", -0.02, -0.03, -0.01, False)]
    s = V.verdict_sentence(changes, bold=lambda t: f"**{t}**")
    assert s.startswith("**scaat** against erm (200 tiles")
    assert "mixed: 2 of 4 metrics better, 1 worse" in s
    assert "**Better**: sparseness (Gini) +0.051 [+0.043, +0.060]; deletion AUC -0.020 [-0.030, -0.010]" in s
    assert "**Worse**: worst-group accuracy -0.050 [-0.090, -0.010]" in s
    assert "No clear change: accuracy (+0.005 [-0.010, +0.020])" in s


def test_evaluate_stores_per_tile_values_and_a_run_compared_with_itself_is_unchanged(tiny_run, tiny_data):
    from interp_core.evaluation.evaluate import EvalSettings, evaluate_run
    res = evaluate_run(tiny_run, tiny_data, EvalSettings(limit=8))
    pt = res["details"]["per_tile"]
    assert len(pt["file"]) == 8 and len(pt["accuracy"]) == 8 and len(pt["group"]) == 8
    assert np.nanmean([np.nan if v is None else v for v in pt["sparseness"]]) == pytest.approx(
        res["sparseness"]["mean"], abs=1e-6)
    changes = V.compare(res, res)
    assert {c.metric for c in changes} >= {"accuracy", "worst_group_accuracy", "sparseness", "deletion_auc"}
    assert all(c.diff == 0 and c.call == "no clear change" for c in changes)


def test_report_examples_are_random_but_seeded_and_spread_over_classes():
    from interp_core.viz.report import example_indices
    labels = [0] * 50 + [1] * 50
    a, b = example_indices(labels, 6, seed=0), example_indices(labels, 6, seed=0)
    assert a == b and a != example_indices(labels, 6, seed=1)
    assert a != [0, 1, 2, 50, 51, 52]  # not the first files
    assert sum(i < 50 for i in a) == 3


def test_same_partition_detects_groups_equal_to_classes():
    from interp_core.viz.verdict_figures import same_partition
    cls = {"normal": {"mean": 0.9, "n": 10}, "tumor": {"mean": 0.8, "n": 12}}
    assert same_partition(cls, {"normal|x": {"mean": 0.8, "n": 12}, "tumor|x": {"mean": 0.9, "n": 10}})
    assert not same_partition(cls, {"a": {"mean": 0.9, "n": 5}, "b": {"mean": 0.9, "n": 5},
                                    "c": {"mean": 0.8, "n": 12}})


def test_tiny_changes_get_enough_digits():
    c = V.Change("explanation_consistency", "a", "b", 0.9, 0.90012, 0.00012, 0.00004, 0.00021, 80, True)
    assert c.call == "better" and c.text() == "+0.00012 [+0.00004, +0.00021]"
    assert V.Change("sparseness", "a", "b", 0.4, 0.45, 0.05, 0.04, 0.06, 9, True).text() == "+0.050 [+0.040, +0.060]"
