"""Your own images: a class-folder dataset (coloured shapes, 3 classes, PNG and JPEG) read,
cached, trained on, sampled in RGB and evaluated with a classifier trained on it. Tiny sizes
(16x16, a few seconds of training) so the whole file runs in well under a minute on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from mnistdiff import folder
from mnistdiff.cli import app
from mnistdiff.config import load_config
from mnistdiff.errors import ConfigError, DataError, MnistdiffError

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"circle": (230, 40, 40), "square": (40, 200, 60), "stripes": (50, 80, 230)}
runner = CliRunner()


def make_shapes(root: Path, per_class: int = 20, seed: int = 0) -> Path:
    """root/<class>/NNN.png|jpg: a red circle, a green square or blue stripes on a dark tint of
    the same colour, 24-47 px a side (one image per class 40x30, not square); PNG and JPEG
    alternate."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(rng.integers(24, 48))
            im = Image.new("RGB", (40, 30) if i == 3 else (side, side),
                           tuple(v // 3 for v in colour))
            draw = ImageDraw.Draw(im)
            a, b = int(rng.integers(2, side // 3)), int(rng.integers(2 * side // 3, side - 2))
            if name == "circle":
                draw.ellipse([a, a, b, b], fill=colour)
            elif name == "square":
                draw.rectangle([a, a, b, b], fill=colour)
            else:
                for y in range(0, side, 6):
                    draw.rectangle([0, y, side, y + 2], fill=colour)
            im.save(root / name / f"{i:03d}{'.png' if i % 2 == 0 else '.jpg'}")
    (root / "square" / "notes.txt").write_text("not an image: left out")
    (root / "circle" / "._001.png").write_bytes(b"macOS metadata: hidden, left out")
    return root


def folder_sets(root: Path, size: int = 16, *extra: str) -> list[str]:
    return ["data.dataset=folder", f"data.root={json.dumps(str(root))}",
            f"data.image_size={size}", "data.channels=3", *extra]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A cache folder of each test's own (no test reads or fills the user's ~/.cache)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("MNISTDIFF_CACHE", str(path))
    return path


@pytest.fixture()
def shapes(tmp_path) -> Path:
    return make_shapes(tmp_path / "shapes")


def data_cfg(root: Path, *extra: str):
    return load_config(None, folder_sets(root, 16, *extra)).data


# --------------------------------------------------------------------------------- reading

def test_the_folder_is_one_uint8_tensor_with_a_deterministic_split(shapes):
    data = folder.load(data_cfg(shapes))
    assert data.classes == ("circle", "square", "stripes")  # the folder names, sorted
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape == (54, 3, 16, 16)
    assert data.test.images.shape == (6, 3, 16, 16)  # every 10th image of each class
    assert data.train.labels.tolist() == [0] * 18 + [1] * 18 + [2] * 18
    # the colours survive: the red class is red, the blue class blue, on average
    red, blue = (data.train.images[data.train.labels == c].double().mean((0, 2, 3)) for c in (0, 2))
    assert red[0] > 2 * red[2] and blue[2] > 2 * blue[0]
    grey = folder.load(data_cfg(shapes, "data.channels=1"))
    assert grey.train.images.shape == (54, 1, 16, 16)
    assert folder.scan(data_cfg(shapes)).ignored == 1  # notes.txt; ._001.png is hidden


def test_a_train_and_test_layout_is_used_as_it_is(tmp_path):
    make_shapes(tmp_path / "split" / "train", per_class=6)
    make_shapes(tmp_path / "split" / "test", per_class=2, seed=1)
    data = folder.load(data_cfg(tmp_path / "split"))
    assert len(data.train.labels) == 18 and data.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.layout == "train/ and test/"
    (tmp_path / "split" / "test" / "hexagon").mkdir()
    with pytest.raises(DataError, match="hexagon: not one of the classes"):
        folder.scan(data_cfg(tmp_path / "split"))


def test_the_cache_is_reused_and_a_changed_file_reads_the_folder_again(shapes, cache,
                                                                       monkeypatch):
    said: list[str] = []
    first = folder.load(data_cfg(shapes), said.append)
    assert any(line.startswith("reading 60 images") for line in said)
    decoded = []
    real = folder._decode
    monkeypatch.setattr(folder, "_decode", lambda *a: decoded.append(a[0]) or real(*a))
    said.clear()
    again = folder.load(data_cfg(shapes), said.append)
    assert decoded == [] and said == []  # from the cache, at once
    assert torch.equal(again.train.images, first.train.images)
    # a changed file: another listing (size, mtime), so the folder is read again
    target = shapes / "circle" / "000.png"
    Image.new("RGB", (32, 32), (255, 255, 255)).save(target)
    os.utime(target, ns=(1, 1))
    changed = folder.load(data_cfg(shapes), said.append)
    assert len(decoded) == 60 and any(line.startswith("reading") for line in said)
    assert changed.train.images[0].min() == 255  # the new white image
    assert len(list((cache / "datasets").glob("*.pt"))) == 1  # the stale version is removed


def test_a_corrupt_file_is_one_line_and_skipped_with_skip_bad(shapes, tmp_path):
    bad = shapes / "square" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    with pytest.raises(DataError, match=r"broken\.png: not a readable image .*data\.skip_bad"):
        folder.load(data_cfg(shapes))
    said: list[str] = []
    data = folder.load(data_cfg(shapes, "data.skip_bad=true"), said.append)
    assert len(data.skipped) == 1 and data.skipped[0][0] == str(bad)
    assert any(line.startswith("skipped 1 unreadable file") for line in said)
    assert len(data.train.labels) + len(data.test.labels) == 60  # all but the broken one
    # on the command line: one line naming the file, exit status 1
    r = subprocess.run([sys.executable, "-m", "mnistdiff", "data", "info", "--dataset",
                        "folder", "--data-dir", str(shapes), "--set", "data.channels=3"],
                       capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "MNISTDIFF_CACHE": str(tmp_path / "c")})
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 1 and len(errors) == 1 and "broken.png" in errors[0], r.stderr
    assert r.stderr.strip().splitlines()[-1] == errors[0] and "Traceback" not in r.stderr
    assert r.stderr.startswith("reading 61 images")  # what it did first, on stderr too


@pytest.mark.parametrize("setup,message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "no class folders"),
    (lambda root: (root / "empty").mkdir(parents=True), "empty: no images"),
])
def test_a_folder_that_is_not_a_dataset_is_one_line(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message):
        folder.load(data_cfg(root))


def test_data_info_and_preview_of_a_folder(shapes, tmp_path):
    args = ["--dataset", "folder", "--data-dir", str(shapes), "--set", "data.channels=3",
            "--set", "data.image_size=16"]
    r = runner.invoke(app, ["data", "info", *args, "--json"])
    info = json.loads(r.stdout)  # (what it read is said on stderr)
    assert info["classes"] == list(COLOURS) and info["splits"]["test"]["per_class"] == [2, 2, 2]
    r = runner.invoke(app, ["data", "info", *args])
    assert r.exit_code == 0 and "every 10th image" in r.output and "stripes" in r.output
    out = tmp_path / "preview.png"
    r = runner.invoke(app, ["data", "preview", *args, "--out", str(out), "--n", "4",
                            "--scale", "1", "--split", "test"])
    assert r.exit_code == 0, r.output
    grid = Image.open(out)
    assert grid.mode == "RGB" and grid.height == 3 * 18 + 2  # a labelled row per class
    assert "circle 2" in r.output  # the class counts of the split
    cells = np.asarray(grid)[:, -(4 * 18 + 2):]
    assert cells[2:18, 2 + 2 * 18:].max() == 0  # the test split has 2 circles: 2 blank cells


# --------------------------------------------------------------------------------- config, model

def test_the_image_shape_comes_from_the_config():
    cfg = load_config(None, ["data.dataset=folder", "data.image_size=32", "data.channels=3"])
    assert cfg.model.in_channels == 3  # follows data.channels
    cifar = load_config(None, ["data.dataset=cifar10"])
    assert (cifar.data.image_size, cifar.data.channels, cifar.model.in_channels) == (32, 3, 3)
    with pytest.raises(ConfigError, match="data.image_size: mnist images are 28x28 grey"):
        load_config(None, ["data.image_size=32"])
    with pytest.raises(ConfigError, match="data.channels: got 2"):
        load_config(None, ["data.dataset=folder", "data.channels=2"])
    with pytest.raises(ConfigError, match=r"32x32 images allow at most 6 \(32 -> 16 -> 8"):
        load_config(None, ["data.dataset=folder", "data.image_size=32",
                           "model.channels=[8,8,8,8,8,8,8]"])
    with pytest.raises(ConfigError, match="model.in_channels: got 1, but data.channels is 3"):
        load_config(None, ["data.dataset=folder", "data.channels=3", "model.in_channels=1"])
    with pytest.raises(ConfigError, match="data.classes: got 2 names for model.num_classes = 10"):
        load_config(None, ["data.dataset=folder", "data.classes=[a,b]"])
    example = load_config(ROOT / "configs" / "folder-example.yaml")
    assert (example.data.image_size, example.data.channels) == (32, 3)


def test_the_unet_and_the_classifier_take_other_sizes_and_rgb():
    from mnistdiff.classifier import Classifier
    from mnistdiff.unet import ConditionalUNet

    net = ConditionalUNet(channels=(8, 16, 16, 16), emb_dim=16, groups=4, in_channels=3,
                          image_size=32)  # 32 -> 16 -> 8 -> 4: four levels, 28 allows three
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert net(x, torch.tensor([0, 3]), torch.tensor([1, 10])).shape == x.shape
    with pytest.raises(ValueError, match="at most 3 levels"):
        ConditionalUNet(channels=(8, 16, 16, 16), emb_dim=16)
    clf = Classifier(num_classes=3, in_channels=3, image_size=32).eval()
    assert clf.features(x).shape == (2, 128) and clf(x).shape == (2, 3)


def test_rgb_samples_npz_round_trips(tmp_path):
    from mnistdiff import npz

    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    npz.save_npz_samples(tmp_path / "s.npz", images, torch.arange(5) % 3)
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (5, 16, 16, 3)  # stored channels last
    got, labels = npz.load_npz_samples(tmp_path / "s.npz", 3, (3, 16, 16))
    assert torch.equal(got, images) and labels.tolist() == [0, 1, 2, 0, 1]
    with pytest.raises(MnistdiffError, match=r"expected \(N, 28, 28\) or \(N, 1, 28, 28\)"):
        npz.load_npz_samples(tmp_path / "s.npz", 3)  # MNIST's shape by default


def test_cifar10_offline_is_one_line(tmp_path):
    cfg = load_config(None, ["data.dataset=cifar10", f"data.root={json.dumps(str(tmp_path))}",
                             "data.download=false"])
    with pytest.raises(DataError, match="cifar10 not found in .* data.dataset: folder"):
        folder.load(cfg.data)
    r = runner.invoke(app, ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path),
                            "--set", "data.download=false", "-o", str(tmp_path / "run")])
    assert r.exit_code == 1 and "cifar10 not found" in str(r.exception)
    assert not (tmp_path / "run").exists()  # nothing is created before the data is there


def test_cifar10_arrays_are_converted_like_a_folders_images():
    raw = [(np.full((4, 32, 32, 3), (200, 100, 0), np.uint8), [0, 1, 2, 3]),
           (np.zeros((2, 32, 32, 3), np.uint8), [5, 9])]
    content = folder._cifar_content(raw, 16, 1)
    assert content["images"].shape == (6, 1, 16, 16) and content["test"].tolist() == [0] * 4 + [1] * 2
    assert content["images"][0].unique().tolist() == [118]  # Pillow's L: (299 R + 587 G) / 1000
    assert content["labels"].tolist() == [0, 1, 2, 3, 5, 9]
    native = folder._cifar_content(raw, 32, 3)
    assert torch.equal(native["images"][0, :, 0, 0], torch.tensor([200, 100, 0], dtype=torch.uint8))


# --------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """configs/tiny.yaml on the shapes at 16x16 RGB, 100 steps (a few seconds): its run folder."""
    from mnistdiff.training import train

    base = tmp_path_factory.mktemp("folder-run")
    shapes = make_shapes(base / "shapes")
    cfg = load_config(ROOT / "configs" / "tiny.yaml",
                      folder_sets(shapes, 16, "train.max_steps=100", "train.lr=3e-3",
                                  "train.log_every=50", "train.checkpoint_every=100",
                                  "sample.guidance=3"))
    with pytest.MonkeyPatch.context() as mp:  # (module fixtures start before the cache one)
        mp.setenv("MNISTDIFF_CACHE", str(base / "cache"))
        train(cfg, base / "run", device="cpu", progress=False)
    return base / "run"


def test_the_checkpoint_names_the_folders_classes(run_dir):
    from mnistdiff.models import load

    pipe = load(run_dir, device="cpu")
    assert pipe.classes == ("circle", "square", "stripes") and pipe.num_classes == 3
    assert (pipe.image_size, pipe.channels) == (16, 3)
    assert pipe.config.data.classes == list(COLOURS)
    assert Image.open(run_dir / "samples" / "step-000100.png").mode == "RGB"
    with pytest.raises(MnistdiffError, match="needs a 28x28 grey model; .* 16x16 RGB"):
        pipe.inpaint(np.zeros((28, 28), np.uint8), np.ones((28, 28)), [0])


def test_sample_writes_an_rgb_grid_npz_and_gif(run_dir, tmp_path):
    grid, npz_path, gif = tmp_path / "grid.png", tmp_path / "s.npz", tmp_path / "d.gif"
    r = runner.invoke(app, ["sample", "-k", str(run_dir), "--all", "--n", "4", "-o", str(grid),
                            "--npz", str(npz_path), "--scale", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "12 images (3 images x 4)" in r.output
    image = Image.open(grid)
    assert image.mode == "RGB" and image.height == 3 * 18 + 2
    with np.load(npz_path) as f:
        assert f["images"].shape == (12, 16, 16, 3) and f["labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    r = runner.invoke(app, ["animate", "-k", str(run_dir), "--digits", "0,2", "-o", str(gif),
                            "--steps", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    with Image.open(gif) as g:
        assert g.n_frames == 5 and g.convert("RGB").getextrema()[0][1] > 0
    r = runner.invoke(app, ["summarize", "-k", str(run_dir)])
    assert "16x16 RGB, 3 classes (circle, square, stripes)" in r.output


def test_evaluate_trains_a_classifier_on_the_folder_and_scores_above_chance(run_dir, tmp_path):
    report_path, samples = tmp_path / "report.json", tmp_path / "samples.npz"
    args = ["evaluate", "-k", str(run_dir), "--n", "30", "-o", str(report_path),
            "--classifier-epochs", "100", "--device", "cpu"]
    r = runner.invoke(app, [*args, "--npz", str(samples), "--cas", "--cas-epochs", "2"])
    assert r.exit_code == 0, r.output
    report = json.loads(report_path.read_text())
    assert report["dataset"] == "folder"
    assert report["classifier"]["source"].startswith("trained on the training split (54 images)")
    assert report["classifier"]["test_accuracy"] == 1.0  # the shapes' colours are easy
    result = report["results"][0]
    assert [c["class"] for c in result["per_class"]] == list(COLOURS)
    assert result["accuracy"] > 0.5  # chance is 1/3
    assert report["real_floor"]["accuracy"] == 1.0 and report["real_floor"]["n"] == 30
    assert report["cas"]["n"] == 30 and 0 <= report["cas"]["generated"] <= 1
    assert "classifier: trained on the training split" in r.output
    r = runner.invoke(app, args[:-4] + ["--classifier", "bundled", "--device", "cpu"])
    assert r.exit_code == 1 and "no bundled classifier for folder datasets" in str(r.exception)
    # the saved samples score the same with the folder named (the classifier comes from the cache)
    root = load_config(run_dir / "config.yaml").data.root
    again = tmp_path / "again.json"
    r = runner.invoke(app, ["evaluate", "--samples", str(samples), "--dataset", "folder",
                            "--data-dir", root, "--classifier-epochs", "100", "-o", str(again)])
    assert r.exit_code == 0, r.output
    rescored = json.loads(again.read_text())
    assert rescored["results"][0]["accuracy"] == result["accuracy"]
    assert rescored["classifier"]["source"].endswith("(cached)")


def test_a_resumed_run_keeps_its_classes_and_refuses_a_changed_folder(run_dir, tmp_path):
    import shutil

    from mnistdiff.config import config_from_dict
    from mnistdiff.checkpoint import load_checkpoint
    from mnistdiff.training import train

    last = run_dir / "checkpoints" / "last.pt"
    stored = load_checkpoint(last)["config"]
    cfg = config_from_dict({**stored, "train": {**stored["train"], "max_steps": 102}})
    result = train(cfg, tmp_path / "resumed", resume=last, device="cpu", progress=False)
    assert result.step == 102
    assert load_checkpoint(result.checkpoint)["config"]["data"]["classes"] == list(COLOURS)
    changed = tmp_path / "changed"
    shutil.copytree(stored["data"]["root"], changed)
    shutil.copytree(changed / "square", changed / "hexagon")
    cfg.data.root = str(changed)
    with pytest.raises(DataError, match="holds the classes circle, hexagon, square, stripes, "
                                        "but data.classes .* circle, square, stripes"):
        train(cfg, tmp_path / "again", resume=last, device="cpu", progress=False)
