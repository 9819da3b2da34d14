"""Sample digits from a trained checkpoint: what ``mnistdiff sample`` / ``animate`` and notebooks call.

    import mnistdiff
    pipe = mnistdiff.load("mnist")              # a bundled model, a .pt file, a run folder, or None
    out = pipe.sample(digits=[7], n=16)         # out.images: uint8 (16, 28, 28), out.labels: (16,)
    frames, captions = pipe.trajectory([0, 3, 7], frames=20)   # frames: uint8 (20, 3, 28, 28)

Sampler, steps, guidance, eta and seed default to the checkpoint's ``sample`` config section.

Settings: ``pipe.settings(...)`` fills in the defaults and validates once; every sampling method
takes that ``Settings`` as ``settings=`` (what the CLI and the page do) or the separate values.

Determinism (per-image noise, as NVlabs/edm's generate.py): image i of a call (counting in the
order of the returned labels) draws all its noise (its starting x_T and, for ddpm or ddim with
eta > 0, the noise of every step) from its own generator, seeded with
``seeding.mix_seed(seed, i)`` = ``seed * 1_000_003 + i`` on the sampling device. So the same
(seed, digits, n, device) gives the same images whatever the batch size and whatever else runs;
a trajectory's digits equal ``sample(digits, n=1)``, and image 0 of a seed is the start of a
morph's end. (Bit-identity across batch sizes also assumes the network's kernels give the same
result for an image whatever batch it is in, true on the CPU in our tests.)
"""

from __future__ import annotations

import copy
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
from .diffusion import GuidedEps, get_objective, make_schedule
from .errors import MnistdiffError
from .samplers import SAMPLERS, SPACINGS, Grid, denoise, step_grid
from .seeding import ImageGenerators
from .unet import IMAGE_SIZE, count_parameters

DEFAULT_FRAMES = 30  # animation frames when not asked for (fewer when there are fewer steps)


class Samples(NamedTuple):
    images: Tensor  # (N, 28, 28) uint8 on the CPU
    labels: Tensor  # (N,) int64
    nfe: int  # network evaluations per image (a batched conditional + unconditional pass is one)
    seconds: float
    passes: int = 0  # network passes per image: 2 per guided step, 1 per unguided one (the work)


class Trajectory(NamedTuple):
    frames: Tensor  # (F, D, 28, 28) uint8: F moments of the reverse process for D digits
    captions: list[str]  # one per frame: the step and the timestep it shows


@dataclasses.dataclass(frozen=True)
class Settings:
    """Validated sampling settings (the checkpoint's defaults where not given), from
    :meth:`Pipeline.settings`; every sampling method takes one as ``settings=``. A sampler's
    keyword options (``SAMPLERS[name].options``, e.g. ddim's eta) are read from these fields."""

    sampler: str
    steps: int
    guidance: float
    eta: float
    seed: int
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # see diffusion.GuidedEps
    spacing: str = "linspace"  # how the steps spread over the timesteps (samplers.timesteps)


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


def _interval(value: object) -> tuple[float, float]:
    """A guidance interval (lo, hi) with 0 <= lo <= hi <= 1, as a tuple of floats."""
    try:
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
        ok = (not any(isinstance(v, (bool, str)) for v in value)  # type: ignore[union-attr]
              and 0 <= lo <= hi <= 1)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise MnistdiffError(f"guidance_interval: got {value!r}, must be two numbers lo, hi with "
                             f"0 <= lo <= hi <= 1 (fractions of the noise level t / (T - 1))")
    return lo, hi


def _integer(name: str, value: object, lo: int, hi: int | None = None, hint: str = "") -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise MnistdiffError(f"{name}: got {value!r}, must be an integer {bound}{hint}")
    return int(value)


class Pipeline:
    """A denoising network with its config and noise schedule, ready to sample on one device."""

    def __init__(self, model: nn.Module, config: Config, *, device: str | torch.device = "auto",
                 info: dict | None = None, channels_last: bool | None = None,
                 compile: bool = False):
        """``channels_last``: keep the weights and feed the images in channels_last (NHWC)
        memory format, which oneDNN's CPU convolutions prefer (about 20 % faster sampling on
        a CPU); None (the default) turns it on for the CPU only, where it was measured.
        ``compile``: sample through ``torch.compile(model)`` (inductor's fused kernels; the
        first call of each batch shape compiles, tens of seconds on a CPU); on a CPU it gained
        nothing measurable over channels_last, so it is off unless asked for. Both give the
        plain path's images up to float rounding (a uint8 pixel may move by one level, about
        one in 10^5). ``model`` itself is left as it is (channels_last samples with a copy of
        its weights taken here). See docs/performance.md."""
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        self.channels_last, self.compiled = bool(channels_last), bool(compile)
        # The network sampled with: for channels_last a copy of the weights in that format
        # (a conv with either operand in channels_last runs in it), so a model the caller still
        # uses (training's sample grids pass the live one) is never changed underneath it.
        network = self.model
        if self.channels_last:
            network = copy.deepcopy(self.model).to(memory_format=torch.channels_last)
        self._network = torch.compile(network) if self.compiled else network
        self.config = config
        d = config.diffusion
        self.schedule = make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end,
                                      device=self.device)
        self.objective = get_objective(d.objective)
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
                 seed: int | None = None,
                 guidance_interval: Sequence[float] | None = None,
                 spacing: str | None = None) -> Settings:
        """Fill in the checkpoint's defaults and validate; raises MnistdiffError (one line).
        ``guidance_interval`` (lo, hi): guidance only at timesteps t with lo <= t / (T - 1) <= hi,
        a single conditional pass elsewhere (``diffusion.GuidedEps``); (0, 1) is everywhere.
        ``spacing``: one of ``samplers.SPACINGS`` (how the steps spread over the timesteps)."""
        d, T = self.config.sample, self.schedule.T
        sampler = d.sampler if sampler is None else sampler
        if sampler not in SAMPLERS:
            raise MnistdiffError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
        steps = _integer("steps", d.steps if steps is None else steps, 1, T,
                         f" (the model's {T} diffusion timesteps)")
        guidance = d.guidance if guidance is None else guidance
        if not (isinstance(guidance, numbers.Real) and math.isfinite(guidance) and guidance >= 0):
            raise MnistdiffError(f"guidance: got {guidance!r}, must be a number >= 0")
        if eta is not None and eta != d.eta and "eta" not in SAMPLERS[sampler].options:
            # ignoring it would mislead
            how = "is always stochastic" if SAMPLERS[sampler].stochastic else "is deterministic"
            users = [k for k, f in SAMPLERS.items() if "eta" in f.options]
            raise MnistdiffError(f"eta: only the {' or '.join(users)} sampler uses it ({sampler} "
                                 f"{how}); drop --eta or use --sampler {users[0]}")
        eta = d.eta if eta is None else eta
        if not (isinstance(eta, numbers.Real) and 0 <= eta <= 1):
            raise MnistdiffError(f"eta: got {eta!r}, must be between 0 and 1")
        seed = _integer("seed", d.seed if seed is None else seed, 0, 2**32 - 1)
        interval = _interval(d.guidance_interval if guidance_interval is None
                             else guidance_interval)
        spacing = d.spacing if spacing is None else spacing
        if spacing not in SPACINGS:
            raise MnistdiffError(f"unknown spacing '{spacing}'; choose one of {', '.join(SPACINGS)}")
        return Settings(sampler, steps, float(guidance), float(eta), seed, interval, spacing)

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

    def _resolve(self, settings: Settings | None, sampler: str | None, steps: int | None,
                 guidance: float | None, eta: float | None, seed: int | None,
                 guidance_interval: Sequence[float] | None = None) -> Settings:
        """``settings`` as given (already validated by :meth:`settings`), else validate the
        separate arguments; both at once is a programming error."""
        if settings is None:
            return self.settings(sampler, steps, guidance, eta, seed, guidance_interval)
        if any(v is not None for v in (sampler, steps, guidance, eta, seed, guidance_interval)):
            raise TypeError("give either settings= or sampler/steps/guidance/eta/seed/"
                            "guidance_interval, not both")
        if not isinstance(settings, Settings):
            raise TypeError(f"settings: expected a Settings (from Pipeline.settings), got "
                            f"{type(settings).__name__}")
        return settings

    def _batch_size(self, batch_size: int | None) -> int:
        return _integer("batch_size", self.config.sample.batch_size if batch_size is None
                        else batch_size, 1)

    def _forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """The network (compiled and/or channels_last when asked), in bf16 autocast on CUDA;
        float32 out, in the ordinary (contiguous) memory format."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.device.type == "cuda"):
            out = self._network(x, t, y).float()
        return out.contiguous() if self.channels_last else out

    def _generators(self, seed: int, first: int, count: int) -> ImageGenerators:
        """The generators of images first .. first + count - 1 of a call (module docstring)."""
        return ImageGenerators.for_images(seed, first, count, self.device)

    def _grid(self, s: Settings) -> Grid:
        """The step grid of the settings' steps and spacing."""
        return step_grid(self.schedule, s.steps, s.spacing)

    def _noise(self, generators: ImageGenerators) -> Tensor:
        """The starting noise x_T of one batch: (B, C, 28, 28), row b from generator b."""
        return generators.randn((len(generators), self.config.model.in_channels, IMAGE_SIZE,
                                 IMAGE_SIZE))

    def _eps_fn(self, y: Tensor, s: Settings) -> GuidedEps:
        return GuidedEps(self._forward, self.schedule, y, s.guidance, self.objective,
                         null_label=self.num_classes, interval=s.guidance_interval)

    def _denoise(self, x: Tensor, y: Tensor, s: Settings, generators: ImageGenerators,
                 grid: Grid, callback: Callable[[dict], None] | None = None,
                 eps_fn: Callable | None = None) -> tuple[Tensor, int, int]:
        """Run the reverse process from noise x (B, C, 28, 28) for labels y (B,) on the step
        grid: (x0, NFE, passes). The sampler's own options (ddim's eta) come from the settings."""
        eps_fn = self._eps_fn(y, s) if eps_fn is None else eps_fn
        fn = SAMPLERS[s.sampler]
        x0 = fn(eps_fn, x, grid, generator=generators, callback=callback,
                clip_x0=self.config.sample.clip_x0, **{k: getattr(s, k) for k in fn.options})
        return x0, getattr(eps_fn, "nfe", 0), getattr(eps_fn, "passes", 0)

    def sample(self, digits: int | Sequence[int] | Tensor, n: int = 1, *,
               settings: Settings | None = None, sampler: str | None = None,
               steps: int | None = None, guidance: float | None = None, eta: float | None = None,
               seed: int | None = None, guidance_interval: Sequence[float] | None = None,
               batch_size: int | None = None,
               progress: Callable[[int], None] | None = None) -> Samples:
        """``n`` images of each digit, grouped by digit in the order given.

        ``settings`` (from :meth:`settings`) or the separate sampler/steps/guidance/eta/seed.
        Everything is validated before any work. ``progress(k)`` is called after each batch with
        the number of images it finished. All images are kept: for jobs too large for memory,
        iterate over :meth:`batches` instead.
        """
        start, images, labels, nfe, passes = time.perf_counter(), [], [], 0, 0
        for batch in self.batches(digits, n, settings=settings, sampler=sampler, steps=steps,
                                  guidance=guidance, eta=eta, seed=seed,
                                  guidance_interval=guidance_interval, batch_size=batch_size):
            images.append(batch.images)
            labels.append(batch.labels)
            nfe, passes = batch.nfe, batch.passes
            if progress is not None:
                progress(len(batch.images))
        return Samples(torch.cat(images), torch.cat(labels), nfe, time.perf_counter() - start,
                       passes)

    def batches(self, digits: int | Sequence[int] | Tensor, n: int = 1, *,
                settings: Settings | None = None, sampler: str | None = None,
                steps: int | None = None, guidance: float | None = None,
                eta: float | None = None, seed: int | None = None,
                guidance_interval: Sequence[float] | None = None,
                batch_size: int | None = None) -> Iterator[Samples]:
        """The images of :meth:`sample` one batch at a time (each a ``Samples`` with that batch's
        images, labels, NFE and seconds), so memory stays bounded by ``batch_size`` whatever
        ``n`` is; the concatenated batches equal ``sample``'s result. Validates before any work
        (when the iterator is created, not at the first ``next``)."""
        s = self._resolve(settings, sampler, steps, guidance, eta, seed, guidance_interval)
        digits = self.check_digits(digits)
        n = _integer("n", n, 1)
        return self._batches(digits, n, s, self._batch_size(batch_size))

    @torch.inference_mode()
    def _batches(self, digits: list[int], n: int, s: Settings, batch_size: int,
                 callback: Callable[[dict], None] | None = None) -> Iterator[Samples]:
        labels = torch.tensor(digits, dtype=torch.long).repeat_interleave(n)  # (N,)
        batches = -(-len(labels) // batch_size)
        grid = self._grid(s)  # one grid for every batch
        for b, i in enumerate(range(0, len(labels), batch_size)):
            start = time.perf_counter()
            y = labels[i:i + batch_size].to(self.device)
            generators = self._generators(s.seed, i, len(y))
            report = None if callback is None else _reporter(
                callback, batch=b, batches=batches, steps=s.steps, labels=y)
            x0, nfe, passes = self._denoise(self._noise(generators), y, s, generators, grid,
                                            report)
            yield Samples(to_uint8(x0).squeeze(1).cpu(), labels[i:i + batch_size], nfe,
                          time.perf_counter() - start, passes)

    @torch.inference_mode()
    def trajectory(self, digits: int | Sequence[int] | Tensor, *,
                   settings: Settings | None = None, sampler: str | None = None,
                   steps: int | None = None, guidance: float | None = None,
                   eta: float | None = None, seed: int | None = None,
                   guidance_interval: Sequence[float] | None = None,
                   frames: int | None = None) -> Trajectory:
        """Snapshots of x along the reverse process for one image of each digit, from the pure
        noise to the final image (see ``frame_indices`` for which of the steps + 1 states).
        Image j is image j of ``sample(digits, 1)`` with the same settings."""
        s = self._resolve(settings, sampler, steps, guidance, eta, seed, guidance_interval)
        digits = self.check_digits(digits)
        states = s.steps + 1  # the noise, then x after each step
        frames = min(states, DEFAULT_FRAMES) if frames is None else frames
        _integer("frames", frames, 2, states,
                 f" (the noise and the {s.steps} steps; ask for more steps for more frames)")
        keep = frame_indices(states, frames)
        grid = self._grid(s)

        generators = self._generators(s.seed, 0, len(digits))
        x = self._noise(generators)
        shots = {0: to_uint8(x).squeeze(1).cpu()}

        wanted = set(keep)

        def record(info: dict) -> None:
            if info["i"] + 1 in wanted:
                shots[info["i"] + 1] = to_uint8(info["x"]).squeeze(1).cpu()

        y = torch.tensor(digits, dtype=torch.long, device=self.device)
        self._denoise(x, y, s, generators, grid, callback=record)
        captions = [f"step {k}/{s.steps}  " + (f"t={grid.ts[k]}" if k < s.steps else "clean")
                    for k in keep]
        return Trajectory(torch.stack([shots[k] for k in keep]), captions)

    # ----------------------------------------------------------------------------- live, inpaint, morph

    def sample_live(self, digits: int | Sequence[int] | Tensor, n: int = 1, *,
                    settings: Settings | None = None, sampler: str | None = None,
                    steps: int | None = None, guidance: float | None = None,
                    eta: float | None = None, seed: int | None = None,
                    guidance_interval: Sequence[float] | None = None,
                    batch_size: int | None = None,
                    callback: Callable[[dict], None] | None = None) -> Samples:
        """``sample`` that reports every step of every batch (what ``mnistdiff ui`` streams).

        ``callback(info)`` gets the sampler's ``{"i", "t", "x", "x0"}`` plus ``"batch"``,
        ``"batches"``, ``"steps"`` and the batch's ``"labels"``; it must not change ``x``.
        The images equal ``sample``'s with the same arguments (same images, same generators).
        An exception raised by the callback stops the sampling (a closed page, say)."""
        s = self._resolve(settings, sampler, steps, guidance, eta, seed, guidance_interval)
        digits = self.check_digits(digits)
        n = _integer("n", n, 1)
        start, images, labels, nfe, passes = time.perf_counter(), [], [], 0, 0
        for batch in self._batches(digits, n, s, self._batch_size(batch_size), callback):
            images.append(batch.images)
            labels.append(batch.labels)
            nfe, passes = batch.nfe, batch.passes
        return Samples(torch.cat(images), torch.cat(labels), nfe, time.perf_counter() - start,
                       passes)

    @torch.inference_mode()
    def inpaint(self, image, mask, digits: int | Sequence[int] | Tensor, n: int = 1, *,
                settings: Settings | None = None, sampler: str | None = None,
                steps: int | None = None, guidance: float | None = None,
                eta: float | None = None, seed: int | None = None,
                guidance_interval: Sequence[float] | None = None, resample: int = 1,
                batch_size: int | None = None,
                callback: Callable[[dict], None] | None = None) -> Samples:
        """Complete a partial drawing: ``n`` images of each digit that keep ``image``'s pixels
        wherever ``mask`` is set (what ``sample --init-image/--mask`` and the page call).

        ``image``: (28, 28) integer pixels 0 (black) to 255 (white), as in MNIST; ``mask``:
        (28, 28), nonzero / True = a known pixel to keep. Arrays, tensors or nested lists.

        After every step the known pixels of x are replaced by the drawing noised to the
        timestep x is now at, a draw from q(x_s | drawing) (RePaint, Lugmayr et al. 2022, eq. 8),
        so the model fills in the rest around them; the final image holds the drawing's exact
        pixels where the mask is set. ``resample`` > 1 is RePaint's resampling: after each step
        x is noised back to the step's start and the step redone (a DDPM posterior step),
        ``resample - 1`` more times, which blends the filled-in part with the known one at the
        cost of ``resample`` times the network evaluations. Batches and seeds as in ``sample``;
        ``callback`` as in ``sample_live``."""
        s = self._resolve(settings, sampler, steps, guidance, eta, seed, guidance_interval)
        digits = self.check_digits(digits)
        n = _integer("n", n, 1)
        resample = _integer("resample", resample, 1, 20)
        batch_size = self._batch_size(batch_size)
        known_u8, keep = _drawing(image, mask)
        channels = self.config.model.in_channels
        known = (known_u8.float() * (2.0 / 255.0) - 1.0).expand(1, channels, -1, -1).to(self.device)
        keep = keep.expand(1, channels, -1, -1).to(self.device)
        labels = torch.tensor(digits, dtype=torch.long).repeat_interleave(n)  # (N,)
        batches = -(-len(labels) // batch_size)
        grid = self._grid(s)
        ts = grid.ts
        ab = self.schedule.alphas_cumprod.double().cpu().tolist()

        def noised(t: int | None, like: Tensor, generators: ImageGenerators) -> Tensor:
            """The drawing at timestep t (None: clean), one fresh draw per image."""
            if t is None:
                return known.expand_as(like)
            eps = generators.randn_like(like)
            return math.sqrt(ab[t]) * known + math.sqrt(1 - ab[t]) * eps

        start, images, nfe = time.perf_counter(), [], 0
        for b, i in enumerate(range(0, len(labels), batch_size)):
            y = labels[i:i + batch_size].to(self.device)
            generators = self._generators(s.seed, i, len(y))
            eps_fn = self._eps_fn(y, s)
            x = self._noise(generators)
            x = torch.where(keep, noised(ts[0], x, generators), x)
            report = None if callback is None else _reporter(
                callback, batch=b, batches=batches, steps=s.steps, labels=y)

            def replace(info: dict, generators=generators, eps_fn=eps_fn, report=report) -> None:
                # The samplers continue from the very tensor info["x"]: changing it in place
                # changes the next step's input (see samplers.py).
                x, k = info["x"], info["i"]
                t, s_next = ts[k], (ts[k + 1] if k + 1 < len(ts) else None)
                x.copy_(torch.where(keep, noised(s_next, x, generators), x))
                if s_next is not None:
                    for _ in range(resample - 1):
                        x.copy_(self._repaint_step(eps_fn, x, t, s_next, generators))
                        x.copy_(torch.where(keep, noised(s_next, x, generators), x))
                if report is not None:
                    report(info)

            x0, nfe, passes = self._denoise(x, y, s, generators, grid, replace, eps_fn=eps_fn)
            x0 = torch.where(keep, known, x0)  # exact, whatever the sampler did on its last step
            images.append(to_uint8(x0).squeeze(1).cpu())
        return Samples(torch.cat(images), labels, nfe, time.perf_counter() - start, passes)

    def _repaint_step(self, eps_fn: Callable, x_s: Tensor, t: int, s: int,
                      generators: ImageGenerators) -> Tensor:
        """Noise x_s back to timestep t > s (a draw from q(x_t | x_s)), then one DDPM
        posterior step t -> s (DDIM with eta 1 on these two timesteps)."""
        ab = self.schedule.alphas_cumprod
        ab_t, ab_s = float(ab[t]), float(ab[s])
        a_t, s_t, a_s, s_s = math.sqrt(ab_t), math.sqrt(1 - ab_t), math.sqrt(ab_s), math.sqrt(1 - ab_s)
        x_t = (a_t / a_s) * x_s + math.sqrt(max(1 - ab_t / ab_s, 0.0)) * generators.randn_like(x_s)
        x0, eps = denoise(eps_fn, x_t, t, float(self.schedule.sqrt_ab[t]),
                          float(self.schedule.sqrt_1m_ab[t]), self.config.sample.clip_x0)
        sigma = (s_s / s_t) * math.sqrt(max(1 - (a_t / a_s) ** 2, 0.0))
        x = a_s * x0 + math.sqrt(max(s_s**2 - sigma**2, 0.0)) * eps
        return x + sigma * generators.randn_like(x)

    @torch.inference_mode()
    def interpolate(self, digits: int | Sequence[int], seeds: int | Sequence[int] | None = None,
                    frames: int = 8, *, settings: Settings | None = None,
                    sampler: str | None = None, steps: int | None = None,
                    guidance: float | None = None) -> Morph:
        """A morph in ``frames`` images from (digit a, seed a) to (digit b, seed b).

        ``digits``: one digit or two; ``seeds``: one seed or two (default: the checkpoint's).
        Frame j at α = j / (frames - 1) starts from the spherical interpolation (slerp) of the
        two seeds' starting noises and is guided by the two labels mixed at the same α,
        ε = ε_u + w ((1 - α) ε_a + α ε_b - ε_u). The sampler must be deterministic (ddim with
        eta 0, or dpmpp; the first deterministic one, ddim, when the checkpoint's default is
        stochastic), so the first and the last
        frames are ``sample(digit, 1, seed=seed)`` of each end. ``settings`` (from
        :meth:`settings`, eta 0) gives sampler, steps, guidance and the default seed at once."""
        interval = spacing = None
        if settings is not None:
            interval, spacing = settings.guidance_interval, settings.spacing
            if any(v is not None for v in (sampler, steps, guidance)):
                raise TypeError("give either settings= or sampler/steps/guidance, not both")
            if settings.eta != 0:
                raise MnistdiffError("morph needs a deterministic sampler: eta must be 0")
            sampler, steps, guidance = settings.sampler, settings.steps, settings.guidance
            seeds = settings.seed if seeds is None else seeds
        pair_d = [digits] if isinstance(digits, numbers.Integral) else list(digits)
        pair_s = [seeds] if seeds is None or isinstance(seeds, numbers.Integral) else list(seeds)
        if not 1 <= len(pair_d) <= 2 or not 1 <= len(pair_s) <= 2:
            raise MnistdiffError("morph: give one or two digits and one or two seeds")
        if sampler is None and SAMPLERS[self.config.sample.sampler].stochastic:
            sampler = next(k for k, f in SAMPLERS.items() if not f.stochastic)  # ddim
        if sampler in SAMPLERS and SAMPLERS[sampler].stochastic:
            deterministic = [k for k, f in SAMPLERS.items() if not f.stochastic]
            raise MnistdiffError(f"morph needs a deterministic sampler: "
                                 f"{' or '.join(deterministic)} (eta 0), not {sampler}")
        a, b = self.check_digits(pair_d * (3 - len(pair_d)))
        s = self.settings(sampler, steps, guidance, 0.0, pair_s[0], interval, spacing)
        sa, sb = (self.settings(seed=v).seed for v in pair_s * (3 - len(pair_s)))
        if (a, sa) == (b, sb):
            raise MnistdiffError(f"morph: both ends are digit {a} with seed {sa}; give two "
                                 f"different seeds or two different digits")
        frames = _integer("frames", frames, 2, 64)

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
                                 self._grid(s), eps_fn=eps_fn)
        nfe = eps_a.nfe + (eps_b.nfe if eps_b is not eps_a else 0)
        return Morph(to_uint8(x0).squeeze(1).cpu(), alphas, (a, b), (sa, sb), s.sampler, s.steps,
                     s.guidance, nfe, time.perf_counter() - start)


class Morph(NamedTuple):
    """What ``Pipeline.interpolate`` returns."""

    images: Tensor  # (F, 28, 28) uint8, from the first end to the second
    alphas: list[float]  # the interpolation fraction of each frame, 0 .. 1
    digits: tuple[int, int]
    seeds: tuple[int, int]
    sampler: str
    steps: int
    guidance: float
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


def _reporter(callback: Callable[[dict], None], **extra) -> Callable[[dict], None]:
    """A sampler callback that adds ``extra`` (the batch, ...) to each step's info."""
    return lambda info: callback({**info, **extra})


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
         ema: bool = True, *, channels_last: bool | None = None,
         compile: bool = False) -> Pipeline:
    """A Pipeline from a checkpoint file, a run folder, a bundled model's name ("mnist",
    "fashion-mnist"), "latest" (the newest run) or None (the newest run, else the bundled
    "mnist"); see ``pretrained.resolve_model``. EMA weights when the checkpoint has them and
    ``ema`` is true (bundled models hold only their EMA weights). ``channels_last`` and
    ``compile``: the fast paths of :class:`Pipeline`."""
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .pretrained import resolve_model

    dev = resolve_device(device)
    source = resolve_model(checkpoint)
    ckpt = load_checkpoint(source.path)
    model, config = model_from_checkpoint(ckpt, ema=ema)
    info = checkpoint_info(ckpt, source.path, ema, source.name)
    info["source"] = source.describe()
    return Pipeline(model, config, device=dev, info=info, channels_last=channels_last,
                    compile=compile)


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
        "sampler_defaults": {k: getattr(config.sample, k) for k in ("sampler", "steps", "spacing",
                                                                    "guidance",
                                                                    "guidance_interval")},
        "ema_decay": train.ema_decay,
        "distilled_from": dataclasses.asdict(config.distill) if config.distill.teacher else None,
        "checkpoint": info,
    }
