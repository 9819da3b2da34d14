"""The reference classifier: the small CNN that judges samples, and how it is trained.

``evaluation.py`` uses a bundled, trained copy of it: its predictions give the class accuracy of
samples and its 128-d penultimate layer is the feature space of FID and precision/recall.
``train_classifier`` is the one training recipe, shared by two callers:

- ``scripts/train_classifier.py`` trains the bundled weights on the whole training split;
- the Classification Accuracy Score (``evaluation.classification_accuracy_score``; Ravuri &
  Vinyals 2019) trains a fresh copy on *generated* images and tests it on the real test set;
- ``cached_classifier`` trains the reference of a dataset without a bundled one (a class
  folder, ``evaluate --classifier train``) on its training split, once: the weights are cached
  under a hash of the images, labels and recipe (``files.cache_root() / "classifiers"``).

    model = train_classifier(images_u8, labels, epochs=10, seed=0)   # (N, 1, 28, 28) uint8
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import BatchLoader, LabelledImages

AUGMENTATION = "rotation +-10 deg, scale 0.9-1.1, shift +-2 px"


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class Classifier(nn.Module):
    """A small CNN (~145k parameters): 28x28 -> 14 -> 7 -> 3, a 128-d feature layer, 10 logits.

    Input: float images in [-1, 1] of shape (B, 1, 28, 28), the diffusion model's range
    (``data.to_model_range`` of the uint8 pixels); no further normalisation. Other images,
    (B, in_channels, image_size, image_size), get the same layers with ``in_channels`` inputs
    to the first and 64 (image_size // 8)^2 to the feature layer (32x32: 1,024).
    """

    def __init__(self, num_classes: int = 10, feature_dim: int = 128, dropout: float = 0.25,
                 in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        flat = 64 * (image_size // 8) ** 2  # three 2x2 max-pools, each rounding down
        self.body = nn.Sequential(
            _conv(in_channels, 16), nn.MaxPool2d(2),          # (B, 16, 14, 14)
            _conv(16, 32), _conv(32, 32), nn.MaxPool2d(2),    # (B, 32, 7, 7)
            _conv(32, 64), _conv(64, 64), nn.MaxPool2d(2),    # (B, 64, 3, 3)
            nn.Flatten(),                                     # (B, 576)
        )
        self.feature = nn.Sequential(nn.Linear(flat, feature_dim, bias=False),
                                     nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [-1, 1] -> (B, feature_dim): the FID feature space."""
        return self.feature(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image of (B, C, S, S) in [-1, 1] by up to 10 degrees, scale it by 0.9-1.1
    and shift it by up to 2 pixels: one affine grid per image, one grid_sample for the batch."""
    b, dev = x.shape[0], x.device
    u = torch.rand(b, 4, generator=generator, device=dev) * 2 - 1      # (B, 4) in [-1, 1]
    angle, scale = u[:, 0] * math.radians(10), 1 + 0.1 * u[:, 1]
    shift = u[:, 2:] * 2 * (2 / x.shape[-1])  # grid coordinates span 2 over S pixels
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with 0; shifting by 1 makes that the background value -1.
    return F.grid_sample(x + 1, grid, align_corners=False) - 1


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 30,
                     batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 5e-4,
                     seed: int = 0, num_classes: int = 10, device: torch.device | str = "cpu",
                     on_epoch: Callable[[int, Classifier, float], None] | None = None) -> Classifier:
    """Train a fresh :class:`Classifier` on uint8 images (N, C, S, S) with labels (N,).

    AdamW with a one-cycle learning rate over ``epochs`` passes, batches shuffled on the device
    (``BatchLoader``: the whole set is one tensor there), each batch augmented (``augment``).
    Deterministic for a seed on one device. ``on_epoch(epoch, model, mean_loss)`` is called after
    each epoch (the model is in train mode; switch it to eval to measure). Returns the model on
    the CPU in eval mode.
    """
    device = torch.device(device)
    torch.manual_seed(seed)  # the initial weights and dropout
    data = LabelledImages(images if images.ndim == 4 else images[:, None], labels.long())
    loader = BatchLoader(data, min(batch_size, len(labels)), seed=seed, device=device)
    model = Classifier(num_classes=num_classes, in_channels=data.images.shape[1],
                       image_size=data.images.shape[-1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    gen = torch.Generator(device=device).manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        total = torch.zeros((), device=device)
        for x, y in loader.epoch(epoch):
            loss = F.cross_entropy(model(augment(x, gen)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach()
        if on_epoch is not None:
            on_epoch(epoch, model, total.item() / len(loader))
    return model.cpu().eval()


RECIPE = 1  # bump when train_classifier's recipe changes: cached classifiers are then retrained
MIN_STEPS = 500  # a trained reference sees at least this many batches (a small folder: epochs)


def default_epochs(n: int, batch_size: int = 128) -> int:
    """Epochs for a reference classifier trained on n images: 20, or more for a small set, so
    that it makes at least MIN_STEPS optimizer steps (54 images: 500 epochs of one batch)."""
    return max(20, math.ceil(MIN_STEPS / math.ceil(n / batch_size)))


def cached_classifier(images: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                      epochs: int | None = None, seed: int = 0,
                      device: torch.device | str = "cpu",
                      say: Callable[[str], None] | None = None) -> tuple[Classifier, dict]:
    """A :class:`Classifier` trained on uint8 images (N, C, S, S) and labels (N,) with
    ``train_classifier`` for ``epochs`` (default ``default_epochs``), read from the cache when
    the same data and recipe were trained before. Returns the model (CPU, eval mode) and what
    describes it: {"file", "sha256", "trained_on", "epochs", "seed", "cached"}."""
    import hashlib
    import io

    from .files import cache_root, sha256_file, write_atomic

    epochs = default_epochs(len(labels)) if epochs is None else epochs

    digest = hashlib.sha256()
    for part in (images.contiguous().numpy(), labels.to(torch.int64).contiguous().numpy()):
        digest.update(str(part.shape).encode())
        digest.update(part.tobytes())
    digest.update(f"{RECIPE} {epochs} {seed} {num_classes}".encode())
    path = cache_root() / "classifiers" / f"{digest.hexdigest()[:24]}.pt"
    model = Classifier(num_classes=num_classes, in_channels=images.shape[1],
                       image_size=images.shape[-1])
    cached = path.is_file()
    if cached:
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # noqa: BLE001 (a damaged cache file: train again)
            cached = False
    if not cached:
        if say is not None:
            say(f"training the reference classifier on {len(labels):,} images for {epochs} "
                f"epochs (once: it is cached in {path.parent})")
        model = train_classifier(images, labels, epochs=epochs, seed=seed,
                                 num_classes=num_classes, device=device)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        write_atomic(path, buffer.getvalue())
    return model.eval(), {"file": str(path), "sha256": sha256_file(path),
                          "trained_on": f"the training split ({len(labels):,} images)",
                          "epochs": epochs, "seed": seed, "cached": cached}
