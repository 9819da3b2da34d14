"""Quality numbers for generated digits, judged by a small bundled classifier.

Inception-v3 (the network behind the usual FID) cannot be downloaded offline and was trained on
photographs, so here a CNN trained on the dataset itself (``scripts/train_classifier.py``) plays
its part: its predictions give the class accuracy of samples, and its 128-d penultimate layer is
the feature space for FID and for precision/recall. The weights and the test set's feature
statistics ship in ``mnistdiff/assets/``, checked against SHA-256 sums in ``manifest.json``, so
every user's numbers are comparable. They are comparable with each other, not with FIDs that
other papers computed in Inception space.

    ref = load_reference("mnist")               # classifier + test-set features and statistics
    metrics = score(images_u8, labels, ref)     # accuracy, FID, precision, recall
    floor = real_floor(ref, n=10000)            # the same numbers for real training digits
    cas = classification_accuracy_score(images_u8, labels, ref)  # a classifier trained on samples
    rows, images, labels = sample_and_score(pipe, 100, [pipe.settings(guidance=w) for w in (1, 3)],
                                            ref)      # what ``mnistdiff evaluate`` runs

A dataset without a bundled classifier (a class folder, cifar10), or ``classifier="train"``,
gets the same architecture trained on its own training split on first use and cached
(``classifier.cached_classifier``); its FID statistics are those of its test split, computed
now. The report names the classifier it used (``classifier.source``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import __version__
from .classifier import Classifier, cached_classifier, train_classifier
from .data import LabelledImages, find_data_dir, get_spec, load_dataset, load_split, to_model_range
from .errors import MnistdiffError
from .files import write_atomic
from .models import ASSETS, Manifest
from .npz import as_images

MANIFEST = Manifest.FILE
METRIC_KEYS = ("dataset", "n", "accuracy", "per_class", "fid", "precision", "recall", "k")
REPORT_KEYS = ("version", "created", "dataset", "classifier", "source", "results", "real_floor",
               "cas")
CLASSIFIERS = ("auto", "bundled", "train")  # auto: bundled where there is one, else train


# --------------------------------------------------------------------------------- the classifier

def classifiers() -> Manifest:
    """The bundled classifiers and test-set statistics, pinned in ``assets/manifest.json``."""
    return Manifest(ASSETS, "bundled classifiers", required=True)


def classifier_info(dataset: str = "mnist") -> dict:
    """The manifest entry of a dataset: file names, checksums, test accuracy, training settings."""
    entries = classifiers().entries()
    if dataset not in entries:
        raise MnistdiffError(f"no bundled classifier for '{dataset}' (have: "
                             f"{', '.join(entries)}); train one with scripts/train_classifier.py")
    return entries[dataset]


def _verified_asset(dataset: str, kind: str) -> Path:
    """The path of a bundled file ('classifier' or 'reference'), checked against the manifest."""
    classifier_info(dataset)  # the message for a dataset without a classifier
    return classifiers().path(dataset, kind)


def load_classifier(dataset: str = "mnist", device: torch.device | str = "cpu") -> Classifier:
    """The bundled reference classifier of a dataset, checksum-verified, in eval mode."""
    info = classifier_info(dataset)
    state = torch.load(_verified_asset(dataset, "classifier"), map_location=device,
                       weights_only=True)
    model = Classifier(num_classes=len(get_spec(dataset).classes), feature_dim=info["feature_dim"])
    model.load_state_dict(state)
    return model.to(device, memory_format=torch.channels_last).eval()  # ~1.4x faster on CPU


def reference_stats(dataset: str = "mnist") -> tuple[np.ndarray, np.ndarray]:
    """The bundled FID statistics of the test set: mean (D,) and covariance (D, D), float64."""
    with np.load(_verified_asset(dataset, "reference"), allow_pickle=False) as f:
        return f["mu"], f["cov"]


# --------------------------------------------------------------------------------- features

@torch.inference_mode()
def run_classifier(classifier: Classifier, images: torch.Tensor | np.ndarray,
                   batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) float64 and predicted classes (N,) int64 of uint8 images, in one pass."""
    device = next(classifier.parameters()).device
    images = as_images(images, (classifier.in_channels, classifier.image_size,
                                classifier.image_size))
    feats, preds = [], []
    for batch in images.split(batch_size):
        x = to_model_range(batch.to(device)).contiguous(memory_format=torch.channels_last)
        f = classifier.features(x)                       # (B, D)
        feats.append(f.double().cpu())
        preds.append(classifier.head(f).argmax(dim=1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds).numpy()


# --------------------------------------------------------------------------------- FID

def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix, by eigendecomposition."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, C1) and N(mu2, C2) (Dowson & Landau 1982; FID, Heusel et
    al. 2017):  d² = |mu1 - mu2|² + Tr(C1) + Tr(C2) - 2 Tr((C1 C2)^½).

    C1 C2 = S (S C2) with S = C1^½ has the eigenvalues of (S C2) S = S C2 S (AB and BA share
    them), which is symmetric PSD, so Tr((C1 C2)^½) = sum_i sqrt(eig_i(S C2 S)): two symmetric
    eigendecompositions in float64 instead of scipy's general sqrtm.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    s = _sqrt_psd(cov1)
    m = s @ cov2 @ s
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d2 = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt
    return float(max(d2, 0.0))


# --------------------------------------------------------------------------------- precision/recall

def knn_radii(x: np.ndarray | torch.Tensor, k: int = 3, chunk: int = 1000,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, D) -> (N,): distance from each point to its k-th nearest neighbour in x (not itself)."""
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    # the nearest of the k + 1 smallest distances is the point itself
    radii = [torch.cdist(c, x).topk(k + 1, dim=1, largest=False).values[:, k]
             for c in x.split(chunk)]
    return torch.cat(radii)


def _coverage(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
              chunk: int) -> float:
    """Fraction of the queries (Q, D) inside at least one ball B(centres_i, radii_i)."""
    inside = [(torch.cdist(q, centres) <= radii).any(dim=1) for q in queries.split(chunk)]
    return torch.cat(inside).double().mean().item()


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1000,
                     device: torch.device | str = "cpu",
                     real_radii: torch.Tensor | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of features (N, D) and (M, D).

    The manifold of a set is the union of balls around its points, each with the radius of the
    point's k-th nearest neighbour. Precision: the fraction of fake points on the real manifold
    (are samples realistic?); recall: the fraction of real points on the fake manifold (is the
    data's variety covered?). Distances go in chunks of ``chunk`` rows, so 10k x 10k fits easily.
    ``real_radii``: ``knn_radii(real, k)`` when already known (the reference set's are cached).
    """
    if min(len(real), len(fake)) <= k:
        raise MnistdiffError(f"precision/recall with k={k} needs more than {k} points per set")
    r = torch.as_tensor(real, dtype=torch.float32, device=device)
    f = torch.as_tensor(fake, dtype=torch.float32, device=device)
    if real_radii is None:
        real_radii = knn_radii(r, k, chunk, device)
    precision = _coverage(f, r, real_radii.to(device), chunk)
    recall = _coverage(r, f, knn_radii(f, k, chunk, device), chunk)
    return precision, recall


# --------------------------------------------------------------------------------- evaluation

@dataclass
class Reference:
    """What samples are compared against: the classifier and the test split as it sees it."""
    dataset: str
    classifier: Classifier
    info: dict                 # the manifest entry (checksums, test accuracy)
    mu: np.ndarray             # (D,) bundled test-set feature mean, for FID
    cov: np.ndarray            # (D, D) bundled test-set feature covariance
    features: np.ndarray       # (N_test, D) test-set features, for precision/recall
    accuracy: float            # the classifier's test accuracy measured now (cf. info)
    data_dir: Path | None      # where the IDX files were found (real_floor reads train from it)
    data: object = None        # the DataConfig of a dataset that is not IDX files (folder)
    classes: tuple[str, ...] = ()  # the class names (default: the dataset's own)
    _radii: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _splits: dict[str, LabelledImages] = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.classifier.parameters()).device

    @property
    def names(self) -> tuple[str, ...]:
        return self.classes or get_spec(self.dataset).classes

    def split(self, name: str) -> LabelledImages:
        """The dataset's ``name`` split ("train" or "test"), as the classifier sees it."""
        if self.data is None:
            return load_split(self.data_dir, name, self.dataset)
        if name not in self._splits:
            self._splits[name] = load_dataset(self.data, name)
        return self._splits[name]

    def radii(self, k: int) -> torch.Tensor:
        """k-NN radii (N_test,) of the test features, computed once per k and kept."""
        if k not in self._radii:
            self._radii[k] = knn_radii(self.features, k, device=self.device)
        return self._radii[k]


def load_reference(dataset: str = "mnist", *, data_root: str | Path | None = None,
                   download: bool = True, device: torch.device | str = "cpu",
                   batch_size: int = 500, data=None, classifier: str = "auto",
                   epochs: int | None = None, say: Callable[[str], None] | None = None
                   ) -> Reference:
    """Load the classifier and statistics, and compute the test set's features from its files.

    ``accuracy`` is measured on the way; it equals the manifest's ``test_accuracy`` on the CPU
    (other devices may flip a near-tie or two). ``classifier``: "bundled", "train" (the
    reference architecture trained for ``epochs`` (default: classifier.default_epochs) on the
    training split, cached; ``say``
    hears it) or "auto" (bundled where the dataset has one). A dataset that is not IDX files
    (folder, cifar10) is read as ``data`` (its DataConfig) describes.
    """
    if classifier not in CLASSIFIERS:
        raise MnistdiffError(f"--classifier: got {classifier!r}, choose one of "
                             f"{', '.join(CLASSIFIERS)}")
    spec = get_spec(dataset)
    if spec.kind != "idx" and data is None:
        raise MnistdiffError(f"the {dataset} dataset needs its data config (data.root, "
                             f"image_size, channels) to be evaluated against")
    if classifier == "train" or (classifier == "auto" and spec.kind != "idx"):
        return _trained_reference(dataset, data, data_root, download, device, batch_size,
                                  epochs, say)
    if spec.kind != "idx":
        raise MnistdiffError(f"no bundled classifier for {dataset} datasets; use --classifier "
                             f"train (trained on its training split once, then cached)")
    model = load_classifier(dataset, device)
    mu, cov = reference_stats(dataset)
    data_dir = find_data_dir(dataset, data_root, download, splits=("test",))  # train: real_floor
    test = load_split(data_dir, "test", dataset)
    features, preds = run_classifier(model, test.images, batch_size)
    accuracy = float((preds == test.labels.numpy()).mean())
    return Reference(dataset, model, {**classifier_info(dataset), "source": "bundled"}, mu, cov,
                     features, accuracy, data_dir)


def _trained_reference(dataset: str, data, data_root, download: bool, device, batch_size: int,
                       epochs: int | None, say: Callable[[str], None] | None) -> Reference:
    """The reference with the classifier trained on the training split (cached), its FID
    statistics from the test split's features."""
    if get_spec(dataset).kind == "idx":
        data_dir = find_data_dir(dataset, data_root, download)
        names = get_spec(dataset).classes
        train, test = (load_split(data_dir, split, dataset) for split in ("train", "test"))
    else:
        from .folder import load

        loaded = load(data, say)  # the folder's classes must be the model's (data.classes)
        data_dir, names, train, test = None, loaded.classes, loaded.train, loaded.test
        if len(test.labels) < 2:
            raise MnistdiffError(f"the test split of {loaded.source} has {len(test.labels)} "
                                 f"images; FID needs at least 2 (every 10th image of a class "
                                 f"is a test image, or use train/ and test/ folders)")
    model, trained = cached_classifier(train.images, train.labels, num_classes=len(names),
                                       epochs=epochs, device=device, say=say)
    model = model.to(device, memory_format=torch.channels_last).eval()
    features, preds = run_classifier(model, test.images, batch_size)
    accuracy = float((preds == test.labels.numpy()).mean())
    info = {"source": f"trained on {trained['trained_on']} for {trained['epochs']} epochs"
                      + (" (cached)" if trained["cached"] else ""),
            "classifier": {"file": trained["file"], "sha256": trained["sha256"]},
            "params": sum(p.numel() for p in model.parameters()),
            "feature_dim": model.feature[0].out_features, "test_accuracy": accuracy}
    ref = Reference(dataset, model, info, *gaussian_stats(features), features, accuracy,
                    data_dir, None if data_dir is not None else data, tuple(names))
    if data_dir is None:
        ref._splits.update(train=train, test=test)
    return ref


def score(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
          reference: Reference, *, k: int = 3, batch_size: int = 500) -> dict:
    """Accuracy (overall and per class, by the classifier), FID vs the test set, precision and
    recall of uint8 images with the labels they were meant to have. Keys: ``METRIC_KEYS``.

    FID and the k-NN radii depend on the number of images: compare sets of equal size.
    """
    labels = torch.as_tensor(labels).long().cpu().numpy()
    feats, preds = run_classifier(reference.classifier, images, batch_size)
    if len(labels) != len(preds):
        raise MnistdiffError(f"{len(preds)} images but {len(labels)} labels")
    if len(preds) < 2:
        raise MnistdiffError("scoring needs at least 2 images (FID needs a covariance)")
    correct = preds == labels
    per_class = []
    for c, name in enumerate(reference.names):
        mask = labels == c
        acc = float(correct[mask].mean()) if mask.any() else None
        per_class.append({"class": name, "n": int(mask.sum()), "accuracy": acc})
    fid = frechet_distance(*gaussian_stats(feats), reference.mu, reference.cov)
    precision, recall = precision_recall(reference.features, feats, k, device=reference.device,
                                         real_radii=reference.radii(k))
    return {"dataset": reference.dataset, "n": len(preds), "accuracy": float(correct.mean()),
            "per_class": per_class, "fid": fid, "precision": precision, "recall": recall, "k": k}


def balanced_indices(labels: torch.Tensor, counts: list[int], seed: int = 0) -> torch.Tensor:
    """Indices of ``counts[c]`` random items of each class c of ``labels`` (N,), drawn without
    replacement by a generator seeded with ``seed``, grouped by class."""
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c, k in enumerate(counts):
        members = (labels == c).nonzero().squeeze(1)
        if k > len(members):
            raise MnistdiffError(f"asked for {k} images of class {c}, the split has {len(members)}")
        picked.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(picked)


def class_counts(labels: torch.Tensor | np.ndarray, num_classes: int) -> list[int]:
    """How many labels of each class: the histogram a real set is drawn to match."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def _even_counts(n: int, num_classes: int) -> list[int]:
    """n split over the classes as evenly as possible (the first n % C classes get one more)."""
    return [n // num_classes + (c < n % num_classes) for c in range(num_classes)]


def real_floor(reference: Reference, n: int = 10000, seed: int = 0, *, k: int = 3,
               batch_size: int = 500, labels: torch.Tensor | np.ndarray | None = None) -> dict:
    """The metrics of ``n`` real *training* images vs the test set: what a perfect generator
    would score with ``n`` samples (use the n of the samples it is compared with).

    The real set is class-balanced like a generated one: it has the class histogram of
    ``labels`` (the generated set's labels) when given, else ``n`` split evenly over the classes.
    """
    train = reference.split("train")
    num_classes = len(reference.names)
    counts = class_counts(labels, num_classes) if labels is not None else _even_counts(n, num_classes)
    idx = balanced_indices(train.labels, counts, seed)
    return score(train.images[idx], train.labels[idx], reference, k=k, batch_size=batch_size)


def classification_accuracy_score(images: torch.Tensor | np.ndarray,
                                  labels: torch.Tensor | np.ndarray, reference: Reference, *,
                                  epochs: int = 10, batch_size: int = 128, seed: int = 0) -> dict:
    """Classification Accuracy Score (Ravuri & Vinyals 2019): train the reference classifier's
    architecture from scratch on the given (generated) images and their intended labels, with
    the bundled classifier's recipe (``classifier.train_classifier``), and measure its accuracy
    on the real test set. The same is done with as many real training images of each class, so
    the score has its real-data counterpart next to it.

    Returns {"n", "epochs", "generated": test accuracy, "real": test accuracy}. It trains two
    classifiers on the reference's device: epochs * n * 2 images, ~400 images/s per CPU core.
    """
    clf = reference.classifier
    images = as_images(images, (clf.in_channels, clf.image_size, clf.image_size))
    labels = torch.as_tensor(labels).long().cpu()
    if len(images) != len(labels):
        raise MnistdiffError(f"{len(images)} images but {len(labels)} labels")
    num_classes = len(reference.names)
    test, train = reference.split("test"), reference.split("train")
    real_idx = balanced_indices(train.labels, class_counts(labels, num_classes), seed)

    def test_accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        model = train_classifier(x, y, epochs=epochs, batch_size=batch_size, seed=seed,
                                 num_classes=num_classes, device=reference.device)
        _, preds = run_classifier(model.to(reference.device), test.images)
        return float((preds == test.labels.numpy()).mean())

    return {"n": len(labels), "epochs": epochs, "generated": test_accuracy(images, labels),
            "real": test_accuracy(train.images[real_idx], train.labels[real_idx])}


# --------------------------------------------------------------------------------- files

def per_class_count(n: int, num_classes: int) -> int:
    """Images per class for about ``n`` in total, balanced: n / classes rounded (at least 1)."""
    return max(1, round(n / num_classes))


def sample_and_score(pipe, per_class: int, settings: Sequence, reference: Reference, *,
                     k: int = 3, batch_size: int = 500, sample_batch_size: int | None = None,
                     say: Callable[[str], None] | None = None
                     ) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """Sample ``per_class`` images of every class of ``pipe`` (a ``pipeline.Pipeline``) at each
    of ``settings`` (``Pipeline.settings`` results, e.g. a guidance sweep) and score them.

    Returns one report row per setting (``score``'s numbers plus sampler, steps, guidance,
    guidance_interval, eta, seed, nfe, passes, sampling_seconds and seconds_per_100) and the last setting's images and labels
    (for an NPZ, the real floor's class histogram and the CAS). ``say(line)`` announces each
    setting; ``batch_size`` is the classifier's, ``sample_batch_size`` the sampler's."""
    classes = list(range(len(pipe.classes)))
    rows, images, labels = [], None, None
    for s in settings:
        if say is not None:
            lo, hi = s.guidance_interval
            where = "" if (lo, hi) == (0.0, 1.0) else f" in t/(T-1) [{lo:g}, {hi:g}]"
            grid = "" if s.spacing == "linspace" else f"{s.spacing} "
            say(f"sampling {per_class * len(classes)} images ({s.sampler}, {s.steps} {grid}steps, "
                f"guidance {s.guidance:g}{where}) ...")
        result = pipe.sample(classes, per_class, settings=s, batch_size=sample_batch_size)
        row = score(result.images, result.labels, reference, k=k, batch_size=batch_size)
        row.update(sampler=s.sampler, steps=s.steps, spacing=s.spacing, guidance=s.guidance,
                   guidance_interval=list(s.guidance_interval), eta=s.eta,
                   seed=s.seed, nfe=result.nfe, passes=result.passes,
                   sampling_seconds=result.seconds,
                   seconds_per_100=100 * result.seconds / len(result.images))
        rows.append(row)
        images, labels = result.images, result.labels
    return rows, images, labels


def table(rows: list[dict], floor: dict | None, name: str = "samples") -> tuple[list, list]:
    """``evaluate``'s table in words: (columns, rows), a row per setting, then the real floor;
    FID also as a multiple of the floor's (the quality bar is stated that way)."""
    columns = ["", "n", "accuracy", "FID", "x floor", "precision", "recall", "NFE", "s / 100"]
    out = []
    for r in rows:
        out.append([f"guidance {r['guidance']:g}" if "guidance" in r else name, str(r["n"]),
                    f"{r['accuracy']:.2%}", f"{r['fid']:.3f}",
                    f"{r['fid'] / floor['fid']:.2f}x" if floor else "-", f"{r['precision']:.3f}",
                    f"{r['recall']:.3f}", str(r.get("nfe", "-")),
                    f"{r['seconds_per_100']:.2f}" if "seconds_per_100" in r else "-"])
    if floor is not None:
        out.append(["real (train)", str(floor["n"]), f"{floor['accuracy']:.2%}",
                    f"{floor['fid']:.3f}", "1x", f"{floor['precision']:.3f}",
                    f"{floor['recall']:.3f}", "-", "-"])
    return columns, out


def notes(rows: list[dict], cas: dict | None) -> list[str]:
    """The lines under ``evaluate``'s table: each setting's weakest class, the CAS."""
    lines = []
    for r in rows:
        known = [c for c in r["per_class"] if c["accuracy"] is not None]
        if known:
            worst = min(known, key=lambda c: c["accuracy"])
            where = f" (guidance {r['guidance']:g})" if len(rows) > 1 and "guidance" in r else ""
            lines.append(f"lowest class accuracy{where}: {worst['class']} {worst['accuracy']:.2%}")
    if cas is not None:
        lines.append(f"classification accuracy score (n = {cas['n']}, {cas['epochs']} epochs): "
                     f"{cas['generated']:.2%} trained on samples, {cas['real']:.2%} trained on "
                     f"real images")
    return lines


def write_json(data: dict, path: str | Path) -> Path:
    """Write JSON atomically (see files.write_atomic)."""
    return write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def make_report(reference: Reference, source: dict, results: list[dict],
                floor: dict | None, cas: dict | None = None) -> dict:
    """The JSON report: what was scored (``source``: checkpoint and sampler settings, or the NPZ),
    one ``score`` dict per guidance scale (the caller adds guidance, seconds, NFE), the floor,
    and the Classification Accuracy Score of the last setting when it was asked for."""
    info = reference.info
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"version": __version__, "created": created, "dataset": reference.dataset,
            "classifier": {"source": info.get("source", "bundled"),
                           "sha256": info["classifier"]["sha256"], "params": info["params"],
                           "test_accuracy": info["test_accuracy"],
                           "test_accuracy_measured": reference.accuracy,
                           "feature_space": f"penultimate layer ({info['feature_dim']}-d)",
                           "fid_reference": f"test split ({len(reference.features)} images)"},
            "source": source, "results": results, "real_floor": floor, "cas": cas}


def write_report(report: dict, path: str | Path) -> None:
    """Check that the report has every field of ``make_report`` and write it as JSON atomically."""
    missing = [key for key in REPORT_KEYS if key not in report]
    missing += [f"results[{i}].{key}" for i, row in enumerate(report.get("results", []))
                for key in METRIC_KEYS if key not in row]
    if missing:
        raise ValueError(f"report lacks {', '.join(missing)}")
    write_json(report, path)
