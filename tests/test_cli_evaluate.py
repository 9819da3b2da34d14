"""`mnistdiff evaluate` end to end: a tiny checkpoint, an NPZ of real digits, bad input."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mnistdiff.cli import app
from mnistdiff.data import load_split
from mnistdiff.evaluation import REPORT_KEYS
from mnistdiff.npz import load_npz_samples, save_npz_samples

runner = CliRunner()


def invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_evaluate_checkpoint_sweep(tiny_checkpoint, mnist_dir, tmp_path):
    report = tmp_path / "report.json"
    out = invoke("evaluate", "-k", tiny_checkpoint, "--n", 40, "--guidance-sweep", "0,2",
                 "--steps", 5, "--guidance-interval", "0,0.6", "--data-dir", mnist_dir,
                 "--out", report)
    assert "real (train)" in out
    data = json.loads(report.read_text())
    assert set(REPORT_KEYS) <= set(data)
    assert [r["guidance"] for r in data["results"]] == [0.0, 2.0]
    for row in data["results"]:
        assert row["n"] == 40 and row["steps"] == 5 and row["sampler"] == "ddim"
        assert row["nfe"] == 5 and row["fid"] > 0 and 0 <= row["accuracy"] <= 1
        assert row["guidance_interval"] == [0.0, 0.6] and row["spacing"] == "linspace"
        assert [c["n"] for c in row["per_class"]] == [4] * 10  # balanced across classes
    # T = 50, 5 steps at t = 49, 37, 24, 12, 0: t / 49 <= 0.6 at three of them
    assert [r["passes"] for r in data["results"]] == [5, 8]  # w = 0 is one pass everywhere
    assert data["real_floor"]["n"] == 40 and data["real_floor"]["accuracy"] > 0.9
    assert Image.open(report.with_suffix(".png")).size[0] > 100  # the sweep plot


def test_evaluate_saves_its_samples_and_the_classification_accuracy_score(tiny_checkpoint,
                                                                          mnist_dir, tmp_path):
    report, npz = tmp_path / "r.json", tmp_path / "s.npz"
    out = invoke("evaluate", "-k", tiny_checkpoint, "--n", 40, "--steps", 3, "--cas",
                 "--cas-epochs", 1, "--npz", npz, "--data-dir", mnist_dir, "--out", report)
    assert f"model: checkpoint {tiny_checkpoint}" in out and "classification accuracy score" in out
    data = json.loads(report.read_text())
    assert data["cas"]["n"] == 40 and data["cas"]["epochs"] == 1
    assert 0 <= data["cas"]["generated"] <= 1 and 0 <= data["cas"]["real"] <= 1
    images, labels = load_npz_samples(npz)
    assert images.shape == (40, 28, 28) and labels.tolist() == sorted(labels.tolist())
    # the saved samples score the same when read back
    again = tmp_path / "again.json"
    invoke("evaluate", "--samples", npz, "--data-dir", mnist_dir, "--out", again, "--no-floor")
    assert json.loads(again.read_text())["results"][0]["fid"] == pytest.approx(
        data["results"][0]["fid"])


def test_evaluate_real_samples_npz(mnist_dir, tmp_path):
    images, labels = load_split(mnist_dir, "train")
    npz = tmp_path / "real.npz"
    save_npz_samples(npz, images[:500, 0], labels[:500])
    report = tmp_path / "r.json"
    invoke("evaluate", "--samples", npz, "--data-dir", mnist_dir, "--out", report, "--no-floor")
    row = json.loads(report.read_text())["results"][0]
    assert row["accuracy"] > 0.98 and row["fid"] < 5 and row["precision"] > 0.6


@pytest.mark.parametrize("args, message", [
    (["--guidance", "1", "--guidance-sweep", "1,2"], "exclude each other"),
    (["--guidance-sweep", "1,x"], "comma-separated numbers"),
    (["--n", "1"], "--n: got 1, must be an integer between 2 and"),
    (["--samples", "missing.npz", "--n", "10"], "--samples scores a file"),
    (["--samples", "missing.npz"], "missing.npz"),
    (["--steps", "0"], "steps"),
    (["--sampler", "euler"], "unknown sampler 'euler'"),
    (["--n", "100000000000"], "--n: got 100000000000, must be an integer between 2"),
    (["--npz", "x.png"], "so its name must end in .npz"),
    (["--cas-epochs", "0"], "--cas-epochs: got 0"),
    (["--guidance-sweep", "1,2", "--npz", "s.npz"], "--npz saves the samples of one"),
    (["--guidance-interval", "0.9,0.1"], "guidance_interval: got (0.9, 0.1)"),
    (["--samples", "missing.npz", "--guidance-interval", "0,0.5"], "--samples scores a file"),
])
def test_evaluate_bad_input(tiny_checkpoint, tmp_path, args, message):
    report = tmp_path / "r.json"
    if "--samples" not in args:
        args = ["-k", str(tiny_checkpoint), *args]
    args = [a.replace("missing.npz", str(tmp_path / "missing.npz")) for a in args]
    r = runner.invoke(app, ["evaluate", *args, "--out", str(report)])
    assert r.exit_code != 0 and message in str(r.exception or r.output)
    assert not report.exists()


def test_bad_npz_is_a_clear_error(tmp_path, mnist_dir):
    npz = tmp_path / "bad.npz"
    np.savez(npz, images=np.zeros((4, 32, 32), np.uint8), labels=np.zeros(4, np.int64))
    r = runner.invoke(app, ["evaluate", "--samples", str(npz), "--data-dir", str(mnist_dir)])
    assert r.exit_code != 0 and "28" in str(r.exception)


# --------------------------------------------------------------------------------- issue 13

def test_the_report_must_be_json_so_the_sweep_plot_cannot_replace_it(tiny_checkpoint, tmp_path):
    """`evaluate -o r.png --guidance-sweep 1,2` wrote the plot over the report."""
    report = tmp_path / "r.png"
    r = runner.invoke(app, ["evaluate", "-k", str(tiny_checkpoint), "--guidance-sweep", "1,2",
                            "--out", str(report)])
    assert r.exit_code != 0 and "so its name must end in .json" in str(r.exception)
    assert not report.exists()
    npz = tmp_path / "s.npz"
    npz.write_bytes(b"samples")
    r = runner.invoke(app, ["evaluate", "--samples", str(npz), "--out", str(tmp_path / "s.json"),
                            "--data-dir", str(tmp_path)])
    assert r.exit_code == 0 or "is also" not in str(r.exception)


def test_evaluate_says_how_it_rounds_n(tiny_checkpoint, mnist_dir, tmp_path, monkeypatch, capsys):
    """`--n 25` makes 20 samples (2 per class) and says so instead of doing it silently."""
    from mnistdiff.cli import main
    import sys

    report = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["mnistdiff", "evaluate", "-k", str(tiny_checkpoint), "--n",
                                      "25", "--steps", "2", "--no-floor", "--data-dir",
                                      str(mnist_dir), "--out", str(report)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    err = capsys.readouterr().err
    assert "--n 25 is not a multiple of the 10 classes: sampling 20 (2 per class" in err
    assert json.loads(report.read_text())["results"][0]["n"] == 20
