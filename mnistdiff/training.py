"""The training loop, top to bottom: runtime, parts (model, EMA, optimizer, LR schedule), loss,
step, stop requests, then the loop itself: set up, train, flush, save, finish.

    result = train(load_config("configs/mnist.yaml"), "runs/mnist")

One process per device; ``torchrun --nproc_per_node=N -m mnistdiff train ...`` runs N of them
with DistributedDataParallel, each rank on its slice of every global batch, rank 0 writing files
(the run folder: see run.py; the checkpoint format: see checkpoint.py).

Determinism: the data order is a function of (seed, epoch) (see ``data.BatchLoader``) and the
random draws of step s (timesteps, noise, label dropout, dropout masks) come from the device's
default generator seeded with (seed, s, rank). The position in training is therefore the whole
random state: ``--resume`` continues bit-exactly on a CPU (with the same number of ranks).

The hot loop never waits for the device: each step's loss stays on the device in a list and is
read back once per flush (log / sample / checkpoint / stop points). A non-finite loss is found
there, named by its step, and stops the run before anything is written, so the last checkpoint on
disk is always a good one. Under DDP that flush is one all-reduce, which also lets all ranks agree
on a stop request (SIGINT / SIGTERM / SIGHUP) and on the loss they log.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import diffusion, distill
from .checkpoint import (LAST, check_optimizer_fits, check_resumable, check_same_model,
                         check_training_state, check_weights_fit, load_checkpoint, make_state,
                         restoring, rng_state, save_run_checkpoint, set_rng_state)
from .config import Config, TrainConfig, config_to_dict
from .data import BatchLoader, load_dataset
from .errors import ConfigError, MnistdiffError
from .folder import adopt_classes
from .pipeline import Pipeline, resolve_device
from .run import CHECKPOINTS, LOG, append_log, check_new_run, close_run, open_run, run_lock
from .seeding import mix_seed
from .unet import ConditionalUNet, build_model, count_parameters
from .visualize import image_grid, save_image


@dataclass(frozen=True)
class Runtime:
    """Where and how this process computes."""
    device: torch.device
    amp: torch.dtype | None  # autocast dtype; None = fp32
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)


def amp_name(rt: Runtime) -> str:
    """"bfloat16", "float16" or "off", for messages."""
    return str(rt.amp).removeprefix("torch.") if rt.amp else "off"


@dataclass
class TrainResult:
    """What a training session did (also written to the run folder's summary.json)."""
    out_dir: Path
    checkpoint: Path | None   # the run's last.pt (None on ranks > 0)
    step: int                 # optimizer steps done, resumed ones included
    total_steps: int
    images_seen: int
    train_seconds: float      # wall time in the loop, resumed sessions included
    images_per_s: float       # this session's training throughput (sampling/saving excluded)
    peak_memory_mb: float     # CUDA: peak allocated; CPU: peak resident set of the process
    final_loss: float | None  # mean loss of the last flushed interval
    interrupted: bool         # stopped by SIGINT / SIGTERM / SIGHUP
    sampling_weights: str = "raw"  # what sample / evaluate use by default: "ema" or "raw"


def summary_rows(result: TrainResult) -> list[tuple[str, str]]:
    """What ``train`` and ``distill`` print when they end, one (name, value) row each."""
    minutes = result.train_seconds / 60
    return [
        ("run folder", str(result.out_dir)), ("checkpoint", str(result.checkpoint)),
        ("steps", f"{result.step} / {result.total_steps}"),
        ("images seen", f"{result.images_seen:,}"),
        ("training time", (f"{result.train_seconds:.0f} s" if minutes < 2 else
                           f"{minutes:.1f} min") + " (all sessions)"),
        ("throughput", f"{result.images_per_s:,.0f} images/s (this session)"),
        ("peak memory", f"{result.peak_memory_mb:,.0f} MiB"),
        ("final loss", "-" if result.final_loss is None else f"{result.final_loss:.4f}"),
        ("sampling uses", "the EMA weights (--no-ema for the raw ones)"
         if result.sampling_weights == "ema" else "the raw weights (no EMA: train.ema_decay=0)")]


# --------------------------------------------------------------------------------- runtime

def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16, as oneDNN uses them).
    There bf16 autocast trains a small U-Net ~1.5-2x faster than fp32 (measured on a 2-core Xeon
    with AMX, docs/performance.md); without them it is much slower than fp32."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except Exception:  # a private torch API: if it changes, fall back to fp32
        return False


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """train.amp -> the autocast dtype: auto is bf16 on CUDA (fp16 before Ampere), and on a CPU
    bf16 where it has bf16 units (``cpu_has_bf16``), else fp32."""
    if amp == "auto":
        if device.type != "cuda":
            return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs CUDA; use bf16 or off on a CPU")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def setup_runtime(device: str, amp: str) -> Runtime:
    """Pick the device; under torchrun (RANK / WORLD_SIZE set) join the process group."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    dev = resolve_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise MnistdiffError(f"training runs on cpu or cuda, not {dev.type}")
    if world_size > 1:
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and later
        torch.backends.cudnn.allow_tf32 = True      # TF32 convolutions
        torch.backends.cudnn.benchmark = True       # fixed shapes: let cuDNN pick its kernels
    return Runtime(dev, amp_dtype(amp, dev), rank, world_size)


def seed_step(rt: Runtime, seed: int, step: int) -> None:
    """Seed the device's default generator, which training_loss and dropout draw from, for
    step ``step`` on this rank (distinct, reproducible streams per step and rank)."""
    generator = (torch.cuda.default_generators[rt.device.index or 0] if rt.device.type == "cuda"
                 else torch.default_generator)
    generator.manual_seed(mix_seed(mix_seed(seed, step), rt.rank, base=65_537))


# --------------------------------------------------------------------------------- parts

def lr_factor(step: int, tc: TrainConfig, total_steps: int) -> float:
    """Learning-rate multiplier at a step: linear warmup, then constant or cosine decay to 0
    (SGDR, Loshchilov & Hutter 2017, eq. 5 without restarts)."""
    if step < tc.warmup_steps:
        return (step + 1) / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - tc.warmup_steps) / max(1, total_steps - tc.warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW; weight decay only on weight matrices and kernels (not biases or norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": tc.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    cls = torch.optim.AdamW if tc.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=tc.lr)


def build_ema(model: nn.Module, decay: float) -> nn.Module | None:
    """A frozen copy of the model to hold the exponential moving average of its weights (None
    when decay is 0). The U-Net has no running statistics, so only parameters are averaged."""
    if decay == 0:
        return None
    return copy.deepcopy(model).eval().requires_grad_(False)


def ema_decay_at(step: int, decay: float, rampup: float) -> float:
    """The EMA decay used after optimizer step ``step`` (1-based): ``decay``, but never longer
    than a half-life of ``rampup * step`` steps (EDM's ramp-up, Karras et al. 2022, where the
    half-life is counted in images: with a fixed batch the ratio is the same in steps).

    A fixed decay of 0.999 averages over the last ~1,000 steps, so a 500-step run samples from
    weights dominated by the first, untrained ones (issue 13: 48 % accuracy from the EMA, 86 %
    from the raw weights). Tied to progress, the EMA always averages the last few per cent of
    the run: close to the raw weights in a short run, a long smooth average in a long one."""
    if rampup > 0:
        decay = min(decay, 0.5 ** (1.0 / (rampup * step)))
    return decay


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, step: int, decay: float,
               warmup_steps: int, rampup: float = 0.0) -> None:
    """After optimizer step ``step`` (1-based): ema <- d * ema + (1 - d) * model with
    d = ``ema_decay_at(step, decay, rampup)``, and a plain copy until ``warmup_steps``. One fused
    lerp, as torch.optim.swa_utils' get_ema_multi_avg_fn does; not
    AveragedModel.update_parameters, which reads its step counter on the host and so makes the
    CPU wait for the GPU at every step."""
    weight = 1.0 if step <= warmup_steps else 1.0 - ema_decay_at(step, decay, rampup)
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), weight)


@dataclass
class Parts:
    """Everything that learns or carries state from step to step."""
    model: ConditionalUNet  # the plain module: what checkpoints store and the EMA follows
    net: nn.Module          # what the forward runs through: model, DDP(model), compiled
    ddp: DistributedDataParallel | None
    ema: ConditionalUNet | None  # the EMA copy of model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler  # a no-op unless amp is fp16
    compiled: bool


def build_parts(cfg: Config, rt: Runtime, total_steps: int) -> Parts:
    """The model (the same initial weights on every rank), its EMA, the optimizer, LR schedule
    and loss scaler; the forward runs through DDP across ranks and torch.compile if asked (CUDA)."""
    tc, cuda = cfg.train, rt.device.type == "cuda"
    torch.manual_seed(tc.seed)
    memory_format = torch.channels_last if tc.channels_last and cuda else torch.contiguous_format
    model = build_model(cfg.model, cfg.data.image_size).to(rt.device, memory_format=memory_format)
    ema = build_ema(model, tc.ema_decay)
    optimizer = build_optimizer(model, tc)
    ddp = None
    if rt.world_size > 1:
        ddp = DistributedDataParallel(model, device_ids=[rt.device.index] if cuda else None)
    compiled = tc.compile and cuda
    net = ddp or model
    return Parts(
        model, torch.compile(net) if compiled else net, ddp, ema, optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc, total_steps)),
        torch.amp.GradScaler(rt.device.type, enabled=rt.amp is torch.float16), compiled)


def restore(parts: Parts, ckpt: dict, tc: TrainConfig, total_steps: int,
            where: str | Path = "checkpoint") -> None:
    """Load a checkpoint's training state into ``parts`` and the global RNGs, then apply the
    config's lr and weight decay: the optimizer and scheduler states carry the values they were
    saved with, and left alone they would silently win over a ``--set train.lr=...`` that
    config.yaml records. (The LR schedule's shape, max_steps, the intervals, grad_clip and the
    EMA settings are read from the config at every step, so they follow it by themselves.)

    A damaged state (missing, of the wrong type, not fitting the model) is one CheckpointError
    naming the part, raised before the run folder is touched: ``where`` names the file."""
    check_training_state(ckpt, where)
    check_optimizer_fits(ckpt["optimizer"], parts.optimizer, where)
    with restoring("model", where):
        parts.model.load_state_dict(ckpt["model"])
    with restoring("optimizer", where):
        parts.optimizer.load_state_dict(ckpt["optimizer"])
    with restoring("scheduler", where):
        parts.scheduler.load_state_dict(ckpt["scheduler"])
    parts.scheduler.base_lrs = [tc.lr] * len(parts.optimizer.param_groups)
    factor = lr_factor(parts.scheduler.last_epoch, tc, total_steps)
    for i, group in enumerate(parts.optimizer.param_groups):
        group["initial_lr"], group["lr"] = tc.lr, tc.lr * factor
        if i == 0:  # the weight matrices; biases and norms never decay (see build_optimizer)
            group["weight_decay"] = tc.weight_decay
    parts.scheduler._last_lr = [g["lr"] for g in parts.optimizer.param_groups]
    if parts.ema is not None:
        with restoring("ema", where):
            parts.ema.load_state_dict(ckpt["model"] if ckpt.get("ema") is None else ckpt["ema"])
    if parts.scaler.is_enabled() and ckpt.get("scaler") is not None:
        with restoring("scaler", where):
            parts.scaler.load_state_dict(ckpt["scaler"])
    with restoring("rng", where):
        set_rng_state(ckpt["rng"])


# --------------------------------------------------------------------------------- loss

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (net, *batch) -> loss


def make_loss(cfg: Config, schedule: diffusion.Schedule) -> LossFn:
    """The denoising loss (diffusion.training_loss) of a batch (x0, y)."""
    d = cfg.diffusion

    def denoising_loss(net: nn.Module, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return diffusion.training_loss(net, schedule, x0, y, objective=d.objective,
                                       min_snr_gamma=d.min_snr_gamma,
                                       label_dropout=d.label_dropout,
                                       null_label=cfg.model.num_classes)
    return denoising_loss


def _task(cfg: Config, rt: Runtime, schedule: diffusion.Schedule, say: Callable[..., None]):
    """What this run's steps read and minimize: (the batch source, the loss, a line for the log
    when it is not the plain denoising loss, the teacher of a distillation or None). The one
    place training knows about distillation (see distill.py): there the batches are the
    teacher's trajectories (computed by ``loader.prepare`` once the run folder is ours) and the
    loss is the student's."""
    if not distill.is_distillation(cfg):
        # Data: the whole split on the device; this rank reads its slice of every global batch.
        loader = BatchLoader(load_dataset(cfg.data, "train", say), cfg.train.batch_size,
                             seed=cfg.train.seed, rank=rt.rank, world_size=rt.world_size,
                             device=rt.device)
        return loader, make_loss(cfg, schedule), None, None
    if rt.world_size > 1:
        raise MnistdiffError("distillation runs in one process; start it without torchrun")
    teacher = distill.load_teacher(cfg.distill, rt.device)
    loader, loss, note = distill.task(cfg, schedule, rt.device)
    return loader, loss, note, teacher


# --------------------------------------------------------------------------------- step

def train_step(parts: Parts, batches: Iterator, loss_fn: LossFn, cfg: Config,
               rt: Runtime, step: int) -> torch.Tensor:
    """Optimizer step number ``step + 1``: ``grad_accum`` micro-batches of ``loss_fn``, gradient
    clipping, the update, the LR schedule and the EMA. Returns the mean loss, left on the
    device (no sync)."""
    tc = cfg.train
    seed_step(rt, tc.seed, step)
    accum, total = tc.grad_accum, torch.zeros((), device=rt.device)
    for micro in range(accum):
        x0, y = next(batches)  # this rank's slice of the global batch: (B/W, C, S, S), (B/W,)
        last = micro == accum - 1
        sync = contextlib.nullcontext() if parts.ddp is None or last else parts.ddp.no_sync()
        with sync:
            with rt.autocast():
                loss = loss_fn(parts.net, x0, y)
            parts.scaler.scale(loss / accum).backward()
        total += loss.detach() / accum
    if tc.grad_clip > 0:
        parts.scaler.unscale_(parts.optimizer)
        nn.utils.clip_grad_norm_(parts.model.parameters(), tc.grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scheduler.step()
    if parts.ema is not None:
        update_ema(parts.ema, parts.model, step + 1, tc.ema_decay, tc.ema_warmup_steps,
                   tc.ema_rampup)
    return total


# --------------------------------------------------------------------------------- stopping

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
_HANGUP = getattr(signal, "SIGHUP", None)


class StopRequest:
    """SIGINT, SIGTERM and SIGHUP set ``requested``: the loop finishes its step, checkpoints and
    returns, so neither Ctrl-C, a ``kill`` nor a closed terminal loses work. A second SIGINT
    aborts at once. Handlers are only installed in the main thread, and SIGHUP's only where the
    signal is not ignored: a run started under ``nohup`` goes on when its terminal closes."""

    def __init__(self) -> None:
        self.requested, self._previous = False, {}

    def _handle(self, signum: int, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS
                              if s != _HANGUP or signal.getsignal(s) != signal.SIG_IGN}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


# --------------------------------------------------------------------------------- bookkeeping

@dataclass
class Throughput:
    """Training steps and seconds of this session (sampling and saving excluded): in all, and
    from the first log line on ("warm": leaving out torch.compile and cuDNN autotuning)."""
    steps: int = 0
    seconds: float = 0.0
    warm_steps: int = 0
    warm_seconds: float = 0.0

    def add(self, steps: int, seconds: float, warm: bool) -> None:
        self.steps += steps
        self.seconds += seconds
        if warm:
            self.warm_steps += steps
            self.warm_seconds += seconds

    def images_per_s(self, images_per_step: int) -> float:
        """The warm rate when there is one (more than one log interval), else the overall one."""
        steps, seconds = ((self.warm_steps, self.warm_seconds) if self.warm_steps
                          else (self.steps, self.seconds))
        return images_per_step * (steps / seconds) if seconds > 0 else 0.0


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def _messages(console) -> Callable[..., None]:
    """``console.print``, or nothing without a console. Messages are best effort: a terminal that
    has gone away (SIGHUP) or a full disk under a redirected stdout must not stop the run before
    its checkpoint is written."""
    if console is None:
        return lambda *args, **kwargs: None

    def say(*args, **kwargs) -> None:
        with contextlib.suppress(OSError):
            console.print(*args, **kwargs)
    return say


def _progress(console, enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    return Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                    TextColumn("epoch {task.fields[epoch]:.2f}  loss {task.fields[loss]}  "
                               "{task.fields[ips]} img/s"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, disable=not enabled or console is None)


def batch_stream(loader: BatchLoader, micro: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Micro-batches forever, starting at global micro-batch index ``micro``."""
    epoch, start = divmod(micro, len(loader))
    while True:
        yield from loader.epoch(epoch, start)
        epoch, start = epoch + 1, 0


def _gather(pending: list[torch.Tensor], stop: bool, rt: Runtime) -> tuple[list[float], bool]:
    """The per-step losses since the last flush (mean over ranks) and whether any rank wants to
    stop: the loop's one host-device sync (and, under DDP, its one extra all-reduce)."""
    values = torch.stack([*pending, torch.tensor(float(stop), device=rt.device)])
    if rt.world_size > 1:
        dist.all_reduce(values)
        values[:-1] /= rt.world_size
    *losses, stops = values.tolist()
    return losses, stops > 0


# --------------------------------------------------------------------------------- the loop

@dataclass
class Session:
    """What one call of ``train`` works with, fixed once it is set up (see ``_setup``)."""
    cfg: Config
    rt: Runtime
    out_dir: Path
    say: Callable[..., None]     # console.print on rank 0, else nothing
    loader: BatchLoader          # this rank's slice of every global batch
    parts: Parts
    loss_fn: LossFn
    loss_note: str | None        # what the loss is when not plain denoising (distillation)
    total_steps: int
    start_step: int              # optimizer steps done before this session
    seconds_before: float        # training seconds of the sessions before
    teacher: object = None       # a distillation's teacher (models.Loaded), else None

    @property
    def images_per_step(self) -> int:
        return self.cfg.train.batch_size * self.cfg.train.grad_accum

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / CHECKPOINTS


@dataclass
class Loop:
    """The loop's state between flushes."""
    step: int
    start: float  # time.perf_counter() when the loop started
    tick: float   # ... when the last flush ended: training time is counted from there
    pending: list[torch.Tensor] = field(default_factory=list)  # per-step losses on the device
    window: list[float] = field(default_factory=list)          # per-step losses since last log
    window_seconds: float = 0.0
    throughput: Throughput = field(default_factory=Throughput)
    logged: bool = False  # a log line was written this session: the throughput is warm
    final_loss: float | None = None
    interrupted: bool = False


@dataclass(frozen=True)
class Due:
    """What the flush after a step has to do."""
    log: bool
    sample: bool
    save: bool

    @classmethod
    def at(cls, step: int, tc: TrainConfig, total_steps: int) -> Due:
        at_end = step == total_steps
        return cls(log=step % tc.log_every == 0 or at_end,
                   sample=(tc.sample_every > 0 and step % tc.sample_every == 0) or at_end,
                   save=step % tc.checkpoint_every == 0 or at_end)

    def __bool__(self) -> bool:
        return self.log or self.sample or self.save


def train(cfg: Config, out_dir: str | Path, *, resume: str | Path | None = None,
          device: str = "auto", progress: bool = True, console=None) -> TrainResult:
    """Train ``cfg`` into the run folder ``out_dir``, continuing from the checkpoint file
    ``resume`` if given. ``console`` (a rich Console) receives messages and the progress bar."""
    rt = setup_runtime(device, cfg.train.amp)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MnistdiffError(f"the run folder {out_dir} is a file; give --out a folder name")
    try:
        with contextlib.ExitStack() as stack:
            return _train(cfg, out_dir, resume and Path(resume), rt, progress,
                          console if rt.is_main else None, stack)
    finally:
        if rt.world_size > 1:
            dist.destroy_process_group()


def _train(cfg: Config, out_dir: Path, resume: Path | None, rt: Runtime, progress: bool,
           console, stack: contextlib.ExitStack) -> TrainResult:
    check_new_run(out_dir, resuming=resume is not None)
    say = _messages(console)
    # A folder dataset's classes become the config's (data.classes, model.num_classes), so the
    # checkpoint names them and a resumed run is checked against them.
    if not distill.is_distillation(cfg):  # (a student keeps its teacher's classes)
        cfg = adopt_classes(cfg, say)
    s = _setup(cfg, rt, out_dir, resume, say)
    if rt.is_main:
        # Nothing is created before this point, so a run that cannot start (no data, a bad
        # checkpoint) leaves no folder behind; from here on the folder is ours alone.
        stack.enter_context(run_lock(out_dir))
        open_run(out_dir, s.cfg, s.start_step, resume is not None, s.say)
        _announce(s, resume)
    if s.teacher is not None:  # the teacher's trajectories: computed once, cached
        teacher = s.teacher
        s.loader.prepare(lambda: Pipeline(teacher.model, teacher.config, device=rt.device),
                         s.say)
    loop = _loop(s, console, progress)
    result = _result(s, loop)
    if rt.is_main:
        close_run(out_dir, {**dataclasses.asdict(result), "device": str(rt.device),
                            "world_size": rt.world_size, "amp": amp_name(rt),
                            "compile": s.parts.compiled})
    return result


def _setup(cfg: Config, rt: Runtime, out_dir: Path, resume: Path | None,
           say: Callable[..., None]) -> Session:
    """Everything a session needs, in memory only: the checkpoint to resume (checked first), the
    data, the parts, the noise schedule, the loss (and a distillation teacher), the restored
    training state."""
    tc = cfg.train
    ckpt = _resume_checkpoint(cfg, resume) if resume is not None else None
    d = cfg.diffusion
    schedule = diffusion.make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end,
                                       rt.device)
    loader, loss_fn, loss_note, teacher = _task(cfg, rt, schedule, say)
    total_steps = tc.max_steps or tc.epochs * len(loader) // tc.grad_accum
    parts = build_parts(cfg, rt, total_steps)
    if teacher is not None and ckpt is None:  # a new student starts as its teacher
        parts.model.load_state_dict(teacher.model.state_dict())
        if parts.ema is not None:
            parts.ema.load_state_dict(teacher.model.state_dict())
    step, seconds_before = 0, 0.0
    if ckpt is not None:
        restore(parts, ckpt, tc, total_steps, resume)
        step, seconds_before = ckpt["step"], ckpt["train_seconds"]
        if step >= total_steps:
            raise MnistdiffError(f"{resume} is at step {step} and the config trains {total_steps} "
                                 f"steps; raise train.max_steps (or train.epochs) to go on")
    return Session(cfg, rt, out_dir, say, loader, parts, loss_fn, loss_note, total_steps, step,
                   seconds_before, teacher)


def _resume_checkpoint(cfg: Config, resume: Path) -> dict:
    """The checkpoint to resume from, refused (CheckpointError) before anything is built when it
    cannot continue under ``cfg``: another architecture, a setting that cannot change, weights
    that do not fit (compared on the meta device, so a damaged stored config never gets to
    allocate its model). Its training state is checked by ``restore``."""
    ckpt = load_checkpoint(resume)
    check_same_model(ckpt, cfg, resume)
    check_resumable(ckpt, cfg, resume)
    check_weights_fit(cfg.model, ckpt["model"])
    if ckpt.get("ema") is not None:
        check_weights_fit(cfg.model, ckpt["ema"], "EMA weights")
    return ckpt


def _announce(s: Session, resume: Path | None) -> None:
    """The session's one-line description (and the loss's, for a distillation)."""
    tc, rt = s.cfg.train, s.rt
    s.say(f"{count_parameters(s.parts.model) / 1e6:.2f}M parameters on {rt.device} "
          f"x{rt.world_size}, amp {amp_name(rt)}, compile {'on' if s.parts.compiled else 'off'}; "
          f"steps {s.start_step} -> {s.total_steps} of {s.images_per_step} images "
          f"({len(s.loader)} batches per epoch)" + (f", resumed from {resume}" if resume else ""))
    if s.loss_note is not None:
        s.say(s.loss_note)


def _loop(s: Session, console, progress: bool) -> Loop:
    """Train from ``s.start_step`` to ``s.total_steps``, or until a stop request: steps, and a
    flush whenever one is due (``Due``) or a stop is asked for (on one rank at once; under DDP at
    the next flush, where the ranks agree)."""
    tc, rt = s.cfg.train, s.rt
    batches = batch_stream(s.loader, s.start_step * tc.grad_accum)
    now = time.perf_counter()
    loop = Loop(step=s.start_step, start=now, tick=now)
    with StopRequest() as stop, _progress(console, progress) as bar:
        task = bar.add_task("train", total=s.total_steps, completed=loop.step,
                            epoch=loop.step * tc.grad_accum / len(s.loader), loss="-", ips="-")
        while loop.step < s.total_steps:
            loop.pending.append(train_step(s.parts, batches, s.loss_fn, s.cfg, rt, loop.step))
            loop.step += 1
            bar.advance(task)
            due = Due.at(loop.step, tc, s.total_steps)
            if not (due or (stop.requested and rt.world_size == 1)):
                continue
            if _flush(s, loop, due, stop.requested, lambda **fields: bar.update(task, **fields)):
                loop.interrupted = True
                break
    return loop


def _flush(s: Session, loop: Loop, due: Due, stop_requested: bool,
           show: Callable[..., None]) -> bool:
    """Read the losses back and stop on a non-finite one before anything is saved; then the log
    line, the sample grid and the checkpoint that are due (a checkpoint too when stopping).
    ``show`` updates the progress bar. Returns whether the run stops here."""
    losses, stop_now = _gather(loop.pending, stop_requested, s.rt)
    _check_finite(losses, loop.step, s.ckpt_dir)
    loop.pending.clear()
    loop.window += losses
    loop.final_loss = sum(losses) / len(losses)
    now = time.perf_counter()
    loop.window_seconds += now - loop.tick
    loop.throughput.add(len(losses), now - loop.tick, warm=loop.logged)
    loop.tick = now
    if due.log:
        if s.rt.is_main:
            _log(s, loop, now, show)
        loop.window, loop.window_seconds, loop.logged = [], 0.0, True
    if due.sample and s.rt.is_main:
        _sample_grid(s, loop.step)
    if (due.save or stop_now) and s.rt.is_main:
        train_seconds = s.seconds_before + time.perf_counter() - loop.start
        state = _checkpoint_state(s.cfg, s.parts, loop.step, len(s.loader), train_seconds)
        s.say(f"checkpoint: {save_run_checkpoint(s.ckpt_dir, state, s.cfg.train.keep_last)}")
    loop.tick = time.perf_counter()
    return stop_now


def _check_finite(losses: list[float], step: int, ckpt_dir: Path) -> None:
    """MnistdiffError naming the first step (of the ``len(losses)`` up to ``step``) whose loss
    is not finite, and the last good checkpoint."""
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            good = ckpt_dir / LAST
            kept = (f"the last good checkpoint is {good}" if good.exists()
                    else "no checkpoint was written")
            raise MnistdiffError(f"loss is {loss} at step {step - len(losses) + i + 1}; "
                                 f"stopped, {kept}. Try a lower train.lr, train.grad_clip "
                                 f"> 0 or train.amp=off")


def _log(s: Session, loop: Loop, now: float, show: Callable[..., None]) -> None:
    """One log.jsonl record, progress bar update and console line for the window just ended."""
    epoch = loop.step * s.cfg.train.grad_accum / len(s.loader)
    loss = sum(loop.window) / len(loop.window)
    ips = len(loop.window) * s.images_per_step / loop.window_seconds
    lr = s.parts.scheduler.get_last_lr()[0]
    append_log(s.out_dir / LOG, {"step": loop.step, "epoch": round(epoch, 4), "loss": loss,
                                 "lr": lr, "images_per_s": ips,
                                 "elapsed_s": s.seconds_before + now - loop.start})
    show(epoch=epoch, loss=f"{loss:.4f}", ips=f"{ips:,.0f}")
    s.say(f"step {loop.step:>7}/{s.total_steps}  epoch {epoch:6.2f}  loss {loss:.4f}  "
          f"lr {lr:.2e}  {ips:,.0f} img/s")


def _sample_grid(s: Session, step: int) -> None:
    """samples/step-NNNNNN.png: 8 samples of each class from the EMA (else the raw) weights."""
    model = s.parts.model
    pipe = Pipeline(s.parts.ema or model, s.cfg, device=s.rt.device)
    grid = pipe.sample(range(s.cfg.model.num_classes), n=8).images  # (classes * 8, [3,] S, S)
    model.train()  # the pipeline put the network in eval mode
    path = save_image(image_grid(grid, nrow=8, scale=2),
                      s.out_dir / "samples" / f"step-{step:06d}.png")  # row c: class c
    s.say(f"samples: {path}")


def _checkpoint_state(cfg: Config, parts: Parts, step: int, batches_per_epoch: int,
                      train_seconds: float) -> dict:
    """The checkpoint after ``step`` optimizer steps: weights, EMA, optimizer, LR schedule, loss
    scaler, every RNG and the position in the data, i.e. all ``--resume`` needs to go on
    bit-exactly."""
    tc = cfg.train
    epoch, batch = divmod(step * tc.grad_accum, batches_per_epoch)
    return make_state(
        config_to_dict(cfg), parts.model.state_dict(),
        ema=parts.ema.state_dict() if parts.ema is not None else None,
        optimizer=parts.optimizer.state_dict(), scheduler=parts.scheduler.state_dict(),
        scaler=parts.scaler.state_dict() if parts.scaler.is_enabled() else None,
        rng=rng_state(), step=step, epoch=epoch, batch=batch, train_seconds=train_seconds,
        images_seen=step * tc.batch_size * tc.grad_accum)


def _result(s: Session, loop: Loop) -> TrainResult:
    seconds = time.perf_counter() - loop.start
    return TrainResult(
        out_dir=s.out_dir, checkpoint=s.ckpt_dir / LAST if s.rt.is_main else None,
        step=loop.step, total_steps=s.total_steps, images_seen=loop.step * s.images_per_step,
        train_seconds=s.seconds_before + seconds,
        images_per_s=loop.throughput.images_per_s(s.images_per_step),
        peak_memory_mb=peak_memory_mb(s.rt.device), final_loss=loop.final_loss,
        interrupted=loop.interrupted, sampling_weights="ema" if s.parts.ema is not None else "raw")
