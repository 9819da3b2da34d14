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
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

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
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


# --------------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_bytes(path: str | Path) -> bytes:
    """The decompressed bytes of a file (gzip is detected by its magic number)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupted or truncated gzip file ({e})") from None
    return raw


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse the IDX format: 2 zero bytes, a dtype code, ndim, ndim big-endian int32 sizes, data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{name}: not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{name}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{name}: IDX header says {shape} ({expected} bytes of data) but the file "
                        f"holds {len(data) - header}; it is truncated or corrupted")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file (gzip or raw); check the decompressed bytes against sha256 when given."""
    data = read_bytes(path)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"{path}: SHA-256 of the decompressed file does not match the known value; "
                        f"the file is corrupted or not the expected dataset")
    return parse_idx(data, str(path))


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
    images: torch.Tensor  # (N, 1, 28, 28) uint8
    labels: torch.Tensor  # (N,) int64


def load_split(folder: str | Path, split: str = "train", dataset: str = "mnist",
               verify: bool = True) -> LabelledImages:
    """Read one split from a folder of IDX files into CPU tensors."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    spec, folder = get_spec(dataset), Path(folder)
    arrays = []
    for name in DatasetSpec.files(split):
        path = _file_in(folder, name)
        if path is None:
            raise DataError(f"{folder}: missing {name}(.gz); {missing_files_hint(spec)}")
        arrays.append(read_idx(path, spec.sha256.get(name) if verify else None))
    images, labels = arrays
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{folder}: {split} files have shapes {images.shape} / {labels.shape}, "
                        f"expected (N, H, W) uint8 images and (N,) labels")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    if labels.size and int(labels.max()) >= len(spec.classes):
        raise DataError(f"{folder}: label {int(labels.max())} outside the {len(spec.classes)} "
                        f"classes of {spec.name}")
    return LabelledImages(torch.from_numpy(images.copy()).unsqueeze(1),
                          torch.from_numpy(labels.astype(np.int64)))


def load_dataset(data_cfg, split: str = "train") -> LabelledImages:
    """Find and read a split as described by a DataConfig."""
    folder = find_data_dir(data_cfg.dataset, data_cfg.root, data_cfg.download)
    return load_split(folder, split, data_cfg.dataset, data_cfg.verify)


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
        self.images = data.images.to(device)  # (N, 1, 28, 28) uint8, moved once
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
        """Yield (x in [-1, 1] (B,1,28,28) float, y (B,) int64) from batch ``start`` onwards."""
        for idx in self.indices(epoch, start):
            yield to_model_range(self.images[idx]), self.labels[idx]


# --------------------------------------------------------------------------------- statistics

def describe(folder: str | Path, dataset: str = "mnist") -> dict:
    """Per-split counts per class, pixel mean/std and file checksums (for ``mnistdiff data info``)."""
    spec, folder = get_spec(dataset), Path(folder)
    out: dict = {"dataset": spec.name, "folder": str(folder), "classes": list(spec.classes),
                 "splits": {}, "files": {}}
    for split in SPLITS:
        for name in DatasetSpec.files(split):
            digest = hashlib.sha256(read_bytes(_file_in(folder, name) or folder / name)).hexdigest()
            known = spec.sha256.get(name)
            out["files"][name] = {"sha256": digest,
                                  "verified": None if known is None else digest == known}
        images, labels = load_split(folder, split, dataset, verify=False)
        pixels = images.double() / 255.0
        out["splits"][split] = {
            "n": len(labels),
            "per_class": torch.bincount(labels, minlength=len(spec.classes)).tolist(),
            "pixel_mean": pixels.mean().item(),
            "pixel_std": pixels.std().item(),
        }
    return out
