"""The run folder (run.py): log records, rewinding, locking, opening and closing a session."""

import json
import os

import pytest

from mnistdiff import checkpoint, run
from mnistdiff.config import Config
from mnistdiff.errors import MnistdiffError


def test_log_append_read_and_trim(tmp_path):
    log = tmp_path / run.LOG
    assert run.read_log(log) == []
    for step in (5, 10, 15):
        run.append_log(log, {"step": step, "loss": 1.0 / step})
    assert [r["step"] for r in run.read_log(log)] == [5, 10, 15]
    run.trim_log(log, 10)
    assert [r["step"] for r in run.read_log(log)] == [5, 10]


def test_rewind_note_names_what_is_dropped(tmp_path):
    for step in (5, 10, 15, 20):
        run.append_log(tmp_path / run.LOG, {"step": step, "loss": 1.0})
    (tmp_path / run.CHECKPOINTS).mkdir()
    for step in (10, 20):
        (tmp_path / run.CHECKPOINTS / f"step-{step:06d}.pt").write_bytes(b"")
    assert run.rewind_note(tmp_path, 20) is None
    note = run.rewind_note(tmp_path, 10)
    assert "reached step 20, resuming at step 10" in note
    assert "2 log.jsonl records after step 10 and last.pt and step files 20" in note


def test_open_run_writes_the_folder_and_refuses_a_second_fresh_run(tmp_path):
    said = []
    out = tmp_path / "r"
    with run.run_lock(out):
        assert (out / ".lock").read_text().strip() == str(os.getpid())
        run.open_run(out, Config(), 0, resuming=False, say=said.append)
    assert (out / run.CHECKPOINTS).is_dir() and (out / "config.yaml").is_file()
    assert (out / run.LOG).read_text() == "" and "run folder" in said[-1]
    (out / run.CHECKPOINTS / run.LAST).write_bytes(b"")
    with pytest.raises(MnistdiffError, match="already holds a run; continue it with --resume"):
        run.check_new_run(out, resuming=False)
    run.check_new_run(out, resuming=True)


def test_close_run_writes_the_summary_and_the_loss_plot(tmp_path):
    run.append_log(tmp_path / run.LOG, {"step": 1, "loss": 0.5})
    run.append_log(tmp_path / run.LOG, {"step": 2, "loss": 0.25})
    run.close_run(tmp_path, {"out_dir": tmp_path, "step": 2})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"out_dir": str(tmp_path),
                                                                   "step": 2}
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_names_that_moved_stay_importable_from_checkpoint():
    for name in ("RUNS_DIR", "LAST", "STEP_FILE", "prepare_run", "run_folder"):
        assert getattr(checkpoint, name) is getattr(run, name)
