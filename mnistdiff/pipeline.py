"""Sample digits from a trained checkpoint: what ``mnistdiff sample`` / ``animate`` and notebooks call.

    import mnistdiff
    pipe = mnistdiff.load("mnist")              # a bundled model, a .pt file, a run folder, or None
    out = pipe.sample(digits=[7], n=16)         # out.images: uint8 (16, 28, 28), out.labels: (16,)
    frames, captions = pipe.trajectory([0, 3, 7], frames=20)   # frames: uint8 (20, 3, 28, 28)

Sampler, steps, guidance, eta and seed default to the checkpoint's ``sample`` config section.

Determinism: samples are generated in batches of ``batch_size`` images, in the order of the
labels; batch b draws all its noise (the starting x_T and, for ddpm or ddim with eta > 0, the
noise of every step) from its own generator seeded with ``seed * 1_000_003 + b`` on the sampling
device. So the same (seed, batch_size, device) always gives the same images, whatever else runs,
and a trajectory equals the first batch of ``sample(digits, n=1)`` with the same settings.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .config import Config
from .data import get_spec, to_uint8
from .diffusion import guided_eps, make_schedule
from .errors import MnistdiffError
from .samplers import SAMPLERS, timesteps
from .unet import IMAGE_SIZE, count_parameters

DEFAULT_FRAMES = 30  # animation frames when not asked for (fewer when there are fewer steps)


class Samples(NamedTuple):
    images: Tensor  # (N, 28, 28) uint8 on the CPU
    labels: Tensor  # (N,) int64
    nfe: int  # network evaluations per image (a batched conditional + unconditional pass is one)
    seconds: float


class Trajectory(NamedTuple):
    frames: Tensor  # (F, D, 28, 28) uint8: F moments of the reverse process for D digits
    captions: list[str]  # one per frame: the step and the timestep it shows


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated sampling settings (the checkpoint's defaults where not given)."""

    sampler: str
    steps: int
    guidance: float
    eta: float
    seed: int


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" is CUDA when available, else the CPU; anything else must name a usable device."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise MnistdiffError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index or 0) >= torch.cuda.device_count()):
        raise MnistdiffError(f"device '{device}' is not available (CUDA devices: "
                             f"{torch.cuda.device_count()})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise MnistdiffError("device 'mps' is not available on this machine")
    return dev


def frame_indices(states: int, frames: int) -> list[int]:
    """``frames`` distinct indices into 0..states-1, the first and the last always included,
    denser towards the end where the digit takes shape: i_j ~ (states-1) (1 - (1 - j/(F-1))^2)."""
    if not 2 <= frames <= states:
        raise ValueError(f"need 2 <= frames <= {states}, got {frames}")
    last = states - 1
    idx = [round(last * (1 - (1 - j / (frames - 1)) ** 2)) for j in range(frames)]
    for j in range(1, frames):  # strictly increasing from 0 ...
        idx[j] = max(idx[j], idx[j - 1] + 1)
    idx[-1] = last
    for j in range(frames - 2, -1, -1):  # ... and ending at last (possible since frames <= states)
        idx[j] = min(idx[j], idx[j + 1] - 1)
    return idx


def _integer(name: str, value: object, lo: int, hi: int | None = None, hint: str = "") -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise MnistdiffError(f"{name}: got {value!r}, must be an integer {bound}{hint}")
    return int(value)


class Pipeline:
    """A denoising network with its config and noise schedule, ready to sample on one device."""

    def __init__(self, model: nn.Module, config: Config, *, device: str | torch.device = "auto",
                 info: dict | None = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        d = config.diffusion
        self.schedule = make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end,
                                      device=self.device)
        names = get_spec(config.data.dataset).classes
        self.num_classes = config.model.num_classes  # also the null label
        self.classes = names[:self.num_classes]  # the labels it was trained on
        self.info = info or {}  # where the weights came from (see checkpoint_info)

    def __repr__(self) -> str:
        return (f"Pipeline({self.info.get('path', 'in-memory model')}, step={self.info.get('step')}, "
                f"{count_parameters(self.model):,} parameters, device={self.device})")

    # ----------------------------------------------------------------------------- checks

    def settings(self, sampler: str | None = None, steps: int | None = None,
                 guidance: float | None = None, eta: float | None = None,
                 seed: int | None = None) -> Settings:
        """Fill in the checkpoint's defaults and validate; raises MnistdiffError (one line)."""
        d, T = self.config.sample, self.schedule.T
        sampler = d.sampler if sampler is None else sampler
        if sampler not in SAMPLERS:
            raise MnistdiffError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
        steps = _integer("steps", d.steps if steps is None else steps, 1, T,
                         f" (the model's {T} diffusion timesteps)")
        guidance = d.guidance if guidance is None else guidance
        if not (isinstance(guidance, numbers.Real) and math.isfinite(guidance) and guidance >= 0):
            raise MnistdiffError(f"guidance: got {guidance!r}, must be a number >= 0")
        if eta is not None and eta != d.eta and sampler != "ddim":  # ignoring it would mislead
            how = "is always stochastic" if sampler == "ddpm" else "is deterministic"
            raise MnistdiffError(f"eta: only the ddim sampler uses it ({sampler} {how}); drop "
                                 f"--eta or use --sampler ddim")
        eta = d.eta if eta is None else eta
        if not (isinstance(eta, numbers.Real) and 0 <= eta <= 1):
            raise MnistdiffError(f"eta: got {eta!r}, must be between 0 and 1")
        seed = _integer("seed", d.seed if seed is None else seed, 0, 2**32 - 1)
        return Settings(sampler, steps, float(guidance), float(eta), seed)

    def check_digits(self, digits: int | Sequence[int] | Tensor) -> list[int]:
        """The requested class labels as a list; each must be one the model was trained on."""
        if isinstance(digits, Tensor):
            digits = digits.tolist()
        digits = [digits] if isinstance(digits, numbers.Integral) else list(digits)
        if not digits:
            raise MnistdiffError("no digits requested")
        k = len(self.classes)
        for c in digits:
            _integer("digit", c, 0, k - 1, f" (the classes of {self.config.data.dataset})")
        return [int(c) for c in digits]

    # ----------------------------------------------------------------------------- sampling

    def _forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """The network, in bf16 autocast on CUDA; float32 out."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.device.type == "cuda"):
            return self.model(x, t, y).float()

    def _generator(self, seed: int, batch: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed * 1_000_003 + batch)

    def _noise(self, b: int, generator: torch.Generator) -> Tensor:
        shape = (b, self.config.model.in_channels, IMAGE_SIZE, IMAGE_SIZE)
        return torch.randn(shape, generator=generator, device=self.device)

    def _denoise(self, x: Tensor, y: Tensor, s: Settings, generator: torch.Generator,
                 callback: Callable[[dict], None] | None = None) -> tuple[Tensor, int]:
        """Run the reverse process from noise x (B, C, 28, 28) for labels y (B,): (x0, NFE)."""
        eps_fn = guided_eps(self._forward, self.schedule, y, s.guidance,
                            self.config.diffusion.objective, null_label=self.num_classes)
        extra = {"eta": s.eta} if s.sampler == "ddim" else {}
        x0 = SAMPLERS[s.sampler](eps_fn, x, self.schedule, s.steps, generator=generator,
                                 callback=callback, clip_x0=self.config.sample.clip_x0, **extra)
        return x0, eps_fn.nfe

    def sample(self, digits: int | Sequence[int] | Tensor, n: int = 1, *, sampler: str | None = None,
               steps: int | None = None, guidance: float | None = None, eta: float | None = None,
               seed: int | None = None, batch_size: int | None = None,
               progress: Callable[[int], None] | None = None) -> Samples:
        """``n`` images of each digit, grouped by digit in the order given.

        Everything is validated before any work. ``progress(k)`` is called after each batch with
        the number of images it finished. All images are kept: for jobs too large for memory,
        iterate over :meth:`batches` instead.
        """
        start, images, labels, nfe = time.perf_counter(), [], [], 0
        for batch in self.batches(digits, n, sampler=sampler, steps=steps, guidance=guidance,
                                  eta=eta, seed=seed, batch_size=batch_size):
            images.append(batch.images)
            labels.append(batch.labels)
            nfe = batch.nfe
            if progress is not None:
                progress(len(batch.images))
        return Samples(torch.cat(images), torch.cat(labels), nfe, time.perf_counter() - start)

    def batches(self, digits: int | Sequence[int] | Tensor, n: int = 1, *,
                sampler: str | None = None, steps: int | None = None,
                guidance: float | None = None, eta: float | None = None, seed: int | None = None,
                batch_size: int | None = None) -> Iterator[Samples]:
        """The images of :meth:`sample` one batch at a time (each a ``Samples`` with that batch's
        images, labels, NFE and seconds), so memory stays bounded by ``batch_size`` whatever
        ``n`` is; the concatenated batches equal ``sample``'s result. Validates before any work
        (when the iterator is created, not at the first ``next``)."""
        s = self.settings(sampler, steps, guidance, eta, seed)
        digits = self.check_digits(digits)
        n = _integer("n", n, 1)
        batch_size = _integer("batch_size", self.config.sample.batch_size if batch_size is None
                              else batch_size, 1)
        return self._batches(digits, n, s, batch_size)

    @torch.inference_mode()
    def _batches(self, digits: list[int], n: int, s: Settings,
                 batch_size: int) -> Iterator[Samples]:
        total = len(digits) * n
        for b, i in enumerate(range(0, total, batch_size)):
            start = time.perf_counter()
            # labels of images i .. i + batch_size - 1 (digit j fills j * n ... (j + 1) * n - 1)
            index = torch.arange(i, min(i + batch_size, total))
            labels = torch.tensor(digits, dtype=torch.long)[index // n]
            y = labels.to(self.device)
            generator = self._generator(s.seed, b)
            x0, nfe = self._denoise(self._noise(len(y), generator), y, s, generator)
            yield Samples(to_uint8(x0).squeeze(1).cpu(), labels, nfe, time.perf_counter() - start)

    @torch.inference_mode()
    def trajectory(self, digits: int | Sequence[int] | Tensor, *, sampler: str | None = None,
                   steps: int | None = None, guidance: float | None = None,
                   eta: float | None = None, seed: int | None = None,
                   frames: int | None = None) -> Trajectory:
        """Snapshots of x along the reverse process for one image of each digit, from the pure
        noise to the final image (see ``frame_indices`` for which of the steps + 1 states)."""
        s = self.settings(sampler, steps, guidance, eta, seed)
        digits = self.check_digits(digits)
        states = s.steps + 1  # the noise, then x after each step
        frames = min(states, DEFAULT_FRAMES) if frames is None else frames
        _integer("frames", frames, 2, states,
                 f" (the noise and the {s.steps} steps; ask for more steps for more frames)")
        keep = frame_indices(states, frames)
        ts = timesteps(self.schedule.T, s.steps).tolist()

        generator = self._generator(s.seed, 0)
        x = self._noise(len(digits), generator)
        shots = {0: to_uint8(x).squeeze(1).cpu()}

        wanted = set(keep)

        def record(info: dict) -> None:
            if info["i"] + 1 in wanted:
                shots[info["i"] + 1] = to_uint8(info["x"]).squeeze(1).cpu()

        y = torch.tensor(digits, dtype=torch.long, device=self.device)
        self._denoise(x, y, s, generator, callback=record)
        captions = [f"step {k}/{s.steps}  " + (f"t={ts[k]}" if k < s.steps else "clean")
                    for k in keep]
        return Trajectory(torch.stack([shots[k] for k in keep]), captions)


# --------------------------------------------------------------------------------- loading

def checkpoint_info(ckpt: dict, path: Path, ema: bool, name: str | None = None) -> dict:
    """What a pipeline remembers about its checkpoint (shown by ``mnistdiff summarize``);
    ``name`` is the bundled model's name, whose model card is then included."""
    info = {"path": str(path), "name": name, "step": ckpt.get("step"), "epoch": ckpt.get("epoch"),
            "created": ckpt.get("created"), "version": ckpt.get("version"),
            "ema": bool(ema and ckpt.get("ema") is not None),
            "train_seconds": ckpt.get("train_seconds"), "images_seen": ckpt.get("images_seen")}
    if name is not None:
        from .pretrained import model_card

        info["card"] = model_card(name)
    return info


def load(checkpoint: str | Path | None = None, device: str | torch.device = "auto",
         ema: bool = True) -> Pipeline:
    """A Pipeline from a checkpoint file, a run folder, a bundled model's name ("mnist",
    "fashion-mnist"), "latest" (the newest run) or None (the newest run, else the bundled
    "mnist"); see ``pretrained.resolve_model``. EMA weights when the checkpoint has them and
    ``ema`` is true (bundled models hold only their EMA weights)."""
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .pretrained import resolve_model

    dev = resolve_device(device)
    source = resolve_model(checkpoint)
    ckpt = load_checkpoint(source.path)
    model, config = model_from_checkpoint(ckpt, ema=ema)
    info = checkpoint_info(ckpt, source.path, ema, source.name)
    info["source"] = source.describe()
    return Pipeline(model, config, device=dev, info=info)


# --------------------------------------------------------------------------------- summary

def summarize(model: nn.Module, config: Config, info: dict | None = None, depth: int = 2) -> dict:
    """torchinfo's view of the network on one image (layers, output shapes, parameters,
    multiply-accumulates) with what the config and the checkpoint say about training."""
    import torchinfo

    model = model.to("cpu").eval()
    inputs = [torch.zeros(1, config.model.in_channels, IMAGE_SIZE, IMAGE_SIZE),
              torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)]  # x, t, y
    stats = torchinfo.summary(model, input_data=inputs, depth=depth, verbose=0)
    layers, seen = [], set()
    for layer in stats.summary_list[1:]:  # [0] is the whole model
        if layer.depth > depth or id(layer.module) in seen:  # containers reappear as "recursive"
            continue
        seen.add(id(layer.module))
        names, p = [], layer
        while p is not None and p.depth > 0:
            names.append(p.var_name)
            p = p.parent_info
        layers.append({"name": ".".join(reversed(names)), "type": layer.class_name,
                       "depth": layer.depth, "output_shape": layer.output_size or None,
                       "parameters": layer.num_params})
    d, train = config.diffusion, config.train
    return {
        "parameters": count_parameters(model),
        "trainable_parameters": stats.trainable_params,
        "mult_adds_per_image": stats.total_mult_adds,
        "size_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6,
        "layers": layers,
        "model": dataclasses.asdict(config.model),
        "dataset": config.data.dataset,
        "diffusion": {"schedule": d.schedule, "timesteps": d.timesteps, "objective": d.objective},
        "sampler_defaults": {k: getattr(config.sample, k) for k in ("sampler", "steps", "guidance")},
        "ema_decay": train.ema_decay,
        "checkpoint": info,
    }
