"""`mnistdiff sample`, `animate` and `summarize` end to end on a tiny trained checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mnistdiff.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from mnistdiff.cli import app, main
from mnistdiff.npz import load_npz_samples
from mnistdiff.models import load
from mnistdiff.unet import count_parameters
from mnistdiff.visualize import image_grid

CELL = 28 + 2  # an image plus the grid padding
TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_sample_all_writes_labelled_grid_npz_and_pngs(tiny_checkpoint, tmp_path):
    png, npz, folder = tmp_path / "s.png", tmp_path / "s.npz", tmp_path / "each"
    out = invoke("sample", "-k", tiny_checkpoint, "--all", "--n", 3, "--scale", 1, "--out", png,
                 "--npz", npz, "--individual", folder)
    assert "30 images (10 digits x 3) with ddim, 10 steps, guidance 2, seed 0: 10 NFE" in out

    images, labels = load_npz_samples(npz)  # the evaluation command reads exactly this
    with np.load(npz) as data:
        assert data["images"].dtype == np.uint8 and data["images"].shape == (30, 28, 28)
        assert data["labels"].dtype == np.int64
        assert data["labels"].tolist() == [c for c in range(10) for _ in range(3)]

    grid = np.asarray(Image.open(png))
    plain = np.asarray(image_grid(images, nrow=3))  # 10 rows of 3, a label column on the left
    assert grid.shape[0] == 10 * CELL + 2 and grid.shape[1] > plain.shape[1]
    assert np.array_equal(grid[:, -plain.shape[1]:], plain)
    assert sorted(p.name for p in folder.iterdir())[-1] == "00029-9.png"
    assert np.array_equal(np.asarray(Image.open(folder / "00004-1.png")), images[4].numpy())


def test_sample_one_digit_is_a_square_grid_and_matches_the_python_api(tiny_checkpoint, tmp_path):
    png, npz = tmp_path / "sevens.png", tmp_path / "sevens.npz"
    invoke("sample", "-k", tiny_checkpoint, "--digit", 7, "--n", 16, "--scale", 2,
           "--sampler", "dpmpp", "--steps", 5, "--seed", 11, "--out", png, "--npz", npz)
    assert Image.open(png).size == (2 * (4 * CELL + 2), 2 * (4 * CELL + 2))
    api = load(tiny_checkpoint, device="cpu").sample([7], n=16, sampler="dpmpp", steps=5, seed=11)
    with np.load(npz) as data:
        assert set(data["labels"].tolist()) == {7}
        assert np.array_equal(data["images"], api.images.numpy())


def test_same_seed_same_bytes(tiny_checkpoint, tmp_path):
    def run(name: str, seed: int) -> bytes:
        invoke("sample", "-k", tiny_checkpoint, "--digits", "2,5", "--n", 4, "--seed", seed,
               "--sampler", "ddpm", "--steps", 5, "--batch-size", 3, "--out", tmp_path / f"{name}.png",
               "--npz", tmp_path / f"{name}.npz")
        return (tmp_path / f"{name}.png").read_bytes()

    assert run("a", 1) == run("b", 1) != run("c", 2)
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert np.array_equal(a["images"], b["images"])


def test_guidance_interval_option_is_the_python_api(tiny_checkpoint, tmp_path):
    npz = tmp_path / "s.npz"
    out = invoke("sample", "-k", tiny_checkpoint, "--digits", "1,6", "--n", 3, "--steps", 10,
                 "--guidance-interval", "0.3,0.7", "--out", tmp_path / "s.png", "--npz", npz)
    assert "guidance 2 in t/(T-1) [0.3, 0.7]" in out
    api = load(tiny_checkpoint, device="cpu").sample([1, 6], n=3, steps=10,
                                                     guidance_interval=(0.3, 0.7))
    assert api.passes == 14  # T = 50, 10 steps: 4 of them guided
    with np.load(npz) as data:
        assert np.array_equal(data["images"], api.images.numpy())
    out = invoke("animate", "-k", tiny_checkpoint, "--digits", "0,3", "--steps", 8, "--frames", 3,
                 "--guidance-interval", "0,0.5", "--out", tmp_path / "d.gif")
    assert "guidance 2 in t/(T-1) [0, 0.5]" in out


def test_spacing_option_is_the_python_api(tiny_checkpoint, tmp_path):
    npz = tmp_path / "k.npz"
    out = invoke("sample", "-k", tiny_checkpoint, "--digits", "2,5", "--n", 2, "--steps", 6,
                 "--spacing", "karras", "--out", tmp_path / "k.png", "--npz", npz)
    assert "6 karras steps" in out
    pipe = load(tiny_checkpoint, device="cpu")
    api = pipe.sample([2, 5], n=2, settings=pipe.settings(steps=6, spacing="karras"))
    plain = pipe.sample([2, 5], n=2, steps=6)
    with np.load(npz) as data:
        assert np.array_equal(data["images"], api.images.numpy())
        assert not np.array_equal(data["images"], plain.images.numpy())
    out = invoke("animate", "-k", tiny_checkpoint, "--digit", 4, "--steps", 6, "--frames", 3,
                 "--spacing", "karras", "--out", tmp_path / "k.gif")
    assert "6 karras steps" in out


def test_animate_writes_the_requested_frames(tiny_checkpoint, tmp_path):
    gif, strip = tmp_path / "d.gif", tmp_path / "strip.png"
    out = invoke("animate", "-k", tiny_checkpoint, "--digits", "0,3", "--steps", 8, "--frames", 5,
                 "--scale", 2, "--out", gif, "--strip", strip)
    assert "5 frames of 2 digits" in out
    frames = iio.imread(gif, index=None)
    assert frames.shape[0] == 5 and frames.shape[2] == 2 * (2 * CELL + 2)
    assert Image.open(strip).size == (2 * (5 * CELL + 2), 2 * (2 * CELL + 2))


def test_summarize_reports_the_checkpoint(tiny_checkpoint):
    summary = json.loads(invoke("summarize", "-k", tiny_checkpoint, "--json"))
    model, _ = model_from_checkpoint(load_checkpoint(tiny_checkpoint))
    assert summary["parameters"] == count_parameters(model)
    info = summary["checkpoint"]
    assert info["step"] == 20 and info["ema"] is True and info["version"] and info["created"]
    assert summary["diffusion"] == {"schedule": "linear", "timesteps": 50, "objective": "eps"}
    from_config = json.loads(invoke("summarize", "--config", TINY, "--json"))
    assert from_config["parameters"] == summary["parameters"] and from_config["checkpoint"] is None
    text = invoke("summarize", "-k", tiny_checkpoint)
    assert f"{summary['parameters']:,}" in text and "training step" in text


# --------------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def broken(tiny_checkpoint, tmp_path_factory) -> Path:
    """A folder with a truncated checkpoint and one whose weights do not fit its config."""
    folder = tmp_path_factory.mktemp("broken")
    (folder / "truncated.pt").write_bytes(tiny_checkpoint.read_bytes()[:5000])
    other = load_checkpoint(tiny_checkpoint)
    other["config"]["model"]["channels"] = [16, 32]
    save_checkpoint(folder / "other.pt", other)
    no_config = load_checkpoint(tiny_checkpoint)
    del no_config["config"]
    save_checkpoint(folder / "no-config.pt", no_config)
    nan = load_checkpoint(tiny_checkpoint)
    for tensor in nan["ema"].values():
        tensor.fill_(float("nan"))
    save_checkpoint(folder / "nan.pt", nan)
    (folder / "file").write_text("not a folder")
    return folder


BAD = [
    (["sample", "--digit", "10"], "digit: got 10"),
    (["sample", "--digits", "1,x"], "--digits"),
    (["sample", "--digit", "1", "--all"], "exclude each other"),
    (["sample", "--n", "0"], "n: got 0"),
    (["sample", "--steps", "0"], "steps: got 0"),
    (["sample", "--steps", "51"], "steps: got 51"),
    (["sample", "--sampler", "euler"], "unknown sampler"),
    (["sample", "--checkpoint", "{broken}/missing.pt"], "not found"),
    (["sample", "--checkpoint", "{broken}/truncated.pt"], "truncated"),
    (["sample", "--checkpoint", "{broken}/other.pt"], "do not fit its model config"),
    (["animate", "--frames", "12"], "frames: got 12"),
    (["animate", "--out", "{out}/d.avi"], ".gif or .mp4"),
    # issue 13
    (["sample", "--checkpoint", "{broken}/no-config.pt"], "'config' is NoneType"),
    (["sample", "--checkpoint", "{broken}/nan.pt"], "NaN or infinite values"),
    (["sample", "--out", "{out}/x.png", "--npz", "{out}/x.png"], "--out and --npz both name"),
    (["sample", "--npz", "{out}/y.png"], "written as NPZ, so its name must end in .npz"),
    (["sample", "--out", "{out}/s.txt"], "written as PNG, so its name must end in .png"),
    (["sample", "--individual", "{broken}/file"], "exists and is not a folder"),
    (["sample", "--eta", "0.5", "--sampler", "dpmpp"], "only the ddim sampler uses it"),
    (["animate", "--out", "{out}/a.gif", "--strip", "{out}/a.gif"], "--out and --strip both"),
    (["animate", "--fps", "1e-9"], "--fps: got 1e-09"),
    (["animate", "--fps", "inf"], "--fps: got inf"),
    (["animate", "--hold", "inf"], "--hold: got inf"),
    (["sample", "--n", "100000000"], "--n: got 100000000, must be an integer between 1 and 1,000,000"),
    (["sample", "--n", "400000", "--npz", "x.npz", "--batch-size", "65536"], "of memory but only"),
    (["sample", "--n", "2000", "--digit", "3"], "the grid shows at most 1024 images per digit"),
    # issue 10
    (["sample", "--guidance-interval", "0.5"], "--guidance-interval: expected two comma-separated"),
    (["sample", "--guidance-interval", "a,b"], "--guidance-interval: expected two comma-separated"),
    (["sample", "--guidance-interval", "0.8,0.2"], "guidance_interval: got (0.8, 0.2), must be"),
    (["animate", "--guidance-interval", "0,2"], "guidance_interval: got (0.0, 2.0), must be"),
    (["sample", "--spacing", "cosine"], "unknown spacing 'cosine'; choose one of linspace, "
                                        "trailing, karras"),
]


def bad_args(args: list[str], checkpoint: Path, broken: Path, out: Path) -> list[str]:
    """A failing command line, completed with a checkpoint and output paths under ``out``."""
    args = [a.format(broken=broken, out=out) for a in args]
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(checkpoint)]
    if "--out" not in args:
        args += ["--out", str(out / ("x.png" if args[0] == "sample" else "x.gif"))]
    if args[0] == "sample" and "2000" not in args:
        args += [] if "--npz" in args else ["--npz", str(out / "x.npz")]
        args += [] if "--individual" in args else ["--individual", str(out / "each")]
    return args


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_writes_nothing(tiny_checkpoint, broken, tmp_path, monkeypatch,
                                                  capsys, args, message):
    """Through the console-script entry point, in-process (a subprocess per case is slow)."""
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["mnistdiff", *bad_args(args, tiny_checkpoint, broken, out)])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == 1
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err
    assert not out.exists()


def test_bad_input_in_a_real_process(tiny_checkpoint, broken, tmp_path):
    (args, message), out = BAD[9], tmp_path / "out"  # a checkpoint of another architecture
    r = subprocess.run([sys.executable, "-m", "mnistdiff", *bad_args(args, tiny_checkpoint, broken, out)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert message in r.stderr and "Traceback" not in r.stderr and not out.exists()


# --------------------------------------------------------------------------------- issue 13

def test_output_that_is_the_checkpoint_is_refused(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """`sample -k last.pt -o last.pt` turned the checkpoint into a PNG; now it is one line."""
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(tiny_checkpoint.read_bytes())
    for args in (["sample", "-k", str(ckpt), "-o", str(ckpt)],
                 ["sample", "-k", str(tmp_path), "--npz", str(ckpt)],
                 ["animate", "-k", str(ckpt), "--strip", str(ckpt)]):
        monkeypatch.setattr(sys, "argv", ["mnistdiff", *args])
        with pytest.raises(SystemExit) as exit_:
            main()
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 1 and len(err.splitlines()) == 1
        assert "is also this command's checkpoint" in err, err
    assert ckpt.read_bytes() == tiny_checkpoint.read_bytes()


def test_error_messages_keep_their_brackets(monkeypatch, capsys):
    """rich markup is escaped: the MP4 hint says pip install imageio[ffmpeg], not imageio."""
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    monkeypatch.setattr(sys, "argv", ["mnistdiff", "animate", "--out", "x.mp4"])
    with pytest.raises(SystemExit):
        main()
    assert "pip install imageio[ffmpeg]" in capsys.readouterr().err


def test_config_show_of_a_checkpoint_is_one_line(tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["mnistdiff", "config", "show", "-c", str(tiny_checkpoint)])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and len(err.splitlines()) == 1 and "not a YAML text file" in err


def test_help_shows_flags_without_a_value_and_says_what_n_counts():
    env = {"COLUMNS": "200"}
    sample_help = runner.invoke(app, ["sample", "--help"], env=env).output
    assert "per digit" in sample_help and "--all" in sample_help
    for line in sample_help.splitlines():
        if "--all " in line or "--ema " in line:
            assert "<bool>" not in line, line
    assert "in total" in runner.invoke(app, ["evaluate", "--help"], env=env).output
    assert "per class" in runner.invoke(app, ["data", "preview", "--help"], env=env).output


def test_large_jobs_stream_and_the_grid_shows_the_first_images(tiny_checkpoint, tmp_path,
                                                                monkeypatch):
    """The NPZ is written batch by batch; the grid keeps only its first GRID_MAX per digit."""
    from mnistdiff import jobs

    monkeypatch.setitem(jobs.LIMITS, "grid", (1, 4))
    png, npz = tmp_path / "g.png", tmp_path / "s.npz"
    out = invoke("sample", "-k", tiny_checkpoint, "--digits", "1,2", "--n", 6, "--batch-size", 5,
                 "--scale", 1, "--steps", 2, "--out", png, "--npz", npz)
    assert "12 images (2 digits x 6)" in out and "the grid shows the first 4 of each digit" in out
    images, labels = load_npz_samples(npz)
    api = load(tiny_checkpoint, device="cpu").sample([1, 2], n=6, steps=2, batch_size=5)
    assert torch.equal(images, api.images) and labels.tolist() == [1] * 6 + [2] * 6
    grid = np.asarray(Image.open(png))
    plain = np.asarray(image_grid(torch.cat([api.images[:4], api.images[6:10]]), nrow=4))
    assert np.array_equal(grid[:, -plain.shape[1]:], plain)


def test_disk_full_while_sampling_leaves_no_output(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import errno

    from mnistdiff import files

    real_fsync, calls = os.fsync, []

    def full(fd):  # the NPZ is fine, the grid PNG after it hits a full disk
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", full)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["mnistdiff", "sample", "-k", str(tiny_checkpoint), "--n", "2",
                                      "--steps", "2", "-o", str(out / "g.png"), "--npz",
                                      str(out / "s.npz")])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and len(err.splitlines()) == 1 and "No space left" in err
    assert not out.exists()
