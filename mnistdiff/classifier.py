"""The reference classifier: the small CNN that judges samples, and how it is trained.

``evaluation.py`` uses a bundled, trained copy of it: its predictions give the class accuracy of
samples and its 128-d penultimate layer is the feature space of FID and precision/recall.
``train_classifier`` is the one training recipe, shared by two callers:

- ``scripts/train_classifier.py`` trains the bundled weights on the whole training split;
- the Classification Accuracy Score (``evaluation.classification_accuracy_score``; Ravuri &
  Vinyals 2019) trains a fresh copy on *generated* images and tests it on the real test set.

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
    (``data.to_model_range`` of the uint8 pixels); no further normalisation.
    """

    def __init__(self, num_classes: int = 10, feature_dim: int = 128, dropout: float = 0.25):
        super().__init__()
        self.body = nn.Sequential(
            _conv(1, 16), nn.MaxPool2d(2),                    # (B, 16, 14, 14)
            _conv(16, 32), _conv(32, 32), nn.MaxPool2d(2),    # (B, 32, 7, 7)
            _conv(32, 64), _conv(64, 64), nn.MaxPool2d(2),    # (B, 64, 3, 3)
            nn.Flatten(),                                     # (B, 576)
        )
        self.feature = nn.Sequential(nn.Linear(576, feature_dim, bias=False),
                                     nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [-1, 1] -> (B, feature_dim): the FID feature space."""
        return self.feature(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image of (B, 1, 28, 28) in [-1, 1] by up to 10 degrees, scale it by 0.9-1.1
    and shift it by up to 2 pixels: one affine grid per image, one grid_sample for the batch."""
    b, dev = x.shape[0], x.device
    u = torch.rand(b, 4, generator=generator, device=dev) * 2 - 1      # (B, 4) in [-1, 1]
    angle, scale = u[:, 0] * math.radians(10), 1 + 0.1 * u[:, 1]
    shift = u[:, 2:] * 2 * (2 / 28)          # grid coordinates span 2 over 28 pixels
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
    """Train a fresh :class:`Classifier` on uint8 images (N, 1, 28, 28) with labels (N,).

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
    model = Classifier(num_classes=num_classes).to(device)
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
