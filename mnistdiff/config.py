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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import ConfigError


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
    dataset: str = _f("mnist", "which dataset to train on", registry="data:DATASETS")
    root: Optional[str] = _f(None, "directory of IDX files (.gz or raw); else $MNISTDIFF_DATA, "
                                   "then a download into ~/.cache/mnistdiff")
    download: bool = _f(True, "download through torchvision when the files are not found")
    verify: bool = _f(True, "check SHA-256 of the decompressed files where it is known")


@dataclass
class ModelConfig:
    channels: list[int] = _f([64, 128, 256], "channels per U-Net level (28 -> 14 -> 7)")
    num_res_blocks: int = _f(1, "residual blocks per level", lo=1, hi=8)
    emb_dim: int = _f(128, "width of the time and label embeddings", lo=1)
    dropout: float = _f(0.0, "dropout inside residual blocks", lo=0.0, hi=0.9)
    attention: bool = _f(False, "self-attention at the lowest resolution")
    num_classes: int = _f(10, "number of class labels (the null label is num_classes)", lo=1)
    groups: int = _f(8, "GroupNorm groups (capped by the channel count)", lo=1)
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
    batch_size: int = _f(128, "global batch size (split across GPUs)", lo=1)
    epochs: int = _f(40, "epochs to train (ignored when max_steps > 0)", lo=1)
    max_steps: int = _f(0, "optimizer steps to train (0 = use epochs)", lo=0)
    lr: float = _f(1e-4, "peak learning rate", lo=0.0, hi=1.0, lo_open=True)
    optimizer: Literal["adam", "adamw"] = _f("adam", "optimizer")
    weight_decay: float = _f(0.0, "weight decay", lo=0.0, hi=1.0)
    lr_schedule: Literal["constant", "cosine"] = _f("constant", "learning-rate schedule after warmup")
    warmup_steps: int = _f(0, "linear learning-rate warmup steps", lo=0)
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0 = off)", lo=0.0, hi=1e6)
    grad_accum: int = _f(1, "micro-batches accumulated per optimizer step", lo=1)
    ema_decay: float = _f(0.0, "EMA decay of the weights per step, the longest average it may "
                                "reach (0 = no EMA)", lo=0.0, hi=1.0, hi_open=True)
    ema_rampup: float = _f(0.05, "the EMA's half-life is at most this fraction of the images seen "
                                 "so far (0 = a fixed ema_decay)", lo=0.0, hi=1.0)
    ema_warmup_steps: int = _f(0, "steps before the EMA starts averaging (it copies until then)",
                               lo=0)
    amp: Literal["auto", "off", "bf16", "fp16"] = _f("auto", "mixed precision (auto: bf16 on CUDA "
                                                             "and on CPUs with bf16 units (AMX, "
                                                             "AVX512-BF16), else fp32)")
    compile: bool = _f(False, "torch.compile the model (CUDA)")
    channels_last: bool = _f(False, "use channels_last memory format (CUDA)")
    seed: int = _f(0, "random seed", lo=0)
    log_every: int = _f(100, "steps between log lines", lo=1)
    sample_every: int = _f(0, "steps between EMA sample grids (0 = only at the end)", lo=0)
    checkpoint_every: int = _f(1000, "steps between checkpoints", lo=1)
    keep_last: int = _f(3, "step checkpoints to keep besides 'last'", lo=1)


@dataclass
class SampleConfig:
    sampler: str = _f("dpmpp", "default sampler", registry="samplers:SAMPLERS")
    steps: int = _f(20, "default sampling steps (<= diffusion.timesteps)", lo=1)
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
    seed: int = _f(0, "sampling seed", lo=0, hi=2**32 - 1)
    batch_size: int = _f(256, "samples per forward batch", lo=1)


@dataclass
class EvalConfig:
    n: int = _f(10000, "samples to generate for evaluation", lo=1)
    batch_size: int = _f(500, "classifier / sampling batch size", lo=1)
    knn_k: int = _f(3, "k of the k-NN manifold for precision and recall", lo=1)
    seed: int = _f(0, "evaluation seed", lo=0)


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
    teacher_steps: int = _f(16, "DPM-Solver++ steps of the teacher over the student's whole "
                                "grid (a multiple of sample.steps, at least twice it)", lo=2)


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

def _unknown(kind: str, key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown {kind} '{key}'{hint}; valid {kind}s{where}: {', '.join(valid)}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts) + " or null"
    if origin is list:
        return "a non-empty list of " + {int: "integers", float: "numbers"}[typing.get_args(tp)[0]]
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
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                return _MISSING
        return _MISSING
    if tp is str:
        return value if isinstance(value, str) else _MISSING
    raise TypeError(f"unsupported config type {tp!r}")


def choices(key: str) -> list[str]:
    """The valid values of a choice field ("sample.sampler"): its registry's keys, in order."""
    section, name = key.split(".")
    field_ = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    module, attr = field_.metadata["registry"].split(":")
    return list(getattr(importlib.import_module(f"{__package__}.{module}"), attr))


def _check_value(section: str, f: dataclasses.Field, tp: Any, value: Any) -> Any:
    key = f"{section}.{f.name}"
    if f.metadata.get("registry"):  # a name from a registry: the same message as a Literal's
        valid = choices(key)
        if value not in valid:
            raise ConfigError(f"{key}: got {value!r}, expected {_describe(Literal[tuple(valid)])}")
        return value
    out = _coerce(tp, value)
    if out is _MISSING:
        raise ConfigError(f"{key}: got {value!r}, expected {_describe(tp)}")
    lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
    lo_open, hi_open = f.metadata.get("lo_open"), f.metadata.get("hi_open")
    upper = f" and {'<' if hi_open else '<='} {hi}" if hi is not None else ""
    for v in (out if isinstance(out, list) else [out]):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if not math.isfinite(v):  # .nan slips through every comparison, .inf through open ranges
            raise ConfigError(f"{key}: got {value!r}, must be a finite number")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            bound = f"> {lo}" if lo_open else f">= {lo}"
            raise ConfigError(f"{key}: got {value!r}, must be {bound}{upper}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise ConfigError(f"{key}: got {value!r}, must be {'<' if hi_open else '<='} {hi}")
    return out


def _build_section(name: str, values: Any) -> Any:
    cls = SECTIONS[name]
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"section '{name}' must be a mapping of keys to values, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise _unknown("key", f"{name}.{key}", list(fields), f" of {name}")
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
            raise ConfigError(f"{key}: got {interval}, expected [lo, hi] with 0 <= lo <= hi <= 1")
    dc, steps = cfg.distill, cfg.sample.steps
    if dc.teacher and (dc.teacher_steps % steps or dc.teacher_steps < 2 * steps):
        raise ConfigError(f"distill.teacher_steps: got {dc.teacher_steps}, must be a multiple of "
                          f"sample.steps ({steps}) and at least {2 * steps}")
    if dc.teacher and dc.teacher_steps > cfg.diffusion.timesteps:
        raise ConfigError(f"distill.teacher_steps: got {dc.teacher_steps}, must be <= "
                          f"diffusion.timesteps ({cfg.diffusion.timesteps})")
    levels = len(cfg.model.channels)
    if 28 % (2 ** (levels - 1)) != 0:
        raise ConfigError(f"model.channels: got {levels} levels, but 28x28 images allow at most 3 "
                          f"(28 -> 14 -> 7)")
    if any(c < 1 for c in cfg.model.channels):
        raise ConfigError(f"model.channels: got {cfg.model.channels}, every entry must be >= 1")


def config_from_dict(d: Any) -> Config:
    """Build and validate a Config from nested plain data (a parsed YAML file)."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    for name in d:
        if name not in SECTIONS:
            raise _unknown("section", str(name), list(SECTIONS), "")
    cfg = Config(**{name: _build_section(name, d.get(name)) for name in SECTIONS})
    _check_consistency(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Nested plain data (YAML- and checkpoint-safe) of a Config."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


# --------------------------------------------------------------------------------- overrides

def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (value parsed as YAML) to nested plain data."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"override key '{key}' must look like section.key "
                              f"(sections: {', '.join(SECTIONS)})")
        section, name = parts
        if section not in SECTIONS:
            raise _unknown("section", section, list(SECTIONS), "")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        sec = d.setdefault(section, {})
        if sec is None:
            sec = d[section] = {}
        sec[name] = value
    return d


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except UnicodeDecodeError:  # e.g. a checkpoint passed as --config
        raise ConfigError(f"{p}: not a YAML text file (binary data; a checkpoint goes to "
                          f"--checkpoint, not --config)") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
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
