"""Seeds: the one place where a seed is mixed with indices into a generator's seed.

    mix_seed(seed, i)                  image i of a sampling call, epoch i of a data order
    ImageGenerators(seeds, device)     one generator per image of a batch (as NVlabs/edm's
                                       StackedRandomGenerator): every image draws its own noise

``mix_seed(seed, a, b, ...)`` folds the indices in as ``h = h * base + index`` (base 1_000_003,
a prime) and reduces modulo 2**63, so distinct (seed, index) pairs of everyday sizes give distinct
generator seeds. Training's per-step seeding (``training.seed_step``) and ``data.BatchLoader``'s
epoch order go through it as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

BASE = 1_000_003


def mix_seed(seed: int, *indices: int, base: int = BASE) -> int:
    """A generator seed from ``seed`` and ``indices``: ((seed * base + i0) * base + i1 ...) mod 2**63."""
    h = int(seed)
    for i in indices:
        h = (h * base + int(i)) % 2**63
    return h % 2**63


class ImageGenerators:
    """One torch.Generator per image of a batch: ``randn`` stacks each image's own draw, so an
    image's noise does not depend on which batch it shares or on its position in it."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    @classmethod
    def for_images(cls, seed: int, first: int, count: int,
                   device: torch.device | str = "cpu") -> ImageGenerators:
        """The generators of images first .. first + count - 1 of a call seeded with ``seed``."""
        return cls([mix_seed(seed, i) for i in range(first, first + count)], device)

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """(B, *shape[1:]) standard normal noise, row b from generator b (B = len(self))."""
        if shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=self.device,
                                        dtype=dtype) for g in self.generators])

    def randn_like(self, x: Tensor) -> Tensor:
        return self.randn(x.shape, dtype=x.dtype)
