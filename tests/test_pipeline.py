"""The sampling pipeline: defaults, validation, determinism, trajectories, loading, summaries."""

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import mnistdiff
from mnistdiff import models, pipeline
from mnistdiff.checkpoint import load_checkpoint, save_checkpoint
from mnistdiff.config import load_config
from mnistdiff.data import to_uint8
from mnistdiff.errors import CheckpointError, MnistdiffError
from mnistdiff.models import load, summary
from mnistdiff.pipeline import Pipeline, frame_indices, resolve_device
from mnistdiff.samplers import SAMPLERS, step_grid
from mnistdiff.seeding import ImageGenerators, mix_seed
from mnistdiff.unet import ConditionalUNet, count_parameters

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    """An untrained tiny model: enough for shapes, validation and determinism."""
    cfg = load_config(TINY)  # ddim, 10 steps, guidance 2, T = 50
    torch.manual_seed(0)
    return Pipeline(ConditionalUNet(**dataclasses.asdict(cfg.model)), cfg, device="cpu")


def test_public_api_is_lazy():
    assert mnistdiff.load is models.load and mnistdiff.Pipeline is pipeline.Pipeline
    with pytest.raises(AttributeError):
        mnistdiff.no_such_name


def test_frame_indices_keep_both_ends_and_crowd_the_end():
    assert frame_indices(11, 11) == list(range(11))
    idx = frame_indices(501, 30)
    assert idx[0] == 0 and idx[-1] == 500 and len(idx) == 30
    gaps = [b - a for a, b in zip(idx, idx[1:])]
    assert min(gaps) >= 1 and gaps == sorted(gaps, reverse=True)
    assert frame_indices(21, 20)[-3:] == [18, 19, 20]  # nearly every state: still distinct
    with pytest.raises(ValueError):
        frame_indices(5, 6)


def test_devices():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu0", f"cuda:{torch.cuda.device_count()}"):
        with pytest.raises(MnistdiffError):
            resolve_device(bad)


def test_sample_shapes_labels_and_checkpoint_defaults(pipe):
    out = pipe.sample([3, 7], n=3, batch_size=4)
    assert out.images.shape == (6, 28, 28) and out.images.dtype == torch.uint8
    assert out.labels.tolist() == [3, 3, 3, 7, 7, 7] and out.labels.dtype == torch.int64
    assert out.nfe == 10  # the config's sample.steps
    assert pipe.sample(5, n=1, steps=4, sampler="dpmpp").nfe == 4


def test_sample_is_reproducible_under_a_seed(pipe):
    kw = dict(n=5, sampler="ddpm", steps=6, batch_size=4)  # ddpm: fresh noise at every step
    a, b = pipe.sample([1, 2], seed=3, **kw), pipe.sample([1, 2], seed=3, **kw)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, pipe.sample([1, 2], seed=4, **kw).images)


def test_each_image_is_seeded_by_its_index(pipe):
    """Image i draws from a generator seeded with seed * 1_000_003 + i (module docstring)."""
    s = pipe.settings(steps=3, sampler="ddpm")
    out = pipe.sample([0, 1, 2], n=2, settings=s, batch_size=4)
    grid = step_grid(pipe.schedule, 3)
    for i in range(6):
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + i)
        assert torch.equal(ImageGenerators([mix_seed(s.seed, i)]).randn((1, 1, 28, 28)),
                           torch.randn((1, 1, 28, 28), generator=g))
        gens = ImageGenerators([mix_seed(s.seed, i)])
        x0, *_ = pipe._denoise(pipe._noise(gens), out.labels[i:i + 1], s, gens, grid)
        assert (to_uint8(x0).squeeze(1).int() - out.images[i:i + 1].int()).abs().max() <= 1


class PixelModel(torch.nn.Module):
    """A 'network' that treats every image on its own, bit for bit whatever the batch (the
    U-Net's CPU kernels differ in the last float bits between batch sizes)."""

    def forward(self, x, t, y):
        return torch.tanh(0.7 * x + 0.01 * t.view(-1, 1, 1, 1) + 0.05 * y.view(-1, 1, 1, 1))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_the_batch_size_does_not_change_the_images(sampler):
    """Per-image noise: the same seed gives the same digits whatever --batch-size."""
    cfg = load_config(TINY)
    pipe = Pipeline(PixelModel(), cfg, device="cpu")
    s = pipe.settings(sampler=sampler, steps=4, seed=11, eta=0.5 if sampler == "ddim" else None)
    runs = [pipe.sample([2, 5, 8], n=5, settings=s, batch_size=b) for b in (1, 7, 64)]
    assert all(torch.equal(r.images, runs[0].images) for r in runs[1:])
    assert all(torch.equal(r.labels, runs[0].labels) for r in runs[1:])
    assert torch.equal(pipe.sample([2, 5, 8], n=5, settings=s, batch_size=7, on_step=lambda info: None).images,
                       runs[0].images)
    assert torch.equal(pipe.sample([5], n=3, settings=s, batch_size=2).images,
                       pipe.sample([5, 2], n=3, settings=s, batch_size=4).images[:3])


def test_the_batch_size_barely_changes_the_unets_images(pipe):
    """The same with the real network: only last-bit float differences remain."""
    s = pipe.settings(sampler="dpmpp", steps=4, seed=11)
    a, b = (pipe.sample([2, 5, 8], n=5, settings=s, batch_size=k).images.int() for k in (1, 64))
    assert (a - b).abs().gt(1).float().mean() < 0.01


def test_settings_are_given_once_or_as_values(pipe):
    s = pipe.settings(sampler="dpmpp", steps=3, seed=4)
    assert torch.equal(pipe.sample([1], 2, settings=s).images,
                       pipe.sample([1], 2, sampler="dpmpp", steps=3, seed=4).images)
    # values given with settings= change those settings only
    assert torch.equal(pipe.sample([1], 2, settings=s, steps=5).images,
                       pipe.sample([1], 2, sampler="dpmpp", steps=5, seed=4).images)
    with pytest.raises(TypeError, match="Settings"):
        pipe.trajectory([1], settings={"steps": 3})
    with pytest.raises(TypeError, match="unknown sampling setting 'stpes'"):
        pipe.sample([1], 2, stpes=3)


@pytest.mark.parametrize("method", ["sample", "batches", "trajectory", "inpaint", "interpolate"])
def test_every_method_takes_every_setting_by_name(pipe, method):
    """spacing= was a TypeError for Pipeline.sample while the CLI had --spacing."""
    values = dict(sampler="ddim", steps=4, guidance=1.5, eta=0.0, seed=3,
                  guidance_interval=(0.2, 0.9), spacing="karras")
    image = np.zeros((28, 28), np.uint8)
    image[5:9] = 255
    calls = {"sample": lambda **kw: pipe.sample([2], 1, **kw).images,
             "batches": lambda **kw: next(pipe.batches([2], 1, **kw)).images,
             "trajectory": lambda **kw: pipe.trajectory([2], **kw).frames[-1],
             "inpaint": lambda **kw: pipe.inpaint(image, image > 0, [2], 1, **kw).images,
             "interpolate": lambda **kw: pipe.interpolate((2, 5), (3, 4), frames=2, **kw).images[:1]}
    by_name = calls[method](**values)
    assert torch.equal(by_name, calls[method](settings=pipe.settings(**values)))
    assert not torch.equal(by_name, calls[method](**{**values, "spacing": "linspace"}))


def test_trajectory_runs_from_noise_to_the_sample(pipe):
    frames, captions = pipe.trajectory([0, 3, 7], frames=6, seed=2)
    assert frames.shape == (6, 3, 28, 28) and frames.dtype == torch.uint8
    noise = torch.cat([torch.randn((1, 1, 28, 28), generator=torch.Generator().manual_seed(
        2 * 1_000_003 + j)) for j in range(3)])  # image j of the call: its own generator
    assert torch.equal(frames[0], to_uint8(noise).squeeze(1))
    assert torch.equal(frames[-1], pipe.sample([0, 3, 7], n=1, seed=2).images)
    assert captions[0] == "step 0/10  t=49" and captions[-1] == "step 10/10  clean"
    assert len(pipe.trajectory([4], steps=3).frames) == 4  # default: every state when few


@pytest.mark.parametrize("kwargs, message", [
    (dict(digits=[10]), "digit: got 10"),
    (dict(digits=[-1]), "digit: got -1"),
    (dict(digits=[]), "no digits"),
    (dict(steps=0), "steps: got 0"),
    (dict(steps=51), "steps: got 51"),
    (dict(sampler="euler"), "unknown sampler 'euler'"),
    (dict(guidance=-1.0), "guidance"),
    (dict(eta=1.5), "eta"),
    (dict(sampler="dpmpp", eta=0.5), r"eta: only the ddim sampler uses it \(dpmpp is determ"),
    (dict(sampler="ddpm", eta=0.3), r"eta: only the ddim sampler uses it \(ddpm is always"),
    (dict(seed=-1), "seed"),
    (dict(n=0), "n: got 0"),
    (dict(batch_size=0), "batch_size"),
    (dict(frames=12), "frames: got 12"),  # 10 steps: the noise and 10 more states
])
def test_bad_requests_fail_before_any_work(pipe, monkeypatch, kwargs, message):
    def no_work(*args, **kw):
        raise AssertionError("sampled before validating")

    monkeypatch.setattr(pipe, "_denoise", no_work)
    common = {k: v for k, v in kwargs.items() if k not in ("n", "batch_size", "frames")}
    common.setdefault("digits", [1])
    if "frames" not in kwargs:
        with pytest.raises(MnistdiffError, match=message):
            pipe.sample(**common, n=kwargs.get("n", 2), batch_size=kwargs.get("batch_size"))
    if "n" not in kwargs and "batch_size" not in kwargs:
        with pytest.raises(MnistdiffError, match=message):
            pipe.trajectory(**common, frames=kwargs.get("frames"))


def test_load_trained_checkpoint(tiny_checkpoint):
    pipe = load(tiny_checkpoint, device="cpu")
    assert pipe.info["step"] == 20 and pipe.info["ema"] is True
    assert pipe.classes == tuple("0123456789")
    raw = load(tiny_checkpoint.parent.parent, device="cpu", ema=False)  # the run folder works too
    assert raw.info["ema"] is False
    assert not torch.equal(pipe.sample([7], n=2).images, raw.sample([7], n=2).images)


def test_load_refuses_broken_checkpoints(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load(tmp_path / "missing.pt", device="cpu")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError):
        load(truncated, device="cpu")
    other = load_checkpoint(tiny_checkpoint)
    other["config"]["model"]["channels"] = [16, 32]  # weights of [8, 16] under another architecture
    save_checkpoint(tmp_path / "other.pt", other)
    with pytest.raises(CheckpointError, match="do not fit its model config"):
        load(tmp_path / "other.pt", device="cpu")


def test_summary_counts_match_the_model(pipe):
    s = summary(model=pipe.model, config=pipe.config)
    total = count_parameters(pipe.model)
    assert s["parameters"] == s["trainable_parameters"] == total
    assert sum(layer["parameters"] for layer in s["layers"] if layer["depth"] == 1) == total
    assert s["size_mb"] == pytest.approx(4 * total / 1e6)
    # The stem conv alone: 28 * 28 outputs x 8 channels x (3 * 3 taps + bias) multiply-adds.
    assert s["mult_adds_per_image"] > 28 * 28 * 8 * 10
    assert s["sampler_defaults"] == {"sampler": "ddim", "steps": 10, "spacing": "linspace",
                                   "guidance": 2.0, "guidance_interval": [0.0, 1.0]}
    assert s["distilled_from"] is None
    assert s["checkpoint"] is None


# ---------------------------------------------------------------- guidance interval (issue 10)


def _before_issue_10(pipe, digits, n, s):
    """The images as sampled before the guidance interval existed: the old GuidedEps (both
    passes at every step, one doubled forward, t a (B,) tensor) on the same noise and grid."""
    y = torch.tensor(digits).repeat_interleave(n)
    null = torch.full_like(y, pipe.num_classes)

    def eps_fn(x, t):
        t = torch.full((x.shape[0],), t, dtype=torch.long)
        out_c, out_u = pipe._forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
        return pipe.objective.eps(pipe.schedule, out_u + s.guidance * (out_c - out_u), x, t)

    gens = pipe._generators(s.seed, 0, len(y))
    fn = SAMPLERS[s.sampler]
    with torch.inference_mode():
        x0 = fn(eps_fn, pipe._noise(gens), step_grid(pipe.schedule, s.steps), generator=gens,
                clip_x0=pipe.config.sample.clip_x0, **{k: getattr(s, k) for k in fn.options})
    return to_uint8(x0).squeeze(1)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_the_default_interval_gives_the_same_images_as_before(pipe, sampler):
    s = pipe.settings(sampler=sampler, steps=6, seed=5)
    assert s.guidance_interval == (0.0, 1.0) and s.guidance == 2.0
    out = pipe.sample([1, 4, 9], n=2, settings=s, batch_size=6)
    assert torch.equal(out.images, _before_issue_10(pipe, [1, 4, 9], 2, s))
    assert out.nfe == 6 and out.passes == 12


def test_guidance_interval_ends(pipe):
    """T = 50, 10 steps at t = 49, 44, 38, 33, 27, 22, 16, 11, 5, 0 (t / 49 = 1 ... 0)."""
    kw = dict(digits=[0, 3, 7], n=2, sampler="dpmpp", steps=10, seed=2)
    plain = pipe.sample(**kw)
    assert (plain.nfe, plain.passes) == (10, 20)
    every = pipe.sample(**kw, guidance_interval=(0.0, 1.0))
    assert torch.equal(every.images, plain.images) and every.passes == 20
    # [0.5, 0.5] holds t = 24.5, no step: a single conditional pass everywhere = guidance 1
    none = pipe.sample(**kw, guidance_interval=(0.5, 0.5))
    cond = pipe.sample(**kw, guidance=1.0)
    assert torch.equal(none.images, cond.images) and (none.nfe, none.passes) == (10, 10)
    some = pipe.sample(**kw, guidance_interval=(0.3, 0.7))  # t = 33, 27, 22, 16: 4 guided steps
    assert (some.nfe, some.passes) == (10, 14)
    assert not torch.equal(some.images, plain.images) and not torch.equal(some.images, cond.images)
    s = pipe.settings(sampler="dpmpp", steps=10, seed=2, guidance_interval=[0.3, 0.7])
    assert s.guidance_interval == (0.3, 0.7)
    assert torch.equal(pipe.sample([0, 3, 7], 2, settings=s).images, some.images)
    traj = pipe.trajectory([0, 3, 7], settings=s, frames=11)
    assert torch.equal(traj.frames[-1], pipe.sample([0, 3, 7], 1, settings=s).images)


@pytest.mark.parametrize("bad", [(0.5,), (0.1, 0.5, 0.9), (0.8, 0.2), (-0.1, 1.0), (0.0, 1.5),
                                 (0.0, float("nan")), "0,1", None.__class__, (True, 1.0)])
def test_bad_guidance_intervals_are_refused(pipe, bad):
    with pytest.raises(MnistdiffError, match="guidance_interval: got .* must be two numbers lo, hi "
                                             "with 0 <= lo <= hi <= 1"):
        pipe.settings(guidance_interval=bad)


# ---------------------------------------------------------------- fast paths (issue 10)


def _same_up_to_rounding(a: torch.Tensor, b: torch.Tensor) -> None:
    """uint8 images equal up to float rounding: a pixel may move by one level, rarely."""
    d = (a.int() - b.int()).abs()
    assert d.max() <= 1 and d.gt(0).float().mean() < 0.01


def test_channels_last_gives_the_plain_images(pipe):
    fast = Pipeline(copy.deepcopy(pipe.model), pipe.config, device="cpu", channels_last=True)
    plain = Pipeline(copy.deepcopy(pipe.model), pipe.config, device="cpu", channels_last=False)
    assert fast.channels_last and not plain.channels_last
    assert pipe.channels_last  # the default on a CPU
    conv = fast._network.encoder[0][0].conv1.weight  # (8, 8, 3, 3)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert fast.model.encoder[0][0].conv1.weight.is_contiguous()  # the caller's model: untouched
    assert plain._network is plain.model
    for kw in (dict(sampler="dpmpp", steps=6), dict(sampler="ddpm", steps=5),
               dict(sampler="ddim", steps=4, guidance_interval=(0.3, 0.7))):
        a = fast.sample([0, 5, 9], n=3, seed=1, **kw)
        b = plain.sample([0, 5, 9], n=3, seed=1, **kw)
        _same_up_to_rounding(a.images, b.images)
        assert (a.nfe, a.passes) == (b.nfe, b.passes)
    x, t, y = torch.randn(4, 1, 28, 28), torch.full((4,), 7), torch.arange(4)
    with torch.inference_mode():
        torch.testing.assert_close(fast._forward(x, t, y), plain._forward(x, t, y),
                                   rtol=1e-4, atol=1e-5)
        assert fast._forward(x, t, y).is_contiguous()


@pytest.mark.slow
def test_compiled_sampling_gives_the_plain_images(pipe):
    """torch.compile of the network (inductor: fused kernels); a minute or two on a CPU."""
    fast = Pipeline(copy.deepcopy(pipe.model), pipe.config, device="cpu", compile=True,
                    channels_last=True)
    kw = dict(sampler="dpmpp", steps=4, seed=3)
    _same_up_to_rounding(fast.sample([2, 7], n=2, **kw).images, pipe.sample([2, 7], n=2, **kw).images)
