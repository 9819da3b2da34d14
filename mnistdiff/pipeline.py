"""Sampling from a trained network: what the jobs (CLI and page), scripts and notebooks call.

    import mnistdiff
    pipe = mnistdiff.load("mnist")              # models.load: a bundled model, a .pt, a run folder
    out = pipe.sample(digits=[7], n=16)         # out.images: uint8 (16, 28, 28), out.labels: (16,)
    out.grid()                                  # a labelled PIL grid (notebooks show `out` itself)
    frames, captions = pipe.trajectory([0, 3, 7], frames=20)   # frames: uint8 (20, 3, 28, 28)

Images are uint8 tensors on the CPU, (N, S, S) for a grey model (MNIST: S = 28) and
(N, 3, S, S) for an RGB one (data.channels 3, as a folder dataset may be); a trajectory's
frames add the frame axis in front.

Settings (sampler, steps, spacing, guidance, guidance interval, eta, seed) default to the
checkpoint's ``sample`` section. ``pipe.settings(steps=10)`` validates once and returns a
:class:`Settings`; every sampling method takes one as ``settings=`` or the same names as
keywords (``pipe.sample([7], 16, spacing="karras")``), checked against the config's limits.

Determinism (per-image noise, as NVlabs/edm's generate.py): image i of a call (counting in the
order of the returned labels) draws all its noise from its own generator, seeded with
``seeding.mix_seed(seed, i)`` on the sampling device. So the same (seed, digits, n, device)
gives the same images whatever the batch size; a trajectory's digits equal
``sample(digits, n=1)``, and image 0 of a seed is the start of a morph's end.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .config import Config, bounds, excerpt
from .data import class_names, to_model_range, to_uint8
from .diffusion import GuidedEps, get_objective, make_schedule
from .errors import MnistdiffError
from .samplers import SAMPLERS, SPACINGS, Grid, ddim_sigma, ddim_step, denoise, step_grid
from .seeding import ImageGenerators
from .unet import IMAGE_SIZE, count_parameters

BACKENDS = ("torch", "onnxruntime")  # what runs the network (Pipeline's backend=)
DEFAULT_FRAMES = 30  # animation frames when not asked for (fewer when there are fewer steps)
StepCallback = Callable[[dict], None]


class Samples(NamedTuple):
    images: Tensor  # (N, S, S) uint8 on the CPU, (N, 3, S, S) for RGB (MNIST: S = 28)
    labels: Tensor  # (N,) int64
    nfe: int  # network evaluations per image (a batched conditional + unconditional pass is one)
    seconds: float
    passes: int = 0  # network passes per image: 2 per guided step, 1 per unguided one (the work)
    classes: tuple[str, ...] = ()  # the class names the labels index

    def grid(self, scale: int = 2):
        """The images as a PIL grid: one labelled row block per class asked for, or a square
        grid when they are all one class (what ``mnistdiff sample`` writes)."""
        from .visualize import sample_grid

        names = self.classes or tuple(str(c) for c in range(int(self.labels.max()) + 1))
        return sample_grid(self.images, self.labels, names, scale=scale)

    def _repr_png_(self) -> bytes:  # Jupyter shows a Samples as its grid
        import io

        buf = io.BytesIO()
        self.grid().save(buf, format="PNG")
        return buf.getvalue()


class Trajectory(NamedTuple):
    frames: Tensor  # (F, D, S, S) uint8 (F, D, 3, S, S): F moments of the reverse process, D images
    captions: list[str]  # one per frame: the step and the timestep it shows


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated sampling settings (the checkpoint's defaults where not given), from
    :meth:`Pipeline.settings`. A sampler's keyword options (``SAMPLERS[name].options``, e.g.
    ddim's eta) are read from these fields."""

    sampler: str
    steps: int
    guidance: float
    eta: float
    seed: int
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # see diffusion.GuidedEps
    spacing: str = "linspace"  # how the steps spread over the timesteps (samplers.timesteps)

    def steps_text(self) -> str:
        """'20 steps' or, off the default linspace grid, '20 karras steps'."""
        return f"{self.steps} " + ("" if self.spacing == "linspace" else f"{self.spacing} ") + "steps"

    def guidance_text(self) -> str:
        """'guidance 1.75' or, with an interval, 'guidance 1.75 in t/(T-1) [0.1, 0.8]'."""
        lo, hi = self.guidance_interval
        where = "" if (lo, hi) == (0.0, 1.0) else f" in t/(T-1) [{lo:g}, {hi:g}]"
        return f"guidance {self.guidance:g}{where}"

    def describe(self) -> str:
        """The settings in words, as every command and the page print them."""
        eta = f", eta {self.eta:g}" if "eta" in SAMPLERS[self.sampler].options and self.eta else ""
        return (f"{self.sampler}, {self.steps_text()}, {self.guidance_text()}{eta}, "
                f"seed {self.seed}")

    def flags(self) -> str:
        """The CLI options that select these settings (the page shows the matching command)."""
        lo, hi = self.guidance_interval
        parts = [f"--sampler {self.sampler}", f"--steps {self.steps}",
                 f"--guidance {self.guidance:g}", f"--guidance-interval {lo:g},{hi:g}",
                 f"--spacing {self.spacing}", f"--seed {self.seed}"]
        if "eta" in SAMPLERS[self.sampler].options and self.eta:
            parts.insert(3, f"--eta {self.eta:g}")
        return " ".join(parts)


FIELDS = tuple(f.name for f in dataclasses.fields(Settings))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" is CUDA when available, else the CPU; anything else must name a usable device:
    cpu, cuda, cuda:N or mps (one line otherwise)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps") or (dev.type == "cpu" and dev.index):
        raise MnistdiffError(f"unknown device {excerpt(device)}; use auto, cpu, cuda, cuda:N "
                             f"or mps")
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


# --------------------------------------------------------------------------------- checks

def integer(name: str, value: object, lo: int, hi: int | None = None, hint: str = "") -> int:
    """``value`` as an int in [lo, hi]; one MnistdiffError line naming ``name`` otherwise."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise MnistdiffError(f"{name}: got {excerpt(value)}, must be an integer "
                             f"{bound}{hint}")
    return int(value)


def number(name: str, value: object, lo: float, hi: float) -> float:
    """``value`` as a finite float in [lo, hi]; one MnistdiffError line otherwise."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not lo <= value <= hi:
        raise MnistdiffError(f"{name}: got {excerpt(value)}, must be a number between "
                             f"{lo:g} and {hi:g}")
    return float(value)


def _interval(value: object) -> tuple[float, float]:
    """A guidance interval (lo, hi) with 0 <= lo <= hi <= 1, as a tuple of floats."""
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
        ok = (not any(isinstance(v, (bool, str)) for v in value)  # type: ignore[union-attr]
              and 0 <= lo <= hi <= 1)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise MnistdiffError(f"guidance_interval: got {excerpt(value)}, must be two numbers "
                             f"lo, hi with 0 <= lo <= hi <= 1 (fractions of the noise level "
                             f"t / (T - 1))")
    return lo, hi


def _drawing(image, mask) -> tuple[Tensor, Tensor]:
    """(pixels uint8 (1, 1, 28, 28), keep bool (1, 1, 28, 28)) from user input, checked."""
    import numpy as np

    def grid(value, name: str) -> np.ndarray:
        if isinstance(value, Tensor):
            value = value.detach().cpu().numpy()
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError):
            raise MnistdiffError(f"{name}: expected a 28x28 array") from None
        arr = arr.reshape(arr.shape[-2:]) if arr.ndim > 2 and arr.size == 28 * 28 else arr
        if arr.shape != (IMAGE_SIZE, IMAGE_SIZE):
            raise MnistdiffError(f"{name}: expected {IMAGE_SIZE}x{IMAGE_SIZE} pixels, "
                                 f"got shape {tuple(arr.shape)}")
        return arr

    pixels, keep = grid(image, "image"), grid(mask, "mask")
    if pixels.dtype == bool or not np.issubdtype(pixels.dtype, np.integer) or \
            pixels.min() < 0 or pixels.max() > 255:
        raise MnistdiffError("image: expected integer pixels from 0 (black) to 255 (white)")
    if not (keep.dtype == bool or np.issubdtype(keep.dtype, np.number)):
        raise MnistdiffError("mask: expected numbers or booleans (nonzero = keep the pixel)")
    keep = keep != 0
    if not keep.any():
        raise MnistdiffError("the mask keeps no pixels: draw part of the digit first")
    if keep.all():
        raise MnistdiffError("the mask keeps every pixel: leave some of the image for the model "
                             "to fill in")
    return (torch.from_numpy(pixels.astype(np.uint8)).view(1, 1, IMAGE_SIZE, IMAGE_SIZE),
            torch.from_numpy(keep).view(1, 1, IMAGE_SIZE, IMAGE_SIZE))


check_drawing = _drawing
MAX_RESAMPLE = 20  # RePaint resampling rounds: each costs a whole extra pass over the steps
# The default rounds: on 100 real test digits with their bottom half hidden (the bundled mnist,
# scripts/completion_quality.py), 1 round leaves a seam 2.1x as abrupt as real strokes and 98 %
# read as the right digit; 2 rounds 1.0x and 99 %, at 1.65x the time; 4 rounds gain nothing more.
RESAMPLE = 2


# --------------------------------------------------------------------------------- the pipeline

class Pipeline:
    """A denoising network with its config and noise schedule, ready to sample on one device."""

    def __init__(self, model: nn.Module, config: Config, *, device: str | torch.device = "auto",
                 info: dict | None = None, channels_last: bool | None = None,
                 compile: bool = False, bf16: bool | None = None,
                 backend: str = "torch"):
        """``channels_last``: keep the weights and feed the images in channels_last (NHWC)
        memory format, which oneDNN's CPU convolutions prefer (about 20 % faster sampling on
        a CPU); None (the default) turns it on for the CPU only, where it was measured.
        ``compile``: sample through ``torch.compile(model)`` (the first call of each batch
        shape compiles, tens of seconds on a CPU; no measurable gain there over
        channels_last). Both give the plain path's images up to float rounding. ``model``
        itself is left as it is (channels_last samples with a copy of its weights).
        ``bf16``: the network in bf16 autocast; None (the default) is on for CUDA only: on a
        CPU with bf16 units it is faster, but its images are not the float32 ones.
        ``backend="onnxruntime"`` (opt-in, CPU only): the network runs as its ONNX export in
        onnxruntime (``export.onnx_network``, checked against PyTorch when made; needs
        ``pip install "mnistdiff[export]"``), measured faster than PyTorch on a CPU thread;
        see docs/export.md and docs/performance.md."""
        if backend not in BACKENDS:
            raise MnistdiffError(f"unknown backend {excerpt(backend)}; choose one of "
                                 f"{', '.join(BACKENDS)}")
        onnx = backend == "onnxruntime"
        self.device = resolve_device("cpu" if onnx and str(device) == "auto" else device)
        if onnx and (self.device.type != "cpu" or compile):
            raise MnistdiffError("the onnxruntime backend runs on the CPU without torch.compile; "
                                 "use device='cpu' and compile=False, or backend='torch'")
        self.bf16 = self.device.type == "cuda" if bf16 is None else bool(bf16)
        self.model = model.to(self.device).eval()
        self.backend = backend
        if channels_last is None:
            channels_last = self.device.type == "cpu" and not onnx
        self.channels_last, self.compiled = bool(channels_last) and not onnx, bool(compile)
        network = self.model  # a copy in channels_last, so a model the caller still trains
        if self.channels_last:  # (training's sample grids pass the live one) is never changed
            network = copy.deepcopy(self.model).to(memory_format=torch.channels_last)
        self._network = torch.compile(network) if self.compiled else network
        if onnx:
            from .export import onnx_network

            self._network = onnx_network(self.model, config)
        self.config = config
        d = config.diffusion
        self.schedule = make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end,
                                      device=self.device)
        self.objective = get_objective(d.objective)
        self.num_classes = config.model.num_classes  # also the null label
        names = class_names(config.data, look=False)  # a folder model's are in its config
        self.classes = (names or tuple(str(c) for c in range(self.num_classes)))[:self.num_classes]
        self.image_size, self.channels = config.data.image_size, config.model.in_channels
        self.info = info or {}  # where the weights came from (models.read)

    def __repr__(self) -> str:
        return (f"Pipeline({self.info.get('path', 'in-memory model')}, step={self.info.get('step')}, "
                f"{count_parameters(self.model):,} parameters, device={self.device}"
                + (f", backend={self.backend})" if self.backend != "torch" else ")"))

    @property
    def name(self) -> str:
        """How a command line names this model: the bundled name or the checkpoint path."""
        return self.info.get("name") or self.info.get("path") or "model.pt"

    # ----------------------------------------------------------------------------- checks

    def settings(self, settings: Settings | None = None, **values) -> Settings:
        """Validated settings: ``values`` (any of ``FIELDS``; None means "the default") over
        ``settings`` or the checkpoint's defaults. One MnistdiffError line for a bad value,
        TypeError for a name that is not a setting."""
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise TypeError(f"unknown sampling setting {unknown[0]!r}; the settings are "
                            f"{', '.join(FIELDS)}")
        if settings is not None and not isinstance(settings, Settings):
            raise TypeError(f"settings: expected a Settings (from Pipeline.settings), got "
                            f"{type(settings).__name__}")
        d = self.config.sample
        base = settings or Settings(d.sampler, d.steps, d.guidance, d.eta, d.seed,
                                    tuple(d.guidance_interval), d.spacing)
        given = {k: v for k, v in values.items() if v is not None}
        merged = {**dataclasses.asdict(base), **given}
        return self._check(merged, "eta" in given and given["eta"] != base.eta)

    def _check(self, v: dict, eta_given: bool) -> Settings:
        T = self.schedule.T
        if v["sampler"] not in SAMPLERS:
            raise MnistdiffError(f"unknown sampler {excerpt(v['sampler'])}; choose one of "
                                 f"{', '.join(SAMPLERS)}")
        fn = SAMPLERS[v["sampler"]]
        if eta_given and "eta" not in fn.options:  # ignoring it would mislead
            how = "is always stochastic" if fn.stochastic else "is deterministic"
            users = [k for k, f in SAMPLERS.items() if "eta" in f.options]
            raise MnistdiffError(f"eta: only the {' or '.join(users)} sampler uses it "
                                 f"({v['sampler']} {how}); drop --eta or use --sampler {users[0]}")
        if v["spacing"] not in SPACINGS:
            raise MnistdiffError(f"unknown spacing {excerpt(v['spacing'])}; choose one of "
                                 f"{', '.join(SPACINGS)}")
        return Settings(
            v["sampler"],
            integer("steps", v["steps"], 1, T, f" (the model's {T} diffusion timesteps)"),
            number("guidance", v["guidance"], *bounds("sample.guidance")),
            number("eta", v["eta"], *bounds("sample.eta")),
            integer("seed", v["seed"], *bounds("sample.seed")),
            _interval(v["guidance_interval"]), v["spacing"])

    def check_digits(self, digits: int | Sequence[int] | Tensor) -> list[int]:
        """The requested class labels as a list; each must be one the model was trained on."""
        if isinstance(digits, Tensor):
            digits = digits.tolist()
        digits = [digits] if isinstance(digits, numbers.Integral) else list(digits)
        if not digits:
            raise MnistdiffError("no digits requested")
        k = len(self.classes)
        for c in digits:
            integer("digit", c, 0, k - 1, f" (the classes of {self.config.data.dataset})")
        return [int(c) for c in digits]

    def check_drawable(self) -> None:
        """Completing a drawing (inpaint, the page's canvas) is for 28x28 grey models only."""
        if (self.channels, self.image_size) != (1, IMAGE_SIZE):
            kind = "RGB" if self.channels == 3 else "grey"
            raise MnistdiffError(f"completing a drawing needs a {IMAGE_SIZE}x{IMAGE_SIZE} grey "
                                 f"model; {self.name} makes {self.image_size}x{self.image_size} "
                                 f"{kind} images")

    def batch_size(self, batch_size: int | None = None) -> int:
        return integer("batch_size", self.config.sample.batch_size if batch_size is None
                       else batch_size, *bounds("sample.batch_size"))

    # ----------------------------------------------------------------------------- the network

    def _forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """The network (compiled and/or channels_last when asked), in bf16 autocast when asked
        (on CUDA by default); float32 out, in the ordinary (contiguous) memory format."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self._network(x, t, y).float()
        return out.contiguous() if self.channels_last else out

    def _generators(self, seed: int, first: int, count: int) -> ImageGenerators:
        """The generators of images first .. first + count - 1 of a call (module docstring)."""
        return ImageGenerators.for_images(seed, first, count, self.device)

    def _noise(self, generators: ImageGenerators) -> Tensor:
        """The starting noise x_T of one batch: (B, C, S, S), row b from generator b."""
        return generators.randn((len(generators), self.channels, self.image_size,
                                 self.image_size))

    def _eps_fn(self, y: Tensor, s: Settings) -> GuidedEps:
        return GuidedEps(self._forward, self.schedule, y, s.guidance, self.objective,
                         null_label=self.num_classes, interval=s.guidance_interval)

    def _denoise(self, x: Tensor, y: Tensor, s: Settings, generators: ImageGenerators,
                 grid: Grid, callback: StepCallback | None = None,
                 eps_fn: Callable | None = None) -> tuple[Tensor, int, int]:
        """Run the reverse process from noise x (B, C, S, S) for labels y (B,) on the step
        grid: (x0, NFE, passes). The sampler's own options (ddim's eta) come from the settings."""
        eps_fn = self._eps_fn(y, s) if eps_fn is None else eps_fn
        fn = SAMPLERS[s.sampler]
        x0 = fn(eps_fn, x, grid, generator=generators, callback=callback,
                clip_x0=self.config.sample.clip_x0, **{k: getattr(s, k) for k in fn.options})
        return x0, getattr(eps_fn, "nfe", 0), getattr(eps_fn, "passes", 0)

    # ----------------------------------------------------------------------------- sampling

    def sample(self, digits: int | Sequence[int] | Tensor, n: int = 1, *,
               settings: Settings | None = None, batch_size: int | None = None,
               on_step: StepCallback | None = None, **values) -> Samples:
        """``n`` images of each digit, grouped by digit in the order given. ``settings`` and/or
        sampling ``values`` (see :meth:`settings`); everything is validated before any work.
        ``on_step(info)`` is called after every step of every batch with the sampler's
        ``{"i", "t", "x", "x0"}`` plus ``"batch"``, ``"batches"``, ``"steps"`` and the batch's
        ``"labels"`` (it must not change ``x``; an exception it raises stops the sampling). All
        images are kept: for jobs too large for memory, iterate over :meth:`batches`."""
        start, images, labels, nfe, passes = time.perf_counter(), [], [], 0, 0
        for batch in self.batches(digits, n, settings=settings, batch_size=batch_size,
                                  on_step=on_step, **values):
            images.append(batch.images)
            labels.append(batch.labels)
            nfe, passes = batch.nfe, batch.passes
        return Samples(torch.cat(images), torch.cat(labels), nfe, time.perf_counter() - start,
                       passes, tuple(self.classes))

    def batches(self, digits: int | Sequence[int] | Tensor, n: int = 1, *,
                settings: Settings | None = None, batch_size: int | None = None,
                on_step: StepCallback | None = None, **values) -> Iterator[Samples]:
        """The images of :meth:`sample` one batch at a time (each a ``Samples``), so memory
        stays bounded by ``batch_size`` whatever ``n`` is. Validates when the iterator is
        created, not at the first ``next``."""
        s = self.settings(settings, **values)
        digits = self.check_digits(digits)
        n = integer("n", n, 1)
        return self._batches(digits, n, s, self.batch_size(batch_size), on_step)

    @torch.inference_mode()
    def _batches(self, digits: list[int], n: int, s: Settings, batch_size: int,
                 on_step: StepCallback | None = None) -> Iterator[Samples]:
        labels = torch.tensor(digits, dtype=torch.long).repeat_interleave(n)  # (N,)
        batches = -(-len(labels) // batch_size)
        grid = step_grid(self.schedule, s.steps, s.spacing)  # one grid for every batch
        for b, i in enumerate(range(0, len(labels), batch_size)):
            start = time.perf_counter()
            y = labels[i:i + batch_size].to(self.device)
            generators = self._generators(s.seed, i, len(y))
            report = None if on_step is None else _reporter(
                on_step, batch=b, batches=batches, steps=s.steps, labels=y)
            x0, nfe, passes = self._denoise(self._noise(generators), y, s, generators, grid,
                                            report)
            yield Samples(to_uint8(x0).squeeze(1).cpu(), labels[i:i + batch_size], nfe,
                          time.perf_counter() - start, passes, tuple(self.classes))

    @torch.inference_mode()
    def trajectory(self, digits: int | Sequence[int] | Tensor, *,
                   settings: Settings | None = None, frames: int | None = None,
                   **values) -> Trajectory:
        """Snapshots of x along the reverse process for one image of each digit, from the pure
        noise to the final image (see ``frame_indices`` for which of the steps + 1 states).
        Image j is image j of ``sample(digits, 1)`` with the same settings."""
        s = self.settings(settings, **values)
        digits = self.check_digits(digits)
        states = s.steps + 1  # the noise, then x after each step
        frames = min(states, DEFAULT_FRAMES) if frames is None else frames
        integer("frames", frames, 2, states,
                f" (the noise and the {s.steps} steps; ask for more steps for more frames)")
        keep = frame_indices(states, frames)
        grid = step_grid(self.schedule, s.steps, s.spacing)
        generators = self._generators(s.seed, 0, len(digits))
        x = self._noise(generators)
        shots, wanted = {0: to_uint8(x).squeeze(1).cpu()}, set(keep)

        def record(info: dict) -> None:
            if info["i"] + 1 in wanted:
                shots[info["i"] + 1] = to_uint8(info["x"]).squeeze(1).cpu()

        y = torch.tensor(digits, dtype=torch.long, device=self.device)
        self._denoise(x, y, s, generators, grid, callback=record)
        captions = [f"step {k}/{s.steps}  " + (f"t={grid.ts[k]}" if k < s.steps else "clean")
                    for k in keep]
        return Trajectory(torch.stack([shots[k] for k in keep]), captions)

    # ----------------------------------------------------------------------------- inpaint, morph

    def inpaint(self, image, mask, digits: int | Sequence[int] | Tensor, n: int = 1, *,
                settings: Settings | None = None, resample: int = RESAMPLE,
                batch_size: int | None = None, on_step: StepCallback | None = None,
                **values) -> Samples:
        """Complete a partial drawing: ``n`` images of each digit that keep ``image``'s pixels
        wherever ``mask`` is set (what ``sample --init-image/--mask`` and the page call).

        ``image``: (28, 28) integer pixels 0 (black) to 255 (white), as in MNIST; ``mask``:
        (28, 28), nonzero / True = a known pixel to keep. Arrays, tensors or nested lists.

        After every step the known pixels of x are replaced by the drawing noised to the
        timestep x is now at, a draw from q(x_s | drawing) (RePaint, Lugmayr et al. 2022, eq. 8),
        so the model fills in the rest around them; the final image holds the drawing's exact
        pixels where the mask is set. ``resample`` > 1 is RePaint's resampling: after each step
        x is noised back to the step's start and the step redone (a DDPM posterior step),
        ``resample - 1`` more times, at ``resample`` times the network evaluations."""
        self.check_drawable()
        s = self.settings(settings, **values)
        digits = self.check_digits(digits)
        n = integer("n", n, 1)
        resample = integer("resample", resample, 1, MAX_RESAMPLE)
        batch_size = self.batch_size(batch_size)
        known_u8, keep = _drawing(image, mask)
        return self._inpaint(known_u8, keep, digits, n, s, resample, batch_size, on_step)

    @torch.inference_mode()
    def _inpaint(self, known_u8: Tensor, keep: Tensor, digits: list[int], n: int, s: Settings,
                 resample: int, batch_size: int, on_step: StepCallback | None) -> Samples:
        channels = self.config.model.in_channels
        known = to_model_range(known_u8).expand(1, channels, -1, -1).to(self.device)
        keep = keep.expand(1, channels, -1, -1).to(self.device)
        labels = torch.tensor(digits, dtype=torch.long).repeat_interleave(n)  # (N,)
        batches = -(-len(labels) // batch_size)
        grid = step_grid(self.schedule, s.steps, s.spacing)
        start, images, nfe, passes = time.perf_counter(), [], 0, 0
        for b, i in enumerate(range(0, len(labels), batch_size)):
            y = labels[i:i + batch_size].to(self.device)
            generators = self._generators(s.seed, i, len(y))
            eps_fn = self._eps_fn(y, s)
            x = self._noise(generators)
            x = torch.where(keep, self._noised(known, grid, 0, generators), x)
            report = None if on_step is None else _reporter(
                on_step, batch=b, batches=batches, steps=s.steps, labels=y)

            def replace(info: dict, generators=generators, eps_fn=eps_fn, report=report) -> None:
                # The samplers continue from the very tensor info["x"]: changing it in place
                # changes the next step's input (see samplers.py).
                x, k = info["x"], info["i"]
                x.copy_(torch.where(keep, self._noised(known, grid, k + 1, generators), x))
                for _ in range(resample - 1 if k + 1 < len(grid.ts) else 0):
                    x.copy_(self._repaint_step(eps_fn, x, grid, k, generators))
                    x.copy_(torch.where(keep, self._noised(known, grid, k + 1, generators), x))
                if report is not None:
                    report(info)

            x0, nfe, passes = self._denoise(x, y, s, generators, grid, replace, eps_fn=eps_fn)
            x0 = torch.where(keep, known, x0)  # exact, whatever the sampler did on its last step
            images.append(to_uint8(x0).squeeze(1).cpu())
        return Samples(torch.cat(images), labels, nfe, time.perf_counter() - start, passes,
                       tuple(self.classes))

    @staticmethod
    def _noised(known: Tensor, grid: Grid, k: int, generators: ImageGenerators) -> Tensor:
        """The drawing at grid point k (k = len(ts): clean), one fresh draw per image, expanded
        to the batch: α_t x + σ_t ε (DDPM eq. 4)."""
        shape = (len(generators), *known.shape[1:])
        if k == len(grid.ts):
            return known.expand(shape)
        return grid.alphas[k] * known + grid.sigmas[k] * generators.randn(shape)

    def _repaint_step(self, eps_fn: Callable, x_s: Tensor, grid: Grid, k: int,
                      generators: ImageGenerators) -> Tensor:
        """Noise x_s (at grid point k + 1) back to grid point k, a draw from q(x_t | x_s), then
        one DDPM posterior step t -> s (DDIM with eta 1 on these two timesteps)."""
        t = grid.ts[k]
        a_t, s_t, a_s, s_s = grid.alphas[k], grid.sigmas[k], grid.alphas[k + 1], grid.sigmas[k + 1]
        x_t = (a_t / a_s) * x_s + math.sqrt(max(s_t**2 - (a_t / a_s * s_s) ** 2, 0.0)) * \
            generators.randn_like(x_s)
        x0, eps = denoise(eps_fn, x_t, t, a_t, s_t, self.config.sample.clip_x0)
        sigma = ddim_sigma(1.0, a_t, s_t, a_s, s_s)
        return ddim_step(x0, eps, a_s, s_s, sigma, generators.randn_like(x_t))

    @torch.inference_mode()
    def interpolate(self, digits: int | Sequence[int], seeds: int | Sequence[int] | None = None,
                    frames: int = 8, *, settings: Settings | None = None, **values) -> Morph:
        """A morph in ``frames`` images from (digit a, seed a) to (digit b, seed b).

        ``digits``: one digit or two; ``seeds``: one seed or two (default: the settings'). Frame
        j at α = j / (frames - 1) starts from the spherical interpolation (slerp) of the two
        seeds' starting noises and is guided by the two labels mixed at the same α,
        ε = ε_u + w ((1 - α) ε_a + α ε_b - ε_u). The sampler must be deterministic (ddim with
        eta 0, or dpmpp; ddim when the checkpoint's default is stochastic), so the first and the
        last frames are ``sample(digit, 1, seed=seed)`` of each end."""
        if values.get("sampler") is None and settings is None and \
                SAMPLERS[self.config.sample.sampler].stochastic:
            values["sampler"] = next(k for k, f in SAMPLERS.items() if not f.stochastic)
        s = self.settings(settings, **values)
        deterministic = [k for k, f in SAMPLERS.items() if not f.stochastic]
        if SAMPLERS[s.sampler].stochastic or s.eta != 0:
            raise MnistdiffError(f"morph needs a deterministic sampler ({' or '.join(deterministic)}"
                                 f"; eta must be 0), not {s.sampler}"
                                 + (f" with eta {s.eta:g}" if s.eta else ""))
        pair_d = [digits] if isinstance(digits, numbers.Integral) else list(digits)
        pair_s = [s.seed if seeds is None else seeds] if seeds is None or \
            isinstance(seeds, numbers.Integral) else list(seeds)
        if not 1 <= len(pair_d) <= 2 or not 1 <= len(pair_s) <= 2:
            raise MnistdiffError("morph: give one or two digits and one or two seeds")
        a, b = self.check_digits(pair_d * (3 - len(pair_d)))
        sa, sb = (self.settings(s, seed=v).seed for v in pair_s * (3 - len(pair_s)))
        if (a, sa) == (b, sb):
            raise MnistdiffError(f"morph: both ends are digit {a} with seed {sa}; give two "
                                 f"different seeds or two different digits")
        frames = integer("frames", frames, 2, 64)
        return self._morph(a, b, sa, sb, frames, s)

    def _morph(self, a: int, b: int, sa: int, sb: int, frames: int, s: Settings) -> Morph:
        start = time.perf_counter()
        alphas = [j / (frames - 1) for j in range(frames)]
        za = self._noise(self._generators(sa, 0, 1))  # image 0 of each end's seed
        zb = self._noise(self._generators(sb, 0, 1))
        x = torch.cat([slerp(za, zb, u) for u in alphas])
        mix = torch.tensor(alphas, device=self.device).view(-1, 1, 1, 1)
        ya = torch.full((frames,), a, dtype=torch.long, device=self.device)
        eps_a = self._eps_fn(ya, s)
        eps_b = self._eps_fn(torch.full_like(ya, b), s) if b != a else eps_a

        def eps_fn(x: Tensor, t: Tensor) -> Tensor:
            if eps_b is eps_a:
                return eps_a(x, t)
            return (1 - mix) * eps_a(x, t) + mix * eps_b(x, t)

        x0, _, _ = self._denoise(x, ya, s, self._generators(sa, 0, frames),
                                 step_grid(self.schedule, s.steps, s.spacing), eps_fn=eps_fn)
        nfe = eps_a.nfe + (eps_b.nfe if eps_b is not eps_a else 0)
        return Morph(to_uint8(x0).squeeze(1).cpu(), alphas, (a, b), (sa, sb), s, nfe,
                     time.perf_counter() - start)


class Morph(NamedTuple):
    """What ``Pipeline.interpolate`` returns."""

    images: Tensor  # (F, S, S) or (F, 3, S, S) uint8, from the first end to the second
    alphas: list[float]  # the interpolation fraction of each frame, 0 .. 1
    digits: tuple[int, int]
    seeds: tuple[int, int]
    settings: Settings
    nfe: int  # network evaluations per frame and step (both ends' guided passes)
    seconds: float


def slerp(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """Spherical interpolation between two noise tensors (Shoemake 1985; as in DDIM's
    interpolation experiments): exactly ``a`` at 0 and ``b`` at 1, linear when they are parallel."""
    cos = float((a * b).sum() / (a.norm() * b.norm()))
    theta = math.acos(max(-1.0, min(1.0, cos)))
    if theta < 1e-6:
        return (1 - alpha) * a + alpha * b
    wa, wb = math.sin((1 - alpha) * theta) / math.sin(theta), math.sin(alpha * theta) / math.sin(theta)
    if alpha == 0:
        wa, wb = 1.0, 0.0
    elif alpha == 1:
        wa, wb = 0.0, 1.0
    return wa * a + wb * b


def _reporter(callback: StepCallback, **extra) -> StepCallback:
    """A sampler callback that adds ``extra`` (the batch, ...) to each step's info."""
    return lambda info: callback({**info, **extra})
