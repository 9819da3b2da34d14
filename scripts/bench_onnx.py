"""Sampling speed on the CPU: PyTorch (the pipeline's own network, channels_last) against
onnxruntime running the exported ONNX file, through the same sampler and step grid.

    OMP_NUM_THREADS=1 python scripts/bench_onnx.py -k mnist-fast --threads 1
    python scripts/bench_onnx.py -k mnist-fast --batches 1,16,100 --repeats 7 --json

Each repeat samples one batch of each size with both backends in turn (interleaved, so a
background load hits both alike); the median seconds per batch are printed, with the speed-up
and the largest difference between the two backends' final images (float, in [-1, 1]).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import mnistdiff  # noqa: E402
from mnistdiff import export  # noqa: E402
from mnistdiff.diffusion import GuidedEps  # noqa: E402
from mnistdiff.samplers import SAMPLERS, step_grid  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", "--checkpoint", default="mnist-fast")
    ap.add_argument("--batches", default="1,16,100")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = mnistdiff.load(args.checkpoint, device="cpu")
    onnx = export.OnnxNetwork(export.to_onnx(pipe.model, pipe.config), threads=args.threads)
    s = pipe.settings()
    grid = step_grid(pipe.schedule, s.steps, s.spacing)
    fn = SAMPLERS[s.sampler]
    options = {k: getattr(s, k) for k in fn.options}

    def run(network, x, y):
        eps = GuidedEps(network, pipe.schedule, y, s.guidance, pipe.objective,
                        null_label=pipe.num_classes, interval=s.guidance_interval)
        with torch.inference_mode():
            return fn(eps, x.clone(), grid, generator=torch.Generator().manual_seed(0),
                      clip_x0=pipe.config.sample.clip_x0, **options)

    backends = {"torch": pipe._forward, "onnxruntime": onnx}
    rows = []
    for b in (int(v) for v in args.batches.split(",")):
        g = torch.Generator().manual_seed(b)
        x = torch.randn(b, pipe.config.model.in_channels, 28, 28, generator=g)
        y = torch.arange(b) % pipe.num_classes
        outs = {name: run(net, x, y) for name, net in backends.items()}  # warm-up, and the check
        times: dict[str, list[float]] = {name: [] for name in backends}
        for _ in range(args.repeats):
            for name, net in backends.items():
                start = time.perf_counter()
                run(net, x, y)
                times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(v) for name, v in times.items()}
        rows.append({"batch": b, "steps": s.steps, "threads": args.threads,
                     "torch_s": med["torch"], "onnxruntime_s": med["onnxruntime"],
                     "speedup": med["torch"] / med["onnxruntime"],
                     "max_abs_diff": float((outs["torch"] - outs["onnxruntime"]).abs().max())})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{pipe.name}: {s.describe()}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'batch':>6} {'torch ms':>10} {'onnxruntime ms':>15} {'speed-up':>9} {'max diff':>9}")
    for r in rows:
        print(f"{r['batch']:>6} {r['torch_s'] * 1e3:>10.1f} {r['onnxruntime_s'] * 1e3:>15.1f} "
              f"{r['speedup']:>8.2f}x {r['max_abs_diff']:>9.1e}")


if __name__ == "__main__":
    main()
