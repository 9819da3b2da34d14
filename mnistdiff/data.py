"""Datasets: IDX files in, one uint8 tensor out, shuffled minibatches on the device.

Where the files come from, in order (``find_data_dir``):

1. ``data.root`` in the config (``--data-dir`` on the CLI),
2. the ``MNISTDIFF_DATA`` environment variable,
3. system folders (Debian's ``dataset-fashion-mnist`` installs into /usr/share/datasets),
4. a download through torchvision into ``data.root`` or ~/.cache/mnistdiff (needs network).

A folder may hold the four IDX files directly (gzipped or not), in ``<folder>/<dataset>/``, or in
torchvision's layout ``<folder>/MNIST/raw/``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, NamedTuple

import numpy as np
import torch

from .errors import DataError
from .seeding import mix_seed

ENV_VAR = "MNISTDIFF_DATA"
DEFAULT_ROOT = Path("~/.cache/mnistdiff").expanduser()
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    torchvision_class: str           # folder and class name in torchvision.datasets
    sha256: dict[str, str]           # SHA-256 of the *decompressed* files, where known
    system_dirs: tuple[str, ...] = ()
    sizes: tuple[int, int] = (60000, 10000)
    noun: str = "digit"     # what one image is called in messages ("10 digits x 3")
    plural: str = "digits"
    kind: str = "idx"       # idx: four IDX files; folder: class folders (folder.py);
                            # torchvision: read (and downloaded) by torchvision (folder.py)
    shape: tuple[int, int] | None = (28, 1)  # (image_size, channels) a config gets by default

    @staticmethod
    def files(split: str) -> tuple[str, str]:
        """(images, labels) file names of a split, without .gz."""
        prefix = "train" if split == "train" else "t10k"
        return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        classes=tuple(str(i) for i in range(10)),
        torchvision_class="MNIST",
        sha256={  # the official values, as in shared/data/mnist/SHA256SUMS
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        torchvision_class="FashionMNIST",
        sha256={  # the files of zalandoresearch/fashion-mnist@55506a9, as packaged by Debian
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        noun="item", plural="items",
    ),
    # Your own images, one folder per class under data.root (torchvision's ImageFolder layout):
    # the classes are the folders' names, stored in the config as data.classes (folder.py).
    "folder": DatasetSpec(name="folder", classes=(), torchvision_class="", sha256={},
                          sizes=(0, 0), noun="image", plural="images", kind="folder",
                          shape=None),
    # Through torchvision's downloader (needs network once); offline, the same images as class
    # folders make the folder dataset.
    "cifar10": DatasetSpec(
        name="cifar10",
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"),
        torchvision_class="CIFAR10", sha256={}, sizes=(50000, 10000), noun="image",
        plural="images", kind="torchvision", shape=(32, 3)),
}
IDX_DATASETS = tuple(name for name, spec in DATASETS.items() if spec.kind == "idx")


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


# --------------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

# What an IDX file here can mean, checked on its header before any data is read or inflated:
# images (N, 28, 28) and labels (N,) of a dataset, with N far above MNIST's 70,000.
MAX_IDX_NDIM = 4
MAX_IDX_ITEMS = 10_000_000                   # the first dimension (images or labels)
MAX_IDX_BYTES = MAX_IDX_ITEMS * 28 * 28      # 7.84 GB of data, also never more than memory holds
_CHUNK = 1 << 20                             # bytes inflated (and hashed) at a time
_DEFLATE_RATIO = 1032                        # deflate's ceiling: no gzip inflates more per byte


class _IdxHeader(NamedTuple):
    dtype: np.dtype
    shape: tuple[int, ...]
    size: int      # bytes of the header
    nbytes: int    # bytes of data it declares


def _header(head: bytes, name: str, more: Callable[[int], bytes] | None = None) -> _IdxHeader:
    """Parse an IDX header: 2 zero bytes, a dtype code, ndim, ndim big-endian uint32 sizes.
    ``head`` holds at least its first 4 bytes when the file has them; ``more(n)`` reads the
    n bytes of sizes that follow (None: they are in ``head``). DataError for a header that is
    bad or declares more than an IDX file here can mean."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise DataError(f"{name}: not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[head[2]]), head[3]
    if ndim > MAX_IDX_NDIM:
        raise DataError(f"{name}: IDX header declares {ndim} dimensions; images and labels "
                        f"have at most {MAX_IDX_NDIM}")
    size = 4 + 4 * ndim
    dims = head[4:size] if more is None else more(4 * ndim)
    if ndim == 0 or len(dims) < 4 * ndim:
        raise DataError(f"{name}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(dims, dtype=">u4", count=ndim))
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: np.prod would wrap around
    if shape[0] > MAX_IDX_ITEMS or nbytes > MAX_IDX_BYTES:
        raise DataError(f"{name}: IDX header declares {shape} ({nbytes:,} bytes of data), more "
                        f"than a dataset here can hold (at most {MAX_IDX_ITEMS:,} items, "
                        f"{MAX_IDX_BYTES / 1e9:.2f} GB); the file is corrupted")
    return _IdxHeader(dtype, shape, size, nbytes)


def _mismatch(name: str, header: _IdxHeader, holds: str) -> DataError:
    return DataError(f"{name}: IDX header says {header.shape} ({header.nbytes} bytes of data) "
                     f"but the file holds {holds}; it is truncated or corrupted")


def _to_array(data: bytes | bytearray, header: _IdxHeader, offset: int = 0) -> np.ndarray:
    """The data as an array in native byte order (writable when ``data`` is a bytearray)."""
    arr = np.frombuffer(data, dtype=header.dtype, count=math.prod(header.shape), offset=offset)
    return arr.reshape(header.shape).astype(header.dtype.newbyteorder("="), copy=False)


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse the IDX format from bytes in memory (see read_idx, which never holds more than
    the header promises)."""
    header = _header(data, name)
    if len(data) - header.size != header.nbytes:
        raise _mismatch(name, header, str(len(data) - header.size))
    arr = _to_array(data, header, header.size)
    return arr if arr.flags.writeable else arr.copy()


class _IdxFile:
    """An IDX file opened for bounded reading: the header first, then exactly the data it
    declares, inflated (gzip, detected by its magic number) and SHA-256-hashed as it streams."""

    def __init__(self, path: str | Path):
        self.path, self.name = Path(path), str(path)
        self.digest = hashlib.sha256()
        try:
            self.raw = open(self.path, "rb")
        except OSError as e:
            raise DataError(f"cannot read {self.path}: {e.strerror}") from None
        self.stream: BinaryIO | None = None
        try:
            try:
                self.file_size = os.fstat(self.raw.fileno()).st_size
                self.gzip = self.raw.read(2) == b"\x1f\x8b"
                self.raw.seek(0)
            except OSError as e:
                raise DataError(f"cannot read {self.path}: {e.strerror}") from None
            self.stream = gzip.GzipFile(fileobj=self.raw) if self.gzip else self.raw
            self.header = _header(self.read(4), self.name, self.read)
        except BaseException:
            self.close()
            raise

    def read(self, n: int) -> bytes:
        """Up to n bytes of the (decompressed) file, hashed; one DataError for any read error."""
        try:
            out = self.stream.read(n)
        except (OSError, EOFError, zlib.error) as e:
            if self.gzip:
                raise DataError(f"{self.path}: corrupted or truncated gzip file ({e})") from None
            raise DataError(f"cannot read {self.path}: {getattr(e, 'strerror', None) or e}") \
                from None
        self.digest.update(out)
        return out

    def data(self, sha256: str | None = None) -> np.ndarray:
        """The array the header declares; DataError when the file holds less or more, or does
        not hash to ``sha256``. Memory: the declared bytes (refused up front when they exceed
        the available memory), never what a compressed file could inflate to."""
        header, name = self.header, self.name
        if not self.gzip and self.file_size - header.size != header.nbytes:
            raise _mismatch(name, header, str(self.file_size - header.size))  # nothing read yet
        if self.gzip and header.size + header.nbytes > _DEFLATE_RATIO * self.file_size:
            raise _mismatch(name, header, f"at most {_DEFLATE_RATIO * self.file_size - header.size}"
                            f" (a gzip file of {self.file_size} bytes inflates to at most "
                            f"{_DEFLATE_RATIO}x that)")
        from .files import _size, available_memory
        avail = available_memory()
        if avail is not None and header.nbytes > avail:
            raise DataError(f"{name}: IDX header declares {header.shape} ({_size(header.nbytes)}) "
                            f"but only {_size(avail)} of memory is available")
        buf = bytearray()
        while len(buf) < header.nbytes:
            chunk = self.read(min(_CHUNK, header.nbytes - len(buf)))
            if not chunk:
                raise _mismatch(name, header, str(len(buf)))
            buf += chunk
        if self.read(1):  # trailing data (a gzip that inflates to more than declared)
            raise _mismatch(name, header, f"more than {header.nbytes}")
        if sha256 is not None and self.digest.hexdigest() != sha256:
            raise DataError(f"{self.path}: SHA-256 of the decompressed file does not match the "
                            f"known value; the file is corrupted or not the expected dataset")
        return _to_array(buf, header)

    def close(self) -> None:
        if self.stream is not None and self.stream is not self.raw:
            self.stream.close()
        self.raw.close()

    def __enter__(self) -> _IdxFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _read_idx(path: str | Path, sha256: str | None = None) -> tuple[np.ndarray, str]:
    with _IdxFile(path) as f:
        return f.data(sha256), f.digest.hexdigest()


def read_idx(path: str | Path, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (gzip or raw); check the decompressed bytes against sha256 when given.
    The header is read first and bounds everything after it: a gzip bomb inflates no further
    than the data its header declares (plus one byte to see that it holds more)."""
    return _read_idx(path, sha256)[0]


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write an array as IDX (gzip when the name ends in .gz or compress is True)."""
    codes = {np.dtype(v).str.lstrip("<>|="): k for k, v in _IDX_DTYPES.items()}
    code = codes[np.dtype(array.dtype).str.lstrip("<>|=")]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array).astype(np.dtype(_IDX_DTYPES[code])).tobytes()
    path = Path(path)
    if compress or (compress is None and path.suffix == ".gz"):
        path.write_bytes(gzip.compress(header + body))
    else:
        path.write_bytes(header + body)


# --------------------------------------------------------------------------------- finding files

def _file_in(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _complete(folder: Path, splits: tuple[str, ...] = SPLITS) -> bool:
    return all(_file_in(folder, n) for s in splits for n in DatasetSpec.files(s))


def has_split(folder: str | Path, split: str) -> bool:
    """Whether ``folder`` holds both IDX files of ``split`` (gzipped or not)."""
    return _complete(Path(folder), (split,))


def _candidates(base: Path, spec: DatasetSpec) -> list[Path]:
    return [base / spec.name, base / spec.torchvision_class / "raw", base]


def _download(spec: DatasetSpec, root: Path, searched: str) -> Path:
    """Fetch the dataset with torchvision into root/<Class>/raw (the path for users with network).

    torchvision creates its folders before it knows whether the network is there, so it works in
    a temporary folder and only complete downloads are moved to ``root``: offline, nothing is
    left in the user's folders, and the error is one line (torchvision's spans five)."""
    import shutil
    import tempfile

    from .doctor import torchvision_problem

    problem = torchvision_problem()  # a mismatched torchvision raises deep in its import
    if problem is not None:
        raise DataError(f"{spec.name} not found (looked in {searched}) and it cannot be "
                        f"downloaded: {problem}")
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.torchvision_class)
    staging = Path(tempfile.mkdtemp(prefix="mnistdiff-download-"))
    try:
        try:
            for train in (True, False):
                cls(str(staging), train=train, download=True)
        except Exception as e:  # network errors come in many types
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            reason = f"{type(e).__name__}: {lines[0][:120]}" if lines else type(e).__name__
            raise DataError(f"{spec.name} not found (looked in {searched}) and the download "
                            f"failed ({reason}); {missing_files_hint(spec)}") from None
        dest = root / spec.torchvision_class / "raw"
        try:
            dest.mkdir(parents=True, exist_ok=True)
            for f in (staging / spec.torchvision_class / "raw").iterdir():
                shutil.move(str(f), str(dest / f.name))
        except OSError as e:
            raise DataError(f"downloaded {spec.name} but cannot store it in {dest}: "
                            f"{e.strerror}") from None
        return dest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def missing_files_hint(spec: DatasetSpec) -> str:
    names = ", ".join(f"{n}.gz" for s in SPLITS for n in DatasetSpec.files(s))
    return (f"put the four IDX files ({names}) into a folder and pass it with --data-dir "
            f"(data.root) or ${ENV_VAR}")


def find_data_dir(dataset: str, root: str | Path | None = None, download: bool = True,
                  splits: tuple[str, ...] = SPLITS) -> Path:
    """The folder that holds the IDX files of ``splits`` (default both: four files; see the
    module docstring for the order)."""
    spec = get_spec(dataset)
    searched: list[Path] = []
    bases = [Path(root).expanduser()] if root else []
    if os.environ.get(ENV_VAR):
        bases.append(Path(os.environ[ENV_VAR]).expanduser())
    for base in bases:
        for folder in _candidates(base, spec):
            if _complete(folder, splits):
                return folder
        searched.append(base)
    for d in spec.system_dirs:
        if _complete(Path(d), splits):
            return Path(d)
        searched.append(Path(d))
    where = ", ".join(str(p) for p in searched) or "nowhere (no data.root, no $" + ENV_VAR + ")"
    if download:
        return _download(spec, Path(root).expanduser() if root else DEFAULT_ROOT / spec.name, where)
    raise DataError(f"{spec.name} not found (looked in {where}) and download is off; "
                    f"{missing_files_hint(spec)}")


# --------------------------------------------------------------------------------- loading

class LabelledImages(NamedTuple):
    images: torch.Tensor  # (N, C, S, S) uint8: (N, 1, 28, 28) for MNIST
    labels: torch.Tensor  # (N,) int64


def _load_split(folder: Path, split: str, dataset: str,
                verify: bool) -> tuple[LabelledImages, dict[str, str]]:
    """load_split, and the SHA-256 of each decompressed file (name -> hex digest). Both headers
    are checked against each other before any data is read: a labels file that declares a
    billion labels, or images of another shape, costs nothing."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    spec = get_spec(dataset)
    names, paths = DatasetSpec.files(split), []
    for name in names:
        path = _file_in(folder, name)
        if path is None:
            raise DataError(f"{folder}: missing {name}(.gz); {missing_files_hint(spec)}")
        paths.append(path)
    with _IdxFile(paths[0]) as fi, _IdxFile(paths[1]) as fl:
        hi, hl = fi.header, fl.header
        if (hi.shape[1:] != (28, 28) or hi.dtype != np.uint8 or len(hl.shape) != 1
                or hl.dtype.kind not in "iu"):
            raise DataError(f"{folder}: {split} files have shapes {hi.shape} {hi.dtype} / "
                            f"{hl.shape} {hl.dtype}, expected (N, 28, 28) uint8 images and "
                            f"(N,) integer labels")
        if hi.shape[0] != hl.shape[0]:
            raise DataError(f"{folder}: {hi.shape[0]} {split} images but {hl.shape[0]} labels")
        images = fi.data(spec.sha256.get(names[0]) if verify else None)
        labels = fl.data(spec.sha256.get(names[1]) if verify else None)
        digests = {names[0]: fi.digest.hexdigest(), names[1]: fl.digest.hexdigest()}
    if labels.size and (int(labels.max()) >= len(spec.classes) or int(labels.min()) < 0):
        bad = int(labels.max()) if int(labels.max()) >= len(spec.classes) else int(labels.min())
        raise DataError(f"{folder}: label {bad} outside the {len(spec.classes)} "
                        f"classes of {spec.name}")
    # images is a writable array over the bytes read (no copy); labels become int64
    return LabelledImages(torch.from_numpy(images).unsqueeze(1),
                          torch.from_numpy(labels.astype(np.int64))), digests


def load_split(folder: str | Path, split: str = "train", dataset: str = "mnist",
               verify: bool = True) -> LabelledImages:
    """Read one split from a folder of IDX files into CPU tensors."""
    return _load_split(Path(folder), split, dataset, verify)[0]


def load_dataset(data_cfg, split: str = "train",
                 say: Callable[[str], None] | None = None) -> LabelledImages:
    """Find and read a split as described by a DataConfig: uint8 images (N, C, S, S) with
    C = data.channels and S = data.image_size (1 and 28 for the IDX datasets). A class-folder
    or torchvision dataset is read by folder.py (``say`` hears what it reads or caches)."""
    if get_spec(data_cfg.dataset).kind != "idx":
        from .folder import load_split as load_other

        return load_other(data_cfg, split, say)
    folder = find_data_dir(data_cfg.dataset, data_cfg.root, data_cfg.download)
    return load_split(folder, split, data_cfg.dataset, data_cfg.verify)


def class_names(data_cfg, look: bool = True) -> tuple[str, ...]:
    """The names of a dataset's classes: data.classes when set (a folder model's config holds
    its folders' names), else the registry's; a folder dataset's are read from its folders
    (``look``; else there are none)."""
    if data_cfg.classes is not None:
        return tuple(data_cfg.classes)
    spec = get_spec(data_cfg.dataset)
    if spec.kind == "folder" and look:
        from .folder import scan

        return scan(data_cfg).classes
    return spec.classes


def to_model_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images_u8.float().mul_(2.0 / 255.0).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped, rounded)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# --------------------------------------------------------------------------------- batches

class BatchLoader:
    """Shuffled minibatches from a dataset held as one uint8 tensor on the device.

    The order of epoch ``e`` is a permutation drawn from a generator seeded with ``mix_seed(seed, e)``,
    so the position in training (epoch, batch) is the shuffler's whole state: resuming needs no
    saved RNG. ``batch_size`` is the *global* batch; with ``world_size`` ranks, rank ``r`` gets
    the slice ``r::world_size`` of every global batch, so the ranks together see exactly the batch
    a single process would.
    """

    def __init__(self, data: LabelledImages, batch_size: int, *, seed: int = 0,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu"):
        if batch_size % world_size:
            raise DataError(f"batch size {batch_size} is not divisible by {world_size} processes")
        if drop_last and len(data.images) < batch_size:
            raise DataError(f"batch size {batch_size} is larger than the dataset "
                            f"({len(data.images)} images)")
        self.images = data.images.to(device)  # (N, C, S, S) uint8, moved once
        self.labels = data.labels.to(device)  # (N,) int64
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(len(self.images), generator=g).to(self.images.device)

    def indices(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """This rank's dataset indices of each global batch of ``epoch``, from batch ``start``."""
        perm = self.permutation(epoch)
        for b in range(start, len(self)):
            yield perm[b * self.batch_size:(b + 1) * self.batch_size][self.rank::self.world_size]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x in [-1, 1] (B,C,S,S) float, y (B,) int64) from batch ``start`` onwards."""
        for idx in self.indices(epoch, start):
            yield to_model_range(self.images[idx]), self.labels[idx]


# --------------------------------------------------------------------------------- statistics

def describe(folder: str | Path, dataset: str = "mnist") -> dict:
    """Per-split counts per class, pixel mean/std and file checksums (for ``mnistdiff data info``)."""
    spec, folder = get_spec(dataset), Path(folder)
    out: dict = {"dataset": spec.name, "folder": str(folder), "classes": list(spec.classes),
                 "splits": {}, "files": {}}
    for split in SPLITS:
        (images, labels), digests = _load_split(folder, split, dataset, verify=False)
        for name in DatasetSpec.files(split):
            known = spec.sha256.get(name)
            out["files"][name] = {"sha256": digests[name],
                                  "verified": None if known is None else digests[name] == known}
        pixels = images.double() / 255.0
        out["splits"][split] = {
            "n": len(labels),
            "per_class": torch.bincount(labels, minlength=len(spec.classes)).tolist(),
            "pixel_mean": pixels.mean().item(),
            "pixel_std": pixels.std().item(),
        }
    return out


def describe_dataset(data_cfg, say: Callable[[str], None] | None = None) -> dict:
    """``describe`` of the dataset a DataConfig names: the IDX files' folder, or a class
    folder's (or cifar10's) splits with a line or two of notes (the split, what was left out)."""
    if get_spec(data_cfg.dataset).kind == "idx":
        folder = find_data_dir(data_cfg.dataset, data_cfg.root, data_cfg.download)
        return describe(folder, data_cfg.dataset)
    from .folder import describe as describe_folder

    info = describe_folder(data_cfg, say)
    kind = "RGB" if info["channels"] == 3 else "grey"
    notes = [f"{info['image_size']}x{info['image_size']} {kind}; the test split: "
             f"{info['split']}"]
    if info["skipped"]:
        notes.append(f"{len(info['skipped'])} unreadable files skipped (data.skip_bad), the "
                     f"first {info['skipped'][0]}")
    if info.get("ignored_files"):
        notes.append(f"{info['ignored_files']} files left out for their suffix (not an image)")
    return {**info, "notes": notes}


def describe_rows(info: dict) -> tuple[list[list[str]], list[list[str]]]:
    """``describe``'s result as two tables: per-class counts (and pixel statistics) per split,
    and the files with their checksums (none for a class folder)."""
    splits = info["splits"].values()
    counts = [[f"{i} {name}", *(str(v["per_class"][i]) for v in splits)]
              for i, name in enumerate(info["classes"])]
    counts.append(["pixel mean / std", *("-" if v["pixel_std"] is None else
                                         f"{v['pixel_mean']:.4f} / {v['pixel_std']:.4f}"
                                         for v in splits)])
    files = [[name, f["sha256"], {True: "yes", False: "MISMATCH", None: "unknown"}[f["verified"]]]
             for name, f in info.get("files", {}).items()]
    return counts, files
