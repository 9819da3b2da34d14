"""Bundle a trained run as a pretrained model of the package (``mnistdiff/assets/models/NAME``).

    python scripts/export_pretrained.py runs/pretrained-mnist --name mnist \
        --config configs/pretrained-mnist.yaml \
        --command "OMP_NUM_THREADS=1 mnistdiff train -c configs/pretrained-mnist.yaml -o runs/pretrained-mnist" \
        --hardware "2-core x86-64 VM, no GPU, 1 thread" \
        --report default=reports/mnist-n10000.json --report fast=reports/mnist-fast-n2000.json

Writes the weights (EMA only), the model card and the manifest entry through
``models.bundle``. The card holds the exact training command and config file, steps, images
seen, device, wall time and the metrics of every ``mnistdiff evaluate`` report given (each
labelled, with its real floor at the same n and its classification accuracy score).
Sampler defaults can be changed with --sampler/--steps/--spacing/--guidance/--guidance-interval
(measure them first).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mnistdiff.checkpoint import load_checkpoint, resolve_checkpoint
from mnistdiff.models import MODELS_DIR, bundle

METRICS = ("n", "accuracy", "fid", "precision", "recall")


def metrics_of(label: str, report: dict) -> list[dict]:
    """The rows of an ``evaluate`` report, without per-class detail, with the floor attached."""
    floor = report.get("real_floor")
    rows = []
    for row in report["results"]:
        entry = {"label": label, **{k: row.get(k) for k in ("sampler", "steps", "spacing",
                                                            "guidance", "nfe")},
                 **{k: row[k] for k in METRICS},
                 "lowest_class_accuracy": min(c["accuracy"] for c in row["per_class"]
                                              if c["accuracy"] is not None),
                 "seconds_per_100": row.get("seconds_per_100")}
        if floor is not None:
            entry["real_floor"] = {k: floor[k] for k in METRICS}
            entry["fid_over_floor"] = round(row["fid"] / floor["fid"], 3)
        if report.get("cas") is not None and len(report["results"]) == 1:
            entry["cas"] = report["cas"]
        rows.append(entry)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--name", required=True, help="bundled name, e.g. mnist or fashion-mnist")
    p.add_argument("--config", required=True, help="the config file it was trained with")
    p.add_argument("--command", required=True, help="the exact training command")
    p.add_argument("--hardware", required=True, help="where it trained, in words")
    p.add_argument("--report", action="append", default=[], metavar="LABEL=PATH",
                   help="an evaluate report JSON to put on the card (repeatable); "
                        "PATH#W keeps only its rows at guidance W (one setting of a sweep)")
    p.add_argument("--torch", default=torch.__version__,
                   help="the PyTorch version it trained with (default: this one)")
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--spacing", default=None, help="linspace, trailing or karras")
    p.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="guidance only at timesteps with lo <= t/(T-1) <= hi")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the file)")
    p.add_argument("--note", action="append", default=[], help="a line for the card's notes")
    p.add_argument("--out", default=str(MODELS_DIR), help="models folder")
    args = p.parse_args()

    path = resolve_checkpoint(args.run)
    ckpt = load_checkpoint(path)
    run = path.parent.parent
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    metrics = []
    for item in args.report:
        label, _, report_path = item.partition("=")
        report_path, _, guidance = report_path.partition("#")
        rows = metrics_of(label, json.loads(Path(report_path).read_text()))
        metrics += [r for r in rows if not guidance or r["guidance"] == float(guidance)]
    card = {
        "training": {
            "command": args.command, "config_file": args.config,
            "config_text": Path(args.config).read_text(),
            "steps": ckpt["step"], "images_seen": ckpt["images_seen"],
            "epochs": round(ckpt["images_seen"] / 60000, 2),
            "hardware": args.hardware, "device": summary.get("device"),
            "wall_seconds": round(ckpt["train_seconds"], 1),
            "images_per_s": round(ckpt["images_seen"] / ckpt["train_seconds"], 1),
            "mnistdiff_version": ckpt["version"], "torch": args.torch,
            "finished": ckpt["created"],
        },
        "metrics": metrics,
        "notes": args.note,
    }
    interval = (None if args.guidance_interval is None
                else [float(v) for v in args.guidance_interval.split(",")])
    sample = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps),
                                ("spacing", args.spacing),
                                ("guidance", args.guidance), ("guidance_interval", interval))
              if v is not None}
    entry = bundle(path, args.name, card, sample=sample or None, half=args.half, models_dir=Path(args.out))
    model = entry["model"]
    print(f"bundled {path} as '{args.name}': {model['file']} ({model['bytes'] / 1e6:.1f} MB, "
          f"sha256 {model['sha256'][:12]}...), {entry['card']['file']}")


if __name__ == "__main__":
    main()
