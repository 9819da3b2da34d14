"""The CLI end to end, in-process through Typer's runner and as a real subprocess."""

import os
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from mnistdiff import __version__
from mnistdiff.cli import app

runner = CliRunner()


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnistdiff", *args], capture_output=True,
                          text=True, env=env)


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output


@pytest.mark.parametrize("cmd", [[], ["config"], ["config", "show"], ["data"], ["data", "info"],
                                 ["data", "preview"], ["train"], ["sample"], ["animate"],
                                 ["summarize"], ["evaluate"]])
def test_help(cmd):
    r = runner.invoke(app, [*cmd, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output


def test_config_show_applies_overrides():
    r = runner.invoke(app, ["config", "show", "-c", "configs/tiny.yaml", "--set", "train.lr=0.005"])
    assert r.exit_code == 0 and "lr: 0.005" in r.output


def test_bad_config_key_is_one_line_and_nonzero():
    r = run("config", "show", "--set", "train.lrr=1")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'train.lrr'" in lines[0] and "Traceback" not in r.stderr


def test_debug_shows_traceback():
    r = run("--debug", "config", "show", "--set", "train.lrr=1")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_missing_data_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MNISTDIFF_DATA"}
    r = run("data", "info", "--data-dir", str(tmp_path), "--set", "data.download=false", env=env)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "train-images-idx3-ubyte.gz" in r.stderr


def test_data_info_and_preview(synthetic_dir, tmp_path):
    args = ["--data-dir", str(synthetic_dir), "--set", "data.verify=false"]
    r = runner.invoke(app, ["data", "info", *args, "--json"])
    assert r.exit_code == 0 and '"per_class"' in r.output
    out = tmp_path / "grid.png"
    r = runner.invoke(app, ["data", "preview", *args, "--out", str(out), "--n", "4", "--scale", "1"])
    assert r.exit_code == 0
    img = Image.open(out)
    assert img.size == (4 * 30 + 2, 10 * 30 + 2)  # 28 px + 2 px padding per cell


def test_a_full_disk_anywhere_is_one_line(monkeypatch, capsys):
    """issue 13: an ENOSPC from a write outside files.py (the log, a plot) is not a traceback."""
    import errno

    from mnistdiff import cli

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "runs/a/log.jsonl")

    monkeypatch.setattr(cli, "app", full)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1
    assert err == "error: No space left on device while writing runs/a/log.jsonl"
