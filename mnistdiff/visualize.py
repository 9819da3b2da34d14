"""Pictures of digits: grids, labelled rows, captioned frames, strips, GIFs and PNG files.

Everything here is pure: uint8 arrays (or [-1, 1] tensors) in, PIL images out; only the
``save_*`` functions touch the disk, and they write atomically (temp file + rename).
Images are upscaled with nearest-neighbour so MNIST's pixels stay crisp.

Grey images come as (N, H, W) or (N, 1, H, W) and make grey ("L") pictures; RGB images as
(N, 3, H, W), channels first as in torch, and make RGB pictures (captions and labels in white
either way). GIFs of RGB frames share one palette computed from all their frames.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .data import to_uint8
from .errors import MnistdiffError
from .files import check_animation_path, write_atomic  # noqa: F401 (re-exported)


def as_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N,H,W), (N,1,H,W) or (N,3,H,W) uint8 or float in [-1, 1] -> (N,H,W) or (N,H,W,3)
    uint8 numpy (grey, or RGB in the layout PIL reads; an (N,H,W,3) array, as this returns,
    is taken as it is)."""
    if isinstance(images, torch.Tensor):
        if images.is_floating_point():
            images = to_uint8(images.detach().float())
        images = images.to(torch.uint8).cpu().numpy()
    images = np.asarray(images)
    if images.ndim == 4 and not (images.shape[3] == 3 and images.shape[1] not in (1, 3)):
        if images.shape[1] not in (1, 3):
            raise ValueError(f"expected (N, 1, H, W) or (N, 3, H, W) images, got "
                             f"{images.shape}")
        images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return images


def _white(mode: str) -> int | tuple[int, int, int]:
    return (255, 255, 255) if mode == "RGB" else 255


def image_grid(images: torch.Tensor | np.ndarray, nrow: int, padding: int = 2, scale: int = 1,
               pad_value: int = 0) -> Image.Image:
    """Tile N images into rows of ``nrow`` cells with ``padding`` pixels around and between
    them (``torchvision.utils.make_grid``'s layout; the last row is completed with blank cells);
    upscale by ``scale`` with nearest-neighbour so pixels stay crisp. Plain numpy: importing
    torchvision for this took ~2 s of every ``mnistdiff sample`` on a 2-core CPU."""
    imgs = as_uint8(images)  # (N, H, W) or (N, H, W, 3)
    n, h, w = imgs.shape[:3]
    rows = -(-n // nrow)
    canvas = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding,
                      *imgs.shape[3:]), pad_value, dtype=np.uint8)
    for k, img in enumerate(imgs):
        r, c = divmod(k, nrow)
        top, left = r * (h + padding) + padding, c * (w + padding) + padding
        canvas[top:top + h, left:left + w] = img
    grid = Image.fromarray(canvas, mode="L" if imgs.ndim == 3 else "RGB")
    if scale != 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    return grid


def _font(scale: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled default font, sized to the upscaled 28-pixel rows."""
    return ImageFont.load_default(size=8 + 4 * scale)


def labelled_grid(images: torch.Tensor | np.ndarray, names: Sequence[str], *, max_cols: int = 32,
                  padding: int = 2, scale: int = 1) -> Image.Image:
    """One block of rows per class, its name drawn at the left.

    ``images`` holds ``len(names)`` equal groups in order (N = len(names) * n). A group of n
    images fills ceil(n / max_cols) rows of min(n, max_cols) cells; the name goes on its first row.
    """
    imgs = as_uint8(images)
    n = len(imgs) // len(names)
    if n * len(names) != len(imgs) or n == 0:
        raise ValueError(f"{len(imgs)} images do not split into {len(names)} equal groups")
    cols, rows_per_group = min(n, max_cols), -(-n // max_cols)
    cells = np.zeros((len(names), rows_per_group * cols, *imgs.shape[1:]), dtype=np.uint8)
    cells[:, :n] = imgs.reshape(len(names), n, *imgs.shape[1:])  # blank cells pad each group
    grid = image_grid(cells.reshape(-1, *imgs.shape[1:]), nrow=cols, padding=padding, scale=scale)

    font = _font(scale)
    row_height = (imgs.shape[1] + padding) * scale
    label_width = int(max(font.getlength(name) for name in names)) + 2 * padding * scale + 4
    canvas = Image.new(grid.mode, (label_width + grid.width, grid.height), 0)
    canvas.paste(grid, (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    for g, name in enumerate(names):
        y_mid = padding * scale + g * rows_per_group * row_height + (row_height - padding * scale) / 2
        draw.text((label_width - padding * scale - 2, y_mid), name, fill=_white(grid.mode),
                  font=font, anchor="rm")
    return canvas


def sample_grid(images: torch.Tensor | np.ndarray, labels: Sequence[int],
                names: Sequence[str], *, scale: int = 2) -> Image.Image:
    """The grid ``mnistdiff sample`` writes: a square grid when every image is of one class,
    else one labelled block of rows per class (``labels`` grouped by class, equal groups)."""
    labels = [int(c) for c in labels]
    order = list(dict.fromkeys(labels))  # the classes in the order they appear
    if len(order) == 1:
        return image_grid(images, nrow=math.ceil(math.sqrt(len(labels))), scale=scale)
    return labelled_grid(images, [names[c] for c in order], scale=scale)


def add_caption(image: Image.Image, text: str, *, scale: int = 1) -> Image.Image:
    """``image`` with a band of ``text`` (white on black, centred) underneath."""
    font = _font(scale)
    band = int(font.size * 1.6)
    mode = "RGB" if image.mode == "RGB" else "L"
    canvas = Image.new(mode, (image.width, image.height + band), 0)
    canvas.paste(image.convert(mode), (0, 0))
    ImageDraw.Draw(canvas).text((image.width / 2, image.height + band / 2), text,
                                fill=_white(mode), font=font, anchor="mm")
    return canvas


def animation_frames(frames: torch.Tensor | np.ndarray, captions: Sequence[str], *, scale: int = 4,
                     padding: int = 2) -> list[Image.Image]:
    """Frames (F, D, H, W) (or (F, D, 3, H, W)) uint8 of D digits -> F captioned images, the
    digits side by side."""
    frames = np.asarray(frames)
    return [add_caption(image_grid(f, nrow=f.shape[0], padding=padding, scale=scale), c, scale=scale)
            for f, c in zip(frames, captions)]


def frame_strip(frames: torch.Tensor | np.ndarray, *, scale: int = 2, padding: int = 2) -> Image.Image:
    """Frames (F, D, H, W) (or (F, D, 3, H, W)) uint8 -> one image with a row per digit and a
    column per frame."""
    frames = np.asarray(frames)
    f, d = frames.shape[:2]
    return image_grid(frames.swapaxes(0, 1).reshape(d * f, *frames.shape[2:]), nrow=f,
                      padding=padding, scale=scale)


# --------------------------------------------------------------------------------- files

def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write an image atomically (temp file + rename), creating parent folders; the format
    follows the suffix (PNG when unknown)."""
    buf = io.BytesIO()
    image.save(buf, format=Image.registered_extensions().get(Path(path).suffix.lower(), "PNG"))
    return write_atomic(path, buf.getvalue())


def check_timing(fps: float, hold: float) -> None:
    """MnistdiffError unless fps and hold are within jobs.LIMITS (0.1-50 frames per second, 0-60
    s). Outside these the GIF's frame delays (whole centiseconds) overflow or round to 0, which
    players replace with 0.1 s."""
    from .jobs import real

    real("--fps", fps, "fps", " frames per second")
    real("--hold", hold, "hold", " seconds")


def gif_bytes(stack: np.ndarray, durations: Sequence[int]) -> bytes:
    """A looping GIF of grayscale frames (F, H, W) (or RGB frames (F, H, W, 3)) uint8 with
    per-frame durations in ms.

    Every frame is a palette image with the same palette and no frame-to-frame optimisation:
    for grey frames 256 grays, so each frame decodes to exactly its pixels; for RGB frames the
    256 colours median cut finds in all of them together (not dithered). (imageio's writer let
    Pillow store an all-black first frame as mode L and the rest as P, which imageio.v3.imread
    then could not read: "No packer found from P to L".)"""
    if stack.ndim == 4:
        every = Image.fromarray(np.ascontiguousarray(stack.reshape(-1, *stack.shape[2:])), "RGB")
        palette_image = every.quantize(256, method=Image.Quantize.MEDIANCUT)
        frames = [Image.fromarray(f, "RGB").quantize(palette=palette_image,
                                                     dither=Image.Dither.NONE) for f in stack]
    else:
        palette = [v for g in range(256) for v in (g, g, g)]
        frames = []
        for frame in stack:
            image = Image.frombytes("P", (frame.shape[1], frame.shape[0]), frame.tobytes())
            image.putpalette(palette)
            frames.append(image)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                   duration=list(durations), loop=0, optimize=False, disposal=1)
    return buf.getvalue()


def save_animation(images: Sequence[Image.Image], path: str | Path, *, fps: float = 10.0,
                   hold: float = 1.0) -> Path:
    """Write frames as a looping GIF, or as MP4 when the path ends in .mp4 (needs imageio's
    ffmpeg plugin); the last frame stays on screen ``hold`` seconds longer."""
    check_animation_path(path)
    check_timing(fps, hold)
    path = Path(path)
    mode = "RGB" if any(im.mode == "RGB" for im in images) else "L"
    stack = np.stack([np.asarray(im.convert(mode)) for im in images])  # (F, H, W[, 3]) uint8
    if path.suffix.lower() == ".mp4":
        import imageio.v3 as iio

        even = ((0, 0), (0, stack.shape[1] % 2), (0, stack.shape[2] % 2))
        stack = np.pad(stack, even + ((0, 0),) * (stack.ndim - 3))  # even size
        held = np.repeat(stack[-1:], math.ceil(hold * fps), axis=0)
        data = iio.imwrite("<bytes>", np.concatenate([stack, held]), extension=".mp4",
                           plugin="FFMPEG", fps=fps, macro_block_size=2)
    else:
        durations = [round(1000.0 / fps)] * len(stack)  # milliseconds per frame
        durations[-1] += round(1000.0 * hold)
        data = gif_bytes(stack, durations)
    return write_atomic(path, data)


# --------------------------------------------------------------------------------- plots

def _figure(width: float = 7, height: float = 4):
    """A matplotlib Figure that does not touch pyplot's global state (imported lazily)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MnistdiffError("plots need matplotlib (pip install matplotlib)") from None
    return Figure(figsize=(width, height), dpi=120)


def _save_figure(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return write_atomic(path, buf.getvalue())


def plot_loss(steps: Sequence[int], losses: Sequence[float], path: str | Path,
              title: str = "training loss") -> Path:
    """Training loss (mean per log interval) against the optimizer step, log scale."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(steps, losses, lw=1.2)
    ax.set(xlabel="optimizer step", ylabel="training loss", yscale="log", title=title)
    ax.grid(alpha=0.3, which="both")
    return _save_figure(fig, path)


def plot_guidance_sweep(rows: Sequence[dict], path: str | Path) -> Path:
    """FID and class accuracy against the guidance scale (rows: dicts with 'guidance', 'fid',
    'accuracy'), on two y axes."""
    rows = sorted(rows, key=lambda r: r["guidance"])
    w = [r["guidance"] for r in rows]
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    ax.plot(w, [r["fid"] for r in rows], "o-", color="C0")
    ax.set_xlabel("guidance scale w")
    ax.set_ylabel("FID (classifier features)", color="C0")
    ax2 = ax.twinx()
    ax2.plot(w, [100 * r["accuracy"] for r in rows], "s--", color="C1")
    ax2.set_ylabel("class accuracy (%)", color="C1")
    ax.set_title("sample quality against guidance")
    return _save_figure(fig, path)


# --------------------------------------------------------------------------------- reading drawings

def read_drawing(path: str | Path, *, mask: bool = False, what: str = "image") -> np.ndarray:
    """A PNG (or any image Pillow reads) as 28x28 uint8 grey pixels, white = 255 as in MNIST.

    Square images of another size are resized (area average; nearest-neighbour for a mask, so it
    stays two-valued). With ``mask`` the result is 0 / 1: pixels >= 128 are 1 (keep)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            grey = im.convert("L")
    except FileNotFoundError:
        raise MnistdiffError(f"{what} {path} does not exist") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise MnistdiffError(f"{what} {path} is not a readable image ({e})") from None
    if grey.width != grey.height:
        raise MnistdiffError(f"{what} {path} is {grey.width}x{grey.height}; it must be square "
                             f"(28x28, or larger to be scaled down)")
    if grey.size != (28, 28):
        grey = grey.resize((28, 28), Image.NEAREST if mask else Image.BOX)
    pixels = np.asarray(grey, dtype=np.uint8)
    return (pixels >= 128).astype(np.uint8) if mask else pixels.copy()
