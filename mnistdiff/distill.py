"""Distillation: a student that samples in one or two network passes, guidance built in.

    mnistdiff distill --teacher mnist --steps 2 --out runs/mnist-fast

The method: trajectory distillation. The guided teacher, run with its own sampler
(DPM-Solver++(2M), ``distill.teacher_steps`` steps, its guidance and interval), maps starting
noise to digits along deterministic probability-flow ODE trajectories, on a grid through the
student's timesteps (``distill.teacher_grid``: its trailing steps, or linspace bent through
them; see ``teacher_grid``). ``distill.trajectories`` of them are computed once (phase 1,
cached by content under ~/.cache/mnistdiff/trajectories, resumable shard by shard), keeping the
states at the boundaries of the student's grid. The student, which has the teacher's
architecture and starts from its weights, then learns (phase 2, many epochs over the cache) to
make ONE deterministic DDIM step of its own N-step trailing grid, from the teacher's state at
t to the teacher's state at the next boundary s: progressive distillation's target (Salimans &
Ho 2022, Algorithm 2) with the teacher's whole guided solve as x_s, which also distils the
guidance into one conditional pass per step (Meng et al. 2023, stage one).

The student DDIM step from x_t with clean-image estimate x̂ is (DDIM eq. 12, η = 0)

    x_s = α_s x̂ + (σ_s / σ_t) (x_t - α_t x̂),

so the x̂ that lands exactly on the teacher's x_s is

    x̃ = (x_s - (σ_s / σ_t) x_t) / (α_s - (σ_s / σ_t) α_t),        (the distillation target)

x̃ = x_s for the last step (into the clean image: α_s = 1, σ_s = 0). The loss is the MSE between
the student's output and the objective's target for (x̃, ε̃ = (x_t - α_t x̃) / σ_t): for
v-prediction the x̂ error weighted by 1 / σ_t² = SNR_t + 1, the paper's "SNR+1" weighting.

Why this and not the alternatives, on a 2-core CPU with about an hour per model:
- one round of online progressive distillation (0.5's ``distill``: every training example
  pays a fresh K-step teacher solve from a noised training image) spends its budget on teacher
  passes it uses once; here each expensive guided solve (28 teacher passes) is paid once and
  reused for many epochs, and the targets are the teacher's full-quality solve, not a 4-step one;
- rounds of halving (4 -> 2 -> 1) compound each round's error (CIFAR-10 FID 3.00 at 4 passes,
  9.12 at 1) and triple the cost;
- consistency distillation / ECT and MeanFlow bootstrap from the student itself (an EMA target,
  or a JVP of the network): 10-100x more updates than exact targets need, which a CPU cannot
  give in a session, and MeanFlow's JVP doubles each update's cost.
The price: a student per step count (1, 2 or 4 passes: the cache keeps the teacher's states at
the 4-step trailing grid, 187, 124 and 61 for T = 250), and a cache of a few hundred MB.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from .config import Config, DistillConfig
from .diffusion import Schedule, get_objective
from .errors import ConfigError, MnistdiffError
from .files import CACHE_ENV, cache_root  # noqa: F401 (re-exported)
from .samplers import Grid, grid_of, step_grid
from .seeding import mix_seed

CLEAN = -1  # the "timestep" of the clean image (α = 1, σ = 0)
SHARD = 2000  # trajectories per cache file: an equal number of each class
STORED_STEPS = 4  # the cache keeps the states of the 4-step trailing grid (for 1, 2 or 4 steps)
FORMAT = 1


def student_bounds(schedule: Schedule, steps: int) -> list[int]:
    """The student's grid: its ``steps`` trailing timesteps (T-1 first), then CLEAN."""
    return step_grid(schedule, steps, "trailing").ts + [CLEAN]


def teacher_grid(schedule: Schedule, steps: int, through: list[int],
                 kind: str = "linspace") -> Grid:
    """The teacher's grid: ``steps`` timesteps from T-1 down that pass through each of
    ``through`` (descending; the student's 4-step trailing grid). "trailing": the teacher's own
    trailing grid (Lin et al. 2024), which does for any multiple of 4 steps; its last
    evaluation is short of t = 0 (t = 11 of 250 for 20 steps). "linspace": evenly spaced
    between them, ``steps / (len(through) + 1)`` per segment, the last one ending at t = 0 as
    the linspace grid does. On the bundled mnist at n = 10,000 the teacher's own images score
    FID 2.18x the floor on 20 trailing steps against 1.96x on linspace; its students learn
    from either."""
    if kind == "trailing":
        grid = step_grid(schedule, steps, "trailing")
        if steps % 4 or not set(through) <= set(grid.ts):
            raise ConfigError(f"distill.teacher_steps: got {steps}; {steps} trailing steps do "
                              f"not pass through the student's timesteps {through} (use a "
                              f"multiple of 4)")
        return grid
    bounds = [schedule.T - 1, *through, 0]
    segments = len(bounds) - 1
    if steps % segments or steps // segments < 2:
        raise ConfigError(f"distill.teacher_steps: got {steps}, must be a multiple of "
                          f"{segments} (and at least {2 * segments}): the same number of "
                          f"teacher steps between each of the student's timesteps {through}")
    k, ts = steps // segments, []
    for i in range(segments):
        last = i == segments - 1
        points = torch.linspace(bounds[i], bounds[i + 1], k if last else k + 1,
                                dtype=torch.float64)
        ts += (points if last else points[:-1]).round().long().tolist()
    return grid_of(schedule, ts)


def _coefficients(schedule: Schedule, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """(α_t, σ_t) for per-example timesteps t (B,), t = CLEAN giving (1, 0), shaped (B,1,1,1)."""
    clean = t < 0
    i = t.clamp(min=0)
    a = torch.where(clean, 1.0, schedule.sqrt_ab[i])
    s = torch.where(clean, 0.0, schedule.sqrt_1m_ab[i])
    shape = (-1,) + (1,) * (x.ndim - 1)
    return a.reshape(shape), s.reshape(shape)


def step_target(schedule: Schedule, objective, x_t: Tensor, t: Tensor, x_s: Tensor,
                s: Tensor) -> Tensor:
    """What the student should output at (x_t, t) so that its DDIM step t -> s lands on x_s:
    the objective's target for (x̃, ε̃) (module docstring). x_t, x_s (B, C, H, W); t, s (B,)."""
    a_t, s_t = _coefficients(schedule, t, x_t)
    a_s, s_s = _coefficients(schedule, s, x_t)
    ratio = s_s / s_t
    x_tilde = (x_s - ratio * x_t) / (a_s - ratio * a_t)
    eps_tilde = (x_t - a_t * x_tilde) / s_t
    return objective.target(schedule, x_tilde, t, eps_tilde)


# --------------------------------------------------------------------------------- phase 1

@torch.inference_mode()
def teacher_trajectories(pipe, settings, labels: Tensor, seed: int, record: list[int],
                         grid: Grid | None = None) -> Tensor:
    """The guided teacher's trajectories for ``labels`` (B,) on ``grid`` (default: the
    settings' own): its starting noise (image i from ``mix_seed(seed, i)``, as
    ``Pipeline.sample``), then x at each timestep of ``record`` (each on the grid), then the
    final image x0: (len(record) + 2, B, C, 28, 28) float32."""
    grid = grid or step_grid(pipe.schedule, settings.steps, settings.spacing)
    at = {t: j for j, t in enumerate(record)}
    missing = [t for t in record if t not in grid.ts]
    if missing:
        raise ConfigError(f"distill.teacher_steps: the teacher's grid {grid.ts} does not pass "
                          f"through the student's timesteps {missing}")
    out = []
    for i in range(0, len(labels), pipe.batch_size()):
        y = labels[i:i + pipe.batch_size()].to(pipe.device)
        generators = pipe._generators(seed, i, len(y))
        z = pipe._noise(generators)
        states = torch.empty((len(record), *z.shape), device=z.device)

        def keep(info: dict) -> None:
            nxt = grid.ts[info["i"] + 1] if info["i"] + 1 < len(grid.ts) else None
            if nxt in at:
                states[at[nxt]] = info["x"]

        x0, _, _ = pipe._denoise(z.clone(), y, settings, generators, grid, keep)
        out.append(torch.cat([z[None], states, x0[None]]).float().cpu())
    return torch.cat(out, dim=1)


class TrajectoryCache:
    """The teacher's trajectories for a distillation, in shards of SHARD under a folder named by
    a hash of everything they depend on (the teacher's file, its settings, the stored
    timesteps), so students of 1, 2 or 4 steps share them and a changed teacher never reuses
    them. Each shard file holds ``labels`` (B,), ``states`` (P, B, C, 28, 28) and its key."""

    def __init__(self, dc: DistillConfig, schedule: Schedule, teacher_sha256: str,
                 classes: int):
        self.dc, self.classes = dc, classes
        self.timesteps = student_bounds(schedule, STORED_STEPS)  # T-1, ..., CLEAN
        self.grid = teacher_grid(schedule, dc.teacher_steps, self.timesteps[1:-1],
                                 dc.teacher_grid)
        identity = {"format": FORMAT, "teacher": teacher_sha256, "grid": self.grid.ts,
                    "guidance": dc.guidance, "interval": list(dc.guidance_interval),
                    "timesteps": self.timesteps, "shard": SHARD}
        self.key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.folder = cache_root() / "trajectories" / self.key[:16]

    def sizes(self) -> list[int]:
        """Trajectories per shard: SHARD each, the last one the rest (whole classes)."""
        n, c = self.dc.trajectories, self.classes
        full, rest = divmod(n, SHARD)
        return [SHARD] * full + ([rest // c * c] if rest >= c else [])

    def labels(self, size: int) -> Tensor:
        return torch.arange(self.classes).repeat_interleave(size // self.classes)

    def path(self, index: int) -> Path:
        return self.folder / f"shard-{index:04d}.pt"

    def fill(self, teacher_pipe_fn: Callable[[], object], say: Callable[[str], None]) -> None:
        """Compute the shards that are not there yet (the teacher is loaded only if needed)."""
        from .files import write_atomic

        todo = [j for j, _ in enumerate(self.sizes()) if not self.path(j).is_file()]
        if not todo:
            return
        pipe = teacher_pipe_fn()
        s = pipe.settings(sampler="dpmpp", steps=self.dc.teacher_steps,
                          guidance=self.dc.guidance, guidance_interval=self.dc.guidance_interval)
        say(f"teacher trajectories: {len(todo)} of {len(self.sizes())} shards to compute with "
            f"dpmpp on {self.grid.ts}, {s.guidance_text()}, into {self.folder}")
        for j in todo:
            size = self.sizes()[j]
            states = teacher_trajectories(pipe, s, self.labels(size), self.dc.seed + j,
                                          self.timesteps[1:-1], self.grid)
            import io

            buffer = io.BytesIO()
            torch.save({"key": self.key, "index": j, "labels": self.labels(size),
                        "states": states, "timesteps": self.timesteps}, buffer)
            write_atomic(self.path(j), buffer.getvalue())
            say(f"teacher trajectories: shard {j + 1}/{len(self.sizes())} written")

    def load(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(states (P, N, C, 28, 28), labels (N,)) of every shard, on ``device``."""
        from .errors import CheckpointError

        states, labels = [], []
        for j, size in enumerate(self.sizes()):
            try:
                shard = torch.load(self.path(j), map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 (a damaged cache file: say which)
                raise CheckpointError(f"{self.path(j)}: damaged trajectory cache file ({e}); "
                                      f"delete it and run again") from None
            if shard.get("key") != self.key or shard["states"].shape[1] != size:
                raise CheckpointError(f"{self.path(j)} belongs to another distillation; delete "
                                      f"it and run again")
            states.append(shard["states"])
            labels.append(shard["labels"])
        return torch.cat(states, dim=1).to(device), torch.cat(labels).to(device)


# --------------------------------------------------------------------------------- phase 2

class TrajectoryLoader:
    """Batches for ``training``'s loop (BatchLoader's interface: ``len``, ``epoch``): the
    trajectory indices (B,) of a batch and, per index, the student step k (B,) it trains.
    Epoch e's order and steps are drawn from generators seeded with (seed, e), so the position
    in training is the loader's whole state and a resumed run continues exactly."""

    def __init__(self, cache: TrajectoryCache, batch_size: int, seed: int, steps: int,
                 device: torch.device):
        self.cache, self.batch_size, self.seed, self.steps = cache, batch_size, seed, steps
        self.device = device
        self.states = self.labels = None

    def prepare(self, teacher_pipe_fn: Callable[[], object], say: Callable[[str], None]) -> None:
        from .files import check_space

        n = self.cache.dc.trajectories
        check_space({}, memory=n * len(self.cache.timesteps) * 28 * 28 * 4,
                    what=f"{n:,} teacher trajectories")
        self.cache.fill(teacher_pipe_fn, say)
        self.states, self.labels = self.cache.load(self.device)

    def __len__(self) -> int:
        return max(1, self.cache.dc.trajectories // self.batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        n = self.labels.shape[0]
        perm = torch.randperm(n, generator=g)
        ks = torch.randint(0, self.steps, (n,), generator=g)
        for b in range(start, len(self)):
            idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
            yield idx.to(self.device), ks[idx].to(self.device)


class StudentLoss:
    """The loss of a batch (indices, steps) of a TrajectoryLoader (module docstring)."""

    def __init__(self, loader: TrajectoryLoader, schedule: Schedule, objective: str,
                 steps: int):
        self.loader, self.schedule = loader, schedule
        self.objective = get_objective(objective)
        bounds = student_bounds(schedule, steps)
        stored = loader.cache.timesteps
        if any(b not in stored for b in bounds):
            raise ConfigError(f"sample.steps: got {steps}; a student learns from the teacher's "
                              f"states at {stored[1:-1]}, so it takes 1, 2 or 4 steps")
        device = loader.device
        self.t = torch.tensor(bounds, device=device)  # (N+1,) student step k: t[k] -> t[k+1]
        self.pos = torch.tensor([stored.index(b) for b in bounds], device=device)

    def __call__(self, student: nn.Module, idx: Tensor, k: Tensor) -> Tensor:
        states = self.loader.states
        x_t = states[self.pos[k], idx]       # (B, C, 28, 28) the teacher at the step's start
        x_s = states[self.pos[k + 1], idx]   # ... and at its end
        t, s = self.t[k], self.t[k + 1]
        target = step_target(self.schedule, self.objective, x_t, t, x_s, s)
        return (student(x_t, t, self.loader.labels[idx]).float() - target).pow(2).mean()


def task(cfg: Config, schedule: Schedule, device: torch.device):
    """What ``training`` runs for a distillation: (loader, loss, one line for the log)."""
    loader = TrajectoryLoader(TrajectoryCache(cfg.distill, schedule, cfg.distill.teacher_sha256,
                                              cfg.model.num_classes),
                              cfg.train.batch_size, cfg.train.seed, cfg.sample.steps, device)
    loss = StudentLoss(loader, schedule, cfg.diffusion.objective, cfg.sample.steps)
    return loader, loss, describe(cfg)


# --------------------------------------------------------------------------------- setup

# The student's training recipe when the distill config does not say otherwise.
RECIPE = {
    "batch_size": 64, "max_steps": 1000, "lr": 1e-4, "optimizer": "adamw", "weight_decay": 0.0,
    "lr_schedule": "cosine", "warmup_steps": 100, "grad_clip": 1.0, "ema_decay": 0.9995,
    "ema_rampup": 0.1, "ema_warmup_steps": 0, "log_every": 50, "sample_every": 1000,
    "checkpoint_every": 250, "keep_last": 2, "amp": "off",
}
FROM_TEACHER = ("model", "diffusion")  # sections the student must share with its teacher


def load_teacher(dc: DistillConfig, device: torch.device | str = "cpu"):
    """The teacher (``models.Loaded``: its EMA weights, frozen, on ``device``, and its config);
    a CheckpointError when it cannot be found or read, a MnistdiffError when its file changed
    since the run started (``teacher_sha256``)."""
    from .models import read

    teacher = read(dc.teacher)
    if dc.teacher_sha256 and teacher.info["sha256"] != dc.teacher_sha256:
        raise MnistdiffError(f"the teacher {dc.teacher} ({teacher.info['path']}) changed since "
                             f"this distillation started (SHA-256 {teacher.info['sha256'][:12]}"
                             f"..., the run recorded {dc.teacher_sha256[:12]}...); resume with "
                             f"the same teacher or start a new run")
    teacher.model = teacher.model.to(device).eval().requires_grad_(False)
    return teacher


def student_config(teacher: str, overrides: dict | None = None, *, steps: int = 2) -> Config:
    """The config of a distillation run: the teacher's model, diffusion and data sections, the
    student's sampler (DDIM, ``steps`` trailing steps, one conditional pass: guidance 1), the
    training RECIPE, the teacher's sampler as the distillation target, then ``overrides``
    (nested plain data, e.g. a YAML file plus --set) for the train, distill, data, sample and
    eval sections. Changing the model or diffusion sections is an error: the student starts
    from the teacher's weights and predicts the same thing."""
    from .config import config_from_dict, config_to_dict
    from .models import read

    overrides = dict(overrides or {})
    for name in FROM_TEACHER:
        if overrides.get(name):
            key = next(iter(overrides[name]))
            raise ConfigError(f"{name}.{key}: a student has its teacher's {name} settings; drop "
                              f"it (distillation starts from the teacher's weights)")
    source = read(teacher)
    if source.config.diffusion.objective != "v":
        raise MnistdiffError(f"the teacher {teacher} predicts "
                             f"{source.config.diffusion.objective!r}; distillation needs a "
                             f"v-prediction teacher (diffusion.objective=v): an ε-prediction "
                             f"student cannot take large steps from pure noise")
    stored = config_to_dict(source.config)
    taught = stored["sample"]
    d = {"data": {k: v for k, v in stored["data"].items() if k != "root"},
         "model": stored["model"], "diffusion": stored["diffusion"], "train": dict(RECIPE),
         "sample": {**taught, "sampler": "ddim", "steps": steps, "spacing": "trailing",
                    "guidance": 1.0, "guidance_interval": [0.0, 1.0], "eta": 0.0},
         "eval": stored["eval"],
         "distill": {"teacher": str(teacher), "teacher_sha256": source.info["sha256"],
                     "guidance": taught["guidance"],
                     "guidance_interval": taught["guidance_interval"]}}
    for name, values in overrides.items():
        if isinstance(values, dict) and isinstance(d.get(name), dict):
            d[name].update(values)
        else:
            d[name] = values
    return config_from_dict(d)


def prepare(teacher: str | None, steps: int | None, config: str | Path | None,
            overrides: list[str], out: str | Path | None, resume: str | None
            ) -> tuple[Config, Path, Path | None]:
    """What ``mnistdiff distill`` resolves: (the student's config, its run folder, the
    checkpoint to resume or None). A resumed run keeps its teacher and steps."""
    from datetime import datetime

    from .config import apply_overrides, read_yaml
    from .run import prepare_run

    if resume is not None:
        fixed = [name for name, value in (("--teacher", teacher), ("--steps", steps))
                 if value is not None]
        if fixed:
            raise MnistdiffError(f"{fixed[0]}: a resumed distillation keeps its teacher and "
                                 f"steps; drop it (change others with --set)")
        cfg, run_dir, checkpoint = prepare_run(config, overrides, out, resume)
        if not is_distillation(cfg):
            raise MnistdiffError(f"{checkpoint} is not a distillation run; continue it with "
                                 f"mnistdiff train --resume")
        return cfg, run_dir, checkpoint
    teacher = teacher or "mnist"
    steps = 2 if steps is None else steps
    if steps not in (1, 2, 4) or isinstance(steps, bool):
        raise MnistdiffError(f"--steps: got {steps}; a student takes 1, 2 or 4 steps (its grid "
                             f"must lie on the teacher's 20 trailing steps)")
    d = apply_overrides(read_yaml(config) if config is not None else {}, overrides)
    cfg = student_config(teacher, d, steps=steps)
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"distill-{Path(teacher).stem}-{steps}step-{stamp}"
    return cfg, Path(out), None


def is_distillation(cfg: Config) -> bool:
    return bool(cfg.distill.teacher)


def describe(cfg: Config) -> str:
    """One line for logs: what the student learns."""
    dc = cfg.distill
    lo, hi = dc.guidance_interval
    where = "" if (lo, hi) == (0.0, 1.0) else f" in t/(T-1) [{lo:g}, {hi:g}]"
    return (f"distilling {dc.teacher} (guidance {dc.guidance:g}{where}, {dc.teacher_steps} "
            f"{dc.teacher_grid} DPM-Solver++ steps, {dc.trajectories:,} trajectories) into "
            f"{cfg.sample.steps} DDIM "
            f"step{'s' if cfg.sample.steps > 1 else ''}")

