"""The run folder: where ``train`` writes, how a run is found, locked, continued and rewound.

    runs/NAME/
        config.yaml     the config this session trains (rewritten on resume, --set included)
        checkpoints/    step-000100.pt ... (the newest train.keep_last) and last.pt, the newest,
                        which ``--resume`` and ``sample`` read (written by checkpoint.py)
        log.jsonl       one record per log line: step, epoch, loss, lr, images_per_s, elapsed_s
        samples/        step-NNNNNN.png, a grid with one row per class
        loss.png        the log's loss curve
        summary.json    the last session's TrainResult, plus device, world_size, amp, compile
        .lock           the pid of the process training into the folder (see run_lock)

Nothing is created before :func:`run_lock`: a run that cannot start (no data, a bad checkpoint)
leaves no folder behind. The checkpoint format itself lives in checkpoint.py, which imports this
module's layout names; this module imports checkpoint.py only inside functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from .config import Config, apply_overrides, config_from_dict, dump_yaml, load_config
from .errors import MnistdiffError
from .files import write_atomic

RUNS_DIR = Path("runs")
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
STEP_FILE = re.compile(r"step-(\d+)\.pt")
LOG = "log.jsonl"


# --------------------------------------------------------------------------------- finding

def run_folder(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint lives in (``runs/NAME`` for ``runs/NAME/checkpoints/x.pt``)."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else None


def prepare_run(config: str | Path | None, overrides: list[str], out: str | Path | None,
                resume: str | None) -> tuple[Config, Path, Path | None]:
    """What the ``train`` command resolves: (config, run folder, checkpoint to resume or None).

    ``resume`` is "latest" (the newest last.pt under ``out`` if given, else under runs/), a
    checkpoint file or a run folder. Without ``--config`` a resumed run keeps its stored config
    (``overrides`` still apply); the run folder defaults to the checkpoint's own."""
    from .checkpoint import load_checkpoint, resolve_checkpoint

    ckpt_path = None
    if resume is not None:
        ckpt_path = resolve_checkpoint(out if resume == "latest" and out else resume)
    if config is None and ckpt_path is not None:
        stored = load_checkpoint(ckpt_path)["config"]
        cfg = config_from_dict(apply_overrides(stored, overrides))
    else:
        cfg = load_config(config, overrides)
    if out is None and ckpt_path is not None:
        out = run_folder(ckpt_path)
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = RUNS_DIR / f"{Path(config).stem if config else 'default'}-{stamp}"
    return cfg, Path(out), ckpt_path


# --------------------------------------------------------------------------------- log.jsonl

def append_log(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def trim_log(path: Path, step: int) -> None:
    """Drop log records after ``step`` (left by a run that went on past the resumed checkpoint)."""
    kept = [r for r in read_log(path) if r["step"] <= step]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


def rewind_note(out_dir: Path, step: int) -> str | None:
    """One line when resuming at ``step`` rewinds a run folder that went further (``--resume``
    of an older step-N.pt into its own run): what is kept and what is dropped, so nothing is
    lost silently. None when nothing is rewound."""
    later = [r["step"] for r in read_log(out_dir / LOG) if r["step"] > step]
    step_files = sorted(int(m.group(1)) for p in (out_dir / CHECKPOINTS).glob("step-*.pt")
                        if (m := STEP_FILE.fullmatch(p.name)) and int(m.group(1)) > step)
    if not later and not step_files:
        return None
    reached = max(later + step_files)
    dropped = [f"{len(later)} log.jsonl records after step {step}"] if later else []
    if step_files:
        dropped.append("last.pt and step files " + ", ".join(map(str, step_files))
                       + " as training reaches them again")
    return (f"[yellow]rewinding:[/] this run reached step {reached}, resuming at step {step}; "
            f"kept: everything up to step {step}; dropped: {' and '.join(dropped)} (resume into "
            f"a new --out to keep both)")


# --------------------------------------------------------------------------------- opening, closing

def check_new_run(out_dir: Path, resuming: bool) -> None:
    """MnistdiffError when a fresh run (not ``resuming``) would train into a folder that already
    holds one: its checkpoints would be overwritten."""
    if not resuming and (out_dir / CHECKPOINTS / LAST).exists():
        raise MnistdiffError(f"{out_dir} already holds a run; continue it with --resume {out_dir} "
                             f"or choose another --out")


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold an advisory lock on ``out_dir/.lock`` while training into it, so a second
    ``train --resume`` of the same run is refused (two trainers would interleave log.jsonl and
    overwrite each other's checkpoints). The OS drops the lock when the process dies, even by
    kill -9, so a stale lock file never blocks anything. Creates ``out_dir``."""
    import fcntl

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        f = open(out_dir / ".lock", "a+")
    except OSError as e:
        raise MnistdiffError(f"cannot use {out_dir} as a run folder: {e.strerror}") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise MnistdiffError(f"{out_dir} is being trained by another process (pid {holder}); "
                                 f"wait for it to finish or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_run(out_dir: Path, cfg: Config, step: int, resuming: bool,
             say: Callable[..., None]) -> None:
    """Make ``out_dir`` ready for a session that starts at ``step`` (call it under
    :func:`run_lock`): checkpoints/, config.yaml, log.jsonl trimmed to ``step``, and a note
    through ``say`` when resuming rewinds the run."""
    check_new_run(out_dir, resuming)  # again: another run may have got here first
    ckpt_dir = out_dir / CHECKPOINTS
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MnistdiffError(f"cannot create {ckpt_dir}: {e.strerror}") from None
    rewind = rewind_note(out_dir, step)
    if rewind:
        say(rewind)
    write_atomic(out_dir / "config.yaml", dump_yaml(cfg).encode())
    trim_log(out_dir / LOG, step)
    say(f"run folder [bold]{out_dir}[/]: config.yaml, checkpoints/, log.jsonl, samples/, "
        f"loss.png, summary.json")


def close_run(out_dir: Path, summary: dict) -> None:
    """At the end of a session: loss.png from the whole log, and summary.json (Paths in
    ``summary`` are written as strings)."""
    from .visualize import plot_loss

    records = read_log(out_dir / LOG)
    if records:
        plot_loss([r["step"] for r in records], [r["loss"] for r in records],
                  out_dir / "loss.png", f"{out_dir.name}: training loss")
    summary = {k: str(v) if isinstance(v, Path) else v for k, v in summary.items()}
    write_atomic(out_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())


# --------------------------------------------------------------------------------- reports

REPORTS = "reports"


def report_path(checkpoint: str | Path | None) -> Path:
    """Where ``evaluate`` writes its report when no --out is given: into the run folder of a
    run's checkpoint (``reports/report-<time>.json``, the newest shown on the page's card),
    else ``report.json`` in the current folder."""
    folder = run_folder(Path(checkpoint)) if checkpoint is not None else None
    if folder is None:
        return Path("report.json")
    return folder / REPORTS / f"report-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"


def latest_report(checkpoint: str | Path) -> dict | None:
    """The newest ``evaluate`` report in a run's folder (None when there is none or it cannot
    be read)."""
    folder = run_folder(Path(checkpoint))
    if folder is None:
        return None
    reports = sorted((folder / REPORTS).glob("report-*.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(reports):
        try:
            report = json.loads(path.read_text())
            if isinstance(report, dict) and isinstance(report.get("results"), list):
                return report
        except (OSError, ValueError):
            continue
    return None
