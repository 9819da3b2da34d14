"""The library side of ``mnistdiff ui``: live sampling, inpainting and morphing on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mnistdiff.errors import MnistdiffError
from mnistdiff.models import load
from mnistdiff.pipeline import slerp
from mnistdiff.samplers import SAMPLERS, step_grid


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return load(tiny_checkpoint, device="cpu")


def drawing() -> tuple[np.ndarray, np.ndarray]:
    """A partial '7': a bar and half a stroke; the mask is the drawn pixels."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[6:9, 7:21] = 255
    image[9:16, 17:20] = 200
    image[8, 7:21] = 90  # a soft edge: grey values are kept exactly too
    return image, image > 0


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_sample_live_reports_every_step_and_equals_sample(pipe, sampler):
    seen = []
    live = pipe.sample([3, 5], 3, sampler=sampler, steps=4, seed=4, batch_size=4,
                       on_step=lambda info: seen.append(info))
    plain = pipe.sample([3, 5], 3, sampler=sampler, steps=4, seed=4, batch_size=4)
    assert torch.equal(live.images, plain.images) and torch.equal(live.labels, plain.labels)
    assert [(i["batch"], i["i"]) for i in seen] == [(b, k) for b in range(2) for k in range(4)]
    assert {i["batches"] for i in seen} == {2} and {i["steps"] for i in seen} == {4}
    assert seen[0]["x"].shape == seen[0]["x0"].shape == (4, 1, 28, 28)
    assert seen[-1]["labels"].tolist() == [5, 5]


def test_a_callback_can_stop_live_sampling(pipe):
    def stop(info):
        if info["i"] == 1:
            raise BrokenPipeError("page closed")

    with pytest.raises(BrokenPipeError):
        pipe.sample([1], 2, steps=5, on_step=stop)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_the_samplers_continue_from_the_tensor_the_callback_sees(pipe, sampler):
    """The contract inpainting relies on: changing info["x"] in place changes the next step."""
    inputs = []

    def eps_fn(x, t):
        inputs.append(x.clone())
        return torch.zeros_like(x)

    def zero(info):
        info["x"].zero_()

    SAMPLERS[sampler](eps_fn, torch.randn(2, 1, 28, 28), step_grid(pipe.schedule, 4), callback=zero,
                      generator=torch.Generator().manual_seed(0))
    assert all(bool((x == 0).all()) for x in inputs[1:])


@pytest.mark.parametrize("sampler,resample", [("ddim", 1), ("ddpm", 1), ("dpmpp", 1),
                                              ("ddim", 3)])
def test_inpaint_keeps_the_known_pixels_exactly(pipe, sampler, resample):
    image, mask = drawing()
    steps = []
    out = pipe.inpaint(image, mask, [7, 1], 2, sampler=sampler, steps=6, seed=1,
                       resample=resample, on_step=lambda info: steps.append(info["i"]))
    assert out.images.shape == (4, 28, 28) and out.images.dtype == torch.uint8
    assert out.labels.tolist() == [7, 7, 1, 1]
    got = out.images.numpy()
    assert (got[:, mask] == image[mask]).all()  # the final image is the drawing where mask = 1
    assert not (got[:, ~mask] == 0).all()  # and the model filled in something elsewhere
    assert steps == list(range(6)) and out.nfe == 6 + 5 * (resample - 1)
    again = pipe.inpaint(torch.from_numpy(image), torch.from_numpy(mask), [7, 1], 2,
                         sampler=sampler, steps=6, seed=1, resample=resample)
    assert torch.equal(again.images, out.images)  # seeded: the same completions


def test_inpainting_steers_the_unknown_pixels(pipe):
    """Known pixels are injected at every step, not just pasted at the end: the unknown
    pixels differ from a plain sample with the same seed."""
    image, mask = drawing()
    out = pipe.inpaint(image, mask, 7, 1, sampler="ddim", steps=10, seed=3)
    plain = pipe.sample(7, 1, sampler="ddim", steps=10, seed=3)
    assert not np.array_equal(out.images.numpy()[:, ~mask], plain.images.numpy()[:, ~mask])


@pytest.mark.parametrize("image,mask,message", [
    (np.zeros((28, 28), np.uint8), np.zeros((28, 28)), "the mask keeps no pixels"),
    (np.zeros((28, 28), np.uint8), np.ones((28, 28)), "the mask keeps every pixel"),
    (np.zeros((20, 28), np.uint8), np.ones((20, 28)), "image: expected 28x28 pixels"),
    (np.full((28, 28), 0.5), np.eye(28), "image: expected integer pixels"),
    (np.full((28, 28), 300), np.eye(28), "image: expected integer pixels"),
])
def test_inpaint_rejects_bad_drawings_in_one_line(pipe, image, mask, message):
    with pytest.raises(MnistdiffError, match=message):
        pipe.inpaint(image, mask, 3)


def test_inpaint_validates_like_sample(pipe):
    image, mask = drawing()
    with pytest.raises(MnistdiffError, match="steps: got 0"):
        pipe.inpaint(image, mask, 3, steps=0)
    with pytest.raises(MnistdiffError, match="digit: got 10"):
        pipe.inpaint(image, mask, 10)
    with pytest.raises(MnistdiffError, match="resample: got 0"):
        pipe.inpaint(image, mask, 3, resample=0)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_interpolate_endpoints_are_plain_samples(pipe, sampler):
    morph = pipe.interpolate((3, 8), (1, 2), frames=5, sampler=sampler, steps=6)
    assert morph.images.shape == (5, 28, 28) and morph.alphas == [0, 0.25, 0.5, 0.75, 1]
    assert morph.digits == (3, 8) and morph.seeds == (1, 2) and morph.settings.sampler == sampler
    first = pipe.sample(3, 1, seed=1, sampler=sampler, steps=6).images[0]
    last = pipe.sample(8, 1, seed=2, sampler=sampler, steps=6).images[0]
    # the same images up to float rounding: a batch of 5 and a batch of 1 may take different
    # kernels (seen with one CPU thread), moving a pixel by one level
    assert (morph.images[0].int() - first.int()).abs().max() <= 1
    assert (morph.images[-1].int() - last.int()).abs().max() <= 1
    assert not torch.equal(morph.images[2], first)


def test_interpolate_between_two_seeds_of_one_digit(pipe):
    morph = pipe.interpolate(4, (5, 6), frames=3, steps=5)
    assert morph.digits == (4, 4) and morph.settings.sampler == "ddim"
    assert torch.equal(morph.images[0], pipe.sample(4, 1, seed=5, steps=5).images[0])
    assert torch.equal(morph.images[-1], pipe.sample(4, 1, seed=6, steps=5).images[0])
    two_digits_one_seed = pipe.interpolate((2, 9), 7, frames=3, steps=5)
    assert two_digits_one_seed.seeds == (7, 7)


@pytest.mark.parametrize("kwargs,message", [
    (dict(digits=3, seeds=1), "both ends are digit 3 with seed 1"),
    (dict(digits=(3, 4), sampler="ddpm"), "deterministic sampler"),
    (dict(digits=(3, 4, 5)), "one or two digits"),
    (dict(digits=(3, 4), frames=1), "frames: got 1"),
    (dict(digits=(3, 11)), "digit: got 11"),
    (dict(digits=(3, 4), seeds=(1, -1)), "seed: got -1"),
])
def test_interpolate_rejects_bad_requests(pipe, kwargs, message):
    with pytest.raises(MnistdiffError, match=message):
        pipe.interpolate(**kwargs)


def test_slerp_ends_exactly_and_keeps_the_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 1, 28, 28, generator=g), torch.randn(1, 1, 28, 28, generator=g)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)
    assert abs(float(mid.norm()) - float(a.norm() + b.norm()) / 2) < 0.05 * float(a.norm())
    assert torch.allclose(slerp(a, a, 0.3), a)


def test_interpolate_takes_settings(pipe):
    s = pipe.settings(sampler="dpmpp", steps=3, guidance=1.0, seed=2)
    a = pipe.interpolate((1, 7), seeds=(2, 5), frames=3, settings=s)
    b = pipe.interpolate((1, 7), seeds=(2, 5), frames=3, sampler="dpmpp", steps=3, guidance=1.0)
    assert torch.equal(a.images, b.images) and a.seeds == (2, 5)
    assert pipe.interpolate((3, 5), 4, frames=2, settings=s).seeds == (4, 4)
    assert pipe.interpolate((1, 7), frames=2, settings=s).seeds == (2, 2)
    four = pipe.interpolate((1, 7), frames=2, settings=s, steps=4)  # a value changes the settings
    assert four.settings.steps == 4 and four.settings.sampler == "dpmpp"
    with pytest.raises(MnistdiffError, match="eta must be 0"):
        pipe.interpolate((1, 7), frames=2, settings=pipe.settings(sampler="ddim", eta=0.5))
