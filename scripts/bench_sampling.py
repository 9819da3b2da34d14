"""One sampling benchmark, one table: the seed recipe against the bundled models.

Every row is timed through the public API (``Pipeline.sample``), so the numbers are what users
get, on the current device, each row in a fresh subprocess (its own peak memory, no caches
shared between rows):

    seed-ddpm500      the seed notebook's recipe in its stated layout (SeedUNet below: 64/128/256
                      channels, 128-d time and label embeddings, per block two 3x3 convs with
                      GroupNorm + SiLU and the embedding added after the first, two 256-wide
                      middle blocks; 4.45 M parameters against the 4.47 M it states; random
                      weights: speed does not depend on them), 500-step DDPM on the linear
                      T = 500 schedule of configs/seed.yaml, no guidance, on the plain path (no
                      channels_last, as the seed ran). On a CPU 500 steps of 100 digits take many minutes, so
                      --seed-steps K times K of its 500 identical steps and scales by 500 / K
                      (default: 50 on a CPU, all 500 on CUDA; the table says so).
    mnist-plain       the bundled model at its defaults on the plain path (channels_last off):
                      what the fast path below gains
    mnist             the bundled model at its checkpoint's defaults (dpmpp, 20 steps,
                      w = 1.75), as users get it (Pipeline defaults: channels_last on a CPU)
    mnist-10          the <= 10-step setting: dpmpp 10 steps, the same guidance
    mnist-interval    the default with guidance only inside --interval (diffusion.GuidedEps):
                      a single conditional pass at the other steps
    mnist-10-interval the 10-step setting with that interval
    mnist-compile     the default with torch.compile (Pipeline(compile=True)); its warm-up
                      (the compilation) is in the JSON as warmup_seconds
    student           --student PATH (a distilled checkpoint) at its own stored sampler,
                      steps and guidance (Pipeline defaults)

Columns: NFE (network evaluations per image; a guided step is one) and passes (network passes
per image: a guided step costs 2); s / 100 digits (batch 100, 10 of each digit; the median of
--repeats runs after one warm-up run); images/s at batch 1,000 (one run after a short warm-up;
--skip-batch1000 omits it); peak memory (CUDA: torch.cuda.max_memory_allocated; CPU: the peak
resident set size of the row's process while sampling, reset before each phase through
/proc/self/clear_refs, shown as the increase over the process's size before sampling; the
JSON also has the absolute peak); ratio = seed s / 100 digits over the row's (the speed-up).
The CPU targets (x the seed's speed) are shown next to the rows they apply to.

    python scripts/bench_sampling.py                                 # every row, best device
    python scripts/bench_sampling.py --device cpu --threads 2 --json bench.json
    python scripts/bench_sampling.py --student runs/distill-mnist-4 --rows seed-ddpm500,mnist,student
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED_CONFIG = ROOT / "configs" / "seed.yaml"
SEED_PARAMETERS = 4.47e6  # what the seed notebook states
ROWS = ["seed-ddpm500", "mnist-plain", "mnist", "mnist-10", "mnist-interval", "mnist-10-interval",
        "mnist-compile", "student"]
TARGETS = {"mnist": 100, "mnist-10": 200, "student": 500}  # CPU, x the seed's speed
DEFAULT_INTERVAL = "0.16,0.78"  # EDM2's guidance interval, sigma in (0.28, 2.9], on the bundled cosine T=250


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark sampling: the seed recipe against the "
                                "bundled models.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n")[1])
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads in every row (default: torch's own choice)")
    p.add_argument("--rows", default=None, help=f"comma-separated rows (default: all of "
                   f"{','.join(ROWS)}; student only with --student)")
    p.add_argument("--student", default=None, metavar="PATH",
                   help="a distilled checkpoint (file or run folder), sampled at its own defaults")
    p.add_argument("--checkpoint", default="mnist", help="the model of the mnist rows")
    p.add_argument("--interval", default=DEFAULT_INTERVAL, metavar="LO,HI",
                   help="the guidance interval of the *-interval rows (fractions t/(T-1))")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of 100 digits per row")
    p.add_argument("--seed-steps", type=int, default=None, metavar="K",
                   help="time K of the seed's 500 steps and scale by 500/K (default: 50 on a "
                        "CPU, 500 on CUDA); its batch-1000 run times max(1, K // 10) steps")
    p.add_argument("--skip-batch1000", action="store_true", help="omit the images/s at batch 1000")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)  # a child process: one row
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.seed_steps is not None and not 1 <= args.seed_steps <= 500:
        p.error("--seed-steps must be between 1 and 500")
    try:
        lo, hi = (float(v) for v in args.interval.split(","))
    except ValueError:
        p.error(f"--interval: expected LO,HI like {DEFAULT_INTERVAL}")
    args.interval = (lo, hi)
    rows = ROWS if args.rows is None else args.rows.split(",")
    if any(r not in ROWS for r in rows):
        p.error(f"--rows: rows are {', '.join(ROWS)}")
    if "student" in rows and args.student is None:
        if args.rows is not None:
            p.error("the student row needs --student PATH")
        rows = [r for r in rows if r != "student"]
    args.rows = rows
    return args


# ----------------------------------------------------------------------------- one row (child)

def _rss_kib(field: str) -> int | None:
    """VmRSS / VmHWM of this process in KiB (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of one phase: CUDA's allocator peak, or the CPU process's peak RSS (reset
    through /proc/self/clear_refs; where that is unavailable, the process's lifetime peak)."""

    def __init__(self, device) -> None:
        self.device = device

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.resettable = True
        except OSError:
            self.resettable = False
        self.base = _rss_kib("VmRSS") or 0

    def stop(self) -> dict:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            return {"kind": "cuda max_memory_allocated", "peak_mb": peak / 2**20,
                    "increase_mb": (peak - self.base) / 2**20}
        hwm = _rss_kib("VmHWM") if self.resettable else None
        if hwm is None:  # no /proc: the lifetime peak (ru_maxrss is KiB on Linux, bytes on macOS)
            scale = 1 if sys.platform != "darwin" else 1 / 1024
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        return {"kind": "cpu peak RSS" + ("" if self.resettable else " (process lifetime)"),
                "peak_mb": hwm / 1024, "increase_mb": (hwm - self.base) / 1024}


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_unet():
    """The seed notebook's U-Net as it states it, for timing only: 64/128/256 channels with
    max-pooling down and transposed convolutions up, additive skips; each block two 3x3 convs
    with GroupNorm + SiLU, the 128-d embedding (a two-layer MLP of the sinusoidal timestep
    embedding, plus a label embedding) added after the first; two 256-wide middle blocks."""
    import torch
    from torch import nn

    from mnistdiff.unet import SinusoidalEmbedding

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int):
            super().__init__()
            self.conv1, self.norm1 = nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out)
            self.emb = nn.Linear(128, c_out)
            self.conv2, self.norm2 = nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out)

        def forward(self, x, e):
            x = nn.functional.silu(self.norm1(self.conv1(x))) + self.emb(e)[:, :, None, None]
            return nn.functional.silu(self.norm2(self.conv2(x)))

    class SeedUNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.time = nn.Sequential(SinusoidalEmbedding(128), nn.Linear(128, 128), nn.SiLU(),
                                      nn.Linear(128, 128))
            self.label = nn.Embedding(11, 128)
            self.stem = nn.Conv2d(1, 64, 3, padding=1)
            self.down = nn.ModuleList([Block(64, 64), Block(64, 128), Block(128, 256)])
            self.mid = nn.ModuleList([Block(256, 256), Block(256, 256)])
            self.up = nn.ModuleList([Block(256, 128), Block(128, 64), Block(64, 64)])
            self.upsample = nn.ModuleList([nn.ConvTranspose2d(128, 128, 2, 2),
                                           nn.ConvTranspose2d(64, 64, 2, 2)])
            self.head = nn.Conv2d(64, 1, 1)

        def forward(self, x, t, y):
            e = self.time(t) + self.label(y)
            h, skips = self.stem(x), []
            for i, block in enumerate(self.down):
                h = block(h, e)
                skips.append(h)
                if i < 2:
                    h = nn.functional.max_pool2d(h, 2)
            for block in self.mid:
                h = block(h, e)
            for i, block in enumerate(self.up):
                h = block(h + skips.pop(), e)
                if i < 2:
                    h = self.upsample[i](h)
            return self.head(h)

    torch.manual_seed(0)
    return SeedUNet()


def build_row(name: str, args: argparse.Namespace):
    """(pipeline, settings, steps timed of the full count or None, description) of a row."""
    import torch

    import mnistdiff
    from mnistdiff.config import load_config
    from mnistdiff.pipeline import Pipeline, resolve_device

    device = resolve_device(args.device)
    if name == "seed-ddpm500":
        cfg = load_config(SEED_CONFIG)
        pipe = Pipeline(seed_unet(), cfg, device=device, channels_last=False)
        full = cfg.sample.steps  # 500
        k = args.seed_steps or (full if device.type == "cuda" else 50)
        return pipe, pipe.settings(steps=k), full, "the seed's stated U-Net (random weights)"
    if name == "student":
        pipe = mnistdiff.load(args.student, device=device)
        return pipe, pipe.settings(), None, f"student {args.student}"
    options = {"mnist-plain": {"channels_last": False}, "mnist-compile": {"compile": True}}
    pipe = mnistdiff.load(args.checkpoint, device=device, **options.get(name, {}))
    kw = {"steps": 10, "sampler": "dpmpp"} if name.startswith("mnist-10") else {}
    if name.endswith("-interval"):
        kw["guidance_interval"] = args.interval
    return pipe, pipe.settings(**kw), None, args.checkpoint


def run_row(name: str, args: argparse.Namespace) -> dict:
    import torch

    from mnistdiff.unet import count_parameters

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pipe, s, full, what = build_row(name, args)
    digits = list(range(len(pipe.classes)))
    scale = 1.0 if full is None else full / s.steps
    memory = PeakMemory(pipe.device)
    row = {"row": name, "model": what, "parameters": count_parameters(pipe.model),
           "sampler": s.sampler, "steps": full or s.steps,
           "spacing": getattr(pipe.config.sample, "spacing", "linspace"), "guidance": s.guidance,
           "guidance_interval": list(s.guidance_interval),
           "fast_paths": [o for o in ("channels_last", "compiled") if getattr(pipe, o, False)],
           "steps_timed": s.steps, "time_scale": scale}

    def timed(per_digit: int, batch: int, settings) -> tuple[float, object]:
        _synchronize(pipe.device)
        start = time.perf_counter()
        out = pipe.sample(digits, per_digit, settings=settings, batch_size=batch)
        _synchronize(pipe.device)
        return time.perf_counter() - start, out

    memory.start()
    start = time.perf_counter()
    # warm-up: the whole run (compilation sees every batch shape); the seed's steps are all
    # alike, so three of them do
    timed(10, 100, s if full is None else pipe.settings(steps=min(3, s.steps)))
    row["warmup_seconds"] = time.perf_counter() - start
    runs, out = [], None
    for _ in range(args.repeats):
        seconds, out = timed(10, 100, s)
        runs.append(seconds)
    row["memory_100"] = memory.stop()
    row.update(nfe=round(out.nfe * scale), passes=round(out.passes * scale),
               runs_seconds=runs, seconds_per_100=statistics.median(runs) * scale)
    if not args.skip_batch1000:
        s1000 = s
        if full is not None:  # the seed: max(1, K // 10) of its steps at batch 1000
            s1000 = pipe.settings(steps=max(1, s.steps // 10))
        memory.start()
        warm = pipe.settings(**{**vars(s1000), "steps": min(3, s1000.steps)})
        timed(100, 1000, warm)  # new shapes: oneDNN primitives, compilation
        seconds, _ = timed(100, 1000, s1000)
        row["memory_1000"] = memory.stop()
        scale1000 = 1.0 if full is None else full / s1000.steps
        row.update(steps_timed_1000=s1000.steps, seconds_1000=seconds * scale1000,
                   images_per_second_1000=1000 / (seconds * scale1000))
    return row


# ----------------------------------------------------------------------------- the table (parent)

def child_args(args: argparse.Namespace, row: str) -> list[str]:
    out = [sys.executable, str(Path(__file__).resolve()), "--row", row, "--device", args.device,
           "--checkpoint", args.checkpoint, "--interval", ",".join(map(str, args.interval)),
           "--repeats", str(args.repeats)]
    for flag, value in (("--threads", args.threads), ("--seed-steps", args.seed_steps),
                        ("--student", args.student)):
        if value is not None:
            out += [flag, str(value)]
    return out + (["--skip-batch1000"] if args.skip_batch1000 else [])


def setup_info(args: argparse.Namespace) -> dict:
    import torch

    from mnistdiff.pipeline import resolve_device

    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        platform.processor() or platform.machine())
    if device.type == "cpu":
        try:
            name = next(line.split(":", 1)[1].strip() for line in
                        Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "repeats": args.repeats, "interval": list(args.interval),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}


def print_table(setup: dict, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(f"device {setup['device']} ({setup['device_name']}), torch {setup['torch']}, "
                  f"{setup['torch_threads']} torch threads, {setup['cpu_count']} CPUs, load "
                  f"average {setup['load_average']}", highlight=False)
    table = Table(title="sampling speed (issue 10)")
    for column in ("row", "sampler", "NFE", "passes", "s / 100 digits", "images/s @1000",
                   "peak mem +MB (100 / 1000)", "x seed", "CPU target"):
        table.add_column(column, justify="left" if column in ("row", "sampler") else "right")
    for r in rows:
        if "error" in r:
            table.add_row(r["row"], f"[red]{r['error']}[/red]", *[""] * 7)
            continue
        what = f"{r['sampler']} {r['steps']}" + (
            "" if r.get("spacing", "linspace") == "linspace" else f" {r['spacing']}") + \
            f", w {r['guidance']:g}"
        if r["guidance_interval"] != [0.0, 1.0]:
            what += f" in [{r['guidance_interval'][0]:g}, {r['guidance_interval'][1]:g}]"
        what += "".join(f", {o.replace('_', ' ')}" for o in r["fast_paths"])
        s100 = f"{r['seconds_per_100']:.2f}"
        if r["time_scale"] != 1:
            s100 += f" ({r['steps_timed']} of {r['steps']} steps x{r['time_scale']:g})"
        ips = "" if "images_per_second_1000" not in r else f"{r['images_per_second_1000']:.3g}"
        if ips and r["time_scale"] != 1:
            ips += f" ({r['steps_timed_1000']} steps)"
        mem = f"{r['memory_100']['increase_mb']:.0f}"
        if "memory_1000" in r:
            mem += f" / {r['memory_1000']['increase_mb']:.0f}"
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.1f}x"
        target = "" if r["row"] not in TARGETS else (
            f">= {TARGETS[r['row']]}x " + ("" if r.get("ratio") is None else
                                           ("met" if r["ratio"] >= TARGETS[r["row"]] else "missed")))
        table.add_row(r["row"], what, str(r["nfe"]), str(r["passes"]), s100, ips, mem, ratio, target)
    console.print(table)
    seed = next((r for r in rows if r["row"] == "seed-ddpm500" and "error" not in r), None)
    if seed is not None:
        console.print(f"seed U-Net: {seed['parameters']:,} parameters in its stated layout "
                      f"(the seed states ~4.47 M)", highlight=False)
        if abs(seed["parameters"] - SEED_PARAMETERS) / SEED_PARAMETERS > 0.1:
            seed["note"] = "parameters differ from the seed's stated ~4.47 M"
    console.print(f"peak mem: {rows[0]['memory_100']['kind'] if rows and 'memory_100' in rows[0] else ''}, "
                  f"increase over the row's process before sampling, warm-up included (for "
                  f"mnist-compile that is the compiler's memory too; JSON: absolute peak too).",
                  highlight=False)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.row is not None:  # a child: one row, as one JSON line
        print("BENCH_ROW " + json.dumps(run_row(args.row, args)), flush=True)
        return
    setup = setup_info(args)
    rows = []
    for name in args.rows:
        print(f"{name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(child_args(args, name), capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [str(ROOT), os.environ.get("PYTHONPATH", "")])})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_ROW ")), None)
        if proc.returncode != 0 or line is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{name} failed: {tail}", file=sys.stderr)
            rows.append({"row": name, "error": tail[:120]})
            continue
        rows.append(json.loads(line[len("BENCH_ROW "):]))
    seed = next((r for r in rows if r["row"] == "seed-ddpm500" and "error" not in r), None)
    for r in rows:
        if "error" not in r:
            r["ratio"] = None if seed is None else seed["seconds_per_100"] / r["seconds_per_100"]
    print_table(setup, rows)
    if args.json is not None:
        Path(args.json).write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
