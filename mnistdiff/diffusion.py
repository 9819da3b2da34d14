"""Gaussian diffusion maths: noise schedules, the forward process, the training loss and
classifier-free guidance.

Notation. Timesteps are indices t in [0, T-1], t = T-1 the noisiest. Following DDPM (Ho et al.
2020), β_t is the per-step noise variance and ᾱ_t = Π_{s<=t} (1 - β_s). A noisy image is

    x_t = α_t x0 + σ_t ε,   α_t = sqrt(ᾱ_t),  σ_t = sqrt(1 - ᾱ_t),  ε ~ N(0, I)

(α_t, σ_t as in Salimans & Ho 2022 and Lu et al. 2022; note DDPM's own "α_t" is 1 - β_t,
stored as `Schedule.alphas`). The signal-to-noise ratio is SNR_t = α_t² / σ_t².
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

Model = Callable[[Tensor, Tensor, Tensor], Tensor]  # model(x_t (B,C,H,W), t (B,), y (B,)) -> (B,C,H,W)


@dataclass(frozen=True)
class Schedule:
    """Per-timestep constants, each a float32 (T,) tensor on one device (computed in float64)."""

    betas: Tensor  # β_t
    alphas: Tensor  # 1 - β_t
    alphas_cumprod: Tensor  # ᾱ_t
    sqrt_ab: Tensor  # α_t = sqrt(ᾱ_t)
    sqrt_1m_ab: Tensor  # σ_t = sqrt(1 - ᾱ_t)
    snr: Tensor  # ᾱ_t / (1 - ᾱ_t)

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: torch.device | str) -> Schedule:
        return Schedule(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """β linear from beta_start to beta_end (DDPM). With the defaults and T = 500, ᾱ goes from
    0.9999 at t = 0 to 0.0064 at t = T-1: the last step is not pure noise."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """ᾱ_t = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2), s = 0.008 (Nichol & Dhariwal
    2021, eq. 17), β clipped at 0.999. ᾱ goes from 0.99991 at t = 0 to ~1e-8 at t = T-1
    (T = 500). beta_start and beta_end are ignored."""
    s = 0.008
    u = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps  # paper's t/T, t = 0..T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)  # β_t = 1 - ᾱ_t / ᾱ_{t-1}


SCHEDULES: dict[str, Callable[[int, float, float], Tensor]] = {"linear": linear_betas,
                                                               "cosine": cosine_betas}
"""Noise schedules by name: betas(timesteps, beta_start, beta_end) -> β (T,) float64. The
single source of ``diffusion.schedule``'s choices (config validation lists these keys)."""


def make_schedule(
    kind: str,
    timesteps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    device: torch.device | str | None = None,
) -> Schedule:
    """Build a noise schedule with `timesteps` steps; `kind` names one of SCHEDULES."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be at least 1, got {timesteps}")
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
    betas = SCHEDULES[kind](timesteps, beta_start, beta_end)

    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    tensors = dict(
        betas=betas,
        alphas=1 - betas,
        alphas_cumprod=alphas_cumprod,
        sqrt_ab=alphas_cumprod.sqrt(),
        sqrt_1m_ab=(1 - alphas_cumprod).sqrt(),
        snr=alphas_cumprod / (1 - alphas_cumprod),
    )
    return Schedule(**{k: v.to(device=device, dtype=torch.float32) for k, v in tensors.items()})


def _at(coef: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """coef[t] shaped (B, 1, 1, ...) to broadcast against x (B, C, H, W)."""
    return coef[t].reshape(-1, *([1] * (x.ndim - 1)))


def q_sample(schedule: Schedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Sample q(x_t | x0): x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε (DDPM eq. 4)."""
    return _at(schedule.sqrt_ab, t, x0) * x0 + _at(schedule.sqrt_1m_ab, t, x0) * noise


def velocity(schedule: Schedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """The v target v = α_t ε - σ_t x0 (Salimans & Ho 2022, section 4)."""
    return _at(schedule.sqrt_ab, t, x0) * eps - _at(schedule.sqrt_1m_ab, t, x0) * x0


class Objective:
    """What the network predicts (as EDM's loss.py: one small class per formulation): the
    training target for (x0, t, ε), the ε a model output stands for, and the min-SNR-γ weight
    of the MSE on that target (Hang et al. 2023)."""

    name: str

    def target(self, schedule: Schedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        raise NotImplementedError

    def eps(self, schedule: Schedule, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def min_snr_weight(self, snr: Tensor, gamma: float) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsPrediction(Objective):
    """The network predicts ε (DDPM's L_simple, eq. 14); weight min(SNR_t, γ) / SNR_t."""

    name = "eps"

    def target(self, schedule: Schedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return eps

    def eps(self, schedule: Schedule, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return out

    def min_snr_weight(self, snr: Tensor, gamma: float) -> Tensor:
        return snr.clamp(max=gamma) / snr


class VPrediction(Objective):
    """The network predicts v = α_t ε - σ_t x0 (Salimans & Ho 2022); ε = α_t v + σ_t x_t
    (uses α² + σ² = 1); weight min(SNR_t, γ) / (SNR_t + 1)."""

    name = "v"

    def target(self, schedule: Schedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return velocity(schedule, x0, t, eps)

    def eps(self, schedule: Schedule, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return _at(schedule.sqrt_ab, t, x_t) * out + _at(schedule.sqrt_1m_ab, t, x_t) * x_t

    def min_snr_weight(self, snr: Tensor, gamma: float) -> Tensor:
        return snr.clamp(max=gamma) / (snr + 1)


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (EpsPrediction(), VPrediction())}
"""Objectives by name: the single source of ``diffusion.objective``'s choices."""


def get_objective(objective: str | Objective) -> Objective:
    """An Objective from its name (or itself); ValueError for an unknown name."""
    if isinstance(objective, Objective):
        return objective
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective]


def training_loss(
    model: Model,
    schedule: Schedule,
    x0: Tensor,
    y: Tensor,
    *,
    objective: str | Objective = "eps",
    min_snr_gamma: float = 0.0,
    label_dropout: float = 0.0,
    null_label: int = 10,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Denoising loss on a batch x0 (B, C, H, W) with labels y (B,): DDPM's L_simple (eq. 14)
    for objective "eps", the same MSE on the v target for objective "v".

    t ~ U{0, T-1}, ε ~ N(0, I); each label becomes `null_label` with probability label_dropout
    (classifier-free guidance training, Ho & Salimans 2022). With min_snr_gamma > 0 each sample
    is weighted by min(SNR_t, γ) / SNR_t (eps) or min(SNR_t, γ) / (SNR_t + 1) (v), the min-SNR-γ
    weighting of Hang et al. 2023. Random draws come from `generator` (on x0's device) if given.
    """
    objective = get_objective(objective)
    b, device = x0.shape[0], x0.device
    t = torch.randint(0, schedule.T, (b,), device=device, generator=generator)
    noise = torch.randn(x0.shape, device=device, dtype=x0.dtype, generator=generator)
    if label_dropout > 0:
        drop = torch.rand(b, device=device, generator=generator) < label_dropout
        y = y.masked_fill(drop, null_label)

    x_t = q_sample(schedule, x0, t, noise)
    target = objective.target(schedule, x0, t, noise)
    per_sample = (model(x_t, t, y).float() - target).pow(2).mean(dim=tuple(range(1, x0.ndim)))  # (B,)
    if min_snr_gamma > 0:
        snr = schedule.snr[t]
        per_sample = per_sample * objective.min_snr_weight(snr, min_snr_gamma)
    return per_sample.mean()


class GuidedEps:
    """The eps_fn(x, t) that samplers call: ε(x_t, t) of a label-conditional model for labels
    y (B,) under classifier-free guidance (Ho & Salimans 2022) with scale w:

        ε = ε_u + w (ε_c - ε_u),   ε_c = ε(x_t, t, y),  ε_u = ε(x_t, t, null_label)

    so w = 0 is unconditional and w = 1 conditional (both then need a single pass). Otherwise
    the two passes run as one forward on a doubled batch.

    ``interval = (lo, hi)`` applies the guidance only in a band of noise levels (Kynkäänniemi et
    al. 2024, "Applying guidance in a limited interval improves sample and distribution
    quality"): at timestep t it is used when ``lo <= t / (T - 1) <= hi`` (T the schedule's
    timesteps, so 1 is pure noise and 0 the last step); elsewhere ε is the conditional ε_c
    alone (w = 1), one pass on the plain batch. (0, 1) contains every timestep: plain guidance.

    ``t`` is either a Python int (one timestep for the batch: what ``samplers.denoise`` passes;
    the (B,) tensor is made on the device here, and the interval test is a comparison of Python
    numbers, so no step waits on the device) or a (B,) tensor (per-image timesteps; then both
    passes always run and each image gets w or 1 by its own timestep, without reading t back).

    ``nfe`` counts calls (network evaluations per image, a guided step counting one);
    ``passes`` counts network passes over the batch: 2 for a guided step (the doubled batch),
    1 for a single pass; the work done is ``passes`` x B images.
    """

    def __init__(
        self,
        model: Model,
        schedule: Schedule,
        y: Tensor,
        guidance: float,
        objective: str | Objective = "eps",
        null_label: int = 10,
        interval: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.model, self.schedule, self.guidance = model, schedule, guidance
        self.objective = get_objective(objective)
        self.interval = (float(interval[0]), float(interval[1]))
        self.nfe = self.passes = 0
        self.y = y
        y_null = torch.full_like(y, null_label)
        if guidance == 0:
            self.labels = y_null
        elif guidance == 1:
            self.labels = y
        else:
            self.labels = torch.cat([y, y_null])  # (2B,): conditional half first

    def guides(self, t: int) -> bool:
        """Whether timestep t gets the guidance: w not 0 or 1 and t in the interval."""
        lo, hi = self.interval
        return self.guidance not in (0, 1) and lo <= t / (self.schedule.T - 1) <= hi

    def __call__(self, x: Tensor, t: Tensor | int) -> Tensor:
        self.nfe += 1
        b = x.shape[0]
        if isinstance(t, Tensor):
            t = t.to(x.device).expand(b)  # (B,)
            weight = self.guidance
            if self.guidance not in (0, 1) and self.interval != (0.0, 1.0):
                lo, hi = self.interval
                u = t / (self.schedule.T - 1)
                weight = torch.where((u >= lo) & (u <= hi), self.guidance, 1.0).to(x.dtype)
                weight = weight.view(-1, *[1] * (x.ndim - 1))
            guided = self.guidance not in (0, 1)
        else:
            guided, weight = self.guides(int(t)), self.guidance
            t = torch.full((b,), int(t), dtype=torch.long, device=x.device)
        if not guided:
            labels = self.labels if self.guidance in (0, 1) else self.y
            out = self.model(x, t, labels)
            self.passes += 1
        else:
            out_c, out_u = self.model(torch.cat([x, x]), torch.cat([t, t]), self.labels).chunk(2)
            # Guiding the raw output is the same as guiding ε: the ε(out) map is affine in out
            # and the guidance weights (1 - w, w) sum to one.
            out = out_u + weight * (out_c - out_u)
            self.passes += 2
        return self.objective.eps(self.schedule, out, x, t)
