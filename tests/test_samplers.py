"""Samplers on Gaussian data, where the exact ε-predictor and the probability-flow ODE are known.

Data x0 ~ N(μ, s²) per pixel. Then x_t ~ N(α_t μ, v_t), v_t = α_t² s² + σ_t², and
    E[ε | x_t] = σ_t (x_t - α_t μ) / v_t                     (the optimal network),
    PF-ODE map from t to 0: x0 = μ + s (x_t - α_t μ) / sqrt(v_t).
Sampling starts from the exact marginal at t = T-1, so a correct sampler returns N(μ, s²) up to
its discretisation error.
"""

import math

import pytest
import torch

from mnistdiff.diffusion import make_schedule
from mnistdiff.samplers import SAMPLERS, ddim, ddpm, dpmpp, step_grid, timesteps

MU, S, T = 0.3, 0.5, 200
SCHEDULE = make_schedule("linear", T)


def coef(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return values[t].reshape(-1, 1, 1, 1)


def exact_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a, sigma = coef(SCHEDULE.sqrt_ab, t), coef(SCHEDULE.sqrt_1m_ab, t)
    return sigma * (x - a * MU) / (a**2 * S**2 + sigma**2)


def start_noise(shape=(8, 1, 50, 50), seed: int = 0) -> torch.Tensor:
    """20k pixels drawn from the exact marginal q(x_{T-1})."""
    a, sigma = SCHEDULE.sqrt_ab[-1].item(), SCHEDULE.sqrt_1m_ab[-1].item()
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return a * MU + math.sqrt(a**2 * S**2 + sigma**2) * z


def pf_ode_map(x_T: torch.Tensor) -> torch.Tensor:
    a, sigma = SCHEDULE.sqrt_ab[-1].item(), SCHEDULE.sqrt_1m_ab[-1].item()
    return MU + S * (x_T - a * MU) / math.sqrt(a**2 * S**2 + sigma**2)


def sample(sampler, steps, seed=1, **kwargs):
    kwargs.setdefault("clip_x0", False)
    return sampler(exact_eps, start_noise(), step_grid(SCHEDULE, steps), generator=torch.Generator().manual_seed(seed), **kwargs)


# ---------------------------------------------------------------- timesteps


def test_timesteps_are_evenly_spaced_and_descending():
    assert timesteps(10, 10).tolist() == list(range(9, -1, -1))
    assert timesteps(10, 4).tolist() == [9, 6, 3, 0]
    assert timesteps(10, 1).tolist() == [9]
    ts = timesteps(500, 20)
    assert ts.dtype == torch.int64 and ts[0] == 499 and ts[-1] == 0 and (ts.diff() < 0).all()


@pytest.mark.parametrize("steps", [0, 11])
def test_timesteps_rejects_bad_step_counts(steps):
    with pytest.raises(ValueError, match="steps"):
        timesteps(10, steps)


@pytest.mark.parametrize("kind, T_", [("cosine", 250), ("linear", 500), ("linear", 200)])
@pytest.mark.parametrize("steps", [1, 2, 4, 10, 20, 50])
def test_karras_timesteps_start_at_the_prior_end_at_zero_and_never_repeat(kind, T_, steps):
    schedule = make_schedule(kind, T_)
    ts = timesteps(T_, steps, "karras", schedule)
    assert len(ts) == steps and ts[0] == T_ - 1 and (ts.diff() < 0).all()
    if steps > 1:
        assert ts[-1] == 0


def test_karras_timesteps_follow_edm_eq_5_and_crowd_the_low_noise_end():
    schedule = make_schedule("cosine", 250)
    sigma = schedule.sqrt_1m_ab.double() / schedule.sqrt_ab.double()  # VE σ of each timestep
    ts = timesteps(250, 20, "karras", schedule)
    # after the start at T-1: σ^(1/7) evenly from 80^(1/7) down to σ_0^(1/7), to the nearest t
    root = sigma[ts[1:]] ** (1 / 7)
    want = torch.linspace(80 ** (1 / 7), sigma[0].item() ** (1 / 7), 19, dtype=torch.float64)
    assert (root - want).abs().max() < 0.05
    lin = timesteps(250, 20)
    assert ts[-2] < lin[-2] / 2  # the last step is shorter than linspace's
    assert timesteps(250, 250, "karras", schedule).tolist() == list(range(249, -1, -1))
    with pytest.raises(ValueError, match="needs the schedule"):
        timesteps(250, 20, "karras")


def test_dpmpp_on_karras_steps_follows_the_ode():
    # uneven steps (r far from 1 in the 2M update) still converge; on these Gaussian data the
    # error is 0.019 at 20 steps and 0.0016 at 50 (linspace: 0.012, 0.006)
    x_T = start_noise()
    ode = pf_ode_map(x_T)
    err = [(dpmpp(exact_eps, x_T, step_grid(SCHEDULE, n, "karras"), clip_x0=False) - ode).abs().max()
           for n in (20, 50)]
    assert err[0] < 0.03 and err[1] < 0.003


def test_step_grid_holds_the_timesteps_and_their_coefficients_then_the_clean_image():
    grid = step_grid(SCHEDULE, 4)
    assert grid.ts == timesteps(T, 4).tolist() and grid.T == T
    assert grid.alphas[:-1] == SCHEDULE.sqrt_ab[grid.ts].tolist() and grid.alphas[-1] == 1.0
    assert grid.sigmas[:-1] == SCHEDULE.sqrt_1m_ab[grid.ts].tolist() and grid.sigmas[-1] == 0.0


def test_registry_names_each_sampler_with_its_options():
    assert list(SAMPLERS) == ["ddpm", "ddim", "dpmpp"]
    assert [SAMPLERS[n].options for n in SAMPLERS] == [(), ("eta",), ()]
    assert [SAMPLERS[n].stochastic for n in SAMPLERS] == [True, False, False]
    assert all(SAMPLERS[n].sampler_name == n for n in SAMPLERS)


# ---------------------------------------------------------------- the analytic check


@pytest.mark.parametrize(
    "sampler, steps, kwargs, std_tol",
    [
        (ddpm, T, {}, 0.015),
        (ddpm, T // 2, {}, 0.025),  # ancestral sampling on a coarse grid loses a little variance
        (ddim, T, {"eta": 1.0}, 0.015),
        (ddim, T // 2, {"eta": 1.0}, 0.025),
        (ddim, T, {"eta": 0.0}, 0.015),
        (ddim, 50, {"eta": 0.0}, 0.015),
        (dpmpp, 20, {}, 0.01),
        (dpmpp, 15, {}, 0.01),
    ],
)
def test_samplers_recover_the_data_distribution(sampler, steps, kwargs, std_tol):
    x = sample(sampler, steps, **kwargs)
    assert x.mean().item() == pytest.approx(MU, abs=0.015)
    assert x.std().item() == pytest.approx(S, abs=std_tol)


@pytest.mark.parametrize("sampler, steps, tol", [(ddim, T, 0.02), (dpmpp, 20, 0.02)])
def test_deterministic_samplers_follow_the_probability_flow_ode(sampler, steps, tol):
    x_T = start_noise()
    x = sampler(exact_eps, x_T, step_grid(SCHEDULE, steps), clip_x0=False)
    assert (x - pf_ode_map(x_T)).abs().max().item() < tol


def test_dpmpp_is_more_accurate_than_ddim_at_equal_steps():
    x_T = start_noise()
    ode = pf_ode_map(x_T)
    err = {f.__name__: (f(exact_eps, x_T, step_grid(SCHEDULE, 20), clip_x0=False) - ode).abs().max() for f in (ddim, dpmpp)}
    assert err["dpmpp"] < err["ddim"] / 4


def test_ddpm_with_all_steps_is_ddpm_eq_11():
    """x_{t-1} = (x_t - β_t / sqrt(1 - ᾱ_t) ε) / sqrt(α_t) + sqrt(β_t) z, z drawn for t > 0."""
    g = torch.Generator().manual_seed(3)
    x = start_noise()
    for t in range(T - 1, -1, -1):
        t_batch = torch.full((x.shape[0],), t)
        beta, alpha, ab = SCHEDULE.betas[t], SCHEDULE.alphas[t], SCHEDULE.alphas_cumprod[t]
        x = (x - beta / (1 - ab).sqrt() * exact_eps(x, t_batch)) / alpha.sqrt()
        if t > 0:
            x = x + beta.sqrt() * torch.randn(x.shape, generator=g)
    ours = ddpm(exact_eps, start_noise(), step_grid(SCHEDULE, T), generator=torch.Generator().manual_seed(3), clip_x0=False)
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=0)


def test_strided_ddpm_is_ddim_with_eta_one():
    torch.testing.assert_close(sample(ddpm, 40), sample(ddim, 40, eta=1.0), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- determinism, callback, clipping


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampling_is_deterministic_under_a_seed(name):
    sampler = SAMPLERS[name]
    assert torch.equal(sample(sampler, 10, seed=7), sample(sampler, 10, seed=7))


def test_stochastic_samplers_use_the_generator():
    assert not torch.equal(sample(ddpm, 10, seed=1), sample(ddpm, 10, seed=2))
    assert not torch.equal(sample(ddim, 10, seed=1, eta=0.5), sample(ddim, 10, seed=2, eta=0.5))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_sees_every_step_and_eps_fn_runs_once_per_step(name):
    infos, calls = [], []

    def eps_fn(x, t):
        calls.append(t)
        assert not torch.is_grad_enabled()
        return exact_eps(x, t)

    out = SAMPLERS[name](eps_fn, start_noise(), step_grid(SCHEDULE, 12), callback=infos.append)
    assert len(calls) == len(infos) == 12
    assert [info["i"] for info in infos] == list(range(12))
    assert [info["t"] for info in infos] == timesteps(T, 12).tolist()
    assert all(info.keys() == {"i", "t", "x", "x0"} for info in infos)
    assert calls == [info["t"] for info in infos]  # the step's timestep, as a Python int
    assert all(type(c) is int for c in calls)
    assert torch.equal(infos[-1]["x"], out) and torch.equal(infos[-1]["x0"], out)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_clip_keeps_predictions_in_range(name):
    """An eps_fn predicting ε = 0 implies x0 = x_t / α_t, far outside [-1, 1] at t = T-1."""
    infos = []
    out = SAMPLERS[name](lambda x, t: torch.zeros_like(x), start_noise(), step_grid(SCHEDULE, 5), callback=infos.append)
    assert all(info["x0"].abs().max() <= 1 for info in infos)
    assert out.abs().max() <= 1


def test_clip_recomputes_eps_from_the_clipped_x0():
    """The DDIM step must stay on x_s = α_s x0 + σ_s ε with ε = (x_t - α_t x0) / σ_t for the clipped x0."""
    infos = []
    x_T = start_noise()
    ddim(lambda x, t: torch.zeros_like(x), x_T, step_grid(SCHEDULE, 2), callback=infos.append)  # T-1 -> 0 -> clean
    x0 = infos[0]["x0"]
    (a_t, a_s), (s_t, s_s) = SCHEDULE.sqrt_ab[[T - 1, 0]].tolist(), SCHEDULE.sqrt_1m_ab[[T - 1, 0]].tolist()
    assert x0.abs().max() == 1
    torch.testing.assert_close(infos[0]["x"], a_s * x0 + s_s * (x_T - a_t * x0) / s_t)
