"""How well "Complete my drawing" completes: real test digits with their bottom half hidden.

    python scripts/completion_quality.py --per-class 20 --resample 1,2,4 --json completion.json

For each setting, every digit's top half (rows 0-13) is kept and the model fills in the rest,
asked for the digit's own label (``Pipeline.inpaint``, the page's and ``sample --init-image``'s
code path). Reported per setting:

- accuracy: the bundled classifier reads the completion as the digit it should be;
- seam: the mean absolute step between the last kept row and the first filled row, as a
  multiple of the same step in the real digits (1 = as smooth as real strokes; more = a visible
  edge where the drawing meets the model's pixels);
- specks: the share of filled pixels that are bright (> 127) with no bright neighbour among
  their 8 (stray dots and dashes; real digits' share in the same rows is shown beside it);
- seconds per completion (the network passes grow with --resample).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def specks(images: np.ndarray, rows: slice) -> float:
    """The share of pixels in ``rows`` that are bright with no bright 8-neighbour."""
    bright = images > 127
    padded = np.pad(bright, ((0, 0), (1, 1), (1, 1)))
    neighbours = sum(padded[:, 1 + dy:29 + dy, 1 + dx:29 + dx]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
    lonely = bright & (neighbours == 0)
    return float(lonely[:, rows].mean())


def seam(images: np.ndarray, row: int) -> float:
    return float(np.abs(images[:, row].astype(int) - images[:, row - 1].astype(int)).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", "-k", default="mnist")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--resample", default="1,2,4", help="comma-separated RePaint rounds")
    p.add_argument("--keep-rows", type=int, default=14, help="rows kept from the top")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    import mnistdiff
    from mnistdiff.data import find_data_dir, load_split
    from mnistdiff.evaluation import load_classifier, run_classifier

    pipe = mnistdiff.load(args.checkpoint, device="cpu")
    test = load_split(find_data_dir("mnist", args.data_dir, download=False, splits=("test",)),
                      "test")
    g = torch.Generator().manual_seed(0)
    picks = torch.cat([torch.nonzero(test.labels == c).squeeze(1)[
        torch.randperm(int((test.labels == c).sum()), generator=g)[:args.per_class]]
        for c in range(10)])
    real = test.images[picks, 0].numpy()  # (N, 28, 28)
    labels = test.labels[picks].tolist()
    keep = np.zeros((28, 28), bool)
    keep[:args.keep_rows] = True
    classifier = load_classifier("mnist")
    row = args.keep_rows
    results = {"checkpoint": args.checkpoint, "n": len(labels), "keep_rows": row,
               "real": {"seam": seam(real, row), "specks": specks(real, slice(row, 28))},
               "settings": []}
    for rounds in (int(r) for r in args.resample.split(",")):
        start, done = time.perf_counter(), []
        for image, label in zip(real, labels):
            done.append(pipe.inpaint(image, keep, [label], 1, resample=rounds, seed=0).images[0])
        images = torch.stack(done).numpy()
        _, preds = run_classifier(classifier, images)
        row_ = {"resample": rounds, "accuracy": float((preds == np.array(labels)).mean()),
                "seam": seam(images, row) / results["real"]["seam"],
                "specks": specks(images, slice(row, 28)),
                "seconds_per_completion": (time.perf_counter() - start) / len(labels)}
        results["settings"].append(row_)
        print(json.dumps(row_), flush=True)
    print(json.dumps(results["real"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
