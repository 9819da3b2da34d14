"""Pictures: grid geometry, labelled rows, captions, strips, GIF and NPZ files."""

import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from mnistdiff.errors import MnistdiffError
from mnistdiff.npz import save_npz_samples
from mnistdiff.visualize import (add_caption, animation_frames, as_uint8, check_animation_path,
                                 frame_strip, image_grid, labelled_grid, plot_guidance_sweep,
                                 plot_loss, save_animation, save_image)

CELL = 28 + 2  # an image plus the default padding


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, size=(n, 28, 28), dtype=np.uint8)


def cell(grid: np.ndarray, row: int, col: int, x0: int = 0) -> np.ndarray:
    """The 28x28 image at (row, col) of a scale-1 grid whose cells start at column x0."""
    y, x = 2 + row * CELL, x0 + 2 + col * CELL
    return grid[y:y + 28, x:x + 28]


def test_as_uint8_maps_model_range_to_bytes():
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 2, 2)
    assert as_uint8(x).tolist() == [[[0, 128], [255, 255]]]


def test_image_grid_places_images_row_major():
    imgs = digits(5)
    grid = np.asarray(image_grid(imgs, nrow=3))
    assert grid.shape == (2 * CELL + 2, 3 * CELL + 2)
    assert np.array_equal(cell(grid, 1, 1), imgs[4])
    assert not cell(grid, 1, 2).any()  # the sixth cell stays empty
    assert image_grid(imgs, nrow=3, scale=3).size == (3 * (3 * CELL + 2), 3 * (2 * CELL + 2))


@pytest.mark.parametrize("n, nrow, padding, pad_value", [(1, 1, 2, 0), (1, 4, 2, 0), (5, 3, 2, 0),
                                                       (6, 3, 0, 0), (7, 10, 3, 255), (12, 4, 2, 7)])
def test_image_grid_matches_torchvisions_make_grid_layout(n, nrow, padding, pad_value):
    """The canvas of make_grid on rows x nrow cells. make_grid alone narrows a short single row
    and returns a lone image unpadded, so blank cells complete the rows (one more row for a
    single image) and the extra row is cropped, as mnistdiff did before it tiled by itself."""
    from torchvision.utils import make_grid

    imgs = digits(n)
    h = w = CELL - 2
    rows = -(-n // nrow)
    blank = rows * nrow - n + (nrow if n == 1 else 0)
    padded = np.concatenate([imgs, np.full((blank, h, w), pad_value, np.uint8)])
    expected = make_grid(torch.from_numpy(padded)[:, None], nrow=nrow, padding=padding,
                         pad_value=pad_value)[0].numpy()
    expected = expected[:rows * (h + padding) + padding, :nrow * (w + padding) + padding]
    assert np.array_equal(np.asarray(image_grid(imgs, nrow=nrow, padding=padding,
                                                pad_value=pad_value)), expected)


def test_labelled_grid_is_the_plain_grid_with_a_label_column():
    imgs = digits(3 * 4)
    grid = np.asarray(labelled_grid(imgs, ["0", "1", "2"]))
    plain = np.asarray(image_grid(imgs, nrow=4))
    label_width = grid.shape[1] - plain.shape[1]
    assert grid.shape[0] == plain.shape[0] and label_width > 0
    assert np.array_equal(grid[:, label_width:], plain)
    for row in range(3):  # each class name is drawn beside its own row
        assert grid[2 + row * CELL: (row + 1) * CELL, :label_width].any()


def test_labelled_grid_wraps_long_groups_and_leaves_the_rest_blank():
    imgs = digits(2 * 5)  # two classes of five, at most two per row -> three rows each
    grid = np.asarray(labelled_grid(imgs, ["Bag", "Ankle boot"], max_cols=2))
    assert grid.shape[0] == 6 * CELL + 2
    x0 = grid.shape[1] - (2 * CELL + 2)
    assert np.array_equal(cell(grid, 2, 0, x0), imgs[4])  # class 0, image 4
    assert not cell(grid, 2, 1, x0).any()  # the blank sixth slot of class 0
    assert np.array_equal(cell(grid, 3, 0, x0), imgs[5])  # class 1 starts a new row
    with pytest.raises(ValueError):
        labelled_grid(digits(7), ["a", "b"])


def test_caption_adds_a_band_of_text_below():
    image = image_grid(digits(2), nrow=2, scale=2)
    captioned = np.asarray(add_caption(image, "step 3/10  t=36", scale=2))
    assert captioned.shape[1] == image.width and captioned.shape[0] > image.height
    assert np.array_equal(captioned[:image.height], np.asarray(image))
    assert captioned[image.height:].any()


def test_frame_strip_has_a_row_per_digit_and_a_column_per_frame():
    frames = np.random.default_rng(1).integers(0, 256, (4, 3, 28, 28), dtype=np.uint8)  # (F, D)
    strip = np.asarray(frame_strip(torch.from_numpy(frames), scale=1))
    assert strip.shape == (3 * CELL + 2, 4 * CELL + 2)
    assert np.array_equal(cell(strip, 2, 1), frames[1, 2])


def test_gif_has_every_frame_loops_and_holds_the_last(tmp_path):
    frames = np.random.default_rng(2).integers(0, 256, (5, 2, 28, 28), dtype=np.uint8)
    images = animation_frames(frames, [f"step {i}/4" for i in range(5)], scale=2)
    path = save_animation(images, tmp_path / "a.gif", fps=20, hold=1.0)
    decoded = iio.imread(path, index=None)  # (F, H, W)
    assert decoded.shape == (5, images[0].height, images[0].width)
    assert np.array_equal(decoded[3], np.asarray(images[3]))  # grayscale GIFs are lossless
    with Image.open(path) as gif:
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
        assert gif.info["loop"] == 0
    assert durations == [50, 50, 50, 50, 1050]
    assert [p.name for p in tmp_path.iterdir()] == ["a.gif"]  # no temp file left behind


def test_gif_with_a_black_first_frame_reads_with_imageio_and_pil(tmp_path):
    """issue 13: imageio.v3.imread failed with "No packer found from P to L" on such GIFs."""
    frames = np.random.default_rng(3).integers(0, 256, (4, 2, 28, 28), dtype=np.uint8)
    frames[0] = 0  # the pure-noise frame is never black, but a plain one may be
    images = [im for im in animation_frames(frames, ["", "", "", ""], scale=1)]
    images[0] = Image.new("L", images[0].size, 0)
    path = save_animation(images, tmp_path / "b.gif", fps=10, hold=0)
    decoded = iio.imread(path, index=None)
    assert decoded.shape == (4, images[0].height, images[0].width)
    for i, image in enumerate(images):
        assert np.array_equal(decoded[i], np.asarray(image))
    with Image.open(path) as gif:
        gif.seek(2)
        assert np.array_equal(np.asarray(gif.convert("L")), np.asarray(images[2]))


@pytest.mark.parametrize("fps, hold, message", [
    (1e-9, 1.0, "--fps: got 1e-09, must be between 0.1 and 50"),
    (float("inf"), 1.0, "--fps: got inf"), (1000, 1.0, "--fps: got 1000"),
    (float("nan"), 1.0, "--fps: got nan"), (0, 1.0, "--fps: got 0"),
    (10, float("inf"), "--hold: got inf, must be between 0 and 60"), (10, -1, "--hold: got -1"),
])
def test_animation_timing_is_bounded(tmp_path, fps, hold, message):
    """issue 13: fps 1e-9 and hold inf overflowed; fps inf or 1000 wrote 0-delay frames."""
    images = animation_frames(np.zeros((2, 1, 28, 28), np.uint8), ["a", "b"], scale=1)
    with pytest.raises(MnistdiffError, match=message.replace("+", r"\+")):
        save_animation(images, tmp_path / "a.gif", fps=fps, hold=hold)
    assert not (tmp_path / "a.gif").exists()


def test_animation_paths_are_checked(monkeypatch):
    with pytest.raises(MnistdiffError, match=r"\.gif or \.mp4"):
        check_animation_path("out.avi")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if the plugin were missing
    with pytest.raises(MnistdiffError, match=r"imageio\[ffmpeg\]"):
        check_animation_path("out.mp4")


def test_npz_and_png_round_trip(tmp_path):
    images, labels = digits(6), np.arange(6, dtype=np.int64)
    path = save_npz_samples(tmp_path / "deep" / "s.npz", images, labels)
    with np.load(path) as data:
        assert data["images"].dtype == np.uint8 and np.array_equal(data["images"], images)
        assert data["labels"].dtype == np.int64 and np.array_equal(data["labels"], labels)
    png = save_image(image_grid(images, nrow=3), tmp_path / "g.png")
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(image_grid(images, nrow=3)))


def test_plots_are_pngs(tmp_path):
    rows = [{"guidance": w, "fid": 5.0 / (1 + w), "accuracy": 0.9 + 0.02 * w} for w in (0, 1, 2, 3)]
    for path in (plot_guidance_sweep(rows, tmp_path / "sweep.png"),
                 plot_loss([10, 20, 30], [0.5, 0.2, 0.1], tmp_path / "deep" / "loss.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(path).size[0] > 300
