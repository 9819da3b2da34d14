"""Diffusion maths against closed forms: schedules, q_sample moments, target conversions,
the training loss and classifier-free guidance."""

import dataclasses
import math

import pytest
import torch

from mnistdiff.diffusion import (
    OBJECTIVES,
    SCHEDULES,
    EpsPrediction,
    GuidedEps,
    VPrediction,
    get_objective,
    make_schedule,
    q_sample,
    training_loss,
    velocity,
)
from mnistdiff.samplers import denoise

NULL = 10


def per_pixel(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (x.ndim - 1)))


class RecordingModel(torch.nn.Module):
    """Returns `scale * x_t` (scale learnable, 0 by default) and records its inputs."""

    def __init__(self, scale: float = 0.0) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, y):
        self.calls.append((x.detach().clone(), t.clone(), y.clone()))
        return self.scale * x


class LabelModel:
    """A deterministic stand-in for the U-Net whose output depends on x, t and y."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, x, t, y):
        self.batch_sizes.append(x.shape[0])
        return per_pixel(0.1 * (y + 1).float(), x) * x + per_pixel(0.01 * t.float(), x)


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alphas_cumprod_is_the_cumulative_product(kind):
    s = make_schedule(kind, 300)
    betas = s.betas.double().tolist()
    expected = [math.prod(1 - b for b in betas[: i + 1]) for i in range(len(betas))]
    torch.testing.assert_close(s.alphas_cumprod.double(), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(s.alphas, 1 - s.betas)
    torch.testing.assert_close(s.sqrt_ab**2, s.alphas_cumprod)
    torch.testing.assert_close(s.sqrt_1m_ab**2, 1 - s.alphas_cumprod)
    assert (s.alphas_cumprod.diff() < 0).all()
    assert s.T == 300 and s.alphas_cumprod.dtype == torch.float32


def test_linear_endpoints_match_the_seed():
    s = make_schedule("linear", 500)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.alphas_cumprod[0].item() == pytest.approx(0.9999, abs=1e-7)
    # Π(1 - β) = 0.00635, not 0: the seed's last step is not pure noise (exp(-Σβ) would say 0.0066).
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.006353, abs=1e-5)


def test_cosine_follows_nichol_dhariwal_eq_17():
    T, offset = 500, 0.008
    s = make_schedule("cosine", T)
    f = [math.cos((t / T + offset) / (1 + offset) * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = torch.tensor([f[t + 1] / f[0] for t in range(T - 1)])  # index t is the paper's t + 1
    torch.testing.assert_close(s.alphas_cumprod[:-1], expected, rtol=1e-5, atol=1e-9)
    assert s.alphas_cumprod[0].item() == pytest.approx(0.99991, abs=1e-5)
    assert s.alphas_cumprod[-1].item() < 1e-7  # β clipped at 0.999 keeps it just above 0
    assert s.betas.max().item() == pytest.approx(0.999)


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="timesteps"):
        make_schedule("linear", 0)


def test_schedule_to_moves_every_tensor():
    for s in (make_schedule("linear", 10).to("meta"), make_schedule("linear", 10, device="meta")):
        assert {getattr(s, f.name).device.type for f in dataclasses.fields(s)} == {"meta"}
        assert s.T == 10 and s.device.type == "meta"


# ---------------------------------------------------------------- forward process and targets


def test_q_sample_moments():
    s = make_schedule("linear", 200)
    t = torch.tensor([0, 50, 120, 199])
    x0 = per_pixel(torch.tensor([0.7, -0.4, 1.0, 0.2]), torch.empty(4, 1, 1, 1)).expand(4, 1, 200, 200)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x_t = q_sample(s, x0, t, noise).flatten(1)
    ab = s.alphas_cumprod[t]
    torch.testing.assert_close(x_t.mean(1), ab.sqrt() * x0[:, 0, 0, 0], atol=0.01, rtol=0)
    torch.testing.assert_close(x_t.var(1), 1 - ab, rtol=0.03, atol=0)


def test_eps_x0_v_conversions_invert():
    s = make_schedule("linear", 200)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 1, 40, 100, 180, 199])
    x_t = q_sample(s, x0, t, eps)
    a, sigma = per_pixel(s.sqrt_ab[t], x0), per_pixel(s.sqrt_1m_ab[t], x0)

    for i, ti in enumerate(t.tolist()):  # the sampler's one network evaluation inverts q_sample
        x0_i, eps_i = denoise(lambda x, _: eps[i:i + 1], x_t[i:i + 1], ti, s.sqrt_ab[ti].item(),
                              s.sqrt_1m_ab[ti].item(), clip_x0=False)
        torch.testing.assert_close(x0_i, x0[i:i + 1], atol=1e-4, rtol=0)
        torch.testing.assert_close(eps_i, eps[i:i + 1], atol=1e-4, rtol=0)
    v = velocity(s, x0, t, eps)
    torch.testing.assert_close(v, a * eps - sigma * x0)
    torch.testing.assert_close(VPrediction().target(s, x0, t, eps), v)
    torch.testing.assert_close(OBJECTIVES["v"].eps(s, v, x_t, t), eps, atol=1e-5, rtol=0)
    torch.testing.assert_close(a * x_t - sigma * v, x0, atol=1e-5, rtol=0)  # x0 from v
    assert OBJECTIVES["eps"].eps(s, eps, x_t, t) is eps
    assert EpsPrediction().target(s, x0, t, eps) is eps
    with pytest.raises(ValueError, match="unknown objective 'x0'; expected one of eps, v"):
        get_objective("x0")


def test_registries_name_their_entries():
    assert list(OBJECTIVES) == ["eps", "v"] and list(SCHEDULES) == ["linear", "cosine"]
    assert all(get_objective(name).name == name for name in OBJECTIVES)
    assert get_objective(OBJECTIVES["v"]) is OBJECTIVES["v"]


# ---------------------------------------------------------------- training loss


def batch(n: int = 16):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)


def loss_with_seed(seed: int, **kwargs) -> torch.Tensor:
    x0, y = batch()
    model = RecordingModel(0.3)
    return training_loss(model, make_schedule("linear", 100), x0, y,
                         generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_training_loss_is_deterministic_under_a_generator(objective):
    a = loss_with_seed(0, objective=objective, label_dropout=0.2)
    assert a.ndim == 0 and torch.isfinite(a)
    assert torch.equal(a, loss_with_seed(0, objective=objective, label_dropout=0.2))
    assert not torch.equal(a, loss_with_seed(1, objective=objective, label_dropout=0.2))


@pytest.mark.parametrize("objective", ["eps", "v"])
@pytest.mark.parametrize("gamma", [0.0, 5.0])
def test_training_loss_matches_its_definition(objective, gamma):
    """With a model that predicts 0 the loss is the mean squared target, which we rebuild from
    the (x_t, t) the model saw: ε = (x_t - α x0) / σ and v = α ε - σ x0."""
    s = make_schedule("linear", 100)
    x0, y = batch()
    model = RecordingModel(0.0)
    loss = training_loss(model, s, x0, y, objective=objective, min_snr_gamma=gamma,
                         generator=torch.Generator().manual_seed(0))
    (x_t, t, seen_y), = model.calls
    a, sigma = per_pixel(s.sqrt_ab[t], x0), per_pixel(s.sqrt_1m_ab[t], x0)
    eps = (x_t - a * x0) / sigma
    target = eps if objective == "eps" else a * eps - sigma * x0
    per_sample = target.pow(2).mean((1, 2, 3))
    snr = s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t])
    if gamma:
        per_sample = per_sample * snr.clamp(max=gamma) / (snr if objective == "eps" else snr + 1)
    torch.testing.assert_close(loss, per_sample.mean(), rtol=1e-4, atol=0)
    assert torch.equal(seen_y, y)


def test_min_snr_weighting_changes_the_loss():
    assert not torch.allclose(loss_with_seed(0), loss_with_seed(0, min_snr_gamma=5.0))


def test_label_dropout_one_feeds_only_null_labels():
    x0, y = batch()
    model = RecordingModel()
    training_loss(model, make_schedule("linear", 100), x0, y, label_dropout=1.0, null_label=NULL)
    assert (model.calls[0][2] == NULL).all()


def test_training_loss_backpropagates():
    x0, y = batch()
    model = RecordingModel(0.5)
    training_loss(model, make_schedule("linear", 100), x0, y, objective="v").backward()
    assert model.scale.grad is not None and model.scale.grad != 0


# ---------------------------------------------------------------- classifier-free guidance


@pytest.fixture
def cfg_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=g)
    return make_schedule("linear", 100), x, torch.tensor([3, 70, 70, 99]), torch.tensor([0, 3, 7, 9])


@pytest.mark.parametrize("w, label", [(0.0, "null"), (1.0, "y")])
def test_guidance_zero_and_one_are_single_passes(cfg_inputs, w, label):
    s, x, t, y = cfg_inputs
    model = LabelModel()
    eps_fn = GuidedEps(model, s, y, w, null_label=NULL)
    labels = torch.full_like(y, NULL) if label == "null" else y
    torch.testing.assert_close(eps_fn(x, t), model(x, t, labels))
    assert model.batch_sizes == [4, 4] and eps_fn.nfe == 1


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_batched_guidance_equals_two_separate_passes(cfg_inputs, objective):
    s, x, t, y = cfg_inputs
    model, w = LabelModel(), 3.0
    eps_fn = GuidedEps(model, s, y, w, objective=objective, null_label=NULL)
    guided = eps_fn(x, t)
    eps_c = OBJECTIVES[objective].eps(s, model(x, t, y), x, t)
    eps_u = OBJECTIVES[objective].eps(s, model(x, t, torch.full_like(y, NULL)), x, t)
    torch.testing.assert_close(guided, eps_u + w * (eps_c - eps_u))
    assert model.batch_sizes[0] == 8  # one forward on the doubled batch
    eps_fn(x, t)
    assert eps_fn.nfe == 2


def test_guided_eps_broadcasts_a_scalar_timestep(cfg_inputs):
    s, x, _, y = cfg_inputs
    eps_fn = GuidedEps(LabelModel(), s, y, 2.0)
    torch.testing.assert_close(eps_fn(x, 42), eps_fn(x, torch.full((4,), 42)))


# ---------------------------------------------------------------- guidance interval (issue 10)


def test_guidance_interval_guides_only_inside(cfg_inputs):
    """At an int timestep inside [lo, hi] (as t / (T - 1)) the guided ε, outside the conditional ε
    from one pass on the plain batch; `passes` counts the batch passes, `nfe` the calls."""
    s, x, _, y = cfg_inputs  # T = 100: t / 99
    model, w = LabelModel(), 3.0
    plain = GuidedEps(model, s, y, w, null_label=NULL)
    cond = GuidedEps(model, s, y, 1.0, null_label=NULL)
    banded = GuidedEps(model, s, y, w, null_label=NULL, interval=(0.2, 0.6))
    for t in (99, 60, 59, 20, 19, 0):
        inside = 0.2 <= t / 99 <= 0.6
        assert banded.guides(t) == inside
        model.batch_sizes.clear()
        got = banded(x, t)
        assert model.batch_sizes == [8 if inside else 4]
        assert torch.equal(got, (plain if inside else cond)(x, t))
    assert banded.nfe == 6 and banded.passes == 2 + 2 + 1 + 1 + 1 + 1  # 59 and 20 inside
    assert plain.passes == 2 * plain.nfe and cond.passes == cond.nfe


def test_guidance_interval_with_per_image_timesteps(cfg_inputs):
    """A (B,) tensor t: both passes run, each image gets w or 1 by its own timestep."""
    s, x, t, y = cfg_inputs  # t = 3, 70, 70, 99: 3/99 and 99/99 outside [0.5, 0.8], 70/99 inside
    model, w = LabelModel(), 3.0
    got = GuidedEps(model, s, y, w, null_label=NULL, interval=(0.5, 0.8))(x, t)
    guided = GuidedEps(model, s, y, w, null_label=NULL)(x, t)
    cond = GuidedEps(model, s, y, 1.0, null_label=NULL)(x, t)
    inside = torch.tensor([False, True, True, False])
    torch.testing.assert_close(got[inside], guided[inside])
    torch.testing.assert_close(got[~inside], cond[~inside])


def test_the_default_interval_is_plain_guidance(cfg_inputs):
    s, x, t, y = cfg_inputs
    model = LabelModel()
    for tt in (t, 0, 57, 99):
        assert torch.equal(GuidedEps(model, s, y, 2.5, null_label=NULL)(x, tt),
                           GuidedEps(model, s, y, 2.5, null_label=NULL, interval=(0, 1))(x, tt))
