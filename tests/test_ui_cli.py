"""``mnistdiff sample --init-image/--mask`` end to end, and ``mnistdiff ui``'s command line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mnistdiff.cli import app
from mnistdiff.models import load

runner = CliRunner()


def invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def fails(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code != 0 and isinstance(result.exception, Exception)
    return str(result.exception)


@pytest.fixture()
def drawing(tmp_path):
    image = np.zeros((28, 28), dtype=np.uint8)
    image[6:9, 7:21] = 255
    image[9:16, 17:20] = 200
    mask = np.zeros((28, 28), dtype=np.uint8)
    mask[4:18, 5:23] = 255  # keep the strokes and the black around them
    Image.fromarray(image).save(tmp_path / "x.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    return image, mask > 0, tmp_path / "x.png", tmp_path / "m.png"


def test_sample_init_image_and_mask_keep_the_drawing(tiny_checkpoint, tmp_path, drawing):
    image, keep, x_png, m_png = drawing
    npz, png = tmp_path / "done.npz", tmp_path / "done.png"
    out = invoke("sample", "-k", tiny_checkpoint, "--digits", "7,1", "--n", 2, "--steps", 5,
                 "--seed", 3, "--init-image", x_png, "--mask", m_png, "--npz", npz, "--out", png)
    assert f"4 images (2 digits x 2, completing {x_png})" in out.replace("\n", "")
    with np.load(npz) as data:
        images, labels = data["images"], data["labels"]
    assert images.shape == (4, 28, 28) and labels.tolist() == [7, 7, 1, 1]
    assert (images[:, keep] == image[keep]).all()
    api = load(tiny_checkpoint, device="cpu").inpaint(image, keep, [7, 1], 2, steps=5, seed=3)
    assert np.array_equal(images, api.images.numpy())  # the CLI is the Python API
    assert Image.open(png).size[1] == 2 * (2 * 30 + 2)  # a labelled grid, two rows, scale 2


def test_sample_init_image_without_mask_keeps_its_strokes(tiny_checkpoint, tmp_path, drawing):
    image, _, x_png, _ = drawing
    big = tmp_path / "big.png"  # a larger square drawing is scaled down to 28x28
    Image.fromarray(image).resize((112, 112), Image.NEAREST).save(big)
    npz = tmp_path / "s.npz"
    invoke("sample", "-k", tiny_checkpoint, "--digit", 4, "--n", 2, "--steps", 4, "--resample", 2,
           "--init-image", big, "--npz", npz, "--out", tmp_path / "s.png")
    with np.load(npz) as data:
        assert (data["images"][:, image > 0] == image[image > 0]).all()


def test_sample_init_image_errors_are_one_line(tiny_checkpoint, tmp_path, drawing):
    _, _, x_png, m_png = drawing
    assert "--mask needs --init-image" in fails("sample", "-k", tiny_checkpoint, "--mask", m_png)
    assert "does not exist" in fails("sample", "-k", tiny_checkpoint, "--init-image",
                                     tmp_path / "nope.png")
    Image.new("L", (28, 20)).save(tmp_path / "wide.png")
    assert "must be square" in fails("sample", "-k", tiny_checkpoint, "--init-image",
                                     tmp_path / "wide.png")
    Image.new("L", (28, 28)).save(tmp_path / "black.png")
    assert "the mask keeps no pixels" in fails("sample", "-k", tiny_checkpoint, "--init-image",
                                               tmp_path / "black.png")
    (tmp_path / "text.png").write_text("not a picture")
    assert "not a readable image" in fails("sample", "-k", tiny_checkpoint, "--init-image",
                                           x_png, "--mask", tmp_path / "text.png")


def test_ui_command_serves_on_a_free_loopback_port_and_stops(tiny_checkpoint, tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from uihelpers import bundle_tiny, request

    root = Path(__file__).resolve().parents[1]
    models = bundle_tiny(tiny_checkpoint, tmp_path / "models")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistdiff", "ui", "--no-browser", "--device", "cpu",
         "--runs-dir", str(Path(tiny_checkpoint).parents[2]), "--models-dir", str(models)],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert url and int(url.group(1)) > 0, line + proc.stderr.read()
        assert "model: bundled:mnist" in line
        status, _, body = request(url.group(0) + "api/models")
        assert status == 200 and b"run:run" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read()


def test_ui_command_errors_are_one_line(tmp_path):
    assert "no models to offer" in fails("ui", "--no-browser", "--runs-dir", tmp_path / "none",
                                         "--models-dir", tmp_path / "none")
    assert "--port: got 70000" in fails("ui", "--no-browser", "--port", 70000)
