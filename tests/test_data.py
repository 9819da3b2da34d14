import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from mnistdiff.data import (BatchLoader, LabelledImages, describe, find_data_dir,
                            load_split, read_idx, to_model_range, to_uint8, write_idx)
from mnistdiff.errors import DataError


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, name, dtype):
    arr = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    write_idx(tmp_path / name, arr)
    back = read_idx(tmp_path / name)
    assert back.shape == arr.shape and back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, arr)


def test_idx_errors(tmp_path):
    arr = np.zeros((10, 28, 28), np.uint8)
    write_idx(tmp_path / "ok", arr)
    raw = (tmp_path / "ok").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-100])
    with pytest.raises(DataError, match="truncated or corrupted"):
        read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(tmp_path / "magic")
    gz = gzip.compress(raw)
    (tmp_path / "cut.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DataError, match="corrupted or truncated gzip"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "missing")


def test_checksum_mismatch(tmp_path):
    write_idx(tmp_path / "x", np.zeros((3, 4), np.uint8))
    with pytest.raises(DataError, match="SHA-256"):
        read_idx(tmp_path / "x", sha256="0" * 64)


def test_synthetic_split(synthetic_dir):
    images, labels = load_split(synthetic_dir, "train", verify=False)
    assert images.shape == (200, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and torch.bincount(labels).tolist() == [20] * 10
    with pytest.raises(DataError, match="SHA-256"):  # synthetic files are not MNIST
        load_split(synthetic_dir, "train", verify=True)
    with pytest.raises(DataError, match="unknown split"):
        load_split(synthetic_dir, "valid")


def test_missing_files_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MNISTDIFF_DATA", raising=False)
    with pytest.raises(DataError) as e:
        find_data_dir("mnist", tmp_path, download=False)
    msg = str(e.value)
    assert str(tmp_path) in msg and "train-images-idx3-ubyte.gz" in msg and "--data-dir" in msg


def test_search_order(tmp_path, synthetic_dir, monkeypatch):
    monkeypatch.setenv("MNISTDIFF_DATA", str(synthetic_dir))
    assert find_data_dir("mnist", None, download=False) == synthetic_dir
    nested = tmp_path / "MNIST" / "raw"  # torchvision's layout below data.root wins over the env
    for f in synthetic_dir.iterdir():
        nested.mkdir(parents=True, exist_ok=True)
        (nested / f.name).write_bytes(f.read_bytes())
    assert find_data_dir("mnist", tmp_path, download=False) == nested


def test_real_mnist(mnist_dir):
    train = load_split(mnist_dir, "train")  # verifies the official checksums
    test = load_split(mnist_dir, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    counts = torch.bincount(train.labels, minlength=10)
    assert counts.tolist()[:3] == [5923, 6742, 5958] and counts.sum() == 60000
    assert train.images.min() == 0 and train.images.max() == 255
    x = to_model_range(train.images[:1000])
    assert x.min() == -1 and x.max() == 1
    assert (x == -1).float().mean() > 0.75  # backgrounds are exactly 0


def test_describe(synthetic_dir):
    info = describe(synthetic_dir, "mnist")
    assert info["splits"]["train"]["per_class"] == [20] * 10
    assert all(f["verified"] is False for f in info["files"].values())
    assert 0 < info["splits"]["test"]["pixel_mean"] < 1


def test_range_conversions():
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(to_model_range(u)), u)


def _data(n=103):
    return LabelledImages(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 28, 28),
                          torch.arange(n) % 10)


def test_batches_shapes_and_epochs():
    loader = BatchLoader(_data(), 10, seed=0)
    batches = list(loader.epoch(0))
    assert len(loader) == len(batches) == 10
    x, y = batches[0]
    assert x.shape == (10, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (10,)
    seen = torch.cat(list(loader.indices(0)))
    assert len(seen.unique()) == 100  # drop_last: 100 distinct of 103
    assert not torch.equal(seen, torch.cat(list(loader.indices(1))))  # reshuffled each epoch
    assert len(BatchLoader(_data(), 10, drop_last=False)) == 11


def test_shuffle_determinism_and_resume():
    a = torch.cat(list(BatchLoader(_data(), 8, seed=3).indices(2)))
    b = torch.cat(list(BatchLoader(_data(), 8, seed=3).indices(2)))
    c = torch.cat(list(BatchLoader(_data(), 8, seed=4).indices(2)))
    assert torch.equal(a, b) and not torch.equal(a, c)
    rest = torch.cat(list(BatchLoader(_data(), 8, seed=3).indices(2, start=5)))
    assert torch.equal(rest, a[5 * 8:])  # resuming mid-epoch continues the same order


@pytest.mark.parametrize("world", [2, 4])
def test_rank_sharding_partitions_each_global_batch(world):
    single = BatchLoader(_data(96), 16, seed=1)
    ranks = [BatchLoader(_data(96), 16, seed=1, rank=r, world_size=world) for r in range(world)]
    for whole, *parts in zip(single.indices(0), *(r.indices(0) for r in ranks)):
        assert all(len(p) == 16 // world for p in parts)
        assert sorted(torch.cat(parts).tolist()) == sorted(whole.tolist())
    every = torch.cat([torch.cat(list(r.indices(0))) for r in ranks])
    assert sorted(every.tolist()) == list(range(96))  # every index exactly once


def test_loader_errors():
    with pytest.raises(DataError, match="not divisible"):
        BatchLoader(_data(), 10, world_size=3)
    with pytest.raises(DataError, match="larger than the dataset"):
        BatchLoader(_data(5), 10)


# --------------------------------------------------------------------------------- issue 13

@pytest.fixture
def offline(monkeypatch, tmp_path):
    """torchvision's MNIST as it behaves offline: it creates MNIST/raw, then fails in five lines."""
    import torchvision.datasets as tvd

    from mnistdiff import data

    class Offline:
        def __init__(self, root, train=True, download=False):
            (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n"
                               "Tried https://ossci-datasets.s3.amazonaws.com/mnist/, got:\n"
                               "<urlopen error [Errno -3] Temporary failure in name resolution>\n"
                               "Tried http://yann.lecun.com/exdb/mnist/, got:\n<urlopen error>")

    monkeypatch.setattr(tvd, "MNIST", Offline)
    monkeypatch.delenv("MNISTDIFF_DATA", raising=False)
    monkeypatch.setattr(data, "DEFAULT_ROOT", tmp_path / "cache")
    return tmp_path


def test_missing_data_offline_is_one_line_and_creates_nothing(offline, monkeypatch, capsys):
    """`train` without data printed torchvision's five-line error and left empty MNIST/raw
    folders in the user's directory."""
    import sys

    from mnistdiff.cli import main

    user = offline / "user"
    user.mkdir()
    monkeypatch.chdir(user)
    for args in (["train", "-c", str(Path(__file__).parents[1] / "configs" / "tiny.yaml"),
                  "--data-dir", str(user / "data"), "--out", str(user / "run")],
                 ["data", "info"]):
        monkeypatch.setattr(sys, "argv", ["mnistdiff", *args])
        with pytest.raises(SystemExit) as exit_:
            main()
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 1 and len(err.splitlines()) == 1, err
        assert "the download failed (RuntimeError: Error downloading" in err and "--data-dir" in err
    assert list(user.iterdir()) == [] and not (offline / "cache").exists()


def test_evaluate_samples_without_data_mentions_no_floor(offline, synthetic_dir, monkeypatch,
                                                        capsys):
    import shutil
    import sys

    from mnistdiff.cli import main
    from mnistdiff.npz import save_npz_samples

    npz = save_npz_samples(offline / "s.npz", np.zeros((4, 28, 28), np.uint8), np.arange(4))
    monkeypatch.setattr(sys, "argv", ["mnistdiff", "evaluate", "--samples", str(npz), "--out",
                                      str(offline / "r.json")])
    with pytest.raises(SystemExit):
        main()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--no-floor" in err and "download failed" in err


def test_evaluate_without_the_training_split_mentions_no_floor(offline, mnist_dir, monkeypatch,
                                                               capsys):
    import shutil
    import sys

    from mnistdiff.cli import main
    from mnistdiff.npz import save_npz_samples

    npz = save_npz_samples(offline / "s.npz", np.zeros((4, 28, 28), np.uint8), np.arange(4))
    test_only = offline / "test-only"
    test_only.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, test_only / name)
    monkeypatch.setattr(sys, "argv", ["mnistdiff", "evaluate", "--samples", str(npz), "--out",
                                      str(offline / "r.json"), "--data-dir", str(test_only)])
    with pytest.raises(SystemExit):
        main()
    err = capsys.readouterr().err.strip()
    assert "no training split" in err and "--no-floor skips it" in err
    assert not (offline / "r.json").exists()
