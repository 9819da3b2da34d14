"""How black the backgrounds of generated images are, next to real ones (README: Pretrained models).

    python scripts/background_stats.py samples.npz [--dataset mnist] [--data-dir DIR]

For the NPZ (images uint8 (N, 28, 28), as `mnistdiff sample --npz` / `evaluate --npz` write) and
for as many real training images: the share of pixels that are exactly 0, and over the
background (pixels more than 3 px, in the max-norm, from any stroke pixel >= 128) their mean,
the share above 10 and the largest value, all of 255.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from mnistdiff.data import find_data_dir, load_split


def stats(images: np.ndarray) -> dict:
    x = torch.from_numpy(images).float().unsqueeze(1)  # (N, 1, 28, 28), 0..255
    near = F.max_pool2d((x >= 128).float(), kernel_size=7, stride=1, padding=3) > 0
    background = x[~near]
    return {"n": len(images), "exactly_0": float((x == 0).float().mean()),
            "background_mean": float(background.mean()),
            "background_above_10": float((background > 10).float().mean()),
            "background_max": int(background.max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("npz")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    generated = np.load(args.npz)["images"]
    folder = find_data_dir(args.dataset, args.data_dir, download=False, splits=("train",))
    real = load_split(folder, "train", args.dataset).images[:, 0].numpy()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(real), size=min(len(generated), len(real)), replace=False)
    for name, images in (("generated", generated), ("real", real[pick])):
        s = stats(images)
        print(f"{name:9s} n={s['n']}: exactly 0 {100 * s['exactly_0']:.1f} %; background (> 3 px "
              f"from a stroke) mean {s['background_mean']:.2f}, > 10 {100 * s['background_above_10']:.3f} %, "
              f"max {s['background_max']}")


if __name__ == "__main__":
    main()
