"""Output files: atomic writes, and the checks that keep a command from destroying a user's file.

Every module that writes goes through :func:`write_atomic` (or :func:`atomic_file` to stream):
a reader, or a crash, sees the old file or the complete new one, never a mix.

The rename that makes a write atomic also replaces *whatever* is at the path, so the checks live
here too, run by the CLI before any work (:func:`check_outputs`) and again at write time:

* an output is never one of the command's inputs (``-o last.pt`` would turn a checkpoint into a
  PNG), and two outputs of one command never share a file;
* a symlink is written *through* (its target is replaced, the link stays); devices, FIFOs and
  sockets are refused, not replaced by a regular file;
* the name's extension must match the format written (``--npz x.png`` is refused, not written);
* a full disk (or any OS error) is one :class:`MnistdiffError` line, and inside
  :func:`all_or_nothing` the outputs of one command appear together or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import BinaryIO

from .errors import MnistdiffError

# (temp file, target) pairs and the folders made for them, while all_or_nothing() is active.
_staged: ContextVar[dict | None] = ContextVar("mnistdiff_staged_writes", default=None)


def _kind(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or
            stat.S_ISBLK(mode) else "not a regular file")


def target_of(path: str | Path) -> Path:
    """Where a write to ``path`` lands: symlinks followed (a dangling one to its target), so the
    link survives and the file it points at is replaced."""
    return Path(os.path.realpath(Path(path).expanduser()))


def check_writable(path: str | Path, option: str = "output") -> Path:
    """MnistdiffError unless ``path`` is a new name or an existing regular file (after symlinks);
    returns the target. Devices, FIFOs and sockets are refused: an atomic rename would replace
    them with a regular file (as root, ``-o /dev/full`` turned the device into one)."""
    target = target_of(path)
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except OSError as e:
        raise MnistdiffError(f"{option} {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        hint = "; give a file name" if stat.S_ISDIR(mode) else "; write to a regular file"
        raise MnistdiffError(f"{option} {path} is {_kind(mode)}{hint}")
    if not mode & 0o222:  # even root: a read-only file says "keep me"
        raise MnistdiffError(f"{option} {path} is read-only; make it writable (chmod u+w) or "
                             f"choose another name")
    return target


def check_folder_writable(path: str | Path, option: str = "output") -> None:
    """MnistdiffError unless ``path``'s name fits the file system and its nearest existing
    parent folder is one this process may create files in (checked before any work, so an
    unwritable folder is not found after an hour of sampling)."""
    target = target_of(path)
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MnistdiffError(f"{option} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MnistdiffError(f"{option} {path}: cannot create files in {parent} (permission "
                             f"denied)")
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    longest = max(len(os.fsencode(part)) for part in target.parts[len(parent.parts):] or [""])
    if longest > name_max:
        raise MnistdiffError(f"{option} {path}: a name of {longest} bytes is longer than the "
                             f"{name_max} this file system allows")


def check_readable(path: str | Path, option: str = "input") -> Path:
    """MnistdiffError unless ``path`` is an existing regular file (a FIFO would block the
    command forever, a folder cannot be read as one); returns it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise MnistdiffError(f"{option} {path} does not exist") from None
    except OSError as e:
        raise MnistdiffError(f"{option} {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise MnistdiffError(f"{option} {path} is {_kind(mode)}; give a regular file")
    return path


def check_outputs(outputs: Mapping[str, str | Path | None],
                  inputs: Mapping[str, str | Path | None] | None = None,
                  suffixes: Mapping[str, tuple[str, ...]] | None = None,
                  folders: Mapping[str, str | Path | None] | None = None) -> None:
    """Check a command's output paths before any work; MnistdiffError (one line) when

    * an output is not a regular file or a new name (see :func:`check_writable`),
    * an output is one of ``inputs`` (option or description -> path): it would be destroyed,
    * two outputs (files in ``outputs``, folders in ``folders``) are the same path,
    * an output's extension is not one of ``suffixes[option]`` (the format written),
    * an output folder exists as something other than a folder.

    ``None`` paths (options not given) are skipped. Paths are compared after symlinks.
    """
    seen: dict[Path, str] = {}
    input_targets = {target_of(p): name for name, p in (inputs or {}).items() if p is not None}
    for option, path in (outputs or {}).items():
        if path is None:
            continue
        target = check_writable(path, option)
        check_folder_writable(path, option)
        if target in input_targets:
            raise MnistdiffError(f"{option} {path} is also this command's {input_targets[target]}; "
                                 f"writing it would destroy it, choose another file")
        if target in seen:
            raise MnistdiffError(f"{seen[target]} and {option} both name {path}; the second "
                                 f"would overwrite the first, give each output its own file")
        wanted = (suffixes or {}).get(option)
        if wanted and Path(path).suffix.lower() not in wanted:
            raise MnistdiffError(f"{option} {path}: this output is written as "
                                 f"{wanted[0].lstrip('.').upper()}, so its name must end in "
                                 f"{' or '.join(wanted)}")
        seen[target] = option
    for option, folder in (folders or {}).items():
        if folder is None:
            continue
        target = target_of(folder)
        if target.exists() and not target.is_dir():
            raise MnistdiffError(f"{option} {folder} exists and is not a folder; give a folder "
                                 f"name")
        check_folder_writable(target / "x", option)
        if target in input_targets or target in seen:
            other = input_targets.get(target) or seen[target]
            raise MnistdiffError(f"{option} {folder} is also {other}; give it its own folder")


CACHE_ENV = "MNISTDIFF_CACHE"


def cache_root() -> Path:
    """Where computed data is kept between runs (the teacher trajectories of a distillation,
    decoded class-folder datasets, classifiers trained on first use): ``$MNISTDIFF_CACHE``,
    else ``~/.cache/mnistdiff``. Every entry is named by a hash of what it was computed from,
    so a stale one is never read; deleting the folder only costs recomputing."""
    return Path(os.environ.get(CACHE_ENV) or Path("~/.cache/mnistdiff").expanduser())


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    return ""


def check_space(disk: Mapping[str | Path, int], memory: int = 0, what: str = "the outputs") -> None:
    """MnistdiffError (before any work) when estimated output sizes (path -> bytes) exceed the
    free space of the file systems they land on (summed per file system), or ``memory`` bytes
    exceed the available memory. A job that cannot finish should not run for hours first."""
    per_device: dict[int, list] = {}
    for path, size in disk.items():
        p = target_of(path)
        while not p.exists() and p != p.parent:
            p = p.parent
        entry = per_device.setdefault(p.stat().st_dev, [0, p, []])
        entry[0] += size
        entry[2].append(str(path))
    for need, where, paths in per_device.values():
        free = shutil.disk_usage(where).free
        if need > free:
            raise MnistdiffError(f"{what} need about {_size(need)} for {', '.join(paths)} but "
                                 f"only {_size(free)} is free there; ask for fewer")
    avail = available_memory()
    if avail is not None and memory > avail:
        raise MnistdiffError(f"{what} need about {_size(memory)} of memory but only "
                             f"{_size(avail)} is available; ask for fewer")


def _make_parents(folder: Path, made: list[Path]) -> None:
    """mkdir -p, remembering the folders that did not exist (so a failed command removes them)."""
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        made.append(d)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path`` for writing; on a clean exit it is flushed, fsynced and
    renamed over ``path`` (its symlink target), on an error removed. Inside :func:`all_or_nothing`
    the rename waits for the end of the block. Any OSError (a full disk) is one MnistdiffError."""
    shown = Path(path)
    target = check_writable(shown)
    staged = _staged.get()
    made: list[Path] = staged["folders"] if staged is not None else []
    try:
        _make_parents(target.parent, made)
        # A short temp name, so any name the file system allows can be written.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".mnistdiff-", suffix=".tmp")
    except OSError as e:
        raise MnistdiffError(f"cannot write {shown}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        if staged is not None:
            staged["files"].append((tmp, target))
        else:
            os.replace(tmp, target)
    except OSError as e:  # ENOSPC, EDQUOT, EIO ...: the old file (if any) is untouched
        Path(tmp).unlink(missing_ok=True)
        raise MnistdiffError(f"cannot write {shown}: {e.strerror or e}; nothing was "
                             f"written there") from None
    except BaseException:  # KeyboardInterrupt too: never leave a half-written temp file behind
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder (flushed and fsynced),
    then an atomic rename; parent folders are created. Returns the path."""
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """The atomic writes inside the block become visible together at its end; if the block
    raises (a full disk on the third file, Ctrl-C), their temp files and the folders made for
    them are removed and no output of the command appears. Nested blocks join the outer one."""
    if _staged.get() is not None:
        yield
        return
    state = {"files": [], "folders": []}
    token = _staged.set(state)
    try:
        yield
    except BaseException:
        for tmp, _ in state["files"]:
            Path(tmp).unlink(missing_ok=True)
        for folder in reversed(state["folders"]):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: another process may have put files there
        raise
    finally:
        _staged.reset(token)
    for tmp, target in state["files"]:
        os.replace(tmp, target)


def check_animation_path(path: str | Path) -> None:
    """MnistdiffError unless ``path`` is a .gif, or a .mp4 and imageio's ffmpeg plugin is present."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise MnistdiffError(f"{path}: an animation must be a .gif or .mp4 file")
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401  (imported only to find out whether it is there)
        except ImportError:
            raise MnistdiffError("writing MP4 needs imageio's ffmpeg plugin: "
                                 "pip install imageio[ffmpeg] (or write a .gif)") from None


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
