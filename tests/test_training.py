"""The training loop on tiny configs on the CPU: learning, exact resume, signals (SIGINT, SIGHUP),
non-finite losses, damaged training states on resume, DDP with two gloo processes, and the
pieces (LR schedule, EMA) in closed form."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, synthetic_overrides
from torch import nn
from PIL import Image
from typer.testing import CliRunner

from mnistdiff import diffusion, training
from mnistdiff.checkpoint import load_checkpoint
from mnistdiff.cli import app
from mnistdiff.config import TrainConfig, load_config
from mnistdiff.data import BatchLoader, load_dataset
from mnistdiff.errors import MnistdiffError
from mnistdiff.run import run_lock
from mnistdiff.unet import ConditionalUNet

TINY = ROOT / "configs" / "tiny.yaml"
# Everything that draws random numbers or carries state across steps is switched on.
STATEFUL = ["model.dropout=0.1", "diffusion.label_dropout=0.2", "train.optimizer=adamw",
            "train.weight_decay=0.01", "train.grad_accum=2", "train.warmup_steps=3",
            "train.ema_decay=0.9", "train.ema_warmup_steps=2", "train.checkpoint_every=100",
            "sample.steps=2"]


def tiny_config(data_dir, *overrides: str):
    return load_config(TINY, [*synthetic_overrides(data_dir), *overrides])


def run(cfg, out, **kwargs) -> training.TrainResult:
    return training.train(cfg, out, device="cpu", progress=False, **kwargs)


def assert_same_training_state(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs"
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][i]["exp_avg_sq"])


def test_lr_factor_warmup_then_cosine():
    tc = TrainConfig(warmup_steps=4, lr_schedule="cosine")
    assert [training.lr_factor(s, tc, 104) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert training.lr_factor(54, tc, 104) == pytest.approx(0.5)  # half way: cos(pi/2) = 0
    assert training.lr_factor(104, tc, 104) == pytest.approx(0.0)
    assert training.lr_factor(50, TrainConfig(lr_schedule="constant"), 104) == 1.0


def test_ema_copies_during_warmup_then_averages():
    model = nn.Linear(1, 1, bias=False)
    ema = training.build_ema(model, decay=0.9)
    assert not ema.weight.requires_grad and ema.weight is not model.weight
    for step, w in enumerate([1.0, 2.0, 3.0, 4.0], start=1):
        model.weight.data.fill_(w)
        training.update_ema(ema, model, step, decay=0.9, warmup_steps=2)
    # steps 1-2 copy (ema = 2), then ema <- 0.9 ema + 0.1 w for w = 3, 4
    expected = 0.9 * (0.9 * 2.0 + 0.1 * 3.0) + 0.1 * 4.0
    assert ema.weight.item() == pytest.approx(expected)
    assert training.build_ema(model, decay=0.0) is None


def test_a_run_writes_its_folder_and_the_loss_decreases(tiny_checkpoint):
    run_dir = tiny_checkpoint.parent.parent
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    for name in ("config.yaml", "loss.png", "summary.json", "samples/step-000020.png",
                 "checkpoints/step-000010.pt", "checkpoints/step-000020.pt"):
        assert (run_dir / name).is_file(), name
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (20, 1, 8)  # 12 batches per epoch
    assert ckpt["images_seen"] == 20 * 16 and ckpt["optimizer"] and ckpt["scaler"] is None
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 20 and summary["images_per_s"] > 0


def test_resume_continues_exactly(synthetic_dir, tmp_path):
    """2N steps in one go == N steps, then resume for N more (a longer max_steps)."""
    whole = run(tiny_config(synthetic_dir, *STATEFUL, "train.max_steps=8"), tmp_path / "whole")
    run(tiny_config(synthetic_dir, *STATEFUL, "train.max_steps=4"), tmp_path / "split")
    split = run(tiny_config(synthetic_dir, *STATEFUL, "train.max_steps=8"), tmp_path / "split",
                resume=tmp_path / "split" / "checkpoints" / "last.pt")
    assert split.step == 8
    assert_same_training_state(load_checkpoint(whole.checkpoint), load_checkpoint(split.checkpoint))
    steps = [json.loads(line)["step"] for line in (tmp_path / "split/log.jsonl").open()]
    assert steps == [4, 5, 8]  # one log, continued (log_every=5, plus each run's last step)


def test_sigint_checkpoints_and_the_run_resumes_exactly(synthetic_dir, tmp_path, monkeypatch):
    cfg = tiny_config(synthetic_dir, *STATEFUL, "train.lr_schedule=cosine", "train.max_steps=6")
    whole = run(cfg, tmp_path / "whole")

    real_step, calls = training.train_step, []

    def interrupted_step(*args):
        loss = real_step(*args)
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # as if Ctrl-C came during step 3
        return loss

    monkeypatch.setattr(training, "train_step", interrupted_step)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores it)
    stopped = run(cfg, tmp_path / "split")
    assert stopped.interrupted and stopped.step == 3
    assert load_checkpoint(stopped.checkpoint)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    monkeypatch.setattr(training, "train_step", real_step)
    resumed = run(cfg, tmp_path / "split", resume=stopped.checkpoint)
    assert not resumed.interrupted and resumed.step == 6
    assert_same_training_state(load_checkpoint(whole.checkpoint),
                               load_checkpoint(resumed.checkpoint))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_dir, tmp_path,
                                                                  monkeypatch):
    real_loss, calls = diffusion.training_loss, []

    def loss_that_explodes(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * math.inf if len(calls) == 7 else loss

    monkeypatch.setattr(diffusion, "training_loss", loss_that_explodes)
    cfg = tiny_config(synthetic_dir, "train.checkpoint_every=4", "train.log_every=100")
    with pytest.raises(MnistdiffError, match=r"loss is (inf|nan) at step 7; .*last good"):
        run(cfg, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def emulate_two_ranks(cfg, steps: int) -> dict:
    """What two DDP ranks compute together, in one process: each rank's half of the global batch
    with its own random stream, gradients averaged (the mean of the two halves' losses)."""
    tc, rank = cfg.train, [training.Runtime(torch.device("cpu"), None, r, 2) for r in (0, 1)]
    data = load_dataset(cfg.data)
    halves = [BatchLoader(data, tc.batch_size, seed=tc.seed, rank=r, world_size=2).epoch(0)
              for r in (0, 1)]
    torch.manual_seed(tc.seed)
    model = ConditionalUNet(**dataclasses.asdict(cfg.model))
    optimizer = training.build_optimizer(model, tc)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  lambda s: training.lr_factor(s, tc, steps))
    schedule = diffusion.make_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps,
                                       cfg.diffusion.beta_start, cfg.diffusion.beta_end)
    for step in range(steps):
        for r in (0, 1):
            training.seed_step(rank[r], tc.seed, step)
            x0, y = next(halves[r])
            loss = diffusion.training_loss(model, schedule, x0, y,
                                           label_dropout=cfg.diffusion.label_dropout)
            (loss / 2).backward()
        nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return model.state_dict()


def test_ddp_with_two_gloo_processes_trains_on_the_global_batch(synthetic_dir, tmp_path):
    sets = [*synthetic_overrides(synthetic_dir), "train.max_steps=4", "sample.steps=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mnistdiff", "train", "-c", str(TINY), "--out", str(tmp_path / "ddp"),
           "--device", "cpu", "--no-progress", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("training summary") == 1  # only rank 0 talks and writes

    ckpt = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4 and ckpt["images_seen"] == 4 * 16  # the global batch, not 2x
    cfg = tiny_config(synthetic_dir, *sets[-2:])
    expected = emulate_two_ranks(cfg, steps=4)
    # Gloo sums the two ranks' gradients in another order than the emulation does; Adam's
    # normalisation can turn that float noise into ~1e-5 weight differences after 4 steps, while
    # a wrong batch or a missing rank moves weights by ~lr = 1e-3.
    for name, tensor in expected.items():
        torch.testing.assert_close(ckpt["model"][name], tensor, rtol=1e-4, atol=5e-5)


def test_cli_train_then_resume(synthetic_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner, data = CliRunner(), ["--data-dir", str(synthetic_dir), "--set", "data.verify=false"]
    first = runner.invoke(app, ["train", "-c", str(TINY), "--out", "runs/a", "--device", "cpu",
                                "--no-progress", "--set", "train.max_steps=3", *data])
    assert first.exit_code == 0, first.output
    assert "training summary" in first.output and "3 / 3" in first.output
    assert "sampling uses" in first.output and "raw weights" in first.output  # tiny: no EMA
    again = runner.invoke(app, ["train", "-c", str(TINY), "--out", "runs/a", *data])
    assert isinstance(again.exception, MnistdiffError) and "--resume" in str(again.exception)
    more = runner.invoke(app, ["train", "--resume", "latest", "--set", "train.max_steps=5",
                               "--no-progress", "--device", "cpu", *data])
    assert more.exit_code == 0, more.output
    assert "5 / 5" in more.output and load_checkpoint("runs/a/checkpoints/last.pt")["step"] == 5


# --------------------------------------------------------------------------------- issue 13

def ema_lag(steps: int, decay: float, rampup: float) -> float:
    """How far behind weights that move by 1 per step the EMA ends, as a fraction of the run."""
    model = nn.Linear(1, 1, bias=False)
    ema = training.build_ema(model, decay)
    for step in range(1, steps + 1):
        model.weight.data.fill_(float(step))
        training.update_ema(ema, model, step, decay, warmup_steps=0, rampup=rampup)
    return (steps - ema.weight.item()) / steps


@pytest.mark.parametrize("steps", [20, 500, 2000, 20000])
def test_ema_follows_training_progress(steps):
    """A fixed decay of 0.999 leaves a 500-step run's EMA far behind the raw weights (it still
    remembers the untrained start); tied to progress it lags a few per cent at every length,
    and in long runs it reaches the configured decay."""
    lag = ema_lag(steps, 0.999, rampup=0.05)
    assert lag < 0.08
    if steps <= 2000:
        assert ema_lag(steps, 0.999, rampup=0.0) > 0.3  # the old behaviour
    assert training.ema_decay_at(steps, 0.999, 0.05) == min(0.999, 0.5 ** (1 / (0.05 * steps)))
    assert training.ema_decay_at(10**6, 0.999, 0.05) == 0.999


def test_resume_applies_lr_schedule_intervals_and_ema_overrides(synthetic_dir, tmp_path):
    """`--resume --set train.lr=5e-2` recorded 0.05 in config.yaml but trained at the stored lr."""
    first = tiny_config(synthetic_dir, "train.max_steps=4", "train.log_every=2",
                        "train.checkpoint_every=2", "train.ema_decay=0")
    run(first, tmp_path / "r")
    more = tiny_config(synthetic_dir, "train.max_steps=9", "train.lr=5e-2", "train.log_every=1",
                       "train.checkpoint_every=3", "train.weight_decay=0.1", "train.ema_decay=0.9",
                       "train.lr_schedule=cosine")
    result = run(more, tmp_path / "r", resume=tmp_path / "r" / "checkpoints" / "last.pt")
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").open()]
    assert [r["step"] for r in log] == [2, 4, 5, 6, 7, 8, 9]  # log_every 2, then 1
    after = {r["step"]: r["lr"] for r in log if r["step"] > 4}
    for step, lr in after.items():  # the new peak lr on the new cosine schedule to step 9
        assert lr == pytest.approx(5e-2 * training.lr_factor(step, more.train, 9))
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["ema"] is not None and result.sampling_weights == "ema"  # EMA switched on
    assert ckpt["optimizer"]["param_groups"][0]["weight_decay"] == 0.1
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("step-*")) == [
        "step-000004.pt", "step-000006.pt", "step-000009.pt"]  # every 3 now (keep_last 3)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["sampling_weights"] == "ema"


@pytest.mark.parametrize("override, key", [
    ("train.batch_size=8", "train.batch_size"), ("train.grad_accum=2", "train.grad_accum"),
    ("train.optimizer=adamw", "train.optimizer"), ("train.seed=3", "train.seed"),
    ("diffusion.timesteps=40", "diffusion.timesteps"),
    ("diffusion.objective=v", "diffusion.objective"),
])
def test_resume_refuses_settings_that_cannot_change(tiny_checkpoint, synthetic_dir, tmp_path,
                                                    override, key):
    cfg = tiny_config(synthetic_dir, "train.ema_decay=0.9", "train.ema_warmup_steps=5",
                      "train.max_steps=30", override)
    with pytest.raises(MnistdiffError, match=f"trained with {key}=.* cannot change"):
        run(cfg, tmp_path / "r", resume=tiny_checkpoint)
    assert not (tmp_path / "r").exists()


def test_a_second_trainer_of_the_same_run_is_refused(synthetic_dir, tmp_path):
    run_dir = tmp_path / "r"
    with run_lock(run_dir):  # as if another process were training it
        with pytest.raises(MnistdiffError, match=f"being trained by another process "
                                                 f"\\(pid {os.getpid()}\\)"):
            run(tiny_config(synthetic_dir, "train.max_steps=2"), run_dir)
    run(tiny_config(synthetic_dir, "train.max_steps=2"), run_dir)  # released: it trains


def test_resuming_an_older_step_file_says_what_it_drops(synthetic_dir, tmp_path):
    from rich.console import Console

    cfg = tiny_config(synthetic_dir, "train.max_steps=20")  # log_every 5, checkpoint_every 10
    run(cfg, tmp_path / "r")
    console = Console(record=True, width=300)
    training.train(cfg, tmp_path / "r", resume=tmp_path / "r/checkpoints/step-000010.pt",
                   device="cpu", progress=False, console=console)
    text = console.export_text()
    assert ("rewinding: this run reached step 20, resuming at step 10; kept: everything up to "
            "step 10; dropped: 2 log.jsonl records after step 10 and last.pt and step files 20"
            in text), text


def test_bad_run_folders_are_one_line(synthetic_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(MnistdiffError, match="is a file; give --out a folder"):
        run(tiny_config(synthetic_dir, "train.max_steps=2"), tmp_path / "file")
    with pytest.raises(MnistdiffError, match="cannot use /proc/mnistdiff-x/run as a run folder"):
        run(tiny_config(synthetic_dir, "train.max_steps=2"), "/proc/mnistdiff-x/run")


def test_disk_full_while_checkpointing_is_one_line(synthetic_dir, tmp_path, monkeypatch):
    import errno

    from mnistdiff import files

    cfg = tiny_config(synthetic_dir, "train.max_steps=20")  # checkpoints at 10 and 20
    real_fsync, calls = os.fsync, []

    def full(fd):
        calls.append(fd)
        if len(calls) > 4:  # config.yaml, the log trim and the step-10 pair succeed, then full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(MnistdiffError, match="No space left on device"):
        run(cfg, tmp_path / "r")
    ckpts = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert ckpts == ["last.pt", "step-000010.pt"]  # no temp files, no lone step file
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["step"] == 10
    assert not list((tmp_path / "r").rglob("*.tmp"))


def test_amp_auto_on_a_cpu_follows_its_bf16_units(monkeypatch):
    cpu = torch.device("cpu")
    assert isinstance(training.cpu_has_bf16(), bool)
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: True)
    assert training.amp_dtype("auto", cpu) is torch.bfloat16
    assert training.amp_dtype("off", cpu) is None
    monkeypatch.setattr(training, "cpu_has_bf16", lambda: False)
    assert training.amp_dtype("auto", cpu) is None
    assert training.amp_dtype("bf16", cpu) is torch.bfloat16  # asked for explicitly


def test_patch_size_2_trains_resumes_and_samples(synthetic_dir, tmp_path, monkeypatch):
    # cpu-quick's and the bundled model's layout, end to end on the tiny config
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    common = ["--data-dir", str(synthetic_dir), "--set", "data.verify=false", "--device", "cpu",
              "--no-progress", "--set", "model.patch_size=2", "--set", "sample.steps=2"]
    first = runner.invoke(app, ["train", "-c", str(TINY), "--out", "runs/p", "--set",
                                "train.max_steps=3", *common])
    assert first.exit_code == 0, first.output
    more = runner.invoke(app, ["train", "--resume", "runs/p", "--set", "train.max_steps=4",
                               *common])
    assert more.exit_code == 0, more.output
    ckpt = load_checkpoint("runs/p/checkpoints/last.pt")
    assert ckpt["step"] == 4 and ckpt["config"]["model"]["patch_size"] == 2
    assert ckpt["model"]["stem.weight"].shape[1] == 4  # 2x2 patches of one channel
    out = runner.invoke(app, ["sample", "-k", "runs/p", "--digit", "3", "--n", "2", "--steps",
                              "2", "-o", "p.png"])
    assert out.exit_code == 0, out.output
    assert Image.open("p.png").size[0] > 28


# --------------------------------------------------------------------------------- damaged resume

def _first_moment(c: dict) -> dict:
    return next(iter(c["optimizer"]["state"].values()))


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("rng"), r"'rng' is NoneType, expected the RNG states"),
    (lambda c: c.update(rng=[1, 2]), r"'rng' is list"),
    (lambda c: c["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)), r"'rng.torch' is not"),
    (lambda c: c["rng"].pop("torch"), r"'rng.torch' is not"),
    (lambda c: c["rng"].update(numpy=[[1, 2], 0, 0, 0.0]), r"'rng.numpy' is not"),
    (lambda c: c["rng"]["python"].__setitem__(1, [0] * 10), r"'rng.python' is not"),
    (lambda c: c["rng"].update(cuda="x"), r"'rng.cuda' is not"),
    (lambda c: c.update(optimizer=[1]), r"'optimizer' is not an optimizer state"),
    (lambda c: c["optimizer"].pop("param_groups"), r"'optimizer' is not an optimizer state"),
    (lambda c: c["optimizer"]["param_groups"].pop(), r"'optimizer' has 1 parameter groups, "
                                                     r"the model's optimizer 2"),
    (lambda c: c["optimizer"]["param_groups"][0]["params"].pop(), r"'optimizer' group 0 holds"),
    (lambda c: c["optimizer"]["param_groups"][0].update(betas="x"), r"group 0 has betas='x'"),
    (lambda c: c["optimizer"]["param_groups"][1].pop("lr"), r"group 1 has lr=None"),
    (lambda c: _first_moment(c).update(exp_avg=torch.zeros(3)), r"'optimizer' state 'exp_avg' "
                                                                r"of parameter 0 is a tensor of "
                                                                r"shape \(3,\)"),
    (lambda c: c["optimizer"]["state"].update({999: {}}), r"state 999 for no parameter"),
    (lambda c: c.update(scheduler=3), r"'scheduler' is not an LR scheduler state"),
    (lambda c: c["scheduler"].pop("lr_lambdas"), r"'scheduler' is not"),
    (lambda c: c["scheduler"].update(last_epoch="ten"), r"'scheduler' is not"),
    (lambda c: c.update(scaler={"scale": 2.0}), r"'scaler' is not a loss scaler state"),
    (lambda c: c.update(scaler="x"), r"'scaler' is not"),
    (lambda c: c.pop("train_seconds"), r"'train_seconds' is None"),
    (lambda c: c.update(optimizer=None, scheduler=None, rng=None), r"holds weights only"),
], ids=["no-rng", "rng-list", "rng-torch-short", "rng-torch-missing", "rng-numpy", "rng-python",
        "rng-cuda", "optimizer-list", "optimizer-no-groups", "optimizer-one-group",
        "optimizer-group-size", "optimizer-betas", "optimizer-no-lr", "optimizer-moment-shape",
        "optimizer-stray-state", "scheduler-int", "scheduler-no-lambdas", "scheduler-epoch-str",
        "scaler-keys", "scaler-str", "no-train-seconds", "weights-only"])
def test_resuming_a_damaged_training_state_is_one_line_and_writes_nothing(
        tiny_checkpoint, tmp_path, change, message):
    """Each of these was a KeyError / ValueError / AttributeError traceback, some only at the
    first step, after config.yaml and the log had been rewritten."""
    import shutil

    from mnistdiff.checkpoint import prepare_run, save_checkpoint
    from mnistdiff.errors import CheckpointError

    run_dir = shutil.copytree(tiny_checkpoint.parent.parent, tmp_path / "run")
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    change(ckpt)
    save_checkpoint(run_dir / "checkpoints" / "last.pt", ckpt)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    cfg, out, path = prepare_run(None, ["train.max_steps=30"], None, str(run_dir))
    with pytest.raises(CheckpointError, match=message) as e:
        run(cfg, out, resume=path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_what_torch_rejects_beyond_the_checks_is_one_line_too():
    from mnistdiff.checkpoint import restoring
    from mnistdiff.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"^x.pt: damaged checkpoint \('scaler' cannot be "
                                              r"restored: 'growth_factor'\)$"):
        with restoring("scaler", "x.pt"):
            torch.amp.GradScaler("cpu", enabled=True).load_state_dict({"scale": 2.0})


# --------------------------------------------------------------------------------- SIGHUP

def test_sighup_stops_a_training_process_cleanly_and_it_resumes(synthetic_dir, tmp_path,
                                                                monkeypatch):
    """A closed terminal sends SIGHUP: the run finishes its step, checkpoints and exits 0."""
    import time

    run_dir = tmp_path / "r"
    sets = [*synthetic_overrides(synthetic_dir), "train.max_steps=100000", "sample.steps=2",
            "train.log_every=2", "train.checkpoint_every=100000"]
    cmd = [sys.executable, "-m", "mnistdiff", "train", "-c", str(TINY), "--out", str(run_dir),
           "--device", "cpu", "--no-progress", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # As in a terminal: not ignoring SIGHUP, even when the test runner itself runs under nohup.
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, preexec_fn=lambda: signal.signal(signal.SIGHUP,
                                                                       signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 180
        while not (run_dir / "log.jsonl").is_file() or not (run_dir / "log.jsonl").read_text():
            assert child.poll() is None, child.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        child.send_signal(signal.SIGHUP)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, stderr[-2000:]
    assert "stopped at step" in stdout and "Traceback" not in stderr
    step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    assert 2 <= step < 100000
    assert json.loads((run_dir / "summary.json").read_text())["interrupted"] is True

    monkeypatch.chdir(tmp_path)
    more = CliRunner().invoke(app, ["train", "--resume", str(run_dir), "--set",
                                    f"train.max_steps={step + 2}", "--device", "cpu",
                                    "--no-progress"])
    assert more.exit_code == 0, more.output
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == step + 2


def test_sighup_is_left_alone_under_nohup():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does
    try:
        with training.StopRequest() as stop:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            signal.raise_signal(signal.SIGHUP)
            assert not stop.requested
        caught = []

        def terminal(signum, frame):  # stands in for the default action (which would end pytest)
            caught.append(signum)

        signal.signal(signal.SIGHUP, terminal)
        with training.StopRequest() as stop:
            signal.raise_signal(signal.SIGHUP)
            assert stop.requested and not caught
        assert signal.getsignal(signal.SIGHUP) is terminal  # restored
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_restore_loads_an_fp16_loss_scaler(synthetic_dir):
    """The fp16 path (CUDA only in training), with a CPU GradScaler standing in."""
    cfg = tiny_config(synthetic_dir)
    rt = training.Runtime(torch.device("cpu"), None)

    def parts_with_scaler(scale: float) -> training.Parts:
        parts = training.build_parts(cfg, rt, total_steps=20)
        parts.scaler = torch.amp.GradScaler("cpu", init_scale=scale, enabled=True)
        return parts

    saved = parts_with_scaler(1024.0)
    ckpt = training._checkpoint_state(cfg, saved, step=0, batches_per_epoch=12,
                                      train_seconds=0.0)
    assert ckpt["scaler"]["scale"] == 1024.0
    fresh = parts_with_scaler(65536.0)
    training.restore(fresh, ckpt, cfg.train, 20)
    assert fresh.scaler.state_dict() == saved.scaler.state_dict()
