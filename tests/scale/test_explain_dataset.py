"""Sharded, resumable dataset-wide explain jobs (interp_core.evaluation.explain_dataset) and the ``explain --data`` CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interp_core.errors import InterpError
from interp_core.evaluation.explain_dataset import explain_dataset
from interp_core.evaluation.shards import MANIFEST, load_shards, read_manifest, shard_name
from interp_core.testing import cli_in_process


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from interp_core.testing import make_tiny_dataset
    return make_tiny_dataset(tmp_path_factory.mktemp("d") / "ds", n_per_class=6, size=16, classes=("normal", "tumor"))


class Interrupt(Exception):
    pass


def _shard_bytes(out):
    return {p.name: {k: v.copy() for k, v in np.load(p, allow_pickle=False).items()} for p in sorted(out.glob("shard_*.npz"))}


@pytest.mark.parametrize("method", ["saliency", "smoothgrad"])
def test_shards_hold_what_attribute_gives(data, fake_run, tmp_path, method):
    from interp_core.attribution import attribute, seed_option
    from interp_core.data import open_split
    from interp_core.runs import load_run
    out = tmp_path / "x"
    info = explain_dataset(fake_run, data, "test", out, method=method, shard_size=5, batch_size=3, device="cpu",
                           seed=3)
    assert info["n_tiles"] == 12 and info["n_shards"] == 3 and info["complete"] and info["shards_written"] == 3
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, shard_name(0), shard_name(1), shard_name(2)]
    run = load_run(fake_run)
    ds = open_split(data, "test", image_size=16)
    x = torch.stack([ds[i]["image"] for i in range(12)])
    with torch.no_grad():
        p = torch.softmax(run.model(x), 1)
    ref = attribute(run.model, x, method, p.argmax(1), **seed_option(method, 3)).numpy()
    shards = list(load_shards(out))
    assert [len(s) for s in shards] == [5, 5, 2]
    got = np.concatenate([s.attributions for s in shards])
    assert got.dtype == np.float32 and got.shape == (12, 16, 16)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=1e-3 * np.abs(ref).max())  # float16 storage
    np.testing.assert_array_equal(np.concatenate([s.indices for s in shards]), np.arange(12))
    np.testing.assert_array_equal(np.concatenate([s.labels for s in shards]), ds.labels)
    np.testing.assert_array_equal(np.concatenate([s.predictions for s in shards]), p.argmax(1).numpy())
    np.testing.assert_array_equal(np.concatenate([s.targets for s in shards]), p.argmax(1).numpy())
    np.testing.assert_allclose(np.concatenate([s.probabilities for s in shards]), p.numpy(), rtol=1e-5, atol=1e-6)
    assert list(np.concatenate([s.files for s in shards])) == ds.ids
    with np.load(out / shard_name(0), allow_pickle=False) as z:  # plain arrays, no objects
        assert z["attributions"].dtype == np.float16 and float(np.abs(z["attributions"]).max()) == 1.0
        assert z["files"].dtype.kind == "U"


def test_tiny_gradients_survive_float16(data, fake_run, tmp_path):
    """Maps far below float16's normal range (6e-5) come back with their relative precision."""
    from interp_core.runs import load_run
    run = load_run(fake_run)
    with torch.no_grad():
        run.model.head.weight.mul_(1e-6)
    out = tmp_path / "x"
    explain_dataset(run, data, "test", out, shard_size=12, device="cpu", limit=4)
    shard = next(load_shards(out))
    with np.load(out / shard_name(0), allow_pickle=False) as z:
        assert z["scales"].max() < 1e-4 and (z["scales"] > 0).all()
    top = np.abs(shard.attributions).reshape(4, -1).max(1)
    np.testing.assert_allclose(top, np.load(out / shard_name(0))["scales"], rtol=1e-3)


def test_interrupted_job_resumes_without_redoing_finished_shards(data, fake_run, tmp_path):
    full = tmp_path / "full"
    explain_dataset(fake_run, data, "test", full, shard_size=5, device="cpu")
    out = tmp_path / "x"

    def stop_after_first(k):
        if k == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        explain_dataset(fake_run, data, "test", out, shard_size=5, device="cpu", on_shard=stop_after_first)
    m = read_manifest(out)
    assert m["shards_done"] == [0] and not m["complete"]
    assert sorted(p.name for p in out.glob("shard_*")) == [shard_name(0)]
    assert not list(out.glob(".*tmp"))
    first_mtime = (out / shard_name(0)).stat().st_mtime_ns
    with pytest.raises(Exception, match="missing"):
        list(load_shards(out, require_complete=True))
    assert [s.index for s in load_shards(out)] == [0]

    seen = []
    info = explain_dataset(fake_run, data, "test", out, shard_size=5, device="cpu", on_shard=seen.append)
    assert seen == [1, 2] and info["shards_written"] == 2 and info["complete"]
    assert (out / shard_name(0)).stat().st_mtime_ns == first_mtime
    a, b = _shard_bytes(full), _shard_bytes(out)
    assert a.keys() == b.keys()
    for name in a:
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key], err_msg=f"{name}:{key}")
    again = explain_dataset(fake_run, data, "test", out, shard_size=5, device="cpu", on_shard=seen.append)
    assert again["shards_written"] == 0 and seen == [1, 2]


def test_a_damaged_shard_is_redone(data, fake_run, tmp_path):
    out = tmp_path / "x"
    explain_dataset(fake_run, data, "test", out, shard_size=5, device="cpu")
    good = _shard_bytes(out)[shard_name(1)]
    (out / shard_name(1)).write_bytes(b"truncated")
    info = explain_dataset(fake_run, data, "test", out, shard_size=5, device="cpu")
    assert info["shards_written"] == 1
    redone = _shard_bytes(out)[shard_name(1)]
    for key in good:
        np.testing.assert_array_equal(good[key], redone[key])


def test_another_job_in_the_same_folder_is_refused(data, fake_run, tmp_path, helpers):
    out = tmp_path / "x"
    explain_dataset(fake_run, data, "test", out, shard_size=5, device="cpu", limit=4)
    with pytest.raises(InterpError, match=r"another explain job \(different method, method_options\)"):
        explain_dataset(fake_run, data, "test", out, shard_size=5, device="cpu", limit=4, method="smoothgrad")
    with pytest.raises(InterpError, match=r"different split"):
        explain_dataset(fake_run, data, "val", out, shard_size=5, device="cpu", limit=4)
    with pytest.raises(InterpError, match=r"different shard_size"):
        explain_dataset(fake_run, data, "test", out, shard_size=4, device="cpu", limit=4)
    other = helpers.make_run(tmp_path / "other", image_size=16, seed=5)
    with pytest.raises(InterpError, match=r"different run"):  # same folder name would not help: weights differ
        explain_dataset(other, data, "test", out, shard_size=5, device="cpu", limit=4)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InterpError, match="not empty and holds no manifest.json"):
        explain_dataset(fake_run, data, "test", tmp_path / "busy", device="cpu")
    with pytest.raises(InterpError, match="shard_size must be a positive integer"):
        explain_dataset(fake_run, data, "test", tmp_path / "y", shard_size=0, device="cpu")


def test_weights_changed_in_place_are_a_different_run(data, tmp_path, helpers):
    run = helpers.make_run(tmp_path / "r", image_size=16, seed=1)
    out = tmp_path / "x"
    explain_dataset(run, data, "test", out, device="cpu", limit=2)
    helpers.make_run(tmp_path / "r", image_size=16, seed=2)  # retrained into the same folder
    with pytest.raises(InterpError, match="different run"):
        explain_dataset(run, data, "test", out, device="cpu", limit=2)


_cli = cli_in_process


def test_cli_explain_data_mode_and_its_errors(data, fake_run, tmp_path, capsys):
    out = tmp_path / "x"
    code, stdout, stderr = _cli(capsys, "explain", "--run", str(fake_run), "--data", str(data), "--split", "test",
                                "--out", str(out), "--shard-size", "8", "--device", "cpu")
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["n_shards"] == 2 and info["shards_written"] == 2 and info["complete"] is True
    assert "12/12" in stderr  # the tqdm bar
    code, stdout, stderr = _cli(capsys, "explain", "--run", str(fake_run), "--data", str(data), "--out", str(out),
                                "--shard-size", "8", "--device", "cpu", "--quiet")
    assert code == 0 and json.loads(stdout)["shards_written"] == 0 and stderr == ""
    code, _, stderr = _cli(capsys, "explain", "--run", str(fake_run), "--data", str(data), "--image", "x.png",
                           "--out", str(out))
    assert code == 2 and "not allowed with argument" in stderr
    code, _, stderr = _cli(capsys, "explain", "--run", str(fake_run), "--out", str(out))
    assert code == 2 and "one of the arguments --image --data is required" in stderr
    code, _, stderr = _cli(capsys, "explain", "--run", str(fake_run), "--data", str(data), "--out", str(out),
                           "--shard-size", "3", "--device", "cpu", "--quiet")
    assert code == 2 and stderr.startswith("error:") and "different shard_size" in stderr
    assert len(stderr.strip().splitlines()) == 1
