"""Shared fixtures: real MNIST when available, otherwise a tiny synthetic IDX dataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mnistdiff.data import DatasetSpec, write_idx

ROOT = Path(__file__).resolve().parents[1]  # the repository


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST folder from $MNISTDIFF_DATA (CI points it at ../shared/data/mnist)."""
    d = os.environ.get("MNISTDIFF_DATA")
    if not d or not (Path(d) / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("real MNIST not available (set MNISTDIFF_DATA to a folder of IDX files)")
    return Path(d)


def make_idx_dataset(folder: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> Path:
    """Write a synthetic 10-class dataset in IDX format: class c is a bright bar at row 2c+4."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c + 4: 2 * c + 7, 4:24] = 255
            images[i] += rng.integers(0, 20, size=(28, 28), dtype=np.uint8)
        img_name, lbl_name = DatasetSpec.files(split)
        write_idx(folder / f"{img_name}.gz", images)
        write_idx(folder / lbl_name, labels)
    return folder


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset (load it with verify=False: its checksums are not MNIST's)."""
    return make_idx_dataset(tmp_path_factory.mktemp("synthetic"))


def synthetic_overrides(folder: Path) -> list[str]:
    """Config overrides that read the synthetic dataset in ``folder`` offline."""
    return [f"data.root={json.dumps(str(folder))}", "data.verify=false", "data.download=false"]


@pytest.fixture(scope="session")
def tiny_checkpoint(synthetic_dir, tmp_path_factory) -> Path:
    """configs/tiny.yaml (plus an EMA) trained for its 20 steps on the synthetic data, on the CPU:
    the run folder's checkpoints/last.pt."""
    from mnistdiff.config import load_config
    from mnistdiff.training import train

    cfg = load_config(ROOT / "configs" / "tiny.yaml",
                      [*synthetic_overrides(synthetic_dir), "train.ema_decay=0.9",
                       "train.ema_warmup_steps=5"])
    run = tmp_path_factory.mktemp("tiny-run") / "run"
    return train(cfg, run, device="cpu", progress=False).checkpoint
