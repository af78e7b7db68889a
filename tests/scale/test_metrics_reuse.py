"""Evaluation from the stored maps of a sharded explain job (``evaluate --attributions DIR``, the Metrics page).

Tolerance of "stored maps give the fresh metrics": a stored map is ``a / max|a|`` in float16 times
its float32 scale, so every value keeps its relative precision to 2^-11 (11-bit significand), and
values below 2^-14 of the maximum (subnormal) an absolute error of at most 2^-25 of the maximum.
Continuous functionals of the map (Gini sparseness, entropy complexity, relevance mass) therefore
move by about 1e-3 at most; metrics that rank pixels (deletion/insertion AUC, pointing game,
relevance rank) may change only where rounding creates or breaks a near tie, which moves one
pixel by one deletion step (AUC change well under 1e-2 at 32 steps) or flips one tile's
pointing-game hit (1/n). Metrics not read from the map (accuracy, consistency, attack flip rate)
must be identical.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from interp_core.errors import InterpError
from interp_core.evaluation.evaluate import EvalSettings, cache_key, cached_evaluate, evaluate_run, evaluate_with_stored_maps
from interp_core.evaluation.explain_dataset import explain_dataset
from interp_core.evaluation.shards import MANIFEST, StoredMaps, default_job_dir, maps_fingerprint, read_manifest, shard_name
from interp_core.testing import cli_in_process

CPU = torch.device("cpu")
SAME = ("accuracy", "explanation_consistency", "attack_flip_rate")
CONTINUOUS = ("sparseness", "complexity", "relevance_mass_accuracy")
RANKED = ("deletion_auc", "insertion_auc", "relevance_rank_accuracy")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from interp_core.testing import make_tiny_dataset
    return make_tiny_dataset(tmp_path_factory.mktemp("d") / "ds", n_per_class=6, size=16, classes=("normal", "tumor"))


def _settings(method: str = "saliency", **kw) -> EvalSettings:
    return EvalSettings(split="test", attribution=method, batch_size=4, **kw)


def _assert_same_metrics(fresh: dict, stored: dict) -> None:
    n = fresh["n_tiles"]
    assert stored["n_tiles"] == n
    for k in SAME:
        assert stored[k]["mean"] == fresh[k]["mean"], k
    for k in CONTINUOUS:
        assert stored[k]["mean"] == pytest.approx(fresh[k]["mean"], abs=1e-3), k
    for k in RANKED:
        assert stored[k]["mean"] == pytest.approx(fresh[k]["mean"], abs=1e-2), k
    assert abs(stored["pointing_game"]["mean"] - fresh["pointing_game"]["mean"]) <= 1 / n + 1e-9
    np.testing.assert_allclose(stored["details"]["curves"]["deletion"], fresh["details"]["curves"]["deletion"],
                               atol=1e-2)


@pytest.mark.parametrize("method", ["saliency", "smoothgrad"])
def test_stored_maps_give_the_fresh_metrics(data, fake_run, tmp_path, method):
    out = tmp_path / "maps"
    explain_dataset(fake_run, data, "test", out, method=method, shard_size=5, device="cpu")
    s = _settings(method)
    fresh = evaluate_run(fake_run, data, s, device=CPU)
    stored = evaluate_run(fake_run, data, s, device=CPU, attributions=out)
    _assert_same_metrics(fresh, stored)
    info = stored["details"]["attribution_maps"]
    assert info["folder"] == str(out) and info["target_mismatches"] == 0
    assert info["fingerprint"] == maps_fingerprint(read_manifest(out))
    assert "attribution_maps" not in fresh["details"]


def test_maps_are_matched_by_dataset_index_and_read_one_shard_at_a_time(data, fake_run, tmp_path):
    out = tmp_path / "maps"
    explain_dataset(fake_run, data, "test", out, shard_size=5, device="cpu")
    reader = StoredMaps(out)
    a, t = reader.get(np.arange(12))
    assert a.shape == (12, 16, 16) and reader.shard_reads == 3  # in order: each shard read once
    # shuffle the rows of shard 1 on disk: lookups by index must not change
    with np.load(out / shard_name(1), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    perm = np.array([3, 0, 4, 2, 1])
    np.savez(out / shard_name(1), **{k: v[perm] for k, v in arrays.items()})
    b, u = StoredMaps(out).get(np.arange(12))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(t, u)
    s = _settings(limit=5)  # a stratified subset of the job's tiles
    fresh = evaluate_run(fake_run, data, s, device=CPU)
    stored = evaluate_run(fake_run, data, s, device=CPU, attributions=out)
    _assert_same_metrics(fresh, stored)
    with pytest.raises(Exception, match="no stored map for tile 12"):
        StoredMaps(out).get([12])


def test_a_job_over_a_subset_serves_smaller_subsets_only(data, fake_run, tmp_path):
    out = tmp_path / "maps"
    explain_dataset(fake_run, data, "test", out, shard_size=4, device="cpu", limit=6)
    small = _settings(limit=4)  # stratified subsets are nested: the 4 are among the 6
    _assert_same_metrics(evaluate_run(fake_run, data, small, device=CPU),
                         evaluate_run(fake_run, data, small, device=CPU, attributions=out))
    with pytest.raises(InterpError, match=r"tiles: 6 of the 12 evaluated tiles are not in the shards"):
        evaluate_run(fake_run, data, _settings(), device=CPU, attributions=out)


def test_a_mismatching_job_is_refused_naming_the_field(data, fake_run, tmp_path, helpers):
    out = tmp_path / "maps"
    explain_dataset(fake_run, data, "test", out, shard_size=5, device="cpu", limit=6, method="smoothgrad", seed=1)
    s = _settings("smoothgrad", limit=6, seed=1)
    evaluate_run(fake_run, data, s, device=CPU, attributions=out)  # the matching evaluation works
    cases = [
        (fake_run, _settings("saliency", limit=6, seed=1), "method: 'smoothgrad' stored, 'saliency' here"),
        (fake_run, _settings("smoothgrad", limit=6, seed=2), "method_options: {'seed': 1} stored, {'seed': 2} here"),
        (helpers.make_run(tmp_path / "other", seed=7), s, "run weights SHA-1"),
        (fake_run, EvalSettings(split="val", attribution="smoothgrad", limit=6, seed=1), "split: 'test' stored"),
    ]
    for run, settings, field in cases:
        with pytest.raises(InterpError) as e:
            evaluate_run(run, data, settings, device=CPU, attributions=out)
        msg = str(e.value)
        assert field in msg and "stored attributions do not fit" in msg and "\n" not in msg, msg
    other_data = tmp_path / "ds2"
    shutil.copytree(data, other_data)
    (other_data / "dataset.json").write_text(json.dumps({"other": True}))
    with pytest.raises(InterpError, match="dataset fingerprint"):
        evaluate_run(fake_run, other_data, s, device=CPU, attributions=out)
    (out / shard_name(1)).unlink()
    with pytest.raises(InterpError, match=r"complete: 1 of 2 shards missing"):
        evaluate_run(fake_run, data, s, device=CPU, attributions=out)
    with pytest.raises(InterpError, match="not an explain-shards folder"):
        evaluate_run(fake_run, data, s, device=CPU, attributions=tmp_path / "nothing")


def test_results_from_stored_maps_are_cached_under_their_own_key(data, helpers, tmp_path):
    run = helpers.make_run(tmp_path / "run")
    out = tmp_path / "maps"
    explain_dataset(run, data, "test", out, shard_size=6, device="cpu")
    s = _settings()
    fp = maps_fingerprint(read_manifest(out))
    assert cache_key(run, data, s, fp) != cache_key(run, data, s)
    stored = cached_evaluate(run, data, s, device=CPU, attributions=out)
    fresh = cached_evaluate(run, data, s, device=CPU)
    cached = {p.stem for p in (run / "eval_cache").glob("*.json")}
    assert cached == {cache_key(run, data, s, fp), cache_key(run, data, s)}
    assert "attribution_maps" in stored["details"] and "attribution_maps" not in fresh["details"]
    again = cached_evaluate(run, data, s, device=CPU, attributions=out)  # from disk: same seconds
    assert again["details"]["seconds"] == stored["details"]["seconds"]


def test_evaluate_with_stored_maps_writes_then_reuses_the_job_beside_the_run(data, helpers, tmp_path):
    run = helpers.make_run(tmp_path / "run")
    s = _settings("smoothgrad", limit=6)
    phases = []
    res, use = evaluate_with_stored_maps(run, data, s, device=CPU, progress=lambda p, d, t: phases.append(p))
    folder = default_job_dir(run, "test", "smoothgrad")
    assert folder == run / "attributions" / "test-smoothgrad"
    assert use.folder == folder and not use.reused and use.note is None
    assert read_manifest(folder)["complete"] and read_manifest(folder)["limit"] == 6
    assert phases[0] == "maps" and phases[-1] == "metrics"
    assert res["details"]["attribution_maps"]["folder"] == str(folder)
    stamp = (folder / shard_name(0)).stat().st_mtime_ns
    _, use = evaluate_with_stored_maps(run, data, _settings("smoothgrad", limit=4), device=CPU)
    assert use.reused and (folder / shard_name(0)).stat().st_mtime_ns == stamp  # 4 of the 6: reused as is
    _, use = evaluate_with_stored_maps(run, data, _settings("smoothgrad"), device=CPU)  # all 12: job redone
    assert not use.reused and read_manifest(folder)["limit"] is None and read_manifest(folder)["n_tiles"] == 12
    _, use = evaluate_with_stored_maps(run, data, _settings("saliency"), device=CPU, store=False)
    assert use.folder is None and not default_job_dir(run, "test", "saliency").exists()


def test_a_stale_job_is_replaced_and_an_unwritable_run_falls_back(data, helpers, tmp_path):
    run = helpers.make_run(tmp_path / "run", seed=1)
    s = _settings("smoothgrad", limit=4)
    evaluate_with_stored_maps(run, data, s, device=CPU)
    old = read_manifest(default_job_dir(run, "test", "smoothgrad"))["run"]["weights_sha1"]
    helpers.make_run(tmp_path / "run", seed=2)  # retrained in place
    res, use = evaluate_with_stored_maps(run, data, s, device=CPU)
    assert use.folder is not None and not use.reused
    assert read_manifest(use.folder)["run"]["weights_sha1"] != old
    # a run folder where nothing can be written below attributions/ (a file stands in the way; as root,
    # chmod would not stop the write)
    ro = helpers.make_run(tmp_path / "ro")
    (ro / "attributions").write_text("not a folder")
    res, use = evaluate_with_stored_maps(ro, data, s, device=CPU)
    assert use.folder is None and "maps not stored" in use.note and "computed directly" in use.note
    fresh = evaluate_run(ro, data, s, device=CPU)
    assert res["sparseness"] == fresh["sparseness"] and "attribution_maps" not in res["details"]
    busy = helpers.make_run(tmp_path / "busy")
    default_job_dir(busy, "test", "smoothgrad").mkdir(parents=True)
    (default_job_dir(busy, "test", "smoothgrad") / "notes.txt").write_text("mine")
    _, use = evaluate_with_stored_maps(busy, data, s, device=CPU)
    assert use.folder is None and "not empty" in use.note
    assert (default_job_dir(busy, "test", "smoothgrad") / "notes.txt").read_text() == "mine"


_cli = cli_in_process


def test_cli_evaluate_attributions(data, fake_run, tmp_path, capsys):
    out = tmp_path / "maps"
    explain_dataset(fake_run, data, "test", out, shard_size=5, device="cpu", limit=6)
    base = ("evaluate", "--run", str(fake_run), "--data", str(data), "--limit", "6", "--device", "cpu", "--quiet")
    code, stdout, stderr = _cli(capsys, *base, "--attributions", str(out))
    assert code == 0, stderr
    res = json.loads(stdout)
    assert res["details"]["attribution_maps"]["folder"] == str(out) and res["n_tiles"] == 6
    code, stdout, _ = _cli(capsys, *base)
    _assert_same_metrics(json.loads(stdout), res)
    code, _, stderr = _cli(capsys, *base, "--attributions", str(out), "--attribution", "gradcam")
    assert code == 2 and stderr.startswith("error:") and "method: 'saliency' stored, 'gradcam' here" in stderr
    assert len(stderr.strip().splitlines()) == 1


# -- the Metrics page --------------------------------------------------------------------------------
def test_metrics_page_reuses_an_existing_shard_folder(h, app_env):
    runs = app_env / "sample_data" / "runs" / "synthetic-he"
    data = app_env / "sample_data" / "data" / "synthetic-he"
    baseline = runs / "baseline"
    folder = default_job_dir(baseline, "test", "smoothgrad")
    try:
        explain_dataset(baseline, data, "test", folder, method="smoothgrad", shard_size=6, device="cpu")
        stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard_*.npz")}
        at = h.open_page("metrics")
        keys = at.sidebar.multiselect(key="sidebar.runs").options
        at.sidebar.multiselect(key="sidebar.runs").set_value([k for k in keys if k.endswith("baseline")]).run()
        at.selectbox(key="metrics.method").set_value("smoothgrad").run()
        at.number_input(key="metrics.limit").set_value(10).run()
        assert any("Not computed yet" in i.value for i in at.info)
        assert any("resumes where it stopped" in i.value for i in at.info)  # the page says maps are kept
        at.button(key="metrics.compute").click().run()
        h.assert_clean(at)
        assert any("Saliency maps computed earlier were reused for synthetic-he / baseline" in c.value
                   for c in at.caption), [c.value for c in at.caption]
        assert len(at.dataframe[0].value.columns) == 2 + 1  # metric, better, one model
        assert {p.name: p.stat().st_mtime_ns for p in folder.glob("shard_*.npz")} == stamps  # not recomputed
        fp = maps_fingerprint(read_manifest(folder))
        s = EvalSettings(split="test", attribution="smoothgrad", limit=10)
        assert (baseline / "eval_cache" / f"{cache_key(baseline, data, s, fp)}.json").is_file()
        again = h.open_page("metrics")  # a new session: found on disk, caption again, nothing to compute
        again.sidebar.multiselect(key="sidebar.runs").set_value([k for k in keys if k.endswith("baseline")]).run()
        again.selectbox(key="metrics.method").set_value("smoothgrad").run()
        again.number_input(key="metrics.limit").set_value(10).run()
        assert not [b for b in again.button if b.key == "metrics.compute"]
        assert any("Saliency maps computed earlier were reused" in c.value for c in again.caption)
    finally:
        shutil.rmtree(baseline / "attributions", ignore_errors=True)
        shutil.rmtree(baseline / "eval_cache", ignore_errors=True)


def test_a_job_whose_split_files_changed_is_refused(fake_run, tmp_path):
    """The same number of tiles, but one file removed and another added: every index still exists,
    yet from index 5 on the indices stand for other files. Matching by index alone would score those
    tiles with other tiles' maps; the job's tile digest (file names and labels) refuses it."""
    from interp_core.testing import make_tiny_dataset
    data = make_tiny_dataset(tmp_path / "ds", n_per_class=6, size=16, classes=("normal", "tumor"))
    out = tmp_path / "maps"
    explain_dataset(fake_run, data, "test", out, shard_size=5, device="cpu")
    s = _settings("saliency")
    evaluate_run(fake_run, data, s, device=CPU, attributions=out)  # unchanged folder: accepted
    normal = sorted((data / "test" / "normal").iterdir())
    tumor = sorted((data / "test" / "tumor").iterdir())
    normal[-1].unlink()
    shutil.copy(tumor[0], tumor[0].with_name("zzz_added" + tumor[0].suffix))
    with pytest.raises(InterpError, match="files or labels changed"):
        evaluate_run(fake_run, data, s, device=CPU, attributions=out)


def test_two_sessions_computing_the_same_maps_wait_for_each_other(data, helpers, tmp_path):
    """Two dashboard sessions (threads) press Compute for the same run and method at once: one
    writes the job, the other waits for the folder's lock and reuses it; both get the metrics and
    the job is complete (without the lock both wrote the manifest and one could see it incomplete)."""
    import threading

    run = helpers.make_run(tmp_path / "run")
    s = _settings("smoothgrad", limit=6)
    results, errors = [], []

    def session() -> None:
        try:
            results.append(evaluate_with_stored_maps(run, data, s, device=CPU))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=session) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(use.reused for _, use in results) == [False, True]
    assert read_manifest(default_job_dir(run, "test", "smoothgrad"))["complete"]
    assert results[0][0]["sparseness"] == results[1][0]["sparseness"]
