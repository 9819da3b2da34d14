"""ConditionalUNet: shapes, conditioning wiring, dtypes/memory formats and argument checks."""

import pytest
import torch

from mnistdiff.unet import ConditionalUNet, SinusoidalEmbedding, count_parameters

NUM_CLASSES = 10
NULL = NUM_CLASSES


def tiny(**kwargs) -> ConditionalUNet:
    """A small, seeded model in eval mode (so dropout, if any, is off)."""
    torch.manual_seed(0)
    kwargs = {"channels": (8, 16), "num_res_blocks": 1, "emb_dim": 16, **kwargs}
    return ConditionalUNet(**kwargs).eval()


def batch(b: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 28, 28, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    y = torch.randint(0, NUM_CLASSES + 1, (b,), generator=g)
    return x, t, y


@pytest.mark.parametrize("channels", [(8, 16), (8, 16, 32)])
@pytest.mark.parametrize("b", [1, 3])
def test_output_shape(channels, b):
    model = tiny(channels=channels, num_res_blocks=2)
    x, t, y = batch(b)
    with torch.no_grad():
        out = model(x, t, y)
    assert out.shape == (b, 1, 28, 28)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_seed_layout_parameter_count():
    model = ConditionalUNet(channels=(64, 128, 256), num_res_blocks=1, emb_dim=128)
    n = count_parameters(model)
    print(f"seed layout (64, 128, 256), 1 res block/level, emb 128: {n:,} parameters")
    assert n == 7_610_561


def test_sinusoidal_embedding_closed_form():
    emb = SinusoidalEmbedding(8)(torch.tensor([0, 3]))  # half = 4, freqs = 10000^(-i/4)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    args = torch.tensor([3.0 * 10000.0 ** (-i / 4) for i in range(4)])
    torch.testing.assert_close(emb[1], torch.cat([args.sin(), args.cos()]))


def test_gradient_reaches_used_label_rows_only():
    model = tiny().train()
    x, t, _ = batch(4)
    y = torch.tensor([2, 7, NULL, 2])
    model(x, t, y).square().mean().backward()
    grad = model.label_emb.weight.grad  # (num_classes + 1, emb_dim)
    used = torch.zeros(NUM_CLASSES + 1, dtype=torch.bool)
    used[[2, 7, NULL]] = True
    assert (grad[used].abs().sum(dim=1) > 0).all()  # includes the null-label row
    assert (grad[~used] == 0).all()


def test_label_changes_output_and_model_is_deterministic():
    model = tiny()
    x, t, _ = batch(1)
    x, t = x.repeat(NUM_CLASSES + 1, 1, 1, 1), t.repeat(NUM_CLASSES + 1)
    y = torch.arange(NUM_CLASSES + 1)
    with torch.no_grad():
        out = model(x, t, y)
        again = model(x, t, y)
    assert torch.equal(out, again)
    flat = out.flatten(1)
    distances = torch.cdist(flat, flat)  # (11, 11): every label pair gives a different output
    assert (distances + torch.eye(NUM_CLASSES + 1) > 1e-4).all()


def test_float_timesteps_match_integer_timesteps():
    model = tiny()
    x, t, y = batch(3)
    with torch.no_grad():
        from_int = model(x, t, y)
        from_float = model(x, t.float(), y)
        fractional = model(x, t.float() + 0.5, y)
    torch.testing.assert_close(from_float, from_int)
    assert not torch.allclose(fractional, from_int)


def test_channels_last_matches_contiguous():
    model = tiny(channels=(8, 16, 32), attention=True)
    x, t, y = batch(3)
    with torch.no_grad():
        expected = model(x, t, y)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last), t, y)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_close_to_fp32():
    model = tiny(channels=(8, 16, 32), attention=True)
    x, t, y = batch(3)
    with torch.no_grad():
        expected = model(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, y)
    assert out.dtype == torch.bfloat16
    relative_error = (out.float() - expected).norm() / expected.norm()
    assert relative_error < 0.05  # bf16 keeps ~3 significant digits per op


def test_attention_runs_and_learns():
    model = tiny(channels=(8, 16, 32), attention=True).train()
    x, t, y = batch(2)
    out = model(x, t, y)
    assert out.shape == (2, 1, 28, 28)
    out.square().mean().backward()
    for name, p in model.mid_attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_group_norm_groups_divide_channels():
    model = tiny(channels=(12, 20), groups=8)  # gcd gives 4 groups for both
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels % m.num_groups == 0 for m in norms)
    assert {m.num_groups for m in norms} <= {4, 8}  # 8 for the 32- and 40-channel concatenations
    with torch.no_grad():
        assert model(*batch(2)).shape == (2, 1, 28, 28)


def test_too_many_levels_for_28x28_raises():
    with pytest.raises(ValueError, match="at most 3 levels"):
        ConditionalUNet(channels=(8, 16, 32, 64), emb_dim=16)


def test_input_size_not_divisible_raises():
    model = tiny(channels=(8, 16, 32))
    _, t, y = batch(1)
    with pytest.raises(ValueError, match="not divisible by 4"):
        model(torch.randn(1, 1, 30, 30), t, y)


@pytest.mark.parametrize(
    "kwargs",
    [{"channels": ()}, {"channels": (8, 0)}, {"emb_dim": 15}, {"dropout": 1.0}, {"num_res_blocks": 0}],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        ConditionalUNet(**{"channels": (8, 16), "emb_dim": 16, **kwargs})


def test_count_parameters_counts_every_scalar():
    layer = torch.nn.Linear(3, 4).requires_grad_(False)
    assert count_parameters(layer) == 3 * 4 + 4


@pytest.mark.parametrize("in_channels", [1, 3])
def test_patch_size_2_keeps_the_image_shape(in_channels):
    model = tiny(patch_size=2, in_channels=in_channels)
    assert model.stem.in_channels == 4 * in_channels        # 2x2 patches become channels
    assert model.head[-1].out_channels == 4 * in_channels
    x = torch.randn(3, in_channels, 28, 28)
    with torch.no_grad():
        out = model(x, torch.tensor([0, 5, 9]), torch.tensor([1, 2, NULL]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_patch_size_2_sees_every_pixel_of_its_patch():
    # pixel unshuffle in, pixel shuffle out: a change in any pixel of a 2x2 patch reaches the
    # output at that patch (and the image is not just subsampled)
    model = tiny(patch_size=2)
    x, t, y = batch(1)
    with torch.no_grad():
        base = model(x, t, y)
        for dy, dx in [(0, 0), (0, 1), (1, 0), (1, 1)]:
            x2 = x.clone()
            x2[..., 10 + dy, 10 + dx] += 1.0
            assert (model(x2, t, y) - base)[..., 10:12, 10:12].abs().sum() > 0


def test_patch_size_limits_the_levels():
    with pytest.raises(ValueError, match="at most 2 levels with patch_size 2"):
        ConditionalUNet(channels=(8, 16, 32), emb_dim=16, patch_size=2)
    with pytest.raises(ValueError, match="patch_size must divide 28"):
        ConditionalUNet(channels=(8,), emb_dim=16, patch_size=3)


@pytest.mark.parametrize("kwargs", [
    {},                                                                 # the defaults
    {"channels": [64, 128, 256], "num_res_blocks": 1, "emb_dim": 128},  # the seed layout
    {"channels": [8], "num_res_blocks": 1},
    {"channels": [8, 16], "num_res_blocks": 2, "attention": True},
    {"channels": [6, 12, 20], "num_res_blocks": 3, "attention": True, "groups": 4},
    {"channels": [16, 16, 16], "num_res_blocks": 3, "emb_dim": 34, "num_classes": 13},
    {"channels": [32, 64], "patch_size": 2, "attention": True},         # 14x14 and 7x7 maps
    {"channels": [32, 64], "patch_size": 2, "in_channels": 3, "num_res_blocks": 2},
    {"channels": [24], "patch_size": 4, "num_res_blocks": 1, "in_channels": 2},
    {"channels": [48, 96, 192], "num_res_blocks": 1, "emb_dim": 192, "attention": True},
])
def test_estimate_parameters_matches_the_built_model_exactly(kwargs):
    """estimate_parameters is the closed form config validation uses to refuse huge models
    before building them; it must count exactly what build_model makes."""
    from mnistdiff.config import ModelConfig
    from mnistdiff.unet import build_model, estimate_parameters

    cfg = ModelConfig(**kwargs)
    assert estimate_parameters(cfg) == count_parameters(build_model(cfg))
