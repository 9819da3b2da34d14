"""Datasets of your own images (class folders) and CIFAR-10: files in, one uint8 tensor out.

    data:
      dataset: folder
      root: ~/pictures/shapes     # shapes/circle/001.png, shapes/square/a.jpg, ...
      image_size: 32              # every image is centre-cropped to a square and resized
      channels: 3                 # 1: grey (Pillow's L), 3: RGB

The layout is torchvision's ImageFolder: one folder per class under ``data.root``, the class
names are the folders' names (sorted), images anywhere below them (sub-folders included) with
ImageFolder's suffixes (``IMAGE_SUFFIXES``, any case). Hidden files and folders (a leading dot,
such as macOS's ``._x.png``) and files with other suffixes are left out. The split:

* ``root/train/<class>/...`` and ``root/test/<class>/...`` when the root holds both folders
  (the test classes must be among the training classes);
* otherwise every 10th image of each class (the 10th, 20th, ... in name order) is the test
  split and the rest the training split: deterministic, and the same on every machine.

Each image is read once with Pillow (EXIF orientation applied, transparency composited over
black), converted, cropped and resized (bicubic), and the whole folder becomes one uint8 tensor
(N, C, S, S), as MNIST is. That tensor is cached under ``files.cache_root() / "datasets"`` in a
file named by a hash of the folder's listing (every relative path, size and modification time)
and of image_size and channels: a second run reads the cache at once, and adding, removing,
renaming or changing one file reads the folder again (the stale file of the same folder is
then removed). A file that cannot be decoded is one line naming it; with ``data.skip_bad`` it
is left out and the count said.

``cifar10`` is read by torchvision (``torchvision.datasets.CIFAR10``, downloaded into the data
root on first use); offline, the same images as class folders are the folder dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from .data import DEFAULT_ROOT, ENV_VAR, LabelledImages, SPLITS, get_spec
from .errors import DataError
from .files import cache_root

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TEST_EVERY = 10          # the flat layout's test split: every 10th image of a class
MAX_FILES = 5_000_000    # images in one folder dataset (memory is checked before reading)
MAX_CLASSES = 1000       # as model.num_classes
FORMAT = 1               # of the cache files
Say = Callable[[str], None]


def _quiet(line: str) -> None:
    pass


# --------------------------------------------------------------------------------- the listing

@dataclass(frozen=True)
class Scan:
    """What a class-folder dataset holds, from its listing alone (no image is opened)."""
    root: Path
    layout: str                               # "train/ and test/" or "every 10th image"
    classes: tuple[str, ...]
    files: tuple[tuple[str, str, int], ...]   # (split, path relative to root, class index)
    ignored: int                              # files left out for their suffix
    key: str                                  # SHA-256 of the listing and the image shape

    def counts(self, split: str) -> list[int]:
        counts = [0] * len(self.classes)
        for s, _, c in self.files:
            counts[c] += s == split
        return counts


def _root(data_cfg) -> Path:
    if not data_cfg.root:
        raise DataError("dataset folder needs data.root (--data-dir): the folder that holds "
                        "one folder of images per class")
    root = Path(data_cfg.root).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"data.root {root} {what}; it must hold one folder of images per class")
    return root


def _class_dirs(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
    except OSError as e:
        raise DataError(f"cannot read {folder}: {e.strerror}") from None
    if not names:
        raise DataError(f"{folder}: no class folders; expected {folder}/<class>/<image>.png, "
                        f"one folder per class (torchvision's ImageFolder layout)")
    if len(names) > MAX_CLASSES:
        raise DataError(f"{folder}: {len(names):,} class folders; at most {MAX_CLASSES}")
    return names


def _images(folder: Path, root: Path) -> tuple[list[tuple[str, int, int]], int]:
    """(path relative to root, size, mtime in ns) of every image below ``folder``, in
    ImageFolder's order (sorted folders, then sorted names), and the count of other files.
    A file that cannot be stat-ed gets size -1: reading it names it."""
    found, ignored = [], 0
    for dirpath, dirnames, filenames in sorted(os.walk(folder, followlinks=False)):
        rel_dir = Path(dirpath).relative_to(root)
        if any(part.startswith(".") for part in rel_dir.parts):
            continue
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if not name.lower().endswith(IMAGE_SUFFIXES):
                ignored += 1
                continue
            try:
                st = os.stat(Path(dirpath) / name)
                found.append(((rel_dir / name).as_posix(), st.st_size, st.st_mtime_ns))
            except OSError:
                found.append(((rel_dir / name).as_posix(), -1, 0))
    return found, ignored


def scan(data_cfg) -> Scan:
    """The classes, files and split of the folder dataset ``data_cfg`` describes, and the key
    of its cache (see the module docstring for the layouts). One DataError line for a folder
    without class folders or a class folder without images."""
    root = _root(data_cfg)
    split_layout = (root / "train").is_dir() and (root / "test").is_dir()
    tops = {"train": root / "train", "test": root / "test"} if split_layout else {"": root}
    classes = _class_dirs(tops["train" if split_layout else ""])
    files, listing, ignored = [], [], 0
    for top_split, top in tops.items():
        names = classes if top_split != "test" else _class_dirs(top)
        for name in names:
            if name not in classes:
                raise DataError(f"{top / name}: not one of the classes of {tops['train']} "
                                f"({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")
            found, other = _images(top / name, root)
            ignored += other
            if not found and top_split != "test":
                raise DataError(f"{top / name}: no images ({', '.join(IMAGE_SUFFIXES)}); every "
                                f"class folder needs at least one")
            for i, (rel, size, mtime) in enumerate(found):
                split = top_split or ("test" if i % TEST_EVERY == TEST_EVERY - 1 else "train")
                files.append((split, rel, classes.index(name)))
                listing.append([split, rel, size, mtime])
    if len(files) > MAX_FILES:
        raise DataError(f"{root}: {len(files):,} images; at most {MAX_FILES:,}")
    layout = "train/ and test/" if split_layout else f"every {TEST_EVERY}th image"
    identity = {"format": FORMAT, "image_size": data_cfg.image_size,
                "channels": data_cfg.channels, "classes": classes, "files": listing}
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    return Scan(root, layout, tuple(classes), tuple(files), ignored, key)


# --------------------------------------------------------------------------------- decoding

def fit(image, size: int, channels: int):
    """A PIL image as ``channels`` (1: L, 3: RGB) and ``size`` x ``size`` pixels: transparency
    composited over black, 16-bit grey scaled to 8 bits, centre-cropped to a square and
    resized (bicubic). Returns an array (S, S) or (S, S, 3) uint8."""
    from PIL import Image, ImageOps

    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def _decode(path: Path, size: int, channels: int) -> tuple[np.ndarray | None, str | None]:
    """(pixels, None) of an image file, or (None, why it cannot be read)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.draft("L" if channels == 1 else "RGB", (size, size))  # JPEG: decode smaller
            return fit(ImageOps.exif_transpose(image), size, channels), None
    except Exception as e:  # noqa: BLE001 (Pillow's decoders raise many types on a bad file)
        lines = str(e).strip().splitlines()
        return None, f"{type(e).__name__}: {lines[0][:100]}" if lines else type(e).__name__


def _read(s: Scan, size: int, channels: int, say: Say) -> dict:
    """Decode every file of the listing: the cache's content (all images, the bad ones as
    zeros, with their indices and reasons)."""
    from .files import check_space

    n = len(s.files)
    check_space({}, memory=2 * n * channels * size * size,
                what=f"{n:,} images of {size}x{size}x{channels}")
    say(f"reading {n:,} images of {len(s.classes)} classes from {s.root} (once: they are "
        f"cached)")
    start, out, bad = time.perf_counter(), np.zeros((n, size, size, channels), np.uint8), []
    paths = [s.root / rel for _, rel, _ in s.files]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, (pixels, why) in enumerate(pool.map(lambda p: _decode(p, size, channels), paths)):
            if why is None:
                out[i] = pixels.reshape(size, size, channels)
            else:
                bad.append([i, why])
    say(f"read {n - len(bad):,} images in {time.perf_counter() - start:.1f} s")
    return {"format": FORMAT, "key": s.key, "classes": list(s.classes),
            "images": torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(),
            "labels": torch.tensor([c for _, _, c in s.files], dtype=torch.int64),
            "test": torch.tensor([split == "test" for split, _, _ in s.files]), "bad": bad}


# --------------------------------------------------------------------------------- the cache

def _cache_file(prefix: str, key: str) -> Path:
    return cache_root() / "datasets" / f"{prefix}-{key[:24]}.pt"


def _prefix(*parts: object) -> str:
    """The part of a cache file's name that names what it is of (a folder at one image shape),
    so a newer version of the same folder replaces the older file."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:12]


def _load_cache(path: Path, key: str, shape: tuple[int, int, int]) -> dict | None:
    """The cache file's content when it is whole and of ``key``; None otherwise (then the data
    is read again and the file rewritten)."""
    if not path.is_file():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        n = len(d["labels"])
        ok = (d["format"] == FORMAT and d["key"] == key and d["images"].dtype == torch.uint8
              and tuple(d["images"].shape) == (n, *shape) and len(d["test"]) == n)
    except Exception:  # noqa: BLE001 (a damaged or foreign file is only a cache miss)
        return None
    return d if ok else None


def _save_cache(path: Path, content: dict, say: Say) -> None:
    """Write the cache file atomically and remove older versions of it; a cache that cannot
    be written is said, not an error (the run goes on without it)."""
    from .errors import MnistdiffError
    from .files import atomic_file

    try:
        with atomic_file(path) as f:
            torch.save(content, f)
    except MnistdiffError as e:
        say(f"not cached: {e}")
        return
    prefix = path.name.split("-")[0]
    for old in path.parent.glob(f"{prefix}-*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
    say(f"cached in {path}")


def _cached(path: Path, key: str, shape: tuple[int, int, int], compute: Callable[[], dict],
            say: Say) -> dict:
    content = _load_cache(path, key, shape)
    if content is None:
        content = compute()
        _save_cache(path, content, say)
    return content


# --------------------------------------------------------------------------------- loading

class FolderData(NamedTuple):
    """A whole folder or torchvision dataset: both splits, its classes, what was left out."""
    train: LabelledImages
    test: LabelledImages
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (file, why) of the files data.skip_bad left out
    source: str = ""                           # where it came from, for messages
    layout: str = ""                           # how the split was made


def _splits(content: dict, keep: torch.Tensor) -> tuple[LabelledImages, LabelledImages]:
    images, labels, test = content["images"], content["labels"], content["test"]
    return (LabelledImages(images[keep & ~test], labels[keep & ~test]),
            LabelledImages(images[keep & test], labels[keep & test]))


def _left_out(s: Scan, content: dict, skip_bad: bool, say: Say) -> tuple[tuple[str, str], ...]:
    """The unreadable files: DataError naming the first (and counting the others) unless
    ``skip_bad``, which says how many are left out."""
    bad = tuple((str(s.root / s.files[i][1]), why) for i, why in content["bad"])
    if not bad:
        return bad
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    if not skip_bad:
        raise DataError(f"{bad[0][0]}: not a readable image ({bad[0][1]}){more}; fix or remove "
                        f"it, or set data.skip_bad: true to leave such files out")
    say(f"skipped {len(bad)} unreadable file{'s' if len(bad) > 1 else ''} (data.skip_bad): "
        f"{bad[0][0]} ({bad[0][1]}){more}")
    return bad


def check_classes(data_cfg, classes: tuple[str, ...], where: object) -> None:
    """DataError when a model's classes (data.classes) are not those of the data it meets."""
    if data_cfg.classes is not None and tuple(data_cfg.classes) != tuple(classes):
        def short(names):
            return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise DataError(f"{where} holds the classes {short(list(classes))}, but data.classes "
                        f"(the model's) are {short(list(data_cfg.classes))}")


def load(data_cfg, say: Say | None = None) -> FolderData:
    """Both splits of a folder dataset (or cifar10), through the cache. ``say`` hears what is
    read, cached or skipped."""
    say = say or _quiet
    if get_spec(data_cfg.dataset).kind == "torchvision":
        return _torchvision(data_cfg, say)
    s = scan(data_cfg)
    shape = (data_cfg.channels, data_cfg.image_size, data_cfg.image_size)
    path = _cache_file(_prefix(s.root.resolve(), *shape), s.key)
    content = _cached(path, s.key, shape,
                      lambda: _read(s, data_cfg.image_size, data_cfg.channels, say), say)
    skipped = _left_out(s, content, data_cfg.skip_bad, say)
    keep = torch.ones(len(s.files), dtype=torch.bool)
    keep[[i for i, _ in content["bad"]]] = False
    train, test = _splits(content, keep)
    empty = [s.classes[c] for c, k in enumerate(torch.bincount(train.labels,
                                                               minlength=len(s.classes))) if k == 0]
    if empty:
        raise DataError(f"{s.root}: class {empty[0]} has no readable training images")
    check_classes(data_cfg, s.classes, s.root)
    return FolderData(train, test, s.classes, skipped, str(s.root), s.layout)


def load_split(data_cfg, split: str = "train", say: Say | None = None) -> LabelledImages:
    """One split of a folder dataset (or cifar10): uint8 images (N, C, S, S), labels (N,)."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    data = load(data_cfg, say)
    return data.train if split == "train" else data.test


def adopt_classes(cfg, say: Say | None = None):
    """``cfg`` with the classes of its folder dataset: data.classes their names and
    model.num_classes their count (said when it changes), so that the checkpoint names them.
    DataError when the config already names other classes (a resumed run whose folder
    changed). Other datasets: ``cfg`` as it is."""
    if get_spec(cfg.data.dataset).kind != "folder":
        return cfg
    s = scan(cfg.data)
    check_classes(cfg.data, s.classes, s.root)
    if cfg.model.num_classes != len(s.classes) and say is not None:
        say(f"model.num_classes: {len(s.classes)}, the class folders of {s.root} (the config "
            f"said {cfg.model.num_classes})")
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, classes=list(s.classes)),
        model=dataclasses.replace(cfg.model, num_classes=len(s.classes)))


# --------------------------------------------------------------------------------- cifar10

def _torchvision(data_cfg, say: Say) -> FolderData:
    """CIFAR-10 through torchvision (downloaded into the data root when it is not there and
    data.download allows), converted to data.image_size and data.channels when they are not
    its own 32 and 3 (that conversion is cached like a folder's)."""
    spec = get_spec(data_cfg.dataset)
    root = Path(data_cfg.root or os.environ.get(ENV_VAR) or DEFAULT_ROOT / spec.name).expanduser()
    raw = _cifar_arrays(root, data_cfg.download, say)
    size, channels = data_cfg.image_size, data_cfg.channels
    if (size, channels) == (32, 3):
        content = _cifar_content(raw, size, channels)
    else:
        stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns]
                 for p in sorted((root / "cifar-10-batches-py").iterdir())]
        key = hashlib.sha256(json.dumps([FORMAT, spec.name, size, channels, stamp]).encode())
        path = _cache_file(_prefix(spec.name, root.resolve(), channels, size), key.hexdigest())
        content = _cached(path, key.hexdigest(), (channels, size, size),
                          lambda: {**_cifar_content(raw, size, channels),
                                   "key": key.hexdigest()}, say)
    train, test = _splits(content, torch.ones(len(content["labels"]), dtype=torch.bool))
    return FolderData(train, test, spec.classes, (), f"{spec.name} in {root}", "torchvision's")


def _cifar_arrays(root: Path, download: bool, say: Say) -> list[tuple[np.ndarray, list[int]]]:
    """[(images (N, 32, 32, 3) uint8, labels)] of the training and the test split."""
    from .doctor import torchvision_problem

    present = (root / "cifar-10-batches-py").is_dir()
    if not present and not download:
        raise DataError(f"cifar10 not found in {root} (cifar-10-batches-py/) and download is "
                        f"off; offline, put the images in class folders and use data.dataset: "
                        f"folder (docs/data.md)")
    problem = torchvision_problem()
    if problem is not None:
        raise DataError(f"cifar10 cannot be read: {problem}")
    import torchvision.datasets as tvd

    if not present:
        say(f"downloading cifar10 into {root} (torchvision)")
    try:
        sets = [tvd.CIFAR10(str(root), train=train, download=not present)
                for train in (True, False)]
    except Exception as e:  # noqa: BLE001 (network and archive errors come in many types)
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = f"{type(e).__name__}: {lines[0][:120]}" if lines else type(e).__name__
        raise DataError(f"cifar10 could not be {'read' if present else 'downloaded'} into "
                        f"{root} ({reason}); offline, put the images in class folders and use "
                        f"data.dataset: folder") from None
    return [(np.asarray(s.data, dtype=np.uint8), list(s.targets)) for s in sets]


def _cifar_content(raw: list, size: int, channels: int) -> dict:
    """The cache's content (see ``_read``) of CIFAR-10's two splits at a size and channels."""
    from PIL import Image

    images, labels, test = [], [], []
    for split, (arrays, targets) in enumerate(raw):
        if (size, channels) == (32, 3):
            converted = arrays
        else:
            converted = np.stack([fit(Image.fromarray(a), size, channels).reshape(
                size, size, channels) for a in arrays])
        images.append(torch.from_numpy(converted.reshape(len(arrays), size, size, channels)))
        labels.append(torch.tensor(targets, dtype=torch.int64))
        test.append(torch.full((len(arrays),), bool(split)))
    return {"format": FORMAT, "key": "", "classes": [],
            "images": torch.cat(images).permute(0, 3, 1, 2).contiguous(),
            "labels": torch.cat(labels), "test": torch.cat(test), "bad": []}


# --------------------------------------------------------------------------------- statistics

def describe(data_cfg, say: Say | None = None) -> dict:
    """What ``mnistdiff data info`` shows of a folder dataset (or cifar10): per-split counts
    per class and pixel statistics, the layout, and what was left out."""
    data = load(data_cfg, say)
    out = {"dataset": data_cfg.dataset, "folder": data.source, "classes": list(data.classes),
           "image_size": data_cfg.image_size, "channels": data_cfg.channels,
           "split": data.layout, "skipped": [f for f, _ in data.skipped], "splits": {}}
    for split, part in (("train", data.train), ("test", data.test)):
        pixels = part.images.double() / 255.0
        out["splits"][split] = {
            "n": len(part.labels),
            "per_class": torch.bincount(part.labels, minlength=len(data.classes)).tolist(),
            "pixel_mean": pixels.mean().item() if len(part.labels) else None,
            "pixel_std": pixels.std().item() if len(part.labels) > 1 else None}
    if get_spec(data_cfg.dataset).kind == "folder":
        out["ignored_files"] = scan(data_cfg).ignored
    return out
