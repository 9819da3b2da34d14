"""Checkpoints: the format, atomic writes, bounded and safe loads, the checks that keep a damaged
file from becoming a traceback, finding the file a user means, rebuilding the model.

A checkpoint is one ``torch.save``d dict of plain data (tensors, numbers, strings, lists, dicts),
so it loads with ``torch.load(weights_only=True)`` and never runs code from the file; see
:func:`make_state` for its fields:

    format: "mnistdiff-checkpoint", format_version: 1, version, created (ISO-8601),
    config: config_to_dict(cfg), step, epoch, batch, model: state_dict, ema: state_dict | None,
    optimizer / scheduler / scaler: state_dict | None, rng: {torch, cuda, numpy, python} | None,
    train_seconds, images_seen

A run folder (see run.py) keeps them in ``checkpoints/``: ``step-000100.pt``... (the last
``keep_last``) and ``last.pt``, the newest, which is what ``--resume`` and ``sample`` read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import pickle
import random
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import __version__
from .config import Config, config_from_dict
from .errors import CheckpointError, MnistdiffError
from .files import all_or_nothing, write_atomic
# The run folder's layout, and names that moved to run.py, importable from here as before.
from .run import CHECKPOINTS, LAST, RUNS_DIR, STEP_FILE, prepare_run, run_folder  # noqa: F401
from .unet import ConditionalUNet, build_model

FORMAT = "mnistdiff-checkpoint"
FORMAT_VERSION = 1
# What a checkpoint may inflate to in memory. torch.save stores its records uncompressed, so a
# real checkpoint needs about its file size; one of a 28x28 U-Net (a few million parameters, with
# the optimizer's two moments) takes tens of MiB. More than 4x the file, or more than MAX_BYTES
# in all, is a crafted or broken file, refused before torch allocates anything for it.
MAX_INFLATION, INFLATION_SLACK = 4, 64 * 2**20
MAX_BYTES = 2 * 2**30


# --------------------------------------------------------------------------------- the format

def make_state(config: dict, model: dict, *, ema: dict | None = None,
               optimizer: dict | None = None, scheduler: dict | None = None,
               scaler: dict | None = None, rng: dict | None = None, step: int = 0,
               epoch: int = 0, batch: int = 0, train_seconds: float | None = None,
               images_seen: int | None = None, version: str | None = __version__,
               created: str | None = None) -> dict:
    """The checkpoint dict, every field in its place. ``config`` is ``config_to_dict(cfg)``,
    ``model`` / ``ema`` state dicts, ``optimizer`` / ``scheduler`` / ``scaler`` their
    ``state_dict()`` (None in a weights-only file, which cannot be resumed), ``rng`` what
    :func:`rng_state` returns; ``step`` optimizer steps done, ``(epoch, batch)`` the position in
    the data; ``created`` defaults to now (UTC, ISO-8601), ``version`` to this mnistdiff's."""
    if created is None:
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "version": version,
        "created": created, "config": config, "step": step, "epoch": epoch, "batch": batch,
        "model": model, "ema": ema, "optimizer": optimizer, "scheduler": scheduler,
        "scaler": scaler, "rng": rng, "train_seconds": train_seconds, "images_seen": images_seen,
    }


# --------------------------------------------------------------------------------- writing

def _serialize(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write one checkpoint dict atomically (the previous file survives a crash mid-write)."""
    path = Path(path)
    write_atomic(path, _serialize(state))
    return path


def save_run_checkpoint(folder: str | Path, state: dict, keep_last: int) -> Path:
    """Write ``step-NNNNNN.pt`` and ``last.pt`` into a run's checkpoints folder (serialized once),
    then delete all but the newest ``keep_last`` step files. Returns the step file's path.
    Both files appear together or, when the disk fills up, neither (the old last.pt stays)."""
    folder = Path(folder)
    data = _serialize(state)
    step_path = folder / f"step-{state['step']:06d}.pt"
    with all_or_nothing():
        write_atomic(step_path, data)
        write_atomic(folder / LAST, data)
    step_files = sorted((int(m.group(1)), p) for p in folder.glob("step-*.pt")
                        if (m := STEP_FILE.fullmatch(p.name)))
    for _, old in step_files[:-keep_last]:
        old.unlink()
    return step_path


def rng_state() -> dict:
    """Every global RNG state as plain data (weights_only-loadable: tensors, ints, lists)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(py_state), py_gauss],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only where the devices exist)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))


# --------------------------------------------------------------------------------- reading

def _available_memory() -> int | None:
    """Bytes of memory the kernel can give this process without swapping (MemAvailable), or
    None where /proc/meminfo does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_archive(path: Path) -> bool:
    """CheckpointError unless the records of the zip archive at ``path`` (torch.save's format)
    inflate to a size a checkpoint can have: at most ``MAX_INFLATION`` x the file plus
    ``INFLATION_SLACK``, at most ``MAX_BYTES``, and no more than the memory available. The sizes
    come from the zip's central directory, which is also what torch allocates by, so nothing
    is decompressed here. Returns whether torch.load can map the file (``mmap=True``): a zip of
    stored records, as torch.save writes them. False for anything else (a truncated file, a
    legacy-format one: torch.load then reports or reads it as before)."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False
    on_disk, inflated = path.stat().st_size, sum(r.file_size for r in records)

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: refusing to load, its records inflate to "
                               f"{inflated / 2**20:,.0f} MiB from {on_disk / 2**20:,.1f} MiB "
                               f"on disk ({why})")

    if inflated > MAX_INFLATION * on_disk + INFLATION_SLACK:
        raise refuse("torch.save stores checkpoints uncompressed: this file is crafted or "
                     "broken")
    if inflated > MAX_BYTES:
        raise refuse(f"more than the {MAX_BYTES / 2**20:,g} MiB a checkpoint of a 28x28 model "
                     f"can need")
    available = _available_memory()
    if available is not None and inflated > available:
        raise refuse(f"{available / 2**20:,.0f} MiB of memory is available")
    return all(r.compress_type == zipfile.ZIP_STORED for r in records)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; CheckpointError when it is missing,
    corrupted, not a mnistdiff checkpoint, or would inflate beyond what a checkpoint can be
    (:func:`check_archive`, before torch allocates anything)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    mappable = check_archive(path)
    # Mapped copy-on-write (MAP_PRIVATE): what a command does not touch (the optimizer state when
    # sampling) is never read into memory (a 143 MB mnist.yaml checkpoint: 100 MiB peak instead
    # of 190), and writes to the tensors never reach the file. Checkpoints are replaced by
    # rename (files.write_atomic), so a mapped file is never truncated underneath a reader.
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mappable)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            zipfile.BadZipFile) as e:  # torch reports a truncated file in several of these ways
        reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""
        raise CheckpointError(f"{path}: not a readable checkpoint, corrupted or truncated "
                              f"({reason[:100] or type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mnistdiff checkpoint (no '{FORMAT}' marker)")
    version = ckpt.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: damaged checkpoint (format_version is {version!r}, "
                              f"not an integer)")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer mnistdiff ({ckpt.get('version')}) "
                              f"in format {version}; upgrade mnistdiff to read it")
    check_structure(ckpt, path)
    return upgrade_config(ckpt)


def upgrade_config(ckpt: dict) -> dict:
    """Fill in what an older checkpoint's stored config means by a key added since: configs
    written before ``train.ema_rampup`` existed trained with a fixed EMA decay (rampup 0), not
    with today's default, so resuming or describing them must not change their EMA."""
    train = ckpt["config"].get("train")
    if isinstance(train, dict) and train.get("ema_decay") is not None:
        train.setdefault("ema_rampup", 0.0)
    return ckpt


def damaged(where: str | Path, what: str) -> CheckpointError:
    """The one-line error for a checkpoint field that is missing or wrong."""
    return CheckpointError(f"{where}: damaged checkpoint ({what})")


def _is_state_dict(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in value.items())


def check_structure(ckpt: dict, where: str | Path) -> None:
    """CheckpointError (one line) unless the fields every reader uses have the right types and the
    weights are finite. The marker alone proves little: a hand-edited or half-converted file can
    carry it with a missing config or a tensor where a state dict belongs, which would otherwise
    surface as a KeyError deep in a reader; and NaN weights would sample black images with
    exit 0."""
    def bad(what: str) -> CheckpointError:
        return damaged(where, what)

    if not isinstance(ckpt.get("config"), dict):
        raise bad(f"'config' is {type(ckpt.get('config')).__name__}, expected the stored config")
    for key in ("step", "epoch", "batch"):
        value = ckpt.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(f"'{key}' is {value!r}, expected an integer >= 0")
    if not _is_state_dict(ckpt.get("model")):
        raise bad(f"'model' is {type(ckpt.get('model')).__name__}, expected a state dict of "
                  f"named tensors")
    if ckpt.get("ema") is not None and not _is_state_dict(ckpt["ema"]):
        raise bad(f"'ema' is {type(ckpt['ema']).__name__}, expected a state dict or None")
    for part in ("model", "ema"):
        for name, tensor in (ckpt.get(part) or {}).items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise bad(f"{part} weight '{name}' holds NaN or infinite values; the training "
                          f"diverged before this checkpoint, use an earlier one")


# --------------------------------------------------------------------------------- finding

def resolve_checkpoint(spec: str | Path | None = None, runs_dir: str | Path = RUNS_DIR) -> Path:
    """The checkpoint file a user means: a ``.pt`` file as is; a run folder -> its
    ``checkpoints/last.pt``; None or ``"latest"`` -> the newest ``last.pt`` under ``runs_dir``."""
    if spec is None or str(spec) == "latest":
        candidates = sorted(Path(runs_dir).glob(f"*/{CHECKPOINTS}/{LAST}"),
                            key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise CheckpointError(f"no checkpoint found under {runs_dir}/ (looked for "
                                  f"{runs_dir}/*/{CHECKPOINTS}/{LAST}); train a model first or "
                                  f"pass a checkpoint path")
        return candidates[-1]
    path = Path(spec).expanduser()
    if path.is_dir():
        for candidate in (path / CHECKPOINTS / LAST, path / LAST):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path} holds no checkpoint (looked for {CHECKPOINTS}/{LAST})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


# --------------------------------------------------------------------------------- resuming

def check_same_model(ckpt: dict, cfg: Config, where: str | Path) -> None:
    """CheckpointError naming the first architecture setting (any model setting but dropout) that
    differs between a checkpoint and cfg."""
    stored = ckpt["config"].get("model", {})
    for key, value in dataclasses.asdict(cfg.model).items():
        if key != "dropout" and stored.get(key) != value:
            raise CheckpointError(f"{where} was trained with model.{key}={stored.get(key)!r} but "
                                  f"the config says {value!r}; the architecture cannot change "
                                  f"when resuming")


# Settings a resumed run cannot change: the data order and the position in it (batch size,
# accumulation, seed), the optimizer's state layout, and the diffusion the model has learned.
# Everything else in train (lr, schedule, max_steps, intervals, EMA, grad_clip, amp) may change.
FIXED_ON_RESUME = ("data.dataset", "data.image_size", "data.channels", "data.classes",
                   "diffusion.*", "train.batch_size", "train.grad_accum", "train.optimizer",
                   "train.seed")


def check_resumable(ckpt: dict, cfg: Config, where: str | Path) -> None:
    """CheckpointError naming the first setting in FIXED_ON_RESUME that differs between the
    checkpoint and cfg (a --set that would otherwise be recorded but not honoured)."""
    new = dataclasses.asdict(cfg)
    for pattern in FIXED_ON_RESUME:
        section, key = pattern.split(".")
        keys = new[section] if key == "*" else [key]
        for name in keys:
            stored = ckpt["config"].get(section, {}).get(name, new[section][name])
            if stored != new[section][name]:
                raise CheckpointError(f"{where} was trained with {section}.{name}={stored!r}; "
                                      f"it cannot change to {new[section][name]!r} when "
                                      f"resuming (start a new run for that)")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mt19937(words: object, position: object, n: int = 624) -> bool:
    """Whether (words, position) is a Mersenne Twister state: n 32-bit words, 0 <= position <= n."""
    return (isinstance(words, (list, tuple)) and len(words) == n and _is_int(position)
            and 0 <= position <= n and all(_is_int(w) and 0 <= w < 2**32 for w in words))


def check_rng_state(state: object, where: str | Path) -> None:
    """CheckpointError unless ``state`` is what :func:`rng_state` returns, every field with the
    type and size its setter needs (a torch state of the right length, Mersenne Twister states
    for numpy and Python)."""
    if not isinstance(state, dict):
        raise damaged(where, f"'rng' is {type(state).__name__}, expected the RNG states")
    size = torch.get_rng_state().numel()
    cpu = state.get("torch")
    if not (isinstance(cpu, torch.Tensor) and cpu.dtype == torch.uint8 and cpu.ndim == 1
            and cpu.numel() == size):
        raise damaged(where, f"'rng.torch' is not a torch generator state ({size} bytes)")
    cuda = state.get("cuda")
    if not (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                                           for t in cuda)):
        raise damaged(where, "'rng.cuda' is not a list of CUDA generator states")
    numpy = state.get("numpy")
    if not (isinstance(numpy, (list, tuple)) and len(numpy) == 4 and _mt19937(*numpy[:2])
            and _is_int(numpy[2]) and isinstance(numpy[3], float)):
        raise damaged(where, "'rng.numpy' is not a numpy MT19937 state")
    python = state.get("python")
    if not (isinstance(python, (list, tuple)) and len(python) == 3 and _is_int(python[0])
            and isinstance(python[1], (list, tuple)) and len(python[1]) == 625
            and _mt19937(python[1][:624], python[1][624])
            and (python[2] is None or isinstance(python[2], float))):
        raise damaged(where, "'rng.python' is not a Python random state")


SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


def check_training_state(ckpt: dict, where: str | Path) -> None:
    """CheckpointError (one line) unless the state ``train --resume`` restores besides the weights
    is there and well-formed: rng, optimizer, scheduler, scaler, train_seconds. What the
    optimizer state must fit (the model's parameters) is checked by :func:`check_optimizer_fits`.
    Both run before anything is restored or written."""
    if all(ckpt.get(key) is None for key in ("optimizer", "scheduler", "rng")):
        raise CheckpointError(f"{where} holds weights only (no optimizer, scheduler or RNG "
                              f"state, like a bundled model): it cannot be resumed")
    seconds = ckpt.get("train_seconds")
    if not _is_number(seconds) or seconds < 0:
        raise damaged(where, f"'train_seconds' is {seconds!r}, expected a number >= 0")
    check_rng_state(ckpt.get("rng"), where)
    optimizer = ckpt.get("optimizer")
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                    and all(map(_is_int, g["params"])) for g in optimizer["param_groups"])):
        raise damaged(where, "'optimizer' is not an optimizer state (state, param_groups)")
    scheduler = ckpt.get("scheduler")
    if not (isinstance(scheduler, dict) and _is_int(scheduler.get("last_epoch"))
            and scheduler["last_epoch"] >= 0 and isinstance(scheduler.get("lr_lambdas"), list)
            and _is_int(scheduler.get("_step_count", 0))):
        raise damaged(where, "'scheduler' is not an LR scheduler state (last_epoch, lr_lambdas)")
    scaler = ckpt.get("scaler")
    if scaler is not None and not (isinstance(scaler, dict) and all(
            _is_number(scaler.get(key)) for key in SCALER_KEYS) and scaler["scale"] > 0):
        raise damaged(where, f"'scaler' is not a loss scaler state ({', '.join(SCALER_KEYS)})")


def check_optimizer_fits(saved: dict, optimizer: torch.optim.Optimizer,
                         where: str | Path) -> None:
    """CheckpointError unless the optimizer state ``saved`` (checked by check_training_state)
    fits ``optimizer``: as many parameter groups and parameters, numeric hyperparameters where
    the optimizer has them (lr, betas, eps, weight_decay), and moment tensors of each
    parameter's shape. torch's load_state_dict checks only the counts; a wrong shape would
    surface at the first step, after the run folder has been written to."""
    groups, live = saved["param_groups"], optimizer.param_groups
    if len(groups) != len(live):
        raise damaged(where, f"'optimizer' has {len(groups)} parameter groups, the model's "
                             f"optimizer {len(live)}")
    params: dict[int, torch.Tensor] = {}
    for i, (group, ref) in enumerate(zip(groups, live)):
        if len(group["params"]) != len(ref["params"]):
            raise damaged(where, f"'optimizer' group {i} holds {len(group['params'])} "
                                 f"parameters, the model {len(ref['params'])}")
        params.update(zip(group["params"], ref["params"]))
        for key, value in ref.items():  # the hyperparameters a step reads; flags are defaulted
            saved_value = group.get(key)
            if isinstance(value, (tuple, list)) and key != "params":
                ok = (isinstance(saved_value, (tuple, list)) and len(saved_value) == len(value)
                      and all(map(_is_number, saved_value)))
            else:
                ok = not _is_number(value) or _is_number(saved_value)
            if not ok:
                raise damaged(where, f"'optimizer' group {i} has {key}={saved_value!r}")
    for index, entry in saved["state"].items():
        if index not in params or not isinstance(entry, dict):
            raise damaged(where, f"'optimizer' holds state {index!r} for no parameter")
        shape = params[index].shape
        for name, value in entry.items():
            if name == "step":
                ok = _is_number(value) or (isinstance(value, torch.Tensor) and value.numel() == 1)
            else:
                ok = not isinstance(value, torch.Tensor) or value.shape == shape
            if not ok:
                raise damaged(where, f"'optimizer' state '{name}' of parameter {index} is "
                                     f"{_describe(value)}, the parameter has shape {tuple(shape)}")


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


@contextlib.contextmanager
def restoring(part: str, where: str | Path) -> Iterator[None]:
    """Turn what a ``load_state_dict`` (or set_rng_state) raises on a damaged ``part`` into one
    CheckpointError line: the checks above catch what they can name, this the rest."""
    try:
        yield
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError) as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise damaged(where, f"'{part}' cannot be restored: {reason}") from None


# --------------------------------------------------------------------------------- the model

def check_weights_fit(model_cfg, weights: dict, what: str = "weights") -> None:
    """CheckpointError unless the state dict ``weights`` holds as many numbers as the U-Net
    ``model_cfg`` (a ModelConfig) has parameters, counted in closed form
    (``config.estimate_parameters``) without building anything: a stored config may ask for any
    size (one asking for an enormous network made ``sample`` allocate 20 GB before the weights
    were compared), and then the network built is never larger than the weights. The names and
    shapes are compared once it is built (``_check_names_and_shapes``)."""
    from .config import estimate_parameters

    held = sum(t.numel() for t in weights.values())
    needed = estimate_parameters(model_cfg)
    if held != needed:
        raise CheckpointError(f"the checkpoint's {what} do not fit its model config ({held:,} "
                              f"numbers for a U-Net of {needed:,} parameters)")


def _check_names_and_shapes(expected: dict, weights: dict, what: str = "weights") -> None:
    missing = sorted(expected.keys() - weights.keys())
    unexpected = sorted(weights.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(f"the checkpoint's {what} do not fit its model config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in expected.items():
        if tensor.shape != weights[name].shape:
            raise CheckpointError(f"the checkpoint's weight '{name}' has shape "
                                  f"{tuple(weights[name].shape)}, the model config needs "
                                  f"{tuple(tensor.shape)}")


def model_from_checkpoint(ckpt: dict, ema: bool = True) -> tuple[ConditionalUNet, Config]:
    """Rebuild the network from the checkpoint's config and load its weights (the EMA weights
    when ``ema`` and the checkpoint has them). Returns the model in eval mode and the config.
    The weights are compared with the config before the network is built, so it is never
    larger than they are."""
    try:
        cfg = config_from_dict(ckpt["config"])
    except MnistdiffError as e:
        raise CheckpointError(f"the checkpoint's stored config is invalid: {e}") from None
    weights = ckpt["ema"] if ema and ckpt.get("ema") is not None else ckpt["model"]
    check_weights_fit(cfg.model, weights)
    model = build_model(cfg.model, cfg.data.image_size)
    _check_names_and_shapes(model.state_dict(), weights)
    model.load_state_dict(weights)
    return model.eval(), cfg
