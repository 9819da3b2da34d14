"""Typed configuration: one dataclass per section, loaded from YAML, overridden from the CLI.

    cfg = load_config("configs/tiny.yaml", ["train.lr=2e-4", "model.channels=[32,64]"])

Every value is checked against its field's type, choices and range; an unknown key or a bad
value raises :class:`ConfigError` with one line naming the key and what is allowed. The choices
of dataset, schedule, objective and sampler are the keys of their registries (``data.DATASETS``,
``diffusion.SCHEDULES``, ``diffusion.OBJECTIVES``, ``samplers.SAMPLERS``), looked up when such a
value is checked: adding an entry to a registry makes it a valid choice, and this module stays
free of torch. The resolved
config (``config_to_dict``) is what checkpoints store, and ``config_from_dict`` reads it back.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import ConfigError

# ------------------------------------------------------------------------------------ limits
# What a config can mean, so that a hostile or mistyped file fails in one line before it costs
# memory or time. A config is sections -> keys -> a scalar or a flat list: 4 levels of nesting
# (the document, a section, a key's list, its items), a few hundred values, a few KB of text.
# Every bound is far above any real config (the bundled ones are < 3 KB, < 200 values).
MAX_CONFIG_BYTES = 1_000_000   # size of a config file, checked before parsing
MAX_OVERRIDE_CHARS = 65_536    # length of one --set item (a JSON-quoted path of PATH_MAX fits)
MAX_STRING = 4096              # characters of any string (PATH_MAX: data.root, distill.teacher)
MAX_DEPTH = 8                  # nesting levels: a few more than 4, so that a stray extra list
                               # level still gets the message naming its key and type
MAX_NODES = 10_000             # values, keys and containers after expanding YAML aliases
MAX_EXCERPT = 60               # characters of a bad value quoted in an error message
# numeric fields
MAX_BATCH = 65_536             # batch sizes: above MNIST's 60,000 training images
MAX_STEPS = 100_000_000        # optimizer steps and step intervals: weeks on any GPU
MAX_SEED = 2**32 - 1           # as Pipeline.settings' seed (and NumPy's legacy seeding)
MAX_EVAL_N = 100_000           # ten times the test split that FID is measured against
MAX_PARAMETERS = 200_000_000   # a U-Net for 28x28 digits; the bundled ones have 0.5-5 M
BYTES_PER_PARAMETER = 16       # float32 weights, gradients and Adam's two moments


def _f(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
       lo_open: bool = False, hi_open: bool = False, registry: str | None = None) -> Any:
    """A dataclass field with a help text and an optional numeric range [lo, hi] (either end
    may be open). Every number must also be finite: YAML's .nan and .inf are refused.
    ``registry`` ("module:NAME") names the dict whose keys are the field's choices."""
    meta = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
            "registry": registry}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    dataset: str = _f("mnist", "which dataset to train on (folder: your images, one folder per "
                               "class under data.root)", registry="data:DATASETS")
    root: Optional[str] = _f(None, "directory of IDX files (.gz or raw), of class folders "
                                   "(folder) or of CIFAR-10; else $MNISTDIFF_DATA, then a "
                                   "download into ~/.cache/mnistdiff")
    download: bool = _f(True, "download through torchvision when the files are not found")
    verify: bool = _f(True, "check SHA-256 of the decompressed files where it is known")
    image_size: int = _f(28, "image side in pixels: folder and cifar10 images are resized to "
                             "it (mnist and fashion-mnist are 28)", lo=8, hi=512)
    channels: int = _f(1, "1 (grey) or 3 (RGB): folder and cifar10 images are converted to it "
                          "(mnist and fashion-mnist are 1); model.in_channels follows it",
                       lo=1, hi=3)
    classes: Optional[list[str]] = _f(None, "the class names (folder: the class folders' names, "
                                            "filled in by train; null: the dataset's own)")
    skip_bad: bool = _f(False, "folder: skip files that cannot be read as images (and say how "
                               "many) instead of stopping at the first")


@dataclass
class ModelConfig:
    channels: list[int] = _f([64, 128, 256], "channels per U-Net level (28 -> 14 -> 7)",
                             lo=1, hi=4096)
    num_res_blocks: int = _f(1, "residual blocks per level", lo=1, hi=8)
    emb_dim: int = _f(128, "width of the time and label embeddings", lo=1, hi=4096)
    dropout: float = _f(0.0, "dropout inside residual blocks", lo=0.0, hi=0.9)
    attention: bool = _f(False, "self-attention at the lowest resolution")
    num_classes: int = _f(10, "number of class labels (the null label is num_classes)", lo=1,
                          hi=1000)
    groups: int = _f(8, "GroupNorm groups (capped by the channel count)", lo=1, hi=4096)
    in_channels: int = _f(1, "image channels", lo=1, hi=4)
    patch_size: int = _f(1, "pixels per side of the patches the U-Net works on (2: 14x14 "
                            "feature maps at the first level, ~2x faster on a CPU)", lo=1, hi=4)


@dataclass
class DiffusionConfig:
    timesteps: int = _f(500, "number of diffusion steps T", lo=2, hi=10000)
    schedule: str = _f("linear", "noise schedule", registry="diffusion:SCHEDULES")
    beta_start: float = _f(1e-4, "first beta of the linear schedule", lo=0.0, hi=1.0, lo_open=True)
    beta_end: float = _f(0.02, "last beta of the linear schedule", lo=0.0, hi=1.0, lo_open=True)
    objective: str = _f("eps", "what the network predicts", registry="diffusion:OBJECTIVES")
    min_snr_gamma: float = _f(0.0, "min-SNR-gamma loss weighting (0 = off)", lo=0.0, hi=1000.0)
    label_dropout: float = _f(0.0, "probability of training on the null label (for guidance)",
                              lo=0.0, hi=1.0)


@dataclass
class TrainConfig:
    batch_size: int = _f(128, "global batch size (split across GPUs)", lo=1, hi=MAX_BATCH)
    epochs: int = _f(40, "epochs to train (ignored when max_steps > 0)", lo=1, hi=100_000)
    max_steps: int = _f(0, "optimizer steps to train (0 = use epochs)", lo=0, hi=MAX_STEPS)
    lr: float = _f(1e-4, "peak learning rate", lo=0.0, hi=1.0, lo_open=True)
    optimizer: Literal["adam", "adamw"] = _f("adam", "optimizer")
    weight_decay: float = _f(0.0, "weight decay", lo=0.0, hi=1.0)
    lr_schedule: Literal["constant", "cosine"] = _f("constant", "learning-rate schedule after warmup")
    warmup_steps: int = _f(0, "linear learning-rate warmup steps", lo=0, hi=MAX_STEPS)
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0 = off)", lo=0.0, hi=1e6)
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step", lo=1, hi=MAX_BATCH)
    ema_decay: float = _f(0.0, "EMA decay of the weights per step, the longest average it may "
                                "reach (0 = no EMA)", lo=0.0, hi=1.0, hi_open=True)
    ema_rampup: float = _f(0.05, "the EMA's half-life is at most this fraction of the images seen "
                                 "so far (0 = a fixed ema_decay)", lo=0.0, hi=1.0)
    ema_warmup_steps: int = _f(0, "steps before the EMA starts averaging (it copies until then)",
                               lo=0, hi=MAX_STEPS)
    amp: Literal["auto", "off", "bf16", "fp16"] = _f("auto", "mixed precision (auto: bf16 on CUDA "
                                                             "and on CPUs with bf16 units (AMX, "
                                                             "AVX512-BF16), else fp32)")
    compile: bool = _f(False, "torch.compile the model (CUDA)")
    channels_last: bool = _f(False, "use channels_last memory format (CUDA)")
    seed: int = _f(0, "random seed", lo=0, hi=MAX_SEED)
    log_every: int = _f(100, "steps between log lines", lo=1, hi=MAX_STEPS)
    sample_every: int = _f(0, "steps between EMA sample grids (0 = only at the end)", lo=0,
                           hi=MAX_STEPS)
    checkpoint_every: int = _f(1000, "steps between checkpoints", lo=1, hi=MAX_STEPS)
    keep_last: int = _f(3, "step checkpoints to keep besides 'last'", lo=1, hi=10_000)


@dataclass
class SampleConfig:
    sampler: str = _f("dpmpp", "default sampler", registry="samplers:SAMPLERS")
    steps: int = _f(20, "default sampling steps (<= diffusion.timesteps)", lo=1, hi=10000)
    spacing: str = _f("linspace", "how the steps spread over the timesteps: linspace (T-1 down "
                                  "to 0), trailing (even intervals ending at the clean image; "
                                  "distilled students) or karras (EDM's rho = 7 grid in sigma: "
                                  "short steps at low noise)", registry="samplers:SPACINGS")
    guidance: float = _f(1.0, "classifier-free guidance scale w (0 = unconditional, "
                              "1 = conditional)", lo=0.0, hi=100.0)
    guidance_interval: list[float] = _f([0.0, 1.0], "[lo, hi]: guidance only at timesteps t "
                                        "with lo <= t/(T-1) <= hi, one conditional pass "
                                        "elsewhere ([0, 1] = every step)", lo=0.0, hi=1.0)
    eta: float = _f(0.0, "DDIM eta (0 = deterministic)", lo=0.0, hi=1.0)
    clip_x0: bool = _f(True, "clip the predicted x0 to [-1, 1] at every step")
    seed: int = _f(0, "sampling seed", lo=0, hi=MAX_SEED)
    batch_size: int = _f(256, "samples per forward batch", lo=1, hi=MAX_BATCH)


@dataclass
class EvalConfig:
    n: int = _f(10000, "samples to generate for evaluation", lo=1, hi=MAX_EVAL_N)
    batch_size: int = _f(500, "classifier / sampling batch size", lo=1, hi=MAX_BATCH)
    knn_k: int = _f(3, "k of the k-NN manifold for precision and recall", lo=1, hi=1000)
    seed: int = _f(0, "evaluation seed", lo=0, hi=MAX_SEED)


@dataclass
class DistillConfig:
    teacher: str = _f("", "the teacher (a bundled model name or a checkpoint path) whose guided "
                          "sampler the student learns in sample.steps steps; empty: not a "
                          "distillation run (see distill.py)")
    teacher_sha256: str = _f("", "SHA-256 of the teacher's checkpoint file, checked on resume")
    guidance: float = _f(2.0, "the teacher's guidance scale w, built into the student",
                         lo=0.0, hi=100.0)
    guidance_interval: list[float] = _f([0.0, 1.0], "[lo, hi]: the teacher's guidance interval "
                                        "(as sample.guidance_interval)", lo=0.0, hi=1.0)
    teacher_steps: int = _f(20, "DPM-Solver++ steps of the teacher's solve that the student "
                                "learns (a multiple of 4)", lo=2, hi=10000)
    teacher_grid: Literal["trailing", "linspace"] = _f(
        "trailing", "the teacher's grid: its trailing steps (they pass through the student's "
                    "trailing timesteps) or linspace bent through them (ends at t = 0)")
    trajectories: int = _f(20000, "teacher trajectories (noise to digit) to learn from, "
                                  "computed once and cached", lo=10, hi=1_000_000)
    seed: int = _f(1000, "seed of the trajectories' starting noise: shard j draws image i "
                         "with seeding.mix_seed(seed + j, i), never a sampling seed's noise",
                   lo=0, hi=MAX_SEED - 10_000)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


SECTIONS: dict[str, type] = typing.get_type_hints(Config)  # section name -> dataclass
_HINTS = {cls: typing.get_type_hints(cls) for cls in SECTIONS.values()}  # field name -> type


# --------------------------------------------------------------------------------- validation

class _Repr(reprlib.Repr):
    """A repr that looks at a bounded part of a value: a few items of a list, the start of a
    string, and the size (not the digits) of a huge integer, whose repr Python refuses past
    4,300 digits and which a pickled checkpoint config may hold."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict = 3, 8, 8, 4
        self.maxstring, self.maxlong, self.maxother = MAX_EXCERPT, MAX_EXCERPT, MAX_EXCERPT

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 192:  # ~58 digits: more than an excerpt shows anyway
            return f"<an integer of {x.bit_length():,} bits>"
        return super().repr_int(x, level)


_REPR = _Repr()


def _short(value: Any) -> str:
    """The repr of a (possibly huge or nested) value, at most MAX_EXCERPT characters."""
    try:
        text = _REPR.repr(value)
    except Exception:  # an exotic object from a checkpoint: its repr is no business of ours
        text = f"<{type(value).__name__}>"
    return text if len(text) <= MAX_EXCERPT else text[:MAX_EXCERPT - 3] + "..."


excerpt = _short  # for every module's messages: a bad value is shown, never printed whole


def _clip(text: str) -> str:
    """A string cut to MAX_EXCERPT characters (for keys and paths quoted in messages)."""
    return text if len(text) <= MAX_EXCERPT else text[:MAX_EXCERPT - 3] + "..."


def _name(key: Any) -> str:
    """A mapping key as text: a string as it is, anything else (YAML's 1 or null, a huge
    integer from a pickle, whose str() Python refuses) as its short repr."""
    return key if isinstance(key, str) else _short(key)


def _unknown(kind: str, key: str, valid: list[str], where: str) -> ConfigError:
    short = _clip(key)
    close = difflib.get_close_matches(key.split(".")[-1], valid, n=1) if len(key) <= 200 else []
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown {kind} '{short}'{hint}; valid {kind}s{where}: {', '.join(valid)}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts) + " or null"
    if origin is list:
        return "a non-empty list of " + {int: "integers", float: "numbers",
                                         str: "strings"}[typing.get_args(tp)[0]]
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[tp]


_MISSING = object()


def _coerce(tp: Any, value: Any) -> Any:
    """Return value converted to type tp, or _MISSING when it does not fit."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and ("on" if value else "off") in choices:
            return "on" if value else "off"  # YAML 1.1 reads a bare off/on as false/true
        return value if value in choices else _MISSING
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is not type(None) and (out := _coerce(arg, value)) is not _MISSING:
                return out
        return _MISSING
    if origin is list:
        if not isinstance(value, (list, tuple)) or not value:
            return _MISSING
        items = [_coerce(typing.get_args(tp)[0], v) for v in value]
        return _MISSING if any(i is _MISSING for i in items) else items
    if tp is bool:
        return value if isinstance(value, bool) else _MISSING
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISSING
    if tp is float:
        if isinstance(value, bool):
            return _MISSING
        if isinstance(value, (int, float)):
            try:
                return float(value)
            except OverflowError:  # an integer beyond 1.8e308: refused as not finite
                return math.inf if value > 0 else -math.inf
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                return _MISSING
        return _MISSING
    if tp is str:
        return value if isinstance(value, str) else _MISSING
    raise TypeError(f"unsupported config type {tp!r}")


def _registry(key: str) -> dict:
    """The registry of a choice field ("sample.sampler" -> samplers.SAMPLERS), imported now."""
    section, name = key.split(".")
    field_ = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    module, attr = field_.metadata["registry"].split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), attr)


def choices(key: str) -> list[str]:
    """The valid values of a choice field ("sample.sampler"): its registry's keys, in order."""
    return list(_registry(key))


def _check_value(section: str, f: dataclasses.Field, tp: Any, value: Any) -> Any:
    key, got = f"{section}.{f.name}", _short(value)
    if f.metadata.get("registry"):  # a name from a registry: the same message as a Literal's
        valid = choices(key)
        if not isinstance(value, str) or value not in valid:
            raise ConfigError(f"{key}: got {got}, expected {_describe(Literal[tuple(valid)])}")
        return value
    out = _coerce(tp, value)
    if out is _MISSING:
        raise ConfigError(f"{key}: got {got}, expected {_describe(tp)}")
    lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
    lo_open, hi_open = f.metadata.get("lo_open"), f.metadata.get("hi_open")
    upper = f" and {'<' if hi_open else '<='} {hi}" if hi is not None else ""
    for v in (out if isinstance(out, list) else [out]):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            # .nan slips through every comparison, .inf through open ranges
            raise ConfigError(f"{key}: got {got}, must be a finite number")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            bound = f"> {lo}" if lo_open else f">= {lo}"
            raise ConfigError(f"{key}: got {got}, must be {bound}{upper}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise ConfigError(f"{key}: got {got}, must be {'<' if hi_open else '<='} {hi}")
    return out


def _build_section(name: str, values: Any) -> Any:
    cls = SECTIONS[name]
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"section '{name}' must be a mapping of keys to values, got "
                          f"{_short(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown("key", f"{name}.{_name(key)}", list(fields), f" of {name}")
        kwargs[key] = _check_value(name, fields[key], _HINTS[cls][key], value)
    return cls(**kwargs)


def _check_consistency(cfg: Config) -> None:
    """Rules that involve more than one field."""
    if cfg.diffusion.schedule == "linear" and cfg.diffusion.beta_start >= cfg.diffusion.beta_end:
        raise ConfigError(f"diffusion.beta_start ({cfg.diffusion.beta_start}) must be smaller "
                          f"than diffusion.beta_end ({cfg.diffusion.beta_end})")
    if cfg.sample.steps > cfg.diffusion.timesteps:
        raise ConfigError(f"sample.steps: got {cfg.sample.steps}, must be <= diffusion.timesteps "
                          f"({cfg.diffusion.timesteps})")
    for key, interval in (("sample.guidance_interval", cfg.sample.guidance_interval),
                          ("distill.guidance_interval", cfg.distill.guidance_interval)):
        if len(interval) != 2 or interval[0] > interval[1]:
            raise ConfigError(f"{key}: got {_short(interval)}, expected [lo, hi] with "
                              f"0 <= lo <= hi <= 1")
    dc = cfg.distill
    if dc.teacher and dc.teacher_steps > cfg.diffusion.timesteps:
        raise ConfigError(f"distill.teacher_steps: got {dc.teacher_steps}, must be <= "
                          f"diffusion.timesteps ({cfg.diffusion.timesteps})")
    _check_data(cfg)
    levels, size = len(cfg.model.channels), cfg.data.image_size
    if size % (2 ** (levels - 1)) != 0:
        most, sides = 1, [size]
        while sides[-1] % 2 == 0:
            most, sides = most + 1, sides + [sides[-1] // 2]
        raise ConfigError(f"model.channels: got {levels} levels, but {size}x{size} images allow "
                          f"at most {most} ({' -> '.join(map(str, sides))})")
    if any(c < 1 for c in cfg.model.channels):
        raise ConfigError(f"model.channels: got {_short(cfg.model.channels)}, every entry must "
                          f"be >= 1")
    check_model_size(cfg.model)


def _check_data(cfg: Config) -> None:
    """The image shape and the class names against the dataset and the model. The registry
    (which imports torch) is only consulted when they differ from MNIST's, so a default config
    stays torch-free."""
    dc = cfg.data
    if dc.channels == 2:
        raise ConfigError("data.channels: got 2, expected 1 (grey) or 3 (RGB)")
    if cfg.model.in_channels != dc.channels:
        raise ConfigError(f"model.in_channels: got {cfg.model.in_channels}, but data.channels is "
                          f"{dc.channels}; they must match (leave model.in_channels out and it "
                          f"follows data.channels)")
    if (dc.image_size, dc.channels) == (28, 1) and dc.classes is None:
        return
    kind = getattr(_registry("data.dataset").get(dc.dataset), "kind", None)
    if kind == "idx" and (dc.image_size, dc.channels) != (28, 1):
        key = "data.image_size" if dc.image_size != 28 else "data.channels"
        raise ConfigError(f"{key}: {dc.dataset} images are 28x28 grey; data.image_size and "
                          f"data.channels apply to the folder and cifar10 datasets")
    if dc.classes is None:
        return
    if kind != "folder":
        raise ConfigError(f"data.classes: applies to dataset folder; {dc.dataset} names its own "
                          f"classes")
    if len(dc.classes) != cfg.model.num_classes:
        raise ConfigError(f"data.classes: got {len(dc.classes)} names for model.num_classes = "
                          f"{cfg.model.num_classes}; give one name per class")
    if any(not name for name in dc.classes) or len(set(dc.classes)) != len(dc.classes):
        raise ConfigError(f"data.classes: got {_short(dc.classes)}, the names must be distinct "
                          f"and not empty")


# --------------------------------------------------------------------------------- model size

def estimate_parameters(model_cfg: Any) -> int:
    """The parameter count of ``unet.ConditionalUNet`` built from ``model_cfg`` (a ModelConfig or
    anything with its attributes), in closed form: no tensor is made. It lives here, torch-free,
    so that config validation can use it (``unet.estimate_parameters`` is this function); it
    mirrors the layers of ``unet.ConditionalUNet`` one by one, and tests/test_unet.py checks
    that it equals ``count_parameters(build_model(cfg))`` exactly."""
    ch = [int(c) for c in model_cfg.channels]
    e, k = int(model_cfg.emb_dim), int(model_cfg.num_classes)
    n_res = int(model_cfg.num_res_blocks)
    c_image = int(model_cfg.in_channels) * int(model_cfg.patch_size) ** 2

    def conv(c_in: int, c_out: int, size: int) -> int:  # weight and bias
        return c_in * c_out * size * size + c_out

    def res_block(c_in: int, c_out: int) -> int:
        return (2 * c_in + conv(c_in, c_out, 3)          # norm1, conv1
                + e * 2 * c_out + 2 * c_out              # emb_proj: Linear(emb_dim, 2 c_out)
                + 2 * c_out + conv(c_out, c_out, 3)      # norm2, conv2
                + (conv(c_in, c_out, 1) if c_in != c_out else 0))  # skip

    total = 2 * (e * e + e) + (k + 1) * e  # time MLP (two Linear(e, e)), label embedding
    total += conv(c_image, ch[0], 3)  # stem
    c_prev = ch[0]
    for i, c in enumerate(ch):  # encoder
        total += sum(res_block(c_prev if j == 0 else c, c) for j in range(n_res))
        total += conv(c, c, 3) if i < len(ch) - 1 else 0  # Downsample
        c_prev = c
    total += 2 * res_block(ch[-1], ch[-1])  # middle
    if model_cfg.attention:  # GroupNorm, qkv 1x1 conv, proj 1x1 conv
        total += 2 * ch[-1] + conv(ch[-1], 3 * ch[-1], 1) + conv(ch[-1], ch[-1], 1)
    for i in reversed(range(len(ch))):  # decoder
        c = ch[i]
        total += sum(res_block(c_prev + c if j == 0 else c, c) for j in range(n_res))
        total += conv(c, c, 3) if i > 0 else 0  # Upsample
        c_prev = c
    total += 2 * ch[0] + conv(ch[0], c_image, 3)  # head
    return total


def _embedding_parameters(model_cfg: Any) -> int:
    """The part of ``estimate_parameters`` that grows with emb_dim (to name the key to blame)."""
    e, k = int(model_cfg.emb_dim), int(model_cfg.num_classes)
    blocks = int(model_cfg.num_res_blocks) * 2 * len(model_cfg.channels) + 2
    return 2 * (e * e + e) + (k + 1) * e + 2 * e * max(model_cfg.channels) * blocks


def check_model_size(model_cfg: Any, available: int | None | object = _MISSING) -> int:
    """The model's parameter count; ConfigError (one line, naming model.channels or
    model.emb_dim) above MAX_PARAMETERS, or when its float32 weights, gradients and Adam state
    (BYTES_PER_PARAMETER each) exceed the available memory (``available`` bytes; default
    MemAvailable, unchecked where unknown)."""
    n = estimate_parameters(model_cfg)
    key = "model.emb_dim" if 2 * _embedding_parameters(model_cfg) > n else "model.channels"
    if n > MAX_PARAMETERS:
        raise ConfigError(f"{key}: the U-Net would have {n / 1e6:,.0f} M parameters; at most "
                          f"{MAX_PARAMETERS / 1e6:,.0f} M (the bundled models have 0.5-5 M)")
    if available is _MISSING:
        from .files import available_memory  # torch-free
        available = available_memory()
    need = n * BYTES_PER_PARAMETER
    if available is not None and need > available:
        raise ConfigError(f"{key}: the U-Net's {n / 1e6:,.1f} M parameters need about "
                          f"{need / 1e9:,.1f} GB for float32 weights, gradients and Adam state, "
                          f"but only {available / 1e9:,.1f} GB of memory is available")
    return n


# --------------------------------------------------------------------------------- shape of the data

def _check_shape(d: Any) -> None:
    """ConfigError unless nested plain data has what a config can have: at most MAX_DEPTH levels,
    MAX_NODES values and strings of MAX_STRING characters. Iterative (a stored config nested
    100,000 deep is no RecursionError) and bounded (a cycle or shared lists from a pickle stop at
    MAX_NODES)."""
    stack: list[tuple[Any, int, str]] = [(d, 1, "")]
    count = 0
    while stack:
        value, depth, where = stack.pop()
        count += 1
        prefix = f"{where}: " if where else ""
        if depth > MAX_DEPTH:
            raise ConfigError(f"{prefix}nested more than {MAX_DEPTH} levels deep; a config is "
                              f"sections of keys whose values are scalars or flat lists")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise ConfigError(f"{prefix}a string of {len(value):,} characters; at most "
                              f"{MAX_STRING:,}")
        if isinstance(value, dict):
            if count + 2 * len(value) > MAX_NODES:
                raise _too_many(prefix)
            for k, v in value.items():
                name = _clip(_name(k))
                path = f"{where}.{name}" if where else name
                stack.append((k, depth + 1, path))
                stack.append((v, depth + 1, path))
        elif isinstance(value, (list, tuple)):
            if count + len(value) > MAX_NODES:
                raise _too_many(prefix)
            stack.extend((v, depth + 1, where) for v in value)


def _too_many(prefix: str) -> ConfigError:
    return ConfigError(f"{prefix}more than {MAX_NODES:,} values; a config holds a few hundred")


def config_from_dict(d: Any) -> Config:
    """Build and validate a Config from nested plain data (a parsed YAML file)."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    _check_shape(d)
    for name in d:
        if name not in SECTIONS:
            raise _unknown("section", _name(name), list(SECTIONS), "")
    cfg = Config(**{name: _build_section(name, d.get(name)) for name in SECTIONS})
    _follow_the_data(cfg, d)
    _check_consistency(cfg)
    return cfg


def _follow_the_data(cfg: Config, d: dict) -> None:
    """Defaults that follow other values unless given: data.image_size and data.channels the
    dataset's own (cifar10: 32 and 3; the registry's ``shape``), model.in_channels
    data.channels."""
    data, model = (d.get(k) if isinstance(d.get(k), dict) else {} for k in ("data", "model"))
    if "dataset" in data and not {"image_size", "channels"} <= set(data):
        shape = getattr(_registry("data.dataset").get(cfg.data.dataset), "shape", None)
        if shape is not None:
            if "image_size" not in data:
                cfg.data.image_size = shape[0]
            if "channels" not in data:
                cfg.data.channels = shape[1]
    if "in_channels" not in model:
        cfg.model.in_channels = cfg.data.channels


def config_to_dict(cfg: Config) -> dict:
    """Nested plain data (YAML- and checkpoint-safe) of a Config."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


# --------------------------------------------------------------------------------- YAML

class _TooBig(Exception):
    """A YAML document beyond the limits (the message says which, the mark where)."""

    def __init__(self, message: str, mark: Any = None):
        line = getattr(mark, "line", None)
        super().__init__(message + (f" (line {line + 1})" if line is not None else ""))


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses, while composing (before any Python object is built):

    * nesting beyond MAX_DEPTH (PyYAML's composer recurses: 5,000 '[' were a RecursionError),
    * more than MAX_NODES nodes *after expanding aliases*: an alias counts as the whole subtree
      it names, so "billion laughs" (nine levels of nine aliases each, 9^9 values from 300
      bytes) stops at the first 10,000, and so do merge keys (<<), which PyYAML inflates in
      place; a recursive alias (&a [*a]) is refused outright,
    * scalars longer than MAX_STRING (which also keeps integers below Python's 4,300-digit
      limit on int(), a ValueError that PyYAML does not wrap).

    Small aliases stay allowed: they are legitimate YAML (e.g. one guidance interval shared by
    sample and distill), and counting is what bounds them, not a ban."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0  # nodes composed so far, aliases counted at their expanded size
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)

    def _count(self, n: int, mark: Any) -> None:
        self._expanded += n
        if self._expanded > MAX_NODES:
            raise _TooBig(f"more than {MAX_NODES:,} values (after expanding aliases); a config "
                          f"holds a few hundred", mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise _TooBig("a recursive alias (an anchor used inside itself)", mark)
            size, height = self._sizes[id(node)]
            if self._depth + height > MAX_DEPTH:
                raise _TooBig(f"nested more than {MAX_DEPTH} levels deep (through an alias)",
                              mark)
            self._count(size, mark)
            return node
        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _TooBig(f"nested more than {MAX_DEPTH} levels deep; a config is sections of "
                          f"keys whose values are scalars or flat lists", mark)
        self._count(1, mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if isinstance(node, yaml.ScalarNode):
            if len(node.value) > MAX_STRING:
                raise _TooBig(f"a value of {len(node.value):,} characters; at most "
                              f"{MAX_STRING:,}", mark)
            children: list = []
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = [n for pair in node.value for n in pair]
        sizes = [self._sizes[id(c)] for c in children]
        self._sizes[id(node)] = (1 + sum(s for s, _ in sizes), 1 + max((h for _, h in sizes),
                                                                        default=0))
        return node


def _load_yaml(text: str) -> Any:
    """yaml.safe_load within the limits of _BoundedLoader (raises _TooBig or yaml.YAMLError)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except (ValueError, OverflowError) as e:  # a constructor's int()/float() on odd input
        raise yaml.YAMLError(str(e)) from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------- overrides

def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (value parsed as YAML) to nested plain data."""
    for item in overrides:
        if len(item) > MAX_OVERRIDE_CHARS:
            raise ConfigError(f"override '{item[:40]}...' has {len(item):,} characters; at most "
                              f"{MAX_OVERRIDE_CHARS:,}")
        if "=" not in item:
            raise ConfigError(f"override '{_clip(item)}' must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"override key '{_clip(key)}' must look like section.key "
                              f"(sections: {', '.join(SECTIONS)})")
        section, name = parts
        if section not in SECTIONS:
            raise _unknown("section", section, list(SECTIONS), "")
        try:
            value = _load_yaml(raw)
        except _TooBig as e:
            raise ConfigError(f"{section}.{_clip(name)}: {e}") from None
        except yaml.YAMLError:
            value = raw
        sec = d.setdefault(section, {})
        if sec is None:
            sec = d[section] = {}
        if not isinstance(sec, dict):
            raise ConfigError(f"section '{section}' must be a mapping of keys to values, got "
                              f"{_short(sec)}")
        sec[name] = value
    return d


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # never more, whatever the file claims to be
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES // 1_000_000} MB; a config file "
                          f"is a few KB (is it the right file?)")
    try:
        data = _load_yaml(raw.decode())
    except UnicodeDecodeError:  # e.g. a checkpoint passed as --config
        raise ConfigError(f"{p}: not a YAML text file (binary data; a checkpoint goes to "
                          f"--checkpoint, not --config)") from None
    except _TooBig as e:
        raise ConfigError(f"{p}: {e}") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{p}: a config must be a mapping of sections")
    return data or {}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- overrides, validated."""
    d = read_yaml(path) if path is not None else {}
    return config_from_dict(apply_overrides(d, list(overrides or [])))


def bounds(key: str) -> tuple[float | None, float | None]:
    """The range [lo, hi] of a numeric field ("sample.guidance" -> (0.0, 100.0)): the one table
    of limits that the config, the pipeline, the CLI and the page all check against."""
    section, name = key.split(".")
    field_ = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    return field_.metadata.get("lo"), field_.metadata.get("hi")
