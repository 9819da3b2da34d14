"""Evaluation: Fréchet distance in closed form, k-NN precision/recall, the bundled classifier on
real MNIST, the samples NPZ format and the JSON report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mnistdiff.evaluation as ev
from mnistdiff import npz
from mnistdiff.data import load_split
from mnistdiff.errors import MnistdiffError


def random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d)


# ----------------------------------------------------------------------------- Fréchet distance

def test_frechet_of_a_gaussian_with_itself_is_zero():
    rng = np.random.default_rng(0)
    mu, cov = rng.normal(size=16), random_cov(rng, 16)
    assert ev.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)


def test_frechet_with_equal_covariances_is_the_squared_mean_distance():
    rng = np.random.default_rng(1)
    mu1, mu2, cov = rng.normal(size=16), rng.normal(size=16), random_cov(rng, 16)
    assert ev.frechet_distance(mu1, cov, mu2, cov) == pytest.approx(np.sum((mu1 - mu2) ** 2))


@pytest.mark.parametrize("rotate", [False, True])
def test_frechet_of_commuting_covariances_has_the_closed_form(rotate):
    """C1 = Q diag(a) Q^T, C2 = Q diag(b) Q^T  =>  d² = |Δμ|² + sum (sqrt(a) - sqrt(b))²."""
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    q = np.linalg.qr(rng.normal(size=(8, 8)))[0] if rotate else np.eye(8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    d = ev.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert d == pytest.approx(expected, rel=1e-9)


def test_frechet_is_symmetric_for_general_covariances():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    c1, c2 = random_cov(rng, 12), random_cov(rng, 12)
    d12, d21 = ev.frechet_distance(mu1, c1, mu2, c2), ev.frechet_distance(mu2, c2, mu1, c1)
    assert d12 == pytest.approx(d21) and d12 > 0


# --------------------------------------------------------------------------------- precision/recall

def test_precision_recall_counts_points_inside_the_knn_balls():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])  # k=1: every real ball has radius 1
    fake = np.array([[0.5], [10.0]])               # k=1: both fake balls have radius 9.5
    precision, recall = ev.precision_recall(real, fake, k=1, chunk=3)
    assert precision == 0.5   # 0.5 lies within 1 of a real point, 10 does not
    assert recall == 1.0      # every real point lies within 9.5 of 0.5


def test_precision_recall_of_a_set_with_itself_is_one_and_of_far_sets_zero():
    x = np.random.default_rng(4).normal(size=(300, 8))
    assert ev.precision_recall(x, x, k=3) == (1.0, 1.0)
    assert ev.precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)


def test_precomputed_real_radii_give_the_same_result():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(200, 8)), rng.normal(0.3, 1.0, size=(150, 8))
    radii = ev.knn_radii(real, k=3)
    with_radii = ev.precision_recall(real, fake, k=3, real_radii=radii)
    assert with_radii == ev.precision_recall(real, fake, k=3)


def test_precision_recall_needs_more_than_k_points():
    with pytest.raises(MnistdiffError, match="k=3"):
        ev.precision_recall(np.zeros((3, 4)), np.zeros((10, 4)), k=3)


# --------------------------------------------------------------------------------- bundled assets

def test_classifier_loads_with_the_recorded_shape_and_accepts_both_image_layouts():
    clf = ev.load_classifier("mnist")
    info = ev.classifier_info("mnist")
    assert sum(p.numel() for p in clf.parameters()) == info["params"]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8, generator=g)
    feats, preds = ev.run_classifier(clf, images, batch_size=4)
    assert feats.shape == (6, info["feature_dim"]) and feats.dtype == np.float64
    assert preds.shape == (6,) and preds.dtype == np.int64
    feats4, preds4 = ev.run_classifier(clf, images.unsqueeze(1))
    np.testing.assert_allclose(feats4, feats, rtol=1e-5, atol=1e-6)
    with pytest.raises(MnistdiffError, match="uint8"):
        ev.run_classifier(clf, images.float())


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_reference_stats_are_a_valid_gaussian(dataset):
    mu, cov = ev.reference_stats(dataset)
    d = ev.classifier_info(dataset)["feature_dim"]
    assert mu.shape == (d,) and cov.shape == (d, d) and cov.dtype == np.float64
    np.testing.assert_allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > 0


@pytest.fixture()
def assets_copy(tmp_path, monkeypatch):
    """The bundled assets copied into tmp_path, which the module then reads instead."""
    shutil.copytree(ev.ASSETS, tmp_path, dirs_exist_ok=True)
    monkeypatch.setattr(ev, "ASSETS", tmp_path)
    return tmp_path


@pytest.mark.parametrize("name,load", [("mnist_classifier.pt", ev.load_classifier),
                                       ("mnist_reference.npz", ev.reference_stats)])
def test_checksum_mismatch_is_a_clear_error(assets_copy, name, load):
    path = assets_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(MnistdiffError, match="does not match the SHA-256"):
        load("mnist")


def test_missing_manifest_or_dataset_is_a_clear_error(assets_copy):
    with pytest.raises(MnistdiffError, match="no bundled classifier for 'kmnist'"):
        ev.classifier_info("kmnist")
    (assets_copy / ev.MANIFEST).unlink()
    with pytest.raises(MnistdiffError, match="cannot read the bundled classifiers' manifest"):
        ev.load_classifier("mnist")


# --------------------------------------------------------------------------------- real MNIST

@pytest.fixture(scope="module")
def reference(mnist_dir) -> ev.Reference:
    return ev.load_reference("mnist", data_root=mnist_dir, download=False)


@pytest.fixture(scope="module")
def test_digits(mnist_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 500 test digits: images (500, 1, 28, 28) uint8, labels (500,)."""
    test = load_split(mnist_dir, "test")
    return test.images[:500], test.labels[:500]


def fid(reference: ev.Reference, images: torch.Tensor) -> float:
    feats, _ = ev.run_classifier(reference.classifier, images)
    return ev.frechet_distance(*ev.gaussian_stats(feats), reference.mu, reference.cov)


def test_classifier_accuracy_on_the_test_set_equals_the_recorded_value(reference):
    assert round(reference.accuracy, 4) == ev.classifier_info("mnist")["test_accuracy"]
    assert reference.accuracy >= 0.994


def test_bundled_stats_are_those_of_the_test_features(reference):
    mu, cov = ev.gaussian_stats(reference.features)
    np.testing.assert_allclose(mu, reference.mu, atol=1e-5)
    np.testing.assert_allclose(cov, reference.cov, atol=1e-5)
    assert ev.frechet_distance(mu, cov, reference.mu, reference.cov) < 1e-6


def test_fid_grows_with_the_noise_level(reference, test_digits):
    images = test_digits[0].float()
    g = torch.Generator().manual_seed(0)
    fids = [fid(reference, (images + sigma * torch.randn(images.shape, generator=g))
                .clamp(0, 255).round().to(torch.uint8))
            for sigma in (0.0, 25.0, 50.0, 100.0)]
    assert fids == sorted(fids) and fids[-1] > 10 * fids[0], fids


def test_fid_grows_with_blur(reference, test_digits):
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).view(1, 1, 3, 3)
    images, fids = test_digits[0].float(), []
    for _ in range(3):  # no blur, blurred once, blurred twice
        fids.append(fid(reference, images.round().to(torch.uint8)))
        images = F.conv2d(images, kernel, padding=1)
    assert fids == sorted(fids) and fids[-1] > 5 * fids[0], fids


def test_real_floor_is_small_with_high_precision_and_recall(reference):
    floor = ev.real_floor(reference, n=2000, seed=0)
    assert floor["n"] == 2000 and floor["accuracy"] > 0.99
    assert [c["n"] for c in floor["per_class"]] == [200] * 10  # class-balanced, like samples
    assert floor["fid"] < 1.0
    assert floor["precision"] > 0.6 and floor["recall"] > 0.6


def test_real_floor_matches_the_class_histogram_of_the_samples(reference):
    labels = torch.tensor([3] * 30 + [5] * 10)
    floor = ev.real_floor(reference, n=40, labels=labels)
    assert [c["n"] for c in floor["per_class"]] == [0, 0, 0, 30, 0, 10, 0, 0, 0, 0]
    assert [c["n"] for c in ev.real_floor(reference, n=23)["per_class"]] == [3, 3, 3] + [2] * 7


def test_balanced_indices_are_distinct_seeded_and_of_the_right_classes():
    labels = torch.arange(100) % 4
    idx = ev.balanced_indices(labels, [5, 0, 2, 7], seed=3)
    assert labels[idx].tolist() == [0] * 5 + [2] * 2 + [3] * 7
    assert len(set(idx.tolist())) == 14
    assert torch.equal(idx, ev.balanced_indices(labels, [5, 0, 2, 7], seed=3))
    with pytest.raises(MnistdiffError, match="asked for 26 images of class 1"):
        ev.balanced_indices(labels, [0, 26], seed=0)


def test_classification_accuracy_score_of_real_and_of_scrambled_labels(reference, mnist_dir):
    """CAS trains on the given images: real digits teach a good classifier, the same digits
    with shuffled labels teach nothing (chance level), and the real counterpart is reported."""
    train = load_split(mnist_dir, "train")
    idx = ev.balanced_indices(train.labels, [50] * 10, seed=1)
    images, labels = train.images[idx], train.labels[idx]
    good = ev.classification_accuracy_score(images, labels, reference, epochs=3, batch_size=20)
    assert good["n"] == 500 and good["epochs"] == 3
    assert good["generated"] > 0.75 and good["real"] > 0.75
    scrambled = labels[torch.randperm(500, generator=torch.Generator().manual_seed(0))]
    bad = ev.classification_accuracy_score(images, scrambled, reference, epochs=3, batch_size=20)
    assert bad["generated"] < 0.3 and bad["real"] == good["real"]  # same real set, same seed


@pytest.fixture(scope="module")
def noise_metrics(reference) -> dict:
    """The metrics of 500 images of uniform noise, each labelled with a digit."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (500, 28, 28), dtype=torch.uint8, generator=g)
    return ev.score(noise, torch.arange(500) % 10, reference)


def test_noise_has_no_precision_or_recall_and_a_large_fid(noise_metrics):
    assert noise_metrics["precision"] < 0.01 and noise_metrics["recall"] < 0.01
    assert noise_metrics["fid"] > 50
    assert [row["n"] for row in noise_metrics["per_class"]] == [50] * 10


def test_report_has_every_field_and_round_trips_through_json(reference, noise_metrics, tmp_path):
    source = {"samples": "noise.npz"}
    report = ev.make_report(reference, source, [noise_metrics], floor=noise_metrics)
    ev.write_report(report, tmp_path / "report.json")
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert set(ev.REPORT_KEYS) <= set(loaded)
    assert set(ev.METRIC_KEYS) <= set(loaded["results"][0])
    assert loaded["classifier"]["sha256"] == ev.classifier_info("mnist")["classifier"]["sha256"]
    three = noise_metrics["per_class"][3]
    assert loaded["results"][0]["per_class"][3] == {"class": "3", "n": 50,
                                                    "accuracy": three["accuracy"]}
    del report["results"][0]["fid"]
    with pytest.raises(ValueError, match=r"results\[0\]\.fid"):
        ev.write_report(report, tmp_path / "bad.json")


# --------------------------------------------------------------------------------- files

def test_samples_npz_round_trips(tmp_path):
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(20) % 10
    npz.save_npz_samples(tmp_path / "s.npz", images, labels)
    got_images, got_labels = npz.load_npz_samples(tmp_path / "s.npz")
    assert got_images.shape == (20, 28, 28) and got_images.dtype == torch.uint8
    assert got_labels.dtype == torch.int64
    assert torch.equal(got_images, images[:, 0]) and torch.equal(got_labels, labels)


GOOD_IMAGES = np.zeros((4, 28, 28), np.uint8)
GOOD_LABELS = np.arange(4)


@pytest.mark.parametrize("arrays,message", [
    ({"images": np.zeros((4, 32, 32), np.uint8), "labels": GOOD_LABELS}, "has shape"),
    ({"images": np.zeros((4, 3, 28, 28), np.uint8), "labels": GOOD_LABELS}, "has shape"),
    ({"images": np.zeros((0, 28, 28), np.uint8), "labels": GOOD_LABELS[:0]}, "N > 0"),
    ({"images": GOOD_IMAGES}, "no 'labels' array"),
    ({"labels": GOOD_LABELS}, "no 'images' array"),
    ({"images": GOOD_IMAGES.astype(np.float32), "labels": GOOD_LABELS}, "must be uint8"),
    ({"images": GOOD_IMAGES, "labels": GOOD_LABELS.astype(np.float32)}, "integer array"),
    ({"images": GOOD_IMAGES, "labels": np.array([0, 1, 2, 10])}, "labels must lie in 0..9"),
    ({"images": GOOD_IMAGES, "labels": np.array([0, -1, 2, 3])}, "labels must lie in 0..9"),
    ({"images": GOOD_IMAGES, "labels": np.arange(3)}, "4 images but 3 labels"),
])
def test_bad_samples_npz_is_a_clear_error(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(MnistdiffError, match=message):
        npz.load_npz_samples(path)


def test_a_file_that_is_not_an_npz_is_a_clear_error(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    np.save(tmp_path / "single.npy", GOOD_IMAGES)
    for path in (tmp_path / "junk.npz", tmp_path / "single.npy", tmp_path / "missing.npz"):
        with pytest.raises(MnistdiffError, match="cannot read .* as an NPZ file"):
            npz.load_npz_samples(path)


def test_sample_and_score_gives_a_row_per_setting(reference, tiny_checkpoint):
    """issue 12: what `mnistdiff evaluate` runs, as a library call."""
    from mnistdiff.models import load

    pipe = load(tiny_checkpoint, device="cpu")
    settings = [pipe.settings(steps=2, guidance=w) for w in (0.0, 2.0)]
    said = []
    rows, images, labels = ev.sample_and_score(pipe, 2, settings, reference, batch_size=64,
                                               say=said.append)
    assert [r["guidance"] for r in rows] == [0.0, 2.0] and len(said) == 2
    assert all(r["n"] == 20 and r["nfe"] == 2 and r["steps"] == 2 for r in rows)
    assert labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert torch.equal(images, pipe.sample(range(10), 2, settings=settings[-1]).images)
    assert ev.per_class_count(95, 10) == 10 and ev.per_class_count(3, 10) == 1
