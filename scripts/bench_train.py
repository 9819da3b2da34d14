"""Benchmark training: images/s, ms per step and peak memory of a config's training step on the
current device, in fp32 and with AMP (and torch.compile on CUDA).

It runs the real training step (``mnistdiff.training.train_step``: forward, loss, backward,
clipping, optimizer, LR schedule, EMA) on random images, so no dataset is needed; the speed does
not depend on the pixels. Warmup steps (which include compilation) are not timed.

    python scripts/bench_train.py -c configs/mnist.yaml                  # fp32, bf16, bf16+compile
    python scripts/bench_train.py -c configs/cpu-quick.yaml --device cpu --steps 20 --json
    python scripts/bench_train.py -c configs/mnist.yaml -s train.batch_size=512 --no-compile
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
from rich.console import Console
from rich.table import Table

from mnistdiff import diffusion, training
from mnistdiff.config import load_config
from mnistdiff.data import BatchLoader, LabelledImages
from mnistdiff.unet import count_parameters


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--config", default=None, help="YAML config (defaults if omitted)")
    p.add_argument("-s", "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--steps", type=int, default=50, help="timed optimizer steps per variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--as-configured", action="store_true",
                   help="time only the config's own train.amp / train.compile setting")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p.parse_args()


def variants(device: torch.device, compile_: bool) -> list[tuple[str, bool]]:
    """(train.amp, train.compile) pairs worth comparing on this device."""
    if device.type == "cpu":
        return [("off", False), ("bf16", False)]
    half = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return [("off", False), (half, False)] + ([(half, True)] if compile_ else [])


def measure(cfg, device: str, steps: int, warmup: int) -> dict:
    """Time ``steps`` training steps of ``cfg`` after ``warmup`` untimed ones."""
    rt = training.setup_runtime(device, cfg.train.amp)
    tc = cfg.train
    parts = training.build_parts(cfg, rt, total_steps=warmup + steps)
    d = cfg.diffusion
    schedule = diffusion.make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end, rt.device)
    loss_fn = training.make_loss(cfg, schedule)
    n = max(60_000, tc.batch_size)  # an MNIST-sized set of random images
    images = torch.randint(0, 256, (n, cfg.model.in_channels, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, cfg.model.num_classes, (n,))
    loader = BatchLoader(LabelledImages(images, labels), tc.batch_size, seed=tc.seed,
                         device=rt.device)
    batches = training.batch_stream(loader, 0)

    def run(first: int, count: int) -> float:
        for step in range(first, first + count):
            loss = training.train_step(parts, batches, loss_fn, cfg, rt, step)
        return loss.item()  # waits for the device

    start = time.perf_counter()
    run(0, warmup)
    warmup_s = time.perf_counter() - start
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    start = time.perf_counter()
    run(warmup, steps)
    seconds = time.perf_counter() - start
    images_per_step = tc.batch_size * tc.grad_accum
    return {"device": str(rt.device), "amp": tc.amp, "compile": parts.compiled,
            "batch": images_per_step, "parameters": count_parameters(parts.model),
            "images_per_s": steps * images_per_step / seconds,
            "ms_per_step": 1000 * seconds / steps, "warmup_s": warmup_s,
            "peak_memory_mb": training.peak_memory_mb(rt.device)}


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, args.sets)
    device = training.setup_runtime(args.device, "off").device
    results = []
    pairs = ([(cfg.train.amp, cfg.train.compile)] if args.as_configured
             else variants(device, not args.no_compile))
    for amp, compile_ in pairs:
        variant = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=amp,
                                                                     compile=compile_))
        results.append(measure(variant, args.device, args.steps, args.warmup))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    table = Table(title=f"training speed: {args.config or 'default config'} "
                        f"({results[0]['parameters'] / 1e6:.2f}M parameters, batch "
                        f"{results[0]['batch']}, {device})")
    for column in ("amp", "compile", "images/s", "ms/step", "warmup s", "peak MiB"):
        table.add_column(column, justify="left" if column in ("amp", "compile") else "right")
    for r in results:
        table.add_row(r["amp"], "yes" if r["compile"] else "no", f"{r['images_per_s']:,.0f}",
                      f"{r['ms_per_step']:.1f}", f"{r['warmup_s']:.1f}",
                      f"{r['peak_memory_mb']:,.0f}")
    Console().print(table)
    if device.type == "cpu":
        Console().print("peak MiB on a CPU is the process's peak resident memory (all rows so far)")


if __name__ == "__main__":
    main()
