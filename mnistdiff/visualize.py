"""Pictures of digits: grids and PNG files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def as_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N,H,W) or (N,1,H,W) uint8 or float in [-1, 1] -> (N,H,W) uint8 numpy."""
    if isinstance(images, torch.Tensor):
        if images.is_floating_point():
            images = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round()
        images = images.to(torch.uint8).cpu().numpy()
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[:, 0]
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return images


def image_grid(images: torch.Tensor | np.ndarray, nrow: int, padding: int = 2, scale: int = 1,
               pad_value: int = 0) -> Image.Image:
    """Tile N images into rows of ``nrow`` with ``padding`` pixels between them; upscale by
    ``scale`` with nearest-neighbour so pixels stay crisp."""
    imgs = as_uint8(images)
    n, h, w = imgs.shape
    rows = -(-n // nrow)
    canvas = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value,
                     dtype=np.uint8)
    for i, img in enumerate(imgs):
        r, c = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        canvas[y:y + h, x:x + w] = img
    grid = Image.fromarray(canvas, mode="L")
    if scale != 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    return grid


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write an image atomically (temp file + rename), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
