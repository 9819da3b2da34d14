"""The samples format: an NPZ of ``images`` uint8 (N, 28, 28) and ``labels`` int64 (N,), what
``sample --npz`` and ``evaluate --npz`` write and ``evaluate --samples`` reads. Images of other
models are (N, S, S) grey or (N, S, S, 3) RGB: channels last, as NumPy and PIL keep pixels
(``load_npz_samples`` also reads (N, 1, S, S) and (N, 3, S, S), and returns the in-memory
layout of ``pipeline.Samples``: (N, S, S) or (N, 3, S, S)).

    save_npz_samples("s.npz", images, labels)          # all at once
    with NpzSamplesWriter("s.npz", total=n) as npz:     # batch by batch, memory bounded
        npz.write(images, labels)
    images, labels = load_npz_samples("s.npz")          # checked, bounded by its headers

Writes are atomic (files.atomic_file). Reading never inflates more than the two members'
headers declare, and checks those headers against the format and the file first.
"""

from __future__ import annotations

import contextlib
import io
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import MnistdiffError
from .files import write_atomic

MAX_IMAGES = 10_000_000  # a thousand times evaluate's 10,000
MAX_MEMBERS = 1_000      # an NPZ of samples has 2
MAX_HEADER = 10_000      # numpy's own limit on a .npy header (max_header_size)
CHUNK = 1 << 22
ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError,
          NotImplementedError, SyntaxError, RecursionError, MemoryError)


GREY28 = (1, 28, 28)  # MNIST's (C, H, W)


def _layouts(shape: tuple | None) -> str:
    """The shapes a message accepts for images of ``shape`` (C, H, W); None: any."""
    if shape is None:
        return "(N, H, W), (N, 1, H, W) or (N, 3, H, W)"
    c, h, w = shape
    return f"(N, {h}, {w}) or (N, 1, {h}, {w})" if c == 1 else f"(N, 3, {h}, {w})"


def as_images(images: torch.Tensor | np.ndarray,
              shape: tuple[int, int, int] | None = GREY28) -> torch.Tensor:
    """(N, H, W) or (N, C, H, W) uint8 array or tensor (C = 1 or 3) -> (N, C, H, W) uint8
    tensor; ``shape`` is the (C, H, W) expected (default MNIST's, None: any)."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise MnistdiffError(f"images must be uint8 (0-255), got {images.dtype}")
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or (
            shape is not None and tuple(images.shape[1:]) != tuple(shape)):
        raise MnistdiffError(f"images have shape {tuple(images.shape)}, "
                             f"expected {_layouts(shape)}")
    return images


def _stored(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) -> the stored layout: (N, H, W) grey, (N, H, W, 3) RGB."""
    return (images[:, 0] if images.shape[1] == 1 else images.permute(0, 2, 3, 1)).cpu().numpy()


def save_npz_samples(path: str | Path, images: torch.Tensor | np.ndarray,
                     labels: torch.Tensor | np.ndarray) -> Path:
    """Write (atomically) the samples format: ``images`` uint8 (N, 28, 28) ((N, S, S) or
    (N, S, S, 3)) and ``labels`` int64 (N,)."""
    images = _stored(as_images(images, None))
    labels = torch.as_tensor(labels).long().cpu().numpy()
    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, labels=labels)
    return write_atomic(path, buf.getvalue())


class NpzSamplesWriter:
    """Stream the samples format to ``path`` batch by batch, so memory stays bounded by a batch
    however many images a job makes (``save_npz_samples`` needs them all in memory):

        with NpzSamplesWriter("s.npz", total=n) as npz:
            for images, labels in batches:
                npz.write(images, labels)

    The file is the same as ``save_npz_samples`` writes (a compressed NPZ with ``images`` uint8
    (N, 28, 28) and ``labels`` int64 (N,), zip64 for large N), written atomically: it appears
    complete when the block ends, or not at all."""

    def __init__(self, path: str | Path, total: int, shape: tuple[int, int, int] = GREY28):
        """``shape``: the (C, H, W) of every image written."""
        self.path, self.total, self.written = Path(path), int(total), 0
        self.shape = tuple(shape)

    def __enter__(self) -> NpzSamplesWriter:
        import tempfile

        from .files import atomic_file

        self._stack = contextlib.ExitStack()
        try:
            f = self._stack.enter_context(atomic_file(self.path))
            self._zip = self._stack.enter_context(
                zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, allowZip64=True))
            self._labels = self._stack.enter_context(tempfile.TemporaryFile())
            self._images = self._zip.open("images.npy", "w", force_zip64=True)
            np.lib.format.write_array_header_1_0(self._images, {
                "descr": "|u1", "fortran_order": False,
                "shape": (self.total, *_stored(torch.zeros(1, *self.shape, dtype=torch.uint8)
                                               ).shape[1:])})
        except BaseException:
            self._stack.close()
            raise
        return self

    def write(self, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        images = _stored(as_images(images, self.shape))
        labels = torch.as_tensor(labels).long().cpu().numpy()
        if len(images) != len(labels) or self.written + len(images) > self.total:
            raise ValueError(f"{len(images)} images and {len(labels)} labels after "
                             f"{self.written} of {self.total}")
        self._images.write(np.ascontiguousarray(images).tobytes())
        self._labels.write(labels.astype("<i8").tobytes())
        self.written += len(images)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._images.close()
            if exc_type is None:
                if self.written != self.total:
                    raise ValueError(f"wrote {self.written} of {self.total} images")
                with self._zip.open("labels.npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array_header_1_0(entry, {
                        "descr": "<i8", "fortran_order": False, "shape": (self.total,)})
                    self._labels.seek(0)
                    while chunk := self._labels.read(1 << 20):
                        entry.write(chunk)
        except BaseException as e:  # e.g. a full disk: atomic_file removes the temp file
            self._stack.__exit__(type(e), e, e.__traceback__)
            raise
        # closes the zip, then atomic_file renames the temp file (or removes it on an error)
        self._stack.__exit__(exc_type, exc, tb)


def load_npz_samples(path: str | Path, num_classes: int = 10,
                     shape: tuple[int, int, int] | None = GREY28
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and check a samples NPZ -> (images uint8 (N, 28, 28), labels int64 (N,)); images
    of ``shape`` (C, H, W; None: any) come as (N, H, W) grey or (N, 3, H, W) RGB.

    Bounded by what the file declares, checked before anything is inflated: only the 'images'
    and 'labels' members are read (another member, however large, costs nothing), each .npy
    header is read first and its shape and dtype checked against the samples format, against
    the member's real uncompressed size (ZipInfo.file_size) and against the available memory;
    then exactly the declared bytes are read (deflate inflates no further than asked)."""
    path = Path(path)
    try:
        zf = _open(path)
    except ERRORS as e:
        raise _cannot(path, e) from None
    with zf:
        members = _members(zf, path)
        try:
            heads = {key: _header(zf, members[key]) for key in ("images", "labels")}
        except ERRORS as e:
            raise _cannot(path, e) from None
        layout = _check_headers(path, heads, members, shape)
        try:
            images, labels = (_data(zf, members[key], *heads[key]) for key in ("images", "labels"))
        except ERRORS as e:
            raise _cannot(path, e) from None
    images = images.reshape(layout[0])
    if layout[1]:  # stored channels last
        images = images.transpose(0, 3, 1, 2)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise MnistdiffError(f"{path}: labels must lie in 0..{num_classes - 1}, found "
                             f"{labels.min()}..{labels.max()}")
    return (torch.from_numpy(np.ascontiguousarray(images)),
            torch.from_numpy(labels.astype(np.int64)))


def _clip(text: object, n: int = 100) -> str:
    line = str(text).splitlines()[0] if str(text).strip() else str(text)
    return line if len(line) <= n else line[:n - 3] + "..."


def _cannot(path: Path, why: object) -> MnistdiffError:
    return MnistdiffError(f"cannot read {path} as an NPZ file ({_clip(why)})")


def _open(path: Path) -> zipfile.ZipFile:
    """The zip, refused when it is a bare .npy or declares more members than samples can."""
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise ValueError("it holds a single array, not named 'images' and 'labels'")
        end = zipfile._EndRecData(f) if hasattr(zipfile, "_EndRecData") else None
    if end is not None and end[zipfile._ECD_ENTRIES_TOTAL] > MAX_MEMBERS:
        raise ValueError(f"{end[zipfile._ECD_ENTRIES_TOTAL]:,} members; a samples NPZ has 2")
    return zipfile.ZipFile(path)


def _members(zf: zipfile.ZipFile, path: Path) -> dict[str, zipfile.ZipInfo]:
    """The 'images' and 'labels' members (np.savez writes images.npy; np.load also reads
    'images'); one line naming what the file holds when one is missing."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = info.filename
        key = name[:-4] if name.endswith(".npy") else name
        if name.endswith(".npy") or key not in members:
            members[key] = info
    for key in ("images", "labels"):
        if key not in members:
            names = [_clip(k, 30) for k in list(members)[:6]]
            held = ", ".join(names) + (", ..." if len(members) > 6 else "")
            raise MnistdiffError(f"{path} has no '{key}' array (it holds: {held or 'nothing'}); "
                                 f"expected 'images' uint8 (N, 28, 28) and 'labels' int (N,)")
    return members


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header bytes) of a .npy member, reading its header only
    (at most MAX_HEADER bytes and the magic)."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(f"'{_clip(info.filename, 40)}' uses zip compression method "
                         f"{info.compress_type}; an NPZ is stored or deflated")
    with zf.open(info) as f:
        head = io.BytesIO(f.read(min(info.file_size, 12 + MAX_HEADER)))
    version = np.lib.format.read_magic(head)
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:  # (3, 0) only differs in a utf-8 header: not written here
        raise ValueError(f"'{_clip(info.filename, 40)}' has .npy format version {version}")
    shape, fortran, dtype = readers[version](head, max_header_size=MAX_HEADER)
    if dtype.hasobject:
        raise ValueError(f"'{_clip(info.filename, 40)}' holds Python objects (pickles are "
                         f"not read)")
    return tuple(shape), fortran, dtype, head.tell()


def _image_layout(shape: tuple) -> tuple[tuple, bool, tuple] | None:
    """(the shape to read the images as, whether it is channels last, (C, H, W)) of a stored
    'images' shape: (N, H, W), (N, 1, H, W), (N, H, W, 3) or (N, 3, H, W); None otherwise."""
    if len(shape) == 3:
        return shape, False, (1, *shape[1:])
    if len(shape) == 4 and shape[1] == 1:
        return (shape[0], *shape[2:]), False, (1, *shape[2:])
    if len(shape) == 4 and shape[3] == 3 and shape[1] != 3:
        return shape, True, (3, *shape[1:3])
    if len(shape) == 4 and shape[1] == 3:
        return shape, False, (3, *shape[2:])
    return None


def _check_headers(path: Path, heads: dict, members: dict,
                   expected: tuple | None = GREY28) -> tuple[tuple, bool]:
    """(the shape to read the images as, whether it is channels last), once the two headers
    are checked against the format (images of ``expected`` (C, H, W), None: any), each other,
    their members' sizes and the available memory."""
    from .files import _size, available_memory

    (shape, _, dtype, _), (lshape, _, ldtype, _) = heads["images"], heads["labels"]
    if dtype != np.uint8:
        raise MnistdiffError(f"{path}: 'images' must be uint8 (0-255), got {dtype}")
    layout = _image_layout(tuple(shape))
    if layout is None or shape[0] == 0 or (expected is not None and layout[2] != tuple(expected)):
        stored = ("(N, H, W), (N, H, W, 3) or their channels-first forms" if expected is None
                  else f"(N, {expected[1]}, {expected[2]}) or (N, 1, {expected[1]}, "
                       f"{expected[2]})" if expected[0] == 1
                  else f"(N, {expected[1]}, {expected[2]}, 3) or (N, 3, {expected[1]}, "
                       f"{expected[2]})")
        raise MnistdiffError(f"{path}: 'images' has shape {_clip(shape, 60)}, expected "
                             f"{stored} with N > 0")
    shape3 = layout[0]
    if len(lshape) != 1 or not np.issubdtype(ldtype, np.integer):
        raise MnistdiffError(f"{path}: 'labels' must be a 1-d integer array, got "
                             f"{ldtype} {_clip(lshape, 60)}")
    n = shape3[0]
    if lshape[0] != n:
        raise MnistdiffError(f"{path}: {n} images but {lshape[0]} labels")
    if n > MAX_IMAGES:
        raise MnistdiffError(f"{path}: 'images' declares {n:,} images; at most {MAX_IMAGES:,}")
    for key, (sh, _, dt, offset) in heads.items():
        declared, info = math.prod(sh) * dt.itemsize, members[key]
        if info.file_size != offset + declared:
            raise MnistdiffError(f"{path}: '{key}' declares {dt} {_clip(sh, 40)} "
                                 f"({declared:,} bytes) but its member holds "
                                 f"{max(info.file_size - offset, 0):,}; the file is "
                                 f"truncated or corrupted")
    need = n * (math.prod(layout[2]) + ldtype.itemsize + 8)  # images, labels (stored, int64)
    avail = available_memory()
    if avail is not None and need > avail:
        raise MnistdiffError(f"{path}: {n:,} samples need about {_size(need)} of memory but "
                             f"only {_size(avail)} is available")
    return layout[:2]


def _data(zf: zipfile.ZipFile, info: zipfile.ZipInfo, shape: tuple, fortran: bool,
          dtype: np.dtype, offset: int) -> np.ndarray:
    """The member's array, reading exactly the bytes its header declares (the caller has
    checked that the member holds exactly that many)."""
    out = np.empty(math.prod(shape) * dtype.itemsize, np.uint8)
    view, done = memoryview(out), 0
    with zf.open(info) as f:
        f.read(offset)
        while done < len(out):
            got = f.read(min(CHUNK, len(out) - done))
            if not got:
                raise EOFError(f"'{_clip(info.filename, 40)}' ends early")
            view[done:done + len(got)] = got
            done += len(got)
        f.read(1)  # at the end of the member: zipfile checks its CRC-32 here
    arr = out.view(dtype)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
