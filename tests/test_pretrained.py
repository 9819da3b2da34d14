"""Bundled pretrained models: the shipped files, checksums, name resolution, the CLI's default
model, and a plain (non-editable) install that samples with them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mnistdiff
from mnistdiff import models
from mnistdiff.checkpoint import load_checkpoint, model_from_checkpoint
from mnistdiff.cli import app
from mnistdiff.errors import CheckpointError
from mnistdiff.evaluation import load_classifier, run_classifier
from mnistdiff.files import sha256_file

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SHIPPED = {"mnist": "mnist", "fashion-mnist": "fashion-mnist",
           "mnist-fast": "mnist", "mnist-small": "mnist"}  # name -> dataset


# --------------------------------------------------------------------------------- the shipped files

@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_matches_its_checksums_and_card(name):
    entry = models.bundled().entry(name)
    model_file = models.MODELS_DIR / entry["model"]["file"]
    assert sha256_file(model_file) == entry["model"]["sha256"]
    assert model_file.stat().st_size <= 10_000_000  # each file <= 10 MB
    card = models.card(name)
    assert card["name"] == name and card["dataset"] == SHIPPED[name] == entry["dataset"]
    training = card["training"]
    for key in ("command", "config_file", "steps", "images_seen", "hardware", "wall_seconds",
                "mnistdiff_version"):
        assert training[key], key
    assert (ROOT / training["config_file"]).is_file()
    assert card["metrics"] and all(m["real_floor"]["fid"] > 0 for m in card["metrics"])
    ckpt = load_checkpoint(models.resolve(name).path)
    assert ckpt["optimizer"] is None and ckpt["ema"] is None  # weights only
    model, cfg = model_from_checkpoint(ckpt)
    assert cfg.data.dataset == SHIPPED[name]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bundled_mnist_draws_the_digits_asked_for():
    """20 digits at 10 steps, read back by the bundled reference classifier."""
    pipe = mnistdiff.load("mnist", device="cpu")
    assert pipe.info["name"] == "mnist" and pipe.info["card"]["dataset"] == "mnist"
    out = pipe.sample(list(range(10)), n=2, steps=10, seed=1)
    _, preds = run_classifier(load_classifier("mnist"), out.images)
    assert (preds == out.labels.numpy()).mean() >= 0.9
    # The top rows of real digits are empty (exactly 0); the model's are near-black: faint
    # values of a few levels remain (see README, Pretrained models), none visible.
    background = out.images[:, :3, :].float()
    assert (background <= 16).float().mean() > 0.97


def test_bundled_fashion_model_samples_on_karras_steps_as_measured():
    """fashion-mnist's default grid is the karras one its card's default metrics were taken on."""
    pipe = mnistdiff.load("fashion-mnist", device="cpu")
    s = pipe.settings()
    assert (s.sampler, s.steps, s.spacing, s.guidance) == ("dpmpp", 20, "karras", 1.25)
    default = [m for m in pipe.info["card"]["metrics"] if m["label"] == "default"]
    assert default and all(m["spacing"] == "karras" and m["steps"] == 20 for m in default)


def test_bundled_student_draws_the_digits_in_four_passes():
    """mnist-fast: its stored 4 DDIM steps, one conditional pass each, read back as asked."""
    pipe = mnistdiff.load("mnist-fast", device="cpu")
    # distilled from 0.3's 'mnist', shipped since 0.5 as 'mnist-small': the pinned file is its teacher
    assert pipe.config.distill.teacher == "mnist"
    assert pipe.config.distill.teacher_sha256 == models.bundled().entry("mnist-small")["model"]["sha256"]
    out = pipe.sample(list(range(10)), n=2, seed=1)
    assert out.nfe == 4 and out.passes == 4
    _, preds = run_classifier(load_classifier("mnist"), out.images)
    assert (preds == out.labels.numpy()).mean() >= 0.9


# --------------------------------------------------------------------------------- resolution

@pytest.fixture()
def models_dir(tiny_checkpoint, tmp_path) -> Path:
    """A models folder with the tiny checkpoint bundled as 'mnist' and as 'tiny'."""
    folder = tmp_path / "models"
    for name in ("mnist", "tiny"):
        models.bundle(tiny_checkpoint, name, {"training": {"command": "test"}},
                          sample={"guidance": 1.5}, models_dir=folder)
    return folder


def test_bundle_writes_weights_card_and_pinned_checksums(models_dir, tiny_checkpoint):
    entry = models.bundled(models_dir).entry("tiny")
    assert sha256_file(models_dir / entry["model"]["file"]) == entry["model"]["sha256"]
    assert sha256_file(models_dir / entry["card"]["file"]) == entry["card"]["sha256"]
    card = models.card("tiny", models_dir)
    assert card["training"]["command"] == "test"
    assert card["bundled"]["sampler_defaults"]["guidance"] == 1.5
    bundled = load_checkpoint(models.resolve("tiny", models_dir=models_dir).path)
    original = load_checkpoint(tiny_checkpoint)
    for key, value in original["ema"].items():  # the EMA weights became the model
        assert torch.equal(bundled["model"][key], value)
    assert bundled["config"]["sample"]["guidance"] == 1.5


def test_bundle_in_half_precision_halves_the_file_and_loads_as_float32(models_dir, tiny_checkpoint):
    half = models.bundle(tiny_checkpoint, "tiny16", {"training": {"command": "test"}},
                             half=True, models_dir=models_dir)
    full = models.bundled(models_dir).entry("tiny")
    assert half["model"]["bytes"] < 0.6 * full["model"]["bytes"]
    assert models.card("tiny16", models_dir)["bundled"]["weights"] == "EMA, float16"
    stored = load_checkpoint(models.resolve("tiny16", models_dir=models_dir).path)
    ema = load_checkpoint(tiny_checkpoint)["ema"]
    for key, value in stored["model"].items():
        assert value.dtype == (torch.float16 if ema[key].is_floating_point() else ema[key].dtype)
        assert torch.equal(value, ema[key].to(value.dtype))  # the EMA, rounded to float16
    model, _ = model_from_checkpoint(stored)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    pipe = mnistdiff.load(str(models.resolve("tiny16", models_dir=models_dir).path), device="cpu")
    out = pipe.sample([3], n=2, steps=2, seed=0)
    assert out.images.shape == (2, 28, 28)


def test_resolution_order(models_dir, tiny_checkpoint, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    resolve = lambda spec: models.resolve(spec, runs_dir=runs, models_dir=models_dir)  # noqa: E731
    # nothing under runs/: no spec means the bundled default
    assert resolve(None) == models.ModelSource(models_dir / "mnist" / "model.pt", "mnist")
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        resolve("latest")  # an explicit 'latest' needs a run
    # a name picks a bundled model ...
    assert resolve("tiny").name == "tiny"
    # ... unless a path of that name exists: an existing path wins
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, tmp_path / "tiny" / "checkpoints" / "last.pt")
    assert resolve("tiny") == models.ModelSource(Path("tiny/checkpoints/last.pt"))
    # a run under runs/ is the default when there is one
    (runs / "a" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, runs / "a" / "checkpoints" / "last.pt")
    assert resolve(None).name is None and resolve(None).path == runs / "a/checkpoints/last.pt"
    with pytest.raises(CheckpointError, match="bundled models: mnist, tiny"):
        resolve("nosuchmodel")


def test_a_changed_bundled_file_is_refused(models_dir):
    path = models_dir / "tiny" / "model.pt"
    path.write_bytes(path.read_bytes()[:-1] + b"x")
    with pytest.raises(CheckpointError, match="SHA-256"):
        models.resolve("tiny", models_dir=models_dir)
    card = models_dir / "mnist" / "card.json"
    card.write_text(card.read_text().replace("test", "edited"))
    with pytest.raises(CheckpointError, match="SHA-256"):
        models.card("mnist", models_dir)


# --------------------------------------------------------------------------------- the CLI

def test_commands_default_to_the_bundled_model_and_say_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    result = runner.invoke(app, ["sample", "--digit", "3", "--n", "2", "--steps", "4",
                                 "-o", "s.png"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "model: bundled model 'mnist'" in result.output
    assert (tmp_path / "s.png").is_file()
    result = runner.invoke(app, ["summarize", "-k", "fashion-mnist"], catch_exceptions=False)
    assert result.exit_code == 0 and "model: bundled model 'fashion-mnist'" in result.output
    assert "fashion-mnist" in result.output and "measured" in result.output
    result = runner.invoke(app, ["summarize", "-k", "mnist", "--json"], catch_exceptions=False)
    info = json.loads(result.output)["checkpoint"]
    assert info["name"] == "mnist" and info["card"]["metrics"]


# --------------------------------------------------------------------------------- a plain install

@pytest.mark.slow
def test_non_editable_install_samples_with_the_bundled_model(tmp_path):
    """Build a wheel, install it (no -e) into a fresh venv whose other packages come from this
    one (a .pth line, so torch is not installed twice), then sample from a folder with no runs/."""
    wheel_dir, env = tmp_path / "wheel", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheel_dir, ROOT],
                   check=True, capture_output=True)
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "parent_env.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    *wheel_dir.glob("*.whl")], check=True, capture_output=True)
    work = tmp_path / "work"
    work.mkdir()
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1"}
    env_vars.pop("PYTHONPATH", None)
    r = subprocess.run([env / "bin" / "mnistdiff", "sample", "--digit", "7", "--n", "4",
                        "--steps", "5", "-o", "seven.png"], cwd=work, env=env_vars,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "model: bundled model 'mnist'" in r.stdout and str(env) in r.stdout  # the installed copy
    assert (work / "seven.png").stat().st_size > 100
