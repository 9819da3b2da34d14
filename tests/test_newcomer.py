"""A newcomer's first ten minutes: a broken torchvision, doctor, threads, a run's data folder,
fast errors, plain output, help texts, nouns, model facts, reports, notebook grids."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mnistdiff import doctor, jobs
from mnistdiff.cli import app
from mnistdiff.errors import DataError, MnistdiffError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture()
def broken_torchvision(monkeypatch):
    """The import fails as a CUDA torchvision beside a CPU torch does."""
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "torchvision" or name.startswith("torchvision."):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake)


def test_a_broken_torchvision_is_one_line_with_the_fix(broken_torchvision, tmp_path, monkeypatch):
    from mnistdiff.data import find_data_dir

    monkeypatch.delenv("MNISTDIFF_DATA", raising=False)
    with pytest.raises(DataError) as e:
        find_data_dir("mnist", tmp_path / "nothing", download=True)
    line = str(e.value)
    assert "torchvision does not load beside torch" in line and "\n" not in line
    assert "operator torchvision::nms does not exist" in line and "pip install" in line
    items = {item.name: item for item in doctor.checks()}
    assert items["torchvision"].status == "FAIL" and "pip install" in items["torchvision"].text


def test_doctor_says_one_line_per_item_and_its_status():
    result = runner.invoke(app, ["doctor"])
    lines = result.output.strip().splitlines()
    names = [line.split(":")[0].split(maxsplit=1)[1] for line in lines]
    for name in ("python", "mnistdiff", "torch", "torchvision", "cuda", "cpu bf16 units",
                 "threads", "data mnist", "model mnist", "classifier mnist"):
        assert name in names, (name, lines)
    broken = any(line.startswith("FAIL") for line in lines)
    assert result.exit_code == (1 if broken else 0)
    assert doctor.matching_torchvision("2.14.1+cu130") == "0.29"


def test_threads_set_torchs_threads_and_bad_values_are_one_line(tiny_checkpoint, tmp_path):
    before = torch.get_num_threads()
    try:
        invoke("sample", "-k", tiny_checkpoint, "--digit", 2, "--n", 1, "--steps", 2,
               "--threads", 1, "-o", tmp_path / "s.png")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    result = runner.invoke(app, ["sample", "-k", str(tiny_checkpoint), "--threads", "0"])
    assert "--threads: got 0" in str(result.exception)


def test_errors_come_before_torch_is_imported():
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", "import sys\nfrom mnistdiff.cli import main\n"
                        "sys.argv = ['mnistdiff', 'sample', '--n', '0']\n"
                        "try:\n    main()\nexcept SystemExit:\n    pass\n"
                        "print('torch' in sys.modules)"], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "80"})
    assert r.stdout.strip() == "False" and "--n: got 0" in r.stderr
    assert time.perf_counter() - start < 5


def test_piped_output_is_not_wrapped(tiny_checkpoint, tmp_path):
    r = subprocess.run([sys.executable, "-m", "mnistdiff", "sample", "-k", str(tiny_checkpoint),
                        "--digits", "1,2", "--n", "1", "--steps", "2", "--seed", "0",
                        "-o", str(tmp_path / "s.png")], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "40"})
    line = next(line for line in r.stdout.splitlines() if line.startswith("2 images"))
    assert "seed 0: 2 NFE" in line  # one line, whatever the terminal width says


def test_help_names_the_choices_and_shows_no_type_labels_on_flags():
    from mnistdiff.samplers import SAMPLERS, SPACINGS

    text = runner.invoke(app, ["sample", "--help"], env={"COLUMNS": "200"}).output
    assert "samplers.SAMPLERS" not in text and "data.DATASETS" not in text
    assert " or ".join([", ".join(list(SAMPLERS)[:-1]), list(SAMPLERS)[-1]]) in text
    assert ", ".join(SPACINGS[:-1]) + " or " + SPACINGS[-1] in text
    for line in text.splitlines():
        if any(flag in line for flag in ("--help ", "--all ", "--ema ")):
            assert "<bool>" not in line, line


def test_a_dataset_of_clothes_has_items_not_digits():
    class Pipe:
        config = type("C", (), {"data": type("D", (), {"dataset": "fashion-mnist"})})()
        classes = ("T-shirt/top", "Trouser")

    assert jobs._what(Pipe, [0, 1], 8) == "2 items x 8"
    assert jobs._what(Pipe, [1], 8) == "item Trouser"


def test_summarize_of_a_bundled_model_is_consistent():
    text = invoke("summarize", "-k", "mnist")
    assert "bundled as the model's" in text and "the raw weights" not in text
    card = json.loads((ROOT / "mnistdiff/assets/models/mnist/card.json").read_text())
    assert f"trained with {card['training']['mnistdiff_version']}, bundled with " \
           f"{card['bundled']['mnistdiff_version']}" in text


def test_a_run_remembers_its_data_and_keeps_its_reports(tiny_checkpoint, mnist_dir, tmp_path,
                                                        monkeypatch):
    """evaluate -k RUN reads the run's stored data folder (no --data-dir, no $MNISTDIFF_DATA)
    and writes its report into the run folder, which the page's card then shows."""
    import shutil

    from mnistdiff.checkpoint import load_checkpoint, save_checkpoint
    from mnistdiff.models import metrics, read

    monkeypatch.delenv("MNISTDIFF_DATA", raising=False)
    run = Path(shutil.copytree(Path(tiny_checkpoint).parents[1], tmp_path / "run"))
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    ckpt["config"]["data"].update(root=str(mnist_dir), verify=True)  # trained on real MNIST
    save_checkpoint(run / "checkpoints" / "last.pt", ckpt)
    out = invoke("evaluate", "-k", run, "--n", 20, "--steps", 2, "--guidance-sweep", "1,2")
    reports = list((run / "reports").glob("report-*.json"))
    assert len(reports) == 1 and f"wrote {reports[0]}" in out
    assert "lowest class accuracy (guidance 1):" in out and "lowest class accuracy (guidance 2):" in out
    rows = metrics(read(run).info)
    assert [r["guidance"] for r in rows] == [1.0, 2.0] and rows[0]["label"].startswith("evaluate")


def test_a_notebook_shows_samples_as_their_grid(tiny_checkpoint):
    import io

    from mnistdiff import load

    out = load(tiny_checkpoint, device="cpu").sample([3, 5], n=2, steps=2)
    grid = out.grid()
    assert isinstance(grid, Image.Image) and grid.width > 2 * 30
    png = out._repr_png_()
    assert Image.open(io.BytesIO(png)).size == grid.size
    one = load(tiny_checkpoint, device="cpu").sample(7, n=4, steps=2).grid(scale=1)
    assert one.size == (2 * 30 + 2, 2 * 30 + 2)  # one class: a square grid
