"""Train the reference classifier that ``mnistdiff evaluate`` judges samples with.

    python scripts/train_classifier.py --dataset mnist --data-dir ../shared/data/mnist
    python scripts/train_classifier.py --dataset fashion-mnist

Trains ``classifier.Classifier`` with ``classifier.train_classifier`` on the whole training split
(held as one tensor on the device, with a light random affine augmentation), reports its test
accuracy and writes into ``--out``:

    <dataset>_classifier.pt   state_dict of CPU tensors (loads with torch.load(weights_only=True))
    <dataset>_reference.npz   mu (D,) and cov (D, D) of the test set's features, float64 (FID)
    manifest.json             SHA-256 of both files, test accuracy, parameter count, settings

The test accuracy and the statistics are computed on the CPU after training, exactly as
``load_classifier`` and ``reference_stats`` will see them. The test split is never used to pick
anything: training runs a fixed number of epochs. The bundled weights took 30 epochs, about 80 s
on one GPU (~24k images/s); one core of a 2-core CPU manages ~400 images/s, 2.5 minutes per epoch.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from mnistdiff.classifier import AUGMENTATION, Classifier, train_classifier
from mnistdiff.data import LabelledImages, find_data_dir, load_split
from mnistdiff.evaluation import ASSETS, MANIFEST, gaussian_stats, run_classifier, write_json
from mnistdiff.files import sha256_file


def train(args: argparse.Namespace, train_set: LabelledImages,
          test_set: LabelledImages) -> tuple[Classifier, dict]:
    """Train for args.epochs; return the model (on the CPU, in eval mode) and a training record."""
    device = torch.device(args.device if args.device != "auto"
                          else "cuda" if torch.cuda.is_available() else "cpu")
    print(f"{args.dataset}: {len(train_set.labels)} training images on {device}")
    start = t0 = time.time()

    def report(epoch: int, model: Classifier, loss: float) -> None:
        nonlocal t0
        speed = len(train_set.labels) / (time.time() - t0)
        model.eval()
        _, preds = run_classifier(model, test_set.images)
        model.train()
        print(f"epoch {epoch + 1:2d}/{args.epochs}  loss {loss:.4f}  "
              f"test acc {float((preds == test_set.labels.numpy()).mean()):.4f}  "
              f"{speed:.0f} img/s", flush=True)
        t0 = time.time()

    model = train_classifier(train_set.images, train_set.labels, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr,
                             weight_decay=args.weight_decay, seed=args.seed, device=device,
                             on_epoch=report)
    record = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
              "weight_decay": args.weight_decay, "seed": args.seed, "images": len(train_set.labels),
              "augmentation": AUGMENTATION,
              "seconds": round(time.time() - start, 1), "device": str(device),
              "torch": torch.__version__}
    return model, record


def export(model: Classifier, test_set: LabelledImages, record: dict, dataset: str,
           out: Path) -> dict:
    """Write weights, reference statistics and the manifest entry into ``out``; return the entry."""
    features, preds = run_classifier(model, test_set.images)   # on the CPU, as users load it
    correct = int((preds == test_set.labels.numpy()).sum())
    mu, cov = gaussian_stats(features)
    out.mkdir(parents=True, exist_ok=True)
    weights, reference = out / f"{dataset}_classifier.pt", out / f"{dataset}_reference.npz"
    torch.save(model.state_dict(), weights)
    with open(reference, "wb") as f:
        np.savez(f, mu=mu, cov=cov, n=len(features))
    entry = {
        "classifier": {"file": weights.name, "sha256": sha256_file(weights)},
        "reference": {"file": reference.name, "sha256": sha256_file(reference)},
        "test_accuracy": round(correct / len(preds), 4), "test_correct": correct,
        "test_n": len(preds), "feature_dim": int(mu.shape[0]),
        "params": sum(p.numel() for p in model.parameters()),
        "input": "uint8 pixels scaled to [-1, 1]",
        "training": record,
        "date": datetime.now(timezone.utc).date().isoformat(),
    }
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[dataset] = entry
    write_json(dict(sorted(manifest.items())), manifest_path)
    return entry


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--data-dir", default=None, help="folder of IDX files (else $MNISTDIFF_DATA, "
                                                    "system folders, download)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--limit", type=int, default=0,
                   help="train on the first N images only (a smoke test; do not ship its weights)")
    p.add_argument("--out", default=str(ASSETS), help="folder for the weights and manifest")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = find_data_dir(args.dataset, args.data_dir)
    train_set, test_set = (load_split(folder, s, args.dataset) for s in ("train", "test"))
    if args.limit:
        train_set = LabelledImages(train_set.images[:args.limit], train_set.labels[:args.limit])
    model, record = train(args, train_set, test_set)
    entry = export(model, test_set, record, args.dataset, Path(args.out))
    print(f"{args.dataset}: test accuracy {entry['test_accuracy']:.4f} "
          f"({entry['test_correct']}/{entry['test_n']}) after {record['seconds']:.0f} s; "
          f"wrote {entry['classifier']['file']}, {entry['reference']['file']}, {MANIFEST} "
          f"into {args.out}")


if __name__ == "__main__":
    main()
