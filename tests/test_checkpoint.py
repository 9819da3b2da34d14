"""Checkpoint files: the format, atomic writes, safe and bounded loading, finding runs,
rebuilding the model."""

import os
import random
import time

import numpy as np
import pytest
import torch
from conftest import ROOT

from mnistdiff import __version__
from mnistdiff import checkpoint as ck
from mnistdiff import files
from mnistdiff.config import Config, config_to_dict, load_config
from mnistdiff.errors import CheckpointError, MnistdiffError


def small_state(step: int) -> dict:
    return {"format": ck.FORMAT, "format_version": ck.FORMAT_VERSION, "step": step,
            "config": config_to_dict(Config()), "weights": torch.full((3,), float(step)),
            "model": {"w": torch.zeros(2)}}


def test_saved_checkpoint_loads_with_weights_only(tmp_path):
    path = ck.save_checkpoint(tmp_path / "a.pt", {**small_state(7), "rng": ck.rng_state()})
    raw = torch.load(path, weights_only=True)  # no pickled code anywhere in the file
    assert raw["step"] == 7 and torch.equal(raw["weights"], torch.full((3,), 7.0))
    assert ck.load_checkpoint(path)["step"] == 7


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = ck.save_checkpoint(tmp_path / "last.pt", small_state(1))

    def crash(fd):  # the data is written but the disk fails before the rename
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", crash)
    with pytest.raises(MnistdiffError, match="cannot write .*last.pt: disk full"):
        ck.save_checkpoint(path, small_state(2))  # issue 13: one line, not a traceback
    assert ck.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_run_checkpoints_keep_the_last_k_plus_last(tmp_path):
    for step in (10, 20, 30, 40):
        ck.save_run_checkpoint(tmp_path, small_state(step), keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step-000030.pt",
                                                          "step-000040.pt"]
    assert ck.load_checkpoint(tmp_path / "last.pt")["step"] == 40


def test_rng_state_round_trip():
    state = ck.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    ck.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2]


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"PK\x03\x04 truncated", "corrupted or truncated"),
    ({"weights": torch.zeros(1)}, "not a mnistdiff checkpoint"),
    ({**small_state(1), "format_version": 99}, "newer mnistdiff"),
])
def test_bad_checkpoints_raise_checkpoint_error(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        ck.load_checkpoint(path)


@pytest.mark.parametrize("keep", [5000, 0.5])
def test_a_cut_checkpoint_is_reported(tiny_checkpoint, tmp_path, keep):
    data = tiny_checkpoint.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[:keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        ck.load_checkpoint(path)


def _damaged(tiny_checkpoint, change) -> dict:
    ckpt = ck.load_checkpoint(tiny_checkpoint)
    change(ckpt)
    return ckpt


def _nan_weight(ckpt: dict) -> None:
    next(iter(ckpt["ema"].values())).fill_(float("nan"))


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("config"), "'config' is NoneType, expected the stored config"),
    (lambda c: c.update(model=torch.zeros(3)), "'model' is Tensor, expected a state dict"),
    (lambda c: c.update(ema=[1, 2]), "'ema' is list, expected a state dict or None"),
    (lambda c: c.update(format_version="two"), "format_version is 'two', not an integer"),
    (lambda c: c.update(step="ten"), "'step' is 'ten', expected an integer"),
    (_nan_weight, "holds NaN or infinite values"),
], ids=["no-config", "tensor-model", "list-ema", "version-two", "step-str", "nan-weights"])
def test_damaged_checkpoints_are_one_line(tiny_checkpoint, tmp_path, change, message):
    """issue 13: a checkpoint with the right marker but broken fields is a CheckpointError."""
    path = ck.save_checkpoint(tmp_path / "bad.pt", _damaged(tiny_checkpoint, change))
    with pytest.raises(CheckpointError, match="damaged checkpoint") as e:
        ck.load_checkpoint(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "payload": os.getcwd}, path)  # a function, not data
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        ck.load_checkpoint(path)


def test_resolve_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        ck.resolve_checkpoint("latest", runs_dir=runs)
    old = ck.save_checkpoint(runs / "old" / "checkpoints" / "last.pt", small_state(1))
    new = ck.save_checkpoint(runs / "new" / "checkpoints" / "last.pt", small_state(2))
    os.utime(old, (time.time() - 100, time.time() - 100))
    assert ck.resolve_checkpoint(None, runs_dir=runs) == new
    assert ck.resolve_checkpoint("latest", runs_dir=runs) == new
    assert ck.resolve_checkpoint(runs / "old") == old  # a run folder
    assert ck.resolve_checkpoint(old) == old  # a file
    assert ck.run_folder(old) == runs / "old"
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        ck.resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        ck.resolve_checkpoint(tmp_path / "missing.pt")


def test_model_from_checkpoint_uses_ema_weights(tiny_checkpoint):
    ckpt = ck.load_checkpoint(tiny_checkpoint)
    assert ckpt["ema"] is not None and ckpt["ema"].keys() == ckpt["model"].keys()
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    model, cfg = ck.model_from_checkpoint(ckpt)
    assert not model.training and cfg.model.channels == [8, 16]
    name = next(iter(ckpt["ema"]))
    assert torch.equal(model.state_dict()[name], ckpt["ema"][name])
    raw, _ = ck.model_from_checkpoint(ckpt, ema=False)
    assert torch.equal(raw.state_dict()[name], ckpt["model"][name])
    assert not torch.equal(ckpt["model"][name], ckpt["ema"][name])


def test_weights_that_do_not_fit_the_stored_config(tiny_checkpoint):
    ckpt = ck.load_checkpoint(tiny_checkpoint)
    stored = dict(ckpt["config"]["model"])
    ckpt["config"]["model"]["channels"] = [8, 32]
    with pytest.raises(CheckpointError, match="numbers for a U-Net of"):  # before building it
        ck.model_from_checkpoint(ckpt)
    ckpt["config"]["model"]["channels"] = [8, 16, 16]
    with pytest.raises(CheckpointError, match="do not fit"):
        ck.model_from_checkpoint(ckpt)
    ckpt["config"]["model"] = stored  # as many numbers, one tensor of another shape
    name = next(k for k, v in ckpt["ema"].items() if v.ndim == 2 and v.shape[0] != v.shape[1])
    ckpt["ema"][name] = ckpt["ema"][name].t().contiguous()
    with pytest.raises(CheckpointError, match="has shape"):
        ck.model_from_checkpoint(ckpt)


def test_resuming_with_another_architecture_is_an_error(tiny_checkpoint):
    ckpt = ck.load_checkpoint(tiny_checkpoint)
    cfg = load_config(None, ["model.emb_dim=32"])
    with pytest.raises(CheckpointError, match="model.channels"):
        ck.check_same_model(ckpt, cfg, tiny_checkpoint)


def test_prepare_run_resumes_with_the_stored_config(tiny_checkpoint):
    run = tiny_checkpoint.parent.parent
    cfg, out, path = ck.prepare_run(None, ["train.max_steps=40"], None, str(run))
    assert path == tiny_checkpoint and out == run
    assert cfg.train.max_steps == 40 and cfg.train.ema_decay == 0.9  # stored config + override
    _, out, path = ck.prepare_run(None, [], run, "latest")
    assert path == tiny_checkpoint and out == run


def test_a_checkpoint_from_before_ema_rampup_keeps_its_fixed_ema(tiny_checkpoint, tmp_path):
    """Configs written before train.ema_rampup existed trained with a fixed EMA decay."""
    old = ck.load_checkpoint(tiny_checkpoint)
    del old["config"]["train"]["ema_rampup"]
    ck.save_checkpoint(tmp_path / "old.pt", old)
    _, cfg = ck.model_from_checkpoint(ck.load_checkpoint(tmp_path / "old.pt"))
    assert cfg.train.ema_rampup == 0.0
    _, cfg = ck.model_from_checkpoint(ck.load_checkpoint(tiny_checkpoint))
    assert cfg.train.ema_rampup == ck.load_checkpoint(tiny_checkpoint)["config"]["train"]["ema_rampup"]


def test_make_state_builds_the_documented_dict(tiny_checkpoint, tmp_path):
    """Training writes what make_state builds: the same fields, in the same order."""
    state = ck.make_state(config_to_dict(Config()), {"w": torch.zeros(2)}, step=3, epoch=1,
                          batch=2, train_seconds=1.5, images_seen=48)
    assert list(state) == ["format", "format_version", "version", "created", "config", "step",
                           "epoch", "batch", "model", "ema", "optimizer", "scheduler", "scaler",
                           "rng", "train_seconds", "images_seen"]
    assert (state["format"], state["format_version"]) == (ck.FORMAT, ck.FORMAT_VERSION)
    assert state["version"] == __version__ and "T" in state["created"]
    assert state["ema"] is state["optimizer"] is state["rng"] is None
    path = ck.save_checkpoint(tmp_path / "made.pt", state)
    assert ck.load_checkpoint(path)["images_seen"] == 48  # a valid checkpoint as it is
    trained = torch.load(tiny_checkpoint, weights_only=True)
    assert list(trained) == list(state)
    assert ck.make_state({}, {}, version="0.1", created="2020-01-01")["created"] == "2020-01-01"


# --------------------------------------------------------------------------------- bounded loads

def deflated_bomb(path, inflated: int):
    """A small file in torch's zip format whose one tensor inflates to ``inflated`` bytes of
    zeros: torch.save's archive of a 65,536-float tensor, re-zipped with its data record
    deflated and grown (the pickle's storage size and shape patched to match). Nothing of that
    size is ever held in memory here."""
    import io
    import struct
    import zipfile

    n0, buffer = 65536, io.BytesIO()
    torch.save({**small_state(1), "model": {"w": torch.zeros(n0)}}, buffer)
    old, new = b"J" + struct.pack("<i", n0), b"J" + struct.pack("<i", inflated // 4)
    source, chunk = zipfile.ZipFile(buffer), bytes(2**24)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data/0"):
                with archive.open(info.filename, "w", force_zip64=True) as f:
                    for _ in range(inflated // len(chunk)):
                        f.write(chunk)
                continue
            if info.filename.endswith("/data.pkl"):
                assert data.count(old) == 2  # the storage's size and the tensor's shape
                data = data.replace(old, new)
            archive.writestr(info.filename, data)
    return path


# Runs in a child process whose address space is capped a little above what it uses once torch
# is imported, so that a load that inflates a file or builds a network beyond its weights fails
# there (a MemoryError / allocation error, a non-zero exit) instead of taking the machine down.
CAPPED = """
import resource, sys
from mnistdiff import checkpoint as ck
from mnistdiff.errors import CheckpointError, MnistdiffError
from mnistdiff.run import prepare_run
from mnistdiff.training import train

size = next(int(line.split()[1]) for line in open("/proc/self/status")
            if line.startswith("VmSize:")) * 1024
limit = size + 768 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
good, *bad = sys.argv[1:]
ck.model_from_checkpoint(ck.load_checkpoint(good))  # a normal load fits under the cap
print("normal load: ok")
for path in bad:
    try:
        ck.model_from_checkpoint(ck.load_checkpoint(path))
        print("loaded", path)
    except CheckpointError as e:
        print("refused:", e)
try:
    cfg, out, path = prepare_run(None, ["train.max_steps=30"], None, bad[-1])
    train(cfg, out, resume=path, device="cpu", progress=False)
except MnistdiffError as e:
    print("resume refused:", e)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_loading_is_bounded_under_a_memory_cap(tiny_checkpoint, tmp_path):
    """A 4.5 MB file holding a deflated 1 GiB tensor (summarize reached 2.65 GB on a 2 GiB one)
    and a checkpoint whose stored config asks for an enormous network around small weights
    (sample allocated 20 GB) are refused, in one line, before anything is allocated."""
    import shutil
    import subprocess
    import sys

    bomb = deflated_bomb(tmp_path / "bomb.pt", 2**30)
    assert bomb.stat().st_size < 8 * 2**20
    run_dir = shutil.copytree(tiny_checkpoint.parent.parent, tmp_path / "run")
    huge = ck.load_checkpoint(tiny_checkpoint)
    huge["config"]["model"]["channels"] = [4096, 4096]  # 2.5 * 10^9 parameters, 10 GB
    ck.save_checkpoint(run_dir / "checkpoints" / "last.pt", huge)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CAPPED, str(tiny_checkpoint), str(bomb),
                           str(run_dir / "checkpoints" / "last.pt")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "normal load: ok"
    assert lines[1].startswith(f"refused: {bomb}: refusing to load, its records inflate to "
                               f"1,024 MiB from 4.5 MiB on disk"), lines
    assert "stored config is invalid" in lines[2] and "M parameters; at most 200 M" in lines[2], lines
    assert lines[3].startswith("resume refused: model.channels: the U-Net would have"), lines
    assert not (run_dir / "config.yaml").read_text().count("4096")  # the folder was not touched


def test_checkpoints_larger_than_the_cap_or_the_memory_are_refused(tiny_checkpoint,
                                                                   monkeypatch):
    assert ck.load_checkpoint(tiny_checkpoint)["step"] == 20
    monkeypatch.setattr(ck, "_available_memory", lambda: 10_000)
    with pytest.raises(CheckpointError, match=r"refusing to load, .*\(0 MiB of memory is "
                                              r"available\)"):
        ck.load_checkpoint(tiny_checkpoint)
    monkeypatch.setattr(ck, "MAX_BYTES", 2**19)
    with pytest.raises(CheckpointError, match=r"inflate to 1 MiB from 0.6 MiB on disk \(more "
                                              r"than the 0.5 MiB a checkpoint of a 28x28 model"):
        ck.load_checkpoint(tiny_checkpoint)


def test_the_meta_check_builds_nothing_and_draws_no_random_numbers(tiny_checkpoint):
    ckpt = ck.load_checkpoint(tiny_checkpoint)
    cfg = ck.config_from_dict(ckpt["config"])
    state = torch.get_rng_state()
    ck.check_weights_fit(cfg.model, ckpt["model"])
    assert torch.equal(state, torch.get_rng_state())  # sampling and resuming stay reproducible
