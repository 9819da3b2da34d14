"""Samplers: turn noise into images, given an ε-prediction function.

Every sampler is a plain function with one signature (as in k-diffusion's sampling.py, where a
sampler takes its σ grid):

    sampler(eps_fn, x, grid, *, generator=None, callback=None, clip_x0=True, **options) -> x0

- `eps_fn(x_t, t) -> ε` with t the step's timestep as a Python int (the whole batch is at one
  timestep), e.g. `diffusion.GuidedEps(...)`, which makes the (B,) tensor the network takes on
  the device. An int lets an eps_fn decide per step on the host (GuidedEps's guidance interval)
  without reading anything back from the device.
- `x` (B, C, H, W) is the starting noise at t = grid.ts[0] (T-1).
- `grid` is the step grid, built once by the caller with `step_grid(schedule, steps, spacing)`: the
  timesteps (T-1 down to 0) with their (α_t, σ_t) and the clean image's (1, 0) after the last.
  The sampler evaluates eps_fn once at each timestep; the last update goes to the clean image
  (ᾱ = 1, σ = 0), so the result is the final predicted x0.
- `clip_x0` clamps each predicted x0 to [-1, 1] and recomputes ε from the clamped x0, so the
  update stays on x_t = α_t x0 + σ_t ε (mixing a clamped x0 with the raw ε breaks at high guidance).
- `callback(info)` is called after every step with info = {"i", "t", "x", "x0"}: the step index,
  its timestep, x after the update and the predicted x0. The next step continues from that very
  tensor `info["x"]`, so a callback may change it in place (`Pipeline.inpaint` relies on this).
- All noise comes from `generator`: a torch.Generator, or a `seeding.ImageGenerators` (one
  generator per image). A seeded generator makes sampling deterministic.
- Sampler-specific options (ddim's `eta`) are keyword arguments, named in the registration.

`SAMPLERS` maps names to the functions (the single source of the sampler choices); each carries
`options` (the keyword options it takes, e.g. ("eta",)) and `stochastic` (whether it always
draws noise). A new sampler is one function here with its `@register(...)`.

α_t = sqrt(ᾱ_t) and σ_t = sqrt(1 - ᾱ_t) as in diffusion.py; s denotes the next (less noisy) timestep.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from mnistdiff.diffusion import Schedule

EpsFn = Callable[[Tensor, int], Tensor]  # eps_fn(x_t, t) -> ε, t a Python int
Callback = Callable[[dict], None]

SAMPLERS: dict[str, Callable[..., Tensor]] = {}


def register(name: str, *, stochastic: bool, options: tuple[str, ...] = ()) -> Callable:
    """Add a sampler to SAMPLERS under ``name`` with its keyword ``options``."""
    def add(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        fn.sampler_name, fn.stochastic, fn.options = name, stochastic, options
        SAMPLERS[name] = fn
        return fn
    return add


SPACINGS = ("linspace", "trailing", "karras")
"""How `steps` timesteps are spread over 0..T-1 (``sample.spacing``'s choices)."""

KARRAS_SIGMA_MAX = 80.0  # EDM's σ_max (Karras et al. 2022, Table 1), in VE units σ_t / α_t
KARRAS_RHO = 7.0         # EDM's ρ


def timesteps(T: int, steps: int, spacing: str = "linspace",
              schedule: Schedule | None = None) -> Tensor:
    """`steps` timesteps from T-1 downwards, int64 descending; steps == T gives all of them.

    - "linspace": evenly from T-1 down to 0 inclusive. The last evaluation is at t = 0, where
      the image is already clean to within σ_0, so on a coarse grid it is nearly wasted.
    - "trailing": t_k = round(T (N - k) / N) - 1 for k = 0..N-1 (Lin et al. 2024, "Common
      diffusion noise schedules and sample steps are flawed", Table 2): evenly spaced intervals
      that end at the clean image, so every evaluation moves the sample. What few-step students
      (`mnistdiff distill`) are trained on.
    - "karras": even in σ^(1/ρ) (Karras et al. 2022, "Elucidating the design space", eq. 5,
      ρ = 7), in VE units σ_t / α_t: the first step at T-1 (where sampling starts), the other
      N-1 at the timesteps nearest to that grid from min(σ_max = 80, σ_{T-1}) down to σ_0.
      Short steps at low noise, where the fine detail is drawn, long ones at high noise; the
      cosine schedule's σ_{T-1} (thousands) is far above where anything is decided, hence the
      cap. Needs ``schedule`` (the σ of each timestep).
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and the schedule's {T} timesteps, got {steps}")
    if spacing == "linspace":
        return torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long()
    if spacing == "trailing":
        k = torch.arange(steps, dtype=torch.float64)
        return (T * (steps - k) / steps).round().long() - 1
    if spacing == "karras":
        if schedule is None or schedule.T != T:
            raise ValueError("karras spacing needs the schedule (its σ per timestep)")
        return _karras_timesteps(schedule, steps)
    raise ValueError(f"unknown spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")


def _karras_timesteps(schedule: Schedule, steps: int) -> Tensor:
    T, rho = schedule.T, KARRAS_RHO
    log_sigma = (schedule.sqrt_1m_ab.double().cpu() / schedule.sqrt_ab.double().cpu()).log()  # (T,)
    if steps == 1:
        return torch.tensor([T - 1])
    s_max = min(KARRAS_SIGMA_MAX, log_sigma[-1].exp().item())
    s_min = log_sigma[0].exp().item()
    # i / (N - 1) over the N = steps - 1 points after T-1; a single point is σ_0 (t = 0)
    ramp = torch.linspace(0, 1, steps - 1, dtype=torch.float64) if steps > 2 else torch.ones(1)
    target = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    nearest = (log_sigma[None, :] - target.log()[:, None]).abs().argmin(dim=1)  # (steps-1,)
    ts = [T - 1]
    for k, t in enumerate(nearest.tolist()):
        # strictly descending, leaving room for the timesteps still to come; ends at 0
        ts.append(max(min(t, ts[-1] - 1), steps - 2 - k))
    return torch.tensor(ts)


class Grid(NamedTuple):
    """The step grid a sampler walks: timesteps ts (descending) and, for each of them then for
    the clean image, α and σ as Python floats (one device read per run, so the sampling loop
    itself never waits on the device)."""

    ts: list[int]
    alphas: list[float]  # len(ts) + 1: α_t for each t, then 1.0
    sigmas: list[float]  # len(ts) + 1: σ_t for each t, then 0.0
    T: int  # the schedule's timesteps (steps == T is the full grid)


def step_grid(schedule: Schedule, steps: int, spacing: str = "linspace") -> Grid:
    """The grid of ``timesteps(schedule.T, steps, spacing, schedule)`` on ``schedule``."""
    return grid_of(schedule, timesteps(schedule.T, steps, spacing, schedule))


def grid_of(schedule: Schedule, ts: Tensor | list[int]) -> Grid:
    """The grid of given timesteps (descending, distinct) on ``schedule``."""
    ts = torch.as_tensor(ts, dtype=torch.long)
    alphas = schedule.sqrt_ab.cpu()[ts].tolist() + [1.0]
    sigmas = schedule.sqrt_1m_ab.cpu()[ts].tolist() + [0.0]
    return Grid(ts.tolist(), alphas, sigmas, schedule.T)


def denoise(eps_fn: EpsFn, x: Tensor, t: int, a_t: float, s_t: float,
            clip_x0: bool) -> tuple[Tensor, Tensor]:
    """One network evaluation at timestep t (with α_t, σ_t): predicted (x0, ε). ``eps_fn``
    gets t as the Python int (module docstring)."""
    eps = eps_fn(x, t)
    x0 = (x - s_t * eps) / a_t  # DDPM eq. 4 solved for x0
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = (x - a_t * x0) / s_t  # ... and for ε
    return x0, eps


def ddim_sigma(eta: float, a_t: float, s_t: float, a_s: float, s_s: float) -> float:
    """The noise σ of a DDIM step t -> s (Song et al. 2021, eq. 16):
    σ = η sqrt((1 - ᾱ_s) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_s); η = 1 is the DDPM posterior's."""
    return eta * (s_s / s_t) * math.sqrt(max(1 - (a_t / a_s) ** 2, 0.0))


def ddim_step(x0: Tensor, eps: Tensor, a_s: float, s_s: float, sigma: float = 0.0,
              noise: Tensor | None = None) -> Tensor:
    """One DDIM update to timestep s from the predicted (x0, ε) (Song et al. 2021, eq. 12):
    x_s = α_s x0 + sqrt(σ_s² - σ²) ε + σ z, with z = ``noise`` when σ > 0."""
    x = a_s * x0 + math.sqrt(max(s_s**2 - sigma**2, 0.0)) * eps
    return x if sigma == 0 else x + sigma * noise


def _noise_like(x: Tensor, generator) -> Tensor:
    if hasattr(generator, "randn_like"):  # seeding.ImageGenerators: one generator per image
        return generator.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@register("ddpm", stochastic=True)
@torch.no_grad()
def ddpm(
    eps_fn: EpsFn,
    x: Tensor,
    grid: Grid,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    clip_x0: bool = True,
) -> Tensor:
    """Ancestral sampling from the DDPM posterior q(x_s | x_t, x0) (Ho et al. 2020, eq. 6-7),
    on the strided schedule when steps < T (β_{t|s} = 1 - ᾱ_t / ᾱ_s, as in DDIM's appendix).

    With steps == T the variance is σ² = β_t and this is exactly DDPM eq. 11 (without clipping).
    With fewer steps it is the posterior variance β̃ = β_{t|s} (1 - ᾱ_s) / (1 - ᾱ_t), i.e. DDIM
    with η = 1: σ² = β_{t|s} adds far too much noise on a coarse grid (DDIM paper, Table 1, σ̂).
    """
    full = len(grid.ts) == grid.T
    for i, t in enumerate(grid.ts):
        a_t, s_t, a_s, s_s = grid.alphas[i], grid.sigmas[i], grid.alphas[i + 1], grid.sigmas[i + 1]
        x0, _ = denoise(eps_fn, x, t, a_t, s_t, clip_x0)
        beta = (s_t**2 - s_s**2) / a_s**2  # β_{t|s} = 1 - ᾱ_t/ᾱ_s, in a form accurate when tiny
        # Posterior mean μ̃(x_t, x0), DDPM eq. 7 (on the last step, ᾱ_s = 1, it is x0).
        x = (a_s * beta / s_t**2) * x0 + (a_t / a_s) * (s_s**2 / s_t**2) * x
        if s_s > 0:
            var = beta if full else beta * s_s**2 / s_t**2
            x = x + math.sqrt(var) * _noise_like(x, generator)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x


@register("ddim", stochastic=False, options=("eta",))
@torch.no_grad()
def ddim(
    eps_fn: EpsFn,
    x: Tensor,
    grid: Grid,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    clip_x0: bool = True,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) with σ_t(η) of eq. 16: η = 0 is deterministic (a first-order
    solver of the probability-flow ODE), η = 1 is the DDPM posterior."""
    for i, t in enumerate(grid.ts):
        a_t, s_t, a_s, s_s = grid.alphas[i], grid.sigmas[i], grid.alphas[i + 1], grid.sigmas[i + 1]
        x0, eps = denoise(eps_fn, x, t, a_t, s_t, clip_x0)
        sigma = ddim_sigma(eta, a_t, s_t, a_s, s_s)
        x = ddim_step(x0, eps, a_s, s_s, sigma, _noise_like(x, generator) if sigma > 0 else None)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x


@register("dpmpp", stochastic=False)
@torch.no_grad()
def dpmpp(
    eps_fn: EpsFn,
    x: Tensor,
    grid: Grid,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    clip_x0: bool = True,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver of the
    probability-flow ODE in its data-prediction form, in λ_t = log(α_t / σ_t). Deterministic,
    so `generator` is unused.

        x_s = (σ_s / σ_t) x_t - α_s (e^{-h} - 1) D,   h = λ_s - λ_t,
        D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev,       r = h_prev / h

    The first step and the last two (into t = 0, then to the clean image) are first order,
    D = x0_t, like DPM-Solver's `lower_order_final`: on evenly spaced timesteps the λ gap into
    t = 0 is several times the previous one (r ~ 0.25) and the 2M extrapolation overshoots.
    """
    x0_prev, h_prev = None, 0.0
    for i, t in enumerate(grid.ts):
        a_t, s_t, a_s, s_s = grid.alphas[i], grid.sigmas[i], grid.alphas[i + 1], grid.sigmas[i + 1]
        x0, _ = denoise(eps_fn, x, t, a_t, s_t, clip_x0)
        if s_s == 0:
            x = x0  # last step to the clean image: λ_s = ∞ and the update reduces to x0
        else:
            h = math.log(a_s / s_s) - math.log(a_t / s_t)
            if x0_prev is None or i == len(grid.ts) - 2:
                d = x0  # first order (DDIM) on the first step and on the step into t = 0
            else:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (s_s / s_t) * x - a_s * math.expm1(-h) * d
            h_prev = h
        x0_prev = x0
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    return x
