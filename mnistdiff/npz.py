"""The samples format: an NPZ of ``images`` uint8 (N, 28, 28) and ``labels`` int64 (N,), what
``sample --npz`` and ``evaluate --npz`` write and ``evaluate --samples`` reads.

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


def as_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(N, 28, 28) or (N, 1, 28, 28) uint8 array or tensor -> (N, 1, 28, 28) uint8 tensor."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise MnistdiffError(f"images must be uint8 (0-255), got {images.dtype}")
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise MnistdiffError(f"images have shape {tuple(images.shape)}, "
                             f"expected (N, 28, 28) or (N, 1, 28, 28)")
    return images


def save_npz_samples(path: str | Path, images: torch.Tensor | np.ndarray,
                     labels: torch.Tensor | np.ndarray) -> Path:
    """Write (atomically) the samples format: ``images`` uint8 (N, 28, 28) and ``labels`` int64 (N,)."""
    images = as_images(images)[:, 0].cpu().numpy()
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

    def __init__(self, path: str | Path, total: int):
        self.path, self.total, self.written = Path(path), int(total), 0

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
                "descr": "|u1", "fortran_order": False, "shape": (self.total, 28, 28)})
        except BaseException:
            self._stack.close()
            raise
        return self

    def write(self, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        images = as_images(images)[:, 0].cpu().numpy()
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


def load_npz_samples(path: str | Path, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and check a samples NPZ -> (images uint8 (N, 28, 28), labels int64 (N,)).

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
        shape3 = _check_headers(path, heads, members)
        try:
            images, labels = (_data(zf, members[key], *heads[key]) for key in ("images", "labels"))
        except ERRORS as e:
            raise _cannot(path, e) from None
    images = images.reshape(shape3)
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


def _check_headers(path: Path, heads: dict, members: dict) -> tuple:
    """The images' shape as (N, 28, 28), once the two headers are checked against the format,
    each other, their members' sizes and the available memory."""
    from .files import _size, available_memory

    (shape, _, dtype, _), (lshape, _, ldtype, _) = heads["images"], heads["labels"]
    if dtype != np.uint8:
        raise MnistdiffError(f"{path}: 'images' must be uint8 (0-255), got {dtype}")
    shape3 = (shape[0],) + shape[2:] if len(shape) == 4 and shape[1] == 1 else shape
    if len(shape3) != 3 or shape3[1:] != (28, 28) or shape3[0] == 0:
        raise MnistdiffError(f"{path}: 'images' has shape {_clip(shape, 60)}, expected "
                             f"(N, 28, 28) or (N, 1, 28, 28) with N > 0")
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
    need = n * (28 * 28 + ldtype.itemsize + 8)  # images, labels as stored and as int64
    avail = available_memory()
    if avail is not None and need > avail:
        raise MnistdiffError(f"{path}: {n:,} samples need about {_size(need)} of memory but "
                             f"only {_size(avail)} is available")
    return shape3


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
