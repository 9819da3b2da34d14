"""Bundled pretrained models: their names, files, checksums and model cards, and how a user's
``--checkpoint`` value becomes a model.

A fresh install samples without training: trained models ship as package data.

    assets/models/manifest.json         name -> {dataset, file, sha256, card, card_sha256}
    assets/models/<name>/model.pt       an ordinary mnistdiff checkpoint holding only the EMA
                                        weights (no optimizer), loaded with weights_only=True
    assets/models/<name>/card.json      the model card: the exact training command and config,
                                        steps, images seen, device, wall time, version, metrics

Both files are checked against the manifest's SHA-256 every time they are loaded.

How a model spec resolves (``resolve_model``; every command and ``mnistdiff.load`` use it):

1. a path that exists (a checkpoint file or a run folder): an existing path wins over a name;
2. a bundled name: ``mnist``, ``fashion-mnist``, ...;
3. ``latest``: the newest ``runs/*/checkpoints/last.pt``;
4. nothing at all: the newest run as for ``latest``; when there is none, the bundled ``mnist``.

    source = resolve_model("mnist")     # ModelSource(path=.../assets/models/mnist/model.pt, name="mnist")
    card = model_card("mnist")          # dict
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import RUNS_DIR, resolve_checkpoint
from .errors import CheckpointError
from .files import sha256_file

MODELS_DIR = Path(__file__).parent / "assets" / "models"
MANIFEST = "manifest.json"
DEFAULT = "mnist"  # the model used when no --checkpoint is given and no run exists


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: its checkpoint file and, for a bundled model, its name."""

    path: Path
    name: str | None = None  # the bundled name, or None for a user's checkpoint

    def describe(self) -> str:
        """One line for the user: which model a command is using."""
        if self.name is not None:
            return f"bundled model '{self.name}' ({self.path})"
        return f"checkpoint {self.path}"


def manifest(models_dir: Path = MODELS_DIR) -> dict:
    """The bundled models' manifest: name -> entry (empty when none are installed)."""
    path = models_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the bundled models' manifest {path} ({e}); "
                              f"reinstall mnistdiff") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"the bundled models' manifest {path} is malformed; reinstall mnistdiff")
    return data


def names(models_dir: Path = MODELS_DIR) -> list[str]:
    """The names of the bundled models, e.g. ['fashion-mnist', 'mnist']."""
    return sorted(manifest(models_dir))


def _entry(name: str, models_dir: Path) -> dict:
    entries = manifest(models_dir)
    if name not in entries:
        have = ", ".join(sorted(entries)) or "none installed"
        raise CheckpointError(f"no bundled model named '{name}' (bundled: {have})")
    return entries[name]


def _verified(name: str, key: str, models_dir: Path) -> Path:
    """The file ``entry[key]`` of bundled model ``name``, checked against its pinned SHA-256."""
    entry = _entry(name, models_dir)
    path = models_dir / entry[key]
    if not path.is_file():
        raise CheckpointError(f"bundled file {path} is missing; reinstall mnistdiff")
    if sha256_file(path) != entry[f"{key}_sha256" if key != "file" else "sha256"]:
        raise CheckpointError(f"bundled file {path} does not match the SHA-256 pinned in "
                              f"{MANIFEST}; it is corrupted or was changed, reinstall mnistdiff")
    return path


def bundled_checkpoint(name: str, models_dir: Path = MODELS_DIR) -> Path:
    """The checkpoint file of a bundled model, checksum-verified."""
    return _verified(name, "file", models_dir)


def model_card(name: str, models_dir: Path = MODELS_DIR) -> dict:
    """The model card of a bundled model (how it was trained, its measured quality), verified."""
    return json.loads(_verified(name, "card", models_dir).read_text())


def resolve_model(spec: str | Path | None = None, runs_dir: str | Path = RUNS_DIR,
                  models_dir: Path = MODELS_DIR) -> ModelSource:
    """The model a user means by ``spec`` (see the module docstring for the order)."""
    if spec is None:
        try:
            return ModelSource(resolve_checkpoint(None, runs_dir=runs_dir))
        except CheckpointError:
            if DEFAULT not in manifest(models_dir):
                raise
            return ModelSource(bundled_checkpoint(DEFAULT, models_dir), DEFAULT)
    text = str(spec)
    if text != "latest" and not Path(text).expanduser().exists() and text in manifest(models_dir):
        return ModelSource(bundled_checkpoint(text, models_dir), text)
    try:
        return ModelSource(resolve_checkpoint(spec, runs_dir=runs_dir))
    except CheckpointError as e:
        bundled = names(models_dir)
        if text == "latest" or not bundled or Path(text).expanduser().exists():
            raise
        raise CheckpointError(f"{e}; bundled models: {', '.join(bundled)}") from None


# --------------------------------------------------------------------------------- bundling

def bundle(checkpoint: str | Path, name: str, card: dict, *, sample: dict | None = None,
           half: bool = False, models_dir: Path = MODELS_DIR) -> dict:
    """Make a run's checkpoint a bundled model: write ``<name>/model.pt`` (its EMA weights, or
    the raw ones without an EMA, as the checkpoint's only weights; no optimizer or RNG state),
    ``<name>/card.json`` and the manifest entry with both SHA-256 sums. ``sample`` overrides the
    stored sampler defaults (e.g. {"guidance": 1.5}). ``half`` stores the floating-point weights
    as float16 (half the file; loading casts them back to float32). Returns the manifest entry.

    The weights go through ``model_from_checkpoint`` first, so a bundle always loads."""
    import dataclasses
    from datetime import datetime, timezone

    from . import __version__
    from .checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, model_from_checkpoint
    from .config import config_from_dict, config_to_dict
    from .files import write_atomic

    ckpt = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(ckpt, ema=True)
    if sample:
        cfg = config_from_dict({**config_to_dict(cfg),
                                "sample": {**dataclasses.asdict(cfg.sample), **sample}})
    state = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "version": ckpt.get("version"),
        "created": ckpt.get("created"), "config": config_to_dict(cfg),
        "step": ckpt.get("step"), "epoch": ckpt.get("epoch"), "batch": ckpt.get("batch"),
        "model": {k: (v.half() if half and v.is_floating_point() else v).detach().clone()
                  .contiguous() for k, v in model.state_dict().items()},
        "ema": None, "optimizer": None, "scheduler": None, "scaler": None, "rng": None,
        "train_seconds": ckpt.get("train_seconds"), "images_seen": ckpt.get("images_seen"),
    }
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    folder = models_dir / name
    model_path = write_atomic(folder / "model.pt", buffer.getvalue())
    card = {"name": name, "dataset": cfg.data.dataset, **card,
            "bundled": {"date": datetime.now(timezone.utc).date().isoformat(),
                        "mnistdiff_version": __version__, "weights": f"EMA, float{16 if half else 32}",
                        "sampler_defaults": dataclasses.asdict(cfg.sample)}}
    card_path = write_atomic(folder / "card.json", (json.dumps(card, indent=2) + "\n").encode())
    entry = {"dataset": cfg.data.dataset, "file": f"{name}/model.pt",
             "sha256": sha256_file(model_path), "card": f"{name}/card.json",
             "card_sha256": sha256_file(card_path), "bytes": model_path.stat().st_size}
    entries = manifest(models_dir)
    entries[name] = entry
    write_atomic(models_dir / MANIFEST,
                 (json.dumps(dict(sorted(entries.items())), indent=2) + "\n").encode())
    return entry
