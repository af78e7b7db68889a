"""End-to-end command line: every command on tiny data, JSON out, one-line errors, exit codes."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from interp_core.testing import run_cli


def _json(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_help_for_every_command():
    for cmd in ("make-data", "train", "evaluate", "explain", "compare"):
        p = run_cli(cmd, "--help")
        assert p.returncode == 0 and "--device" in p.stdout and "--seed" in p.stdout
    assert "--kl-weight" in run_cli("train", "--help").stdout


@pytest.mark.slow
def test_make_data_train_evaluate_explain_compare(tmp_path):
    data = tmp_path / "D"
    info = _json(run_cli("make-data", "synthetic-he", "--out", str(data), "--n-train", "24", "--n-val", "8",
                         "--n-test", "8", "--quiet"))
    assert info["kind"] == "synthetic-he"
    run = tmp_path / "R"
    res = _json(run_cli("train", "--data", str(data), "--objective", "erm", "--epochs", "1", "--batch-size", "8",
                        "--out", str(run), "--quiet"))
    assert res["epochs"] == 1 and (run / "model.safetensors").is_file()
    again = _json(run_cli("train", "--data", str(data), "--objective", "erm", "--epochs", "1", "--batch-size", "8",
                          "--out", str(run), "--quiet"))
    assert again["already_finished"] is True
    preds = tmp_path / "P.csv"
    metrics = tmp_path / "m.json"
    _json(run_cli("evaluate", "--run", str(run), "--data", str(data), "--out", str(metrics),
                  "--predictions", str(preds), "--quiet"))
    m = json.loads(metrics.read_text())
    for key in ("accuracy", "sparseness", "complexity", "deletion_auc", "insertion_auc", "pointing_game",
                "relevance_mass_accuracy", "relevance_rank_accuracy", "explanation_consistency"):
        assert set(m[key]) == {"mean", "std", "n"}, key
    assert m["run"] == str(run.resolve()) and m["n_tiles"] == 8
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == 8 and set(rows[0]) == {"file", "label", "pred", "confidence"}
    assert rows[0]["file"].startswith("test/") and rows[0]["label"] in ("normal", "tumor")
    assert (data / rows[0]["file"]).is_file()
    tile = data / rows[0]["file"]
    out_png, out_npy = tmp_path / "o.png", tmp_path / "o.npy"
    x = _json(run_cli("explain", "--run", str(run), "--image", str(tile), "--attribution", "gradcam",
                      "--out", str(out_png)))
    assert Image.open(out_png).size == (64, 64) and abs(sum(x["probabilities"].values()) - 1) < 1e-5
    _json(run_cli("explain", "--run", str(run), "--image", str(tile), "--target", "tumor", "--out", str(out_npy)))
    arr = np.load(out_npy, allow_pickle=False)
    assert arr.shape == (64, 64) and arr.dtype == np.float32
    report = tmp_path / "r.html"
    _json(run_cli("compare", "--runs", str(run), str(run), "--data", str(data), "--limit", "8", "--out", str(report),
                  "--quiet"))
    html = report.read_text()
    assert "<table" in html and "data:image/png;base64" in html and "plotly" in html.lower()
    assert "<scriptsrc=" not in html.replace(" ", "")  # self-contained: plotly.js is inline


@pytest.mark.parametrize("args,needle", [
    (["train", "--data", "/no/such/dir", "--epochs", "1", "--out", "/tmp/x"], "dataset folder not found"),
    (["make-data", "nonsense", "--out", "/tmp/x"], "unknown"),
    (["evaluate", "--run", "/no/run", "--data", "/tmp"], "run directory not found"),
    (["train", "--data", "/tmp", "--epochs", "0", "--out", "/tmp/x"], "--epochs must be at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    p = run_cli(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_explain_errors(tiny_run, tiny_data, tmp_path):
    img = next((tiny_data / "test" / "a").iterdir())
    p = run_cli("explain", "--run", str(tiny_run), "--image", str(img), "--attribution", "magic", "--out", str(tmp_path / "o.png"))
    assert p.returncode == 2 and "saliency" in p.stderr  # lists the valid methods
    p = run_cli("explain", "--run", str(tiny_run), "--image", str(img), "--target", "7", "--out", str(tmp_path / "o.png"))
    assert p.returncode == 2 and "out of range" in p.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    p = run_cli("explain", "--run", str(tiny_run), "--image", str(bad), "--out", str(tmp_path / "o.png"))
    assert p.returncode == 2 and "bad.png" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run_cli("train", "--data", str(tiny_data), "--epochs", "1", "--out", str(tmp_path / "r"), "--objective", "erm",
                "--q", "0.2")
    assert p.returncode == 2 and "do not apply to objective 'erm'" in p.stderr


def test_disk_errors_are_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    """A full disk (ENOSPC) while writing the run gives a one-line error, not a traceback."""
    import errno

    import interp_core.runs as runs
    from interp_core.cli import main

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(runs, "atomic_write", full)
    code = main(["train", "--data", str(tiny_data), "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0] and "config.json" in err[0]
