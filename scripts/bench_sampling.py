"""Benchmark sampling: seconds per 100 digits and network forwards per second for each sampler.

Guidance is on (w = 2 by default), so every forward runs the conditional and unconditional
passes as one doubled batch. The model has random weights: speed does not depend on them.

    python scripts/bench_sampling.py                         # full-size U-Net, best device
    python scripts/bench_sampling.py --device cuda --amp     # bfloat16 autocast
    python scripts/bench_sampling.py --device cpu --channels 16,32 --n 10 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch
from rich.console import Console
from rich.table import Table

from mnistdiff.diffusion import GuidedEps, make_schedule
from mnistdiff.samplers import SAMPLERS, step_grid
from mnistdiff.unet import ConditionalUNet

DEFAULT_RUNS = "ddpm:500,ddpm:100,ddim:50,ddim:20,dpmpp:20,dpmpp:10"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark mnistdiff samplers.")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--channels", default="64,128,256", help="comma-separated U-Net widths per level")
    p.add_argument("--num-res-blocks", type=int, default=2)
    p.add_argument("--emb-dim", type=int, default=128)
    p.add_argument("--timesteps", type=int, default=500, help="diffusion steps T (linear schedule)")
    p.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated sampler:steps pairs")
    p.add_argument("--n", type=int, default=100, help="digits sampled per run")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args()

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.amp and args.device != "cuda":
        p.error("--amp needs --device cuda")
    args.channels = tuple(int(c) for c in args.channels.split(","))
    args.runs = [(name, int(steps)) for name, steps in (run.split(":") for run in args.runs.split(","))]
    for name, steps in args.runs:
        if name not in SAMPLERS or not 1 <= steps <= args.timesteps:
            p.error(f"bad run {name}:{steps}: samplers are {sorted(SAMPLERS)}, steps 1..{args.timesteps}")
    return args


def sample_all(model, schedule, name: str, steps: int, args: argparse.Namespace, seed: int = 0) -> int:
    """Sample args.n digits (labels 0..9 repeated) in batches; returns the number of forwards."""
    generator = torch.Generator(args.device).manual_seed(seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()
    forwards, grid = 0, step_grid(schedule, steps)  # one step grid for every batch
    for first in range(0, args.n, args.batch_size):
        b = min(args.batch_size, args.n - first)
        y = torch.arange(first, first + b, device=args.device) % 10
        x = torch.randn(b, 1, 28, 28, generator=generator, device=args.device)
        eps_fn = GuidedEps(model, schedule, y, args.guidance)
        with autocast:
            SAMPLERS[name](eps_fn, x, grid, generator=generator)
        forwards += eps_fn.nfe
    return forwards


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    args = parse_args()
    model = ConditionalUNet(channels=args.channels, num_res_blocks=args.num_res_blocks, emb_dim=args.emb_dim)
    model = model.to(args.device).eval()
    schedule = make_schedule("linear", args.timesteps, device=args.device)
    sample_all(model, schedule, "ddim", 2, args)  # warm-up: kernels, allocator, autotuning

    results = []
    for name, steps in args.runs:
        synchronize(args.device)
        start = time.perf_counter()
        forwards = sample_all(model, schedule, name, steps, args)
        synchronize(args.device)
        seconds = time.perf_counter() - start
        results.append(dict(sampler=name, steps=steps, digits=args.n, forwards=forwards, seconds=seconds,
                            seconds_per_100=seconds * 100 / args.n, forwards_per_second=forwards / seconds))

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    setup = dict(device=device_name, torch=torch.__version__, amp=args.amp, batch_size=args.batch_size,
                 guidance=args.guidance, timesteps=args.timesteps, channels=list(args.channels),
                 num_res_blocks=args.num_res_blocks, emb_dim=args.emb_dim,
                 parameters=sum(p.numel() for p in model.parameters()))
    if args.json:
        print(json.dumps({"setup": setup, "results": results}, indent=2))
        return

    table = Table(title=", ".join(f"{k}={v}" for k, v in setup.items()))
    for column in ("sampler", "steps", "forwards", "seconds", "s / 100 digits", "forwards / s"):
        table.add_column(column, justify="left" if column == "sampler" else "right")
    for r in results:
        table.add_row(r["sampler"], str(r["steps"]), str(r["forwards"]), f"{r['seconds']:.2f}",
                      f"{r['seconds_per_100']:.2f}", f"{r['forwards_per_second']:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
