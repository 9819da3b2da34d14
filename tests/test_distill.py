"""Distillation (distill.py, `mnistdiff distill`): the teacher solve and the target in closed
form, a tiny teacher distilled end to end, exact resume, and the errors a user can cause."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mnistdiff import distill, load
from mnistdiff.checkpoint import load_checkpoint
from mnistdiff.cli import app
from mnistdiff.config import config_from_dict
from mnistdiff.diffusion import make_schedule, q_sample
from mnistdiff.errors import MnistdiffError
from mnistdiff.training import train
from mnistdiff.unet import ConditionalUNet

from conftest import ROOT, synthetic_overrides
from test_training import assert_same_training_state

runner = CliRunner()


class PointMass(nn.Module):
    """A v-prediction 'teacher' whose data is one image x0*: v = (α_t x - x0*) / σ_t. Its
    probability-flow ODE is solved exactly by any DDIM-type step: x_s = α_s x0* + σ_s ε̂."""

    def __init__(self, schedule, x0_star):
        super().__init__()
        self.schedule, self.x0_star = schedule, x0_star

    def forward(self, x, t, y):
        a = self.schedule.sqrt_ab[t].reshape(-1, 1, 1, 1)
        s = self.schedule.sqrt_1m_ab[t].reshape(-1, 1, 1, 1)
        return (a * x - self.x0_star) / s


def student_cfg(steps=4, teacher_steps=16, guidance=2.0, T=250):
    return config_from_dict({
        "model": {"channels": [8, 16], "emb_dim": 16, "groups": 4},
        "diffusion": {"timesteps": T, "schedule": "cosine", "objective": "v"},
        "sample": {"sampler": "ddim", "steps": steps, "spacing": "trailing", "guidance": 1.0},
        "distill": {"teacher": "x", "guidance": guidance, "teacher_steps": teacher_steps}})


def test_teacher_solve_and_target_are_exact_for_a_point_mass():
    cfg = student_cfg()
    schedule = make_schedule("cosine", 250)
    x0_star = torch.rand(1, 1, 28, 28) * 1.6 - 0.8
    teacher = PointMass(schedule, x0_star)
    d = distill.Distiller(teacher, schedule, cfg)
    assert d.bounds.tolist() == [249, 187, 124, 61, -1] and d.sub == 4

    torch.manual_seed(0)
    k = torch.tensor([0, 1, 2, 3, 3, 0])
    t, s = d.bounds[k], d.bounds[k + 1]
    eps = torch.randn(6, 1, 28, 28)
    x_t = q_sample(schedule, x0_star.expand(6, -1, -1, -1), t, eps)
    x_s = d.teacher_solve(x_t, t, s, torch.arange(6))
    a_s = torch.where(s < 0, 1.0, schedule.sqrt_ab[s.clamp(min=0)]).reshape(-1, 1, 1, 1)
    s_s = torch.where(s < 0, 0.0, schedule.sqrt_1m_ab[s.clamp(min=0)]).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(x_s, a_s * x0_star + s_s * eps, atol=2e-5, rtol=1e-4)
    # The target is the teacher's own output: a student equal to the teacher has zero loss.
    torch.testing.assert_close(d.target(x_t, t, s, torch.arange(6)), teacher(x_t, t, None),
                               atol=1e-3, rtol=1e-3)
    x0 = x0_star.expand(8, -1, -1, -1)
    assert d.loss(teacher, x0, torch.arange(8) % 10).item() < 1e-7


def test_one_student_step_on_the_target_lands_on_the_teacher():
    """For any teacher: a DDIM step t -> s taken with the target output reaches the teacher's
    x_s (Salimans & Ho 2022, Algorithm 2), including the last step into the clean image."""
    cfg = student_cfg(steps=2, teacher_steps=6)
    schedule = make_schedule("cosine", 250)
    torch.manual_seed(1)
    teacher = ConditionalUNet(channels=(8, 16), emb_dim=16, groups=4)
    d = distill.Distiller(teacher, schedule, cfg)
    t, s = d.bounds[torch.tensor([0, 1])], d.bounds[torch.tensor([1, 2])]
    x_t = torch.randn(2, 1, 28, 28)
    y = torch.tensor([3, 7])
    v = d.target(x_t, t, s, y)
    a_t = schedule.sqrt_ab[t].reshape(-1, 1, 1, 1)
    s_t = schedule.sqrt_1m_ab[t].reshape(-1, 1, 1, 1)
    x_hat = a_t * x_t - s_t * v  # x0 from v
    a_s = torch.where(s < 0, 1.0, schedule.sqrt_ab[s.clamp(min=0)]).reshape(-1, 1, 1, 1)
    s_s = torch.where(s < 0, 0.0, schedule.sqrt_1m_ab[s.clamp(min=0)]).reshape(-1, 1, 1, 1)
    ddim_step = a_s * x_hat + (s_s / s_t) * (x_t - a_t * x_hat)
    torch.testing.assert_close(ddim_step, d.teacher_solve(x_t, t, s, y), atol=1e-4, rtol=1e-4)


def test_the_teacher_guidance_interval_is_honoured():
    """An interval that holds none of the teacher's timesteps is the conditional teacher (w = 1);
    one that holds all of them is plain guidance."""
    schedule = make_schedule("cosine", 250)
    torch.manual_seed(2)
    teacher = ConditionalUNet(channels=(8, 16), emb_dim=16, groups=4)
    t, s = torch.tensor([249, 124]), torch.tensor([187, 61])
    x_t, y = torch.randn(2, 1, 28, 28), torch.tensor([1, 8])

    def solve(**distill_cfg):
        cfg = student_cfg()
        cfg.distill.__dict__.update(distill_cfg)
        return distill.Distiller(teacher, schedule, cfg).teacher_solve(x_t, t, s, y)

    torch.testing.assert_close(solve(guidance=3.0, guidance_interval=[0.0, 0.01]),
                               solve(guidance=1.0))
    torch.testing.assert_close(solve(guidance=3.0, guidance_interval=[0.0, 1.0]),
                               solve(guidance=3.0))
    assert not torch.allclose(solve(guidance=3.0, guidance_interval=[0.5, 1.0]),
                              solve(guidance=3.0))


def test_a_grid_too_coarse_for_the_teacher_steps_is_refused():
    cfg = config_from_dict({
        "model": {"channels": [8, 16], "emb_dim": 16, "groups": 4},
        "diffusion": {"timesteps": 50, "objective": "v"},
        "sample": {"sampler": "ddim", "steps": 4, "spacing": "linspace"},
        "distill": {"teacher": "x", "teacher_steps": 8}})
    with pytest.raises(Exception, match="too short for 2 teacher steps"):
        distill.Distiller(nn.Identity(), make_schedule("linear", 50), cfg)
    with pytest.raises(Exception, match="multiple of sample.steps"):
        student_cfg(steps=4, teacher_steps=10)


# --------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def v_teacher(synthetic_dir, tmp_path_factory):
    """configs/tiny.yaml with v-prediction on a cosine schedule, 20 steps on synthetic data."""
    from mnistdiff.config import load_config

    cfg = load_config(ROOT / "configs" / "tiny.yaml",
                      [*synthetic_overrides(synthetic_dir), "diffusion.objective=v",
                       "diffusion.schedule=cosine", "train.ema_decay=0.9"])
    return train(cfg, tmp_path_factory.mktemp("teacher") / "run", device="cpu",
                 progress=False).checkpoint


def distill_overrides(synthetic_dir, max_steps=4, *extra):
    data = dict(root=str(synthetic_dir), verify=False, download=False)
    d = {"data": data, "train": {"batch_size": 8, "max_steps": max_steps, "log_every": 2,
                                 "sample_every": 0, "checkpoint_every": 2, "warmup_steps": 1}}
    for item in extra:
        key, value = item.split("=")
        section, name = key.split(".")
        d.setdefault(section, {})[name] = json.loads(value)
    return d


def test_distill_end_to_end_and_the_student_samples_with_its_steps(v_teacher, synthetic_dir,
                                                                   tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["distill", "--teacher", str(v_teacher), "--steps", "2", "--device", "cpu",
            "--no-progress", "-o", "runs/student", "--data-dir", str(synthetic_dir),
            "-s", "data.verify=false", "-s", "data.download=false", "-s", "train.batch_size=8",
            "-s", "train.max_steps=3", "-s", "train.sample_every=0", "-s", "train.log_every=1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "distilling" in result.output and "into 2 ddim steps" in result.output
    ckpt = load_checkpoint(tmp_path / "runs/student/checkpoints/last.pt")
    c = ckpt["config"]
    assert c["sample"] == {**c["sample"], "sampler": "ddim", "steps": 2, "spacing": "trailing",
                           "guidance": 1.0, "guidance_interval": [0.0, 1.0]}
    assert c["distill"]["teacher"] == str(v_teacher) and len(c["distill"]["teacher_sha256"]) == 64
    assert c["distill"]["teacher_steps"] == 8 and c["distill"]["guidance"] == 2.0  # tiny's w
    assert c["model"] == load_checkpoint(v_teacher)["config"]["model"]
    assert len((tmp_path / "runs/student/log.jsonl").read_text().splitlines()) == 3

    pipe = load(tmp_path / "runs/student", device="cpu")
    out = pipe.sample([0, 5], n=3)
    assert out.images.shape == (6, 28, 28) and out.nfe == 2  # its stored steps, one pass each
    png = tmp_path / "s.png"
    result = runner.invoke(app, ["sample", "-k", "runs/student", "--digit", "4", "--n", "4",
                                 "-o", str(png), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["summarize", "-k", "runs/student", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["distilled_from"]["teacher"] == str(v_teacher)
    assert summary["sampler_defaults"]["spacing"] == "trailing"


def test_distill_resumes_exactly(v_teacher, synthetic_dir, tmp_path):
    whole = distill.student_config(str(v_teacher), distill_overrides(synthetic_dir, 4), steps=2)
    first = distill.student_config(str(v_teacher), distill_overrides(synthetic_dir, 2), steps=2)
    a = train(whole, tmp_path / "whole", device="cpu", progress=False)
    train(first, tmp_path / "split", device="cpu", progress=False)
    b = train(whole, tmp_path / "split", device="cpu", progress=False,
              resume=tmp_path / "split/checkpoints/last.pt")
    assert b.step == 4
    assert_same_training_state(load_checkpoint(a.checkpoint), load_checkpoint(b.checkpoint))


def test_the_student_starts_as_its_teacher(v_teacher, synthetic_dir, tmp_path):
    cfg = distill.student_config(str(v_teacher), distill_overrides(
        synthetic_dir, 1, "train.lr=1e-9", "train.warmup_steps=0"), steps=2)
    result = train(cfg, tmp_path / "s", device="cpu", progress=False)
    student, teacher = load_checkpoint(result.checkpoint), load_checkpoint(v_teacher)
    for name, w in teacher["ema"].items():
        torch.testing.assert_close(student["model"][name], w, atol=1e-6, rtol=0)


def test_distill_errors_are_one_line(v_teacher, tiny_checkpoint, synthetic_dir, tmp_path,
                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["distill", "--device", "cpu", "--no-progress", "--data-dir", str(synthetic_dir)]

    def fails(*args):  # main() prints a MnistdiffError as one "error: ..." line, exit 1
        result = runner.invoke(app, [*base, *args])
        assert isinstance(result.exception, MnistdiffError), result.output
        return str(result.exception)

    assert "v-prediction teacher" in fails("--teacher", str(tiny_checkpoint))  # an ε teacher
    assert "model.channels" in fails("--teacher", str(v_teacher), "-s", "model.channels=[4,8]")
    assert "checkpoint not found" in fails("--teacher", "nope.pt")
    assert "not a distillation run" in fails("--resume", str(tiny_checkpoint), "-o", "r")
    # a resumed run keeps its teacher; a changed teacher file is refused
    ok = runner.invoke(app, [*base, "--teacher", str(v_teacher), "--steps", "2", "-o", "r2",
                             "-s", "data.verify=false", "-s", "data.download=false",
                             "-s", "train.max_steps=1", "-s", "train.batch_size=4"])
    assert ok.exit_code == 0, ok.output
    assert "keeps its teacher" in fails("--resume", "r2", "--teacher", "mnist")
    cfg = load_checkpoint(tmp_path / "r2/checkpoints/last.pt")["config"]
    assert cfg["distill"]["teacher_sha256"]
    changed = tmp_path / "changed.pt"
    state = load_checkpoint(v_teacher)
    state["step"] += 1
    torch.save(state, changed)
    ok = runner.invoke(app, [*base, "--teacher", str(changed), "--steps", "2", "-o", "r3",
                             "-s", "data.verify=false", "-s", "data.download=false",
                             "-s", "train.max_steps=1", "-s", "train.batch_size=4"])
    assert ok.exit_code == 0, ok.output
    state["step"] += 1
    torch.save(state, changed)
    assert "changed since this distillation started" in fails(
        "--resume", "r3", "-s", "train.max_steps=2")
