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
from mnistdiff.data import to_uint8
from mnistdiff.diffusion import get_objective, make_schedule
from mnistdiff.pipeline import Pipeline
from mnistdiff.samplers import step_grid
from mnistdiff.errors import MnistdiffError
from mnistdiff.training import train
from mnistdiff.unet import ConditionalUNet

from conftest import ROOT, synthetic_overrides
from test_training import assert_same_training_state

runner = CliRunner()


class GaussianTeacher(nn.Module):
    """A v-prediction 'teacher' whose data is per-pixel Gaussian, x0 ~ N(μ, s²): its posterior
    means are closed form, E[x0 | x_t] = μ + α s² (x_t - α μ) / (α² s² + σ²) and
    E[ε | x_t] = σ (x_t - α μ) / (α² s² + σ²), so v = α E[ε] - σ E[x0]. Its probability-flow
    ODE maps the noise z at t to x_t = α_t μ + sqrt(α_t² s² + σ_t²) z (and x0 = μ + s z); a
    sampler whose last evaluation is at t ends on E[x0 | x_t] = μ + α_t s² z / sqrt(α_t² s² +
    σ_t²) (``endpoint``)."""

    def __init__(self, schedule, mu, std):
        super().__init__()
        self.schedule, self.mu, self.std = schedule, mu, std
        self.register_buffer("unused", torch.zeros(1))

    def forward(self, x, t, y):
        a = self.schedule.sqrt_ab[t].reshape(-1, 1, 1, 1)
        s = self.schedule.sqrt_1m_ab[t].reshape(-1, 1, 1, 1)
        var = a**2 * self.std**2 + s**2
        x0 = self.mu + a * self.std**2 * (x - a * self.mu) / var
        eps = s * (x - a * self.mu) / var
        return a * eps - s * x0


class AffineStudent(nn.Module):
    """out = w_t x + b_t per pixel and timestep: the family that holds the Gaussian's exact
    one-step map, so the distillation loss alone must find it."""

    def __init__(self, T):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(T, 1, 28, 28))
        self.b = nn.Parameter(torch.zeros(T, 1, 28, 28))

    def forward(self, x, t, y):
        return self.w[t] * x + self.b[t]


def endpoint(schedule, mu, std, z, t=11):
    """Where the teacher's 20 trailing steps end (their last evaluation is at t = 11)."""
    a, s = schedule.sqrt_ab[t], schedule.sqrt_1m_ab[t]
    return (mu + a * std**2 * z / torch.sqrt(a**2 * std**2 + s**2)).clamp(-1, 1)


def gaussian_setup(T=250):
    cfg = config_from_dict({
        "model": {"channels": [8, 16], "emb_dim": 16, "groups": 4},
        "diffusion": {"timesteps": T, "schedule": "cosine", "objective": "v"},
        "sample": {"sampler": "dpmpp", "steps": 20, "spacing": "trailing", "guidance": 1.0,
                   "batch_size": 64},
        "distill": {"teacher": "gauss", "teacher_sha256": "0" * 64, "trajectories": 40,
                    "guidance": 1.0},
        "train": {"batch_size": 20, "seed": 3}})
    schedule = make_schedule("cosine", T)
    g = torch.Generator().manual_seed(0)
    mu = torch.rand(1, 1, 28, 28, generator=g) * 1.2 - 0.6
    std = 0.05 + 0.25 * torch.rand(1, 1, 28, 28, generator=g)
    return cfg, schedule, GaussianTeacher(schedule, mu, std), mu, std


def test_the_step_target_lands_exactly_on_the_teachers_state():
    """A DDIM step t -> s with the target's x̂ reaches x_s (Salimans & Ho 2022, Algorithm 2),
    the last step into the clean image included, for any states."""
    schedule, objective = make_schedule("cosine", 250), get_objective("v")
    torch.manual_seed(1)
    t, s = torch.tensor([249, 187, 124, 61, 249]), torch.tensor([187, 124, 61, -1, -1])
    x_t, x_s = torch.randn(5, 1, 28, 28), torch.randn(5, 1, 28, 28)
    v = distill.step_target(schedule, objective, x_t, t, x_s, s)
    a_t = schedule.sqrt_ab[t].reshape(-1, 1, 1, 1)
    s_t = schedule.sqrt_1m_ab[t].reshape(-1, 1, 1, 1)
    x_hat = a_t * x_t - s_t * v  # x0 from v
    a_s = torch.where(s < 0, 1.0, schedule.sqrt_ab[s.clamp(min=0)]).reshape(-1, 1, 1, 1)
    s_s = torch.where(s < 0, 0.0, schedule.sqrt_1m_ab[s.clamp(min=0)]).reshape(-1, 1, 1, 1)
    landed = a_s * x_hat + (s_s / s_t) * (x_t - a_t * x_hat)
    torch.testing.assert_close(landed, x_s, atol=1e-4, rtol=1e-4)


def test_gaussian_trajectories_follow_the_exact_ode(monkeypatch, tmp_path):
    cfg, schedule, teacher, mu, std = gaussian_setup()
    pipe = Pipeline(teacher, cfg, device="cpu")
    s = pipe.settings()
    labels = torch.arange(10).repeat_interleave(2)
    states = distill.teacher_trajectories(pipe, s, labels, 7, [187, 124, 61])
    assert states.shape == (5, 20, 1, 28, 28)
    z = states[0]
    for j, t in ((1, 187), (2, 124), (3, 61)):
        a, sig = schedule.sqrt_ab[t], schedule.sqrt_1m_ab[t]
        exact = a * mu + torch.sqrt(a**2 * std**2 + sig**2) * z
        torch.testing.assert_close(states[j], exact, atol=5e-3, rtol=5e-3)  # 20 DPM++ steps
    assert pipe.settings().steps == 20 and step_grid(schedule, 20, "trailing").ts[-1] == 11
    # (the solver's first-order last steps: a few thousandths on average)
    error = (states[-1] - endpoint(schedule, mu, std, z)).abs()
    assert error.mean() < 0.01 and error.max() < 0.05
    # image i of the trajectories is image i of pipe.sample with that seed
    out = pipe.sample(list(range(10)), n=2, settings=pipe.settings(s, seed=7))
    assert torch.equal(to_uint8(states[-1]).squeeze(1), out.images)


def test_a_one_step_student_learns_the_gaussians_exact_map(monkeypatch, tmp_path):
    """Trajectory distillation on the closed-form teacher: the affine student's one step from
    fresh noise lands where the teacher's 20 steps do, within a few per cent of s."""
    monkeypatch.setenv("MNISTDIFF_CACHE", str(tmp_path))
    cfg, schedule, teacher, mu, std = gaussian_setup()
    cfg.sample.steps = 1
    loader = distill.TrajectoryLoader(distill.TrajectoryCache(cfg.distill, schedule, "0" * 64, 10),
                                      20, seed=3, steps=1, device=torch.device("cpu"))
    loader.prepare(lambda: Pipeline(teacher, cfg, device="cpu"), lambda line: None)
    assert len(list(tmp_path.rglob("shard-*.pt"))) == 1 and len(loader) == 2
    loss = distill.StudentLoss(loader, schedule, "v", 1)
    student = AffineStudent(250)
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    for epoch in range(150):
        for idx, k in loader.epoch(epoch):
            opt.zero_grad()
            loss(student, idx, k).backward()
            opt.step()
    # fresh noise, unseen in training: the student's one DDIM step lands where the teacher's
    # 20 steps on the same grid do, and near the exact map μ + s z
    pipe = Pipeline(teacher, cfg, device="cpu")
    fresh = distill.teacher_trajectories(pipe, pipe.settings(), torch.zeros(64, dtype=torch.long),
                                         99, [187, 124, 61], loader.cache.grid)
    z, teacher_x0 = fresh[0].clone(), fresh[-1].clone()  # (made under inference_mode)
    t = torch.full((64,), 249)
    a, s = schedule.sqrt_ab[249], schedule.sqrt_1m_ab[249]
    x_hat = a * z - s * student(z, t, None).detach()  # x0 of the student's one DDIM step
    assert ((x_hat - teacher_x0).abs() / std).mean() < 0.05
    assert ((teacher_x0 - (mu + std * z).clamp(-1, 1)).abs() / std).mean() < 0.2


def test_the_teachers_grid_is_even_between_the_students_timesteps_and_ends_at_0():
    schedule = make_schedule("cosine", 250)
    grid = distill.teacher_grid(schedule, 20, [187, 124, 61])
    assert grid.ts == [249, 237, 224, 212, 199, 187, 174, 162, 149, 137, 124, 111, 99, 86, 74,
                       61, 46, 30, 15, 0]
    with pytest.raises(MnistdiffError, match="distill.teacher_steps: got 18, must be a multiple"):
        distill.teacher_grid(schedule, 18, [187, 124, 61])


def test_a_student_grid_off_the_teachers_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MNISTDIFF_CACHE", str(tmp_path))
    cfg, schedule, teacher, mu, std = gaussian_setup()
    loader = distill.TrajectoryLoader(distill.TrajectoryCache(cfg.distill, schedule, "0" * 64, 10),
                                      20, seed=3, steps=3, device=torch.device("cpu"))
    with pytest.raises(MnistdiffError, match="1, 2 or 4 steps"):
        distill.StudentLoss(loader, schedule, "v", 3)
    cfg.distill.teacher_steps = 10  # 249, 224, ...: no 187
    pipe = Pipeline(teacher, cfg, device="cpu")
    with pytest.raises(MnistdiffError, match="does not pass through"):
        distill.teacher_trajectories(pipe, pipe.settings(steps=10), torch.arange(10), 0,
                                     [187, 124, 61])


# --------------------------------------------------------------------------------- end to end

@pytest.fixture(autouse=True)
def trajectory_cache(tmp_path, monkeypatch):
    """Every test's trajectories in its own cache folder."""
    monkeypatch.setenv("MNISTDIFF_CACHE", str(tmp_path / "cache"))


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
                                 "sample_every": 0, "checkpoint_every": 2, "warmup_steps": 1},
         "distill": {"trajectories": 20}}
    for item in extra:
        key, value = item.split("=")
        section, name = key.split(".")
        d.setdefault(section, {})[name] = json.loads(value)
    return d


def test_distill_end_to_end_and_the_student_samples_with_its_steps(v_teacher, synthetic_dir,
                                                                   tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["distill", "--teacher", str(v_teacher), "--steps", "2", "--device", "cpu",
            "--no-progress", "-o", "runs/student",
            "-s", "data.verify=false", "-s", "data.download=false", "-s", "train.batch_size=8",
            "-s", "train.max_steps=3", "-s", "train.sample_every=0", "-s", "train.log_every=1",
            "-s", "distill.trajectories=20"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "distilling" in result.output and "into 2 DDIM steps" in result.output
    assert "teacher trajectories: shard 1/1 written" in result.output
    ckpt = load_checkpoint(tmp_path / "runs/student/checkpoints/last.pt")
    c = ckpt["config"]
    assert c["sample"] == {**c["sample"], "sampler": "ddim", "steps": 2, "spacing": "trailing",
                           "guidance": 1.0, "guidance_interval": [0.0, 1.0]}
    assert c["distill"]["teacher"] == str(v_teacher) and len(c["distill"]["teacher_sha256"]) == 64
    assert c["distill"]["teacher_steps"] == 20 and c["distill"]["guidance"] == 2.0  # tiny's w
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
    base = ["distill", "--device", "cpu", "--no-progress"]

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
                             "-s", "train.max_steps=1", "-s", "train.batch_size=4",
                             "-s", "distill.trajectories=20"])
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
                             "-s", "train.max_steps=1", "-s", "train.batch_size=4",
                             "-s", "distill.trajectories=20"])
    assert ok.exit_code == 0, ok.output
    state["step"] += 1
    torch.save(state, changed)
    assert "changed since this distillation started" in fails(
        "--resume", "r3", "-s", "train.max_steps=2")


def test_students_of_one_teacher_share_its_trajectories(v_teacher, synthetic_dir, tmp_path):
    """The cache is keyed by the teacher and its settings: a 1-step and a 2-step student read
    the same shard; another guidance computes its own."""
    for steps in (1, 2):
        cfg = distill.student_config(str(v_teacher), distill_overrides(synthetic_dir, 1),
                                     steps=steps)
        train(cfg, tmp_path / f"s{steps}", device="cpu", progress=False)
    assert len(list((tmp_path / "cache").rglob("shard-*.pt"))) == 1
    cfg = distill.student_config(str(v_teacher), distill_overrides(
        synthetic_dir, 1, "distill.guidance=1.5"), steps=2)
    train(cfg, tmp_path / "w15", device="cpu", progress=False)
    assert len(list((tmp_path / "cache").rglob("shard-*.pt"))) == 2


def test_a_damaged_cache_file_is_one_line(v_teacher, synthetic_dir, tmp_path):
    cfg = distill.student_config(str(v_teacher), distill_overrides(synthetic_dir, 1), steps=2)
    train(cfg, tmp_path / "a", device="cpu", progress=False)
    shard = next((tmp_path / "cache").rglob("shard-*.pt"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(MnistdiffError, match="damaged trajectory cache file"):
        train(cfg, tmp_path / "b", device="cpu", progress=False)


def test_the_teachers_trailing_grid_passes_through_the_students():
    schedule = make_schedule("cosine", 250)
    grid = distill.teacher_grid(schedule, 20, [187, 124, 61], "trailing")
    assert {187, 124, 61} <= set(grid.ts) and grid.ts[-1] == 11
    with pytest.raises(MnistdiffError, match="do not pass through"):
        distill.teacher_grid(schedule, 18, [187, 124, 61], "trailing")
