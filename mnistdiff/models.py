"""Models: which one a user means, reading it (verified), its card, and bundling a run.

The one way to load a model, for the CLI, the page, distillation, scripts and notebooks:

    source = resolve("mnist")            # ModelSource(path=.../assets/models/mnist/model.pt, name="mnist")
    loaded = read("runs/quick")          # Loaded(model, config, info): the network, no device yet
    pipe = load("mnist", device="cpu")   # a pipeline.Pipeline ready to sample (mnistdiff.load)

How a model spec resolves (``resolve``):

1. a path that exists (a checkpoint file or a run folder): an existing path wins over a name;
2. a bundled name: ``mnist``, ``fashion-mnist``, ...;
3. ``latest``: the newest ``runs/*/checkpoints/last.pt``;
4. nothing at all: the newest run as for ``latest``; when there is none, the bundled ``DEFAULT``
   (the fast student), or ``FLEXIBLE`` (the many-step model) for what a few-step student cannot
   do: completing a drawing.

Bundled files ship as package data, each pinned by SHA-256 in a :class:`Manifest`:

    assets/models/manifest.json    name -> {dataset, model: {file, sha256, bytes}, card: {file, sha256}}
    assets/models/<name>/model.pt  an ordinary checkpoint holding only the EMA weights
    assets/models/<name>/card.json the model card: training command and config, steps, images
                                   seen, device, wall time, version, measured quality
    assets/manifest.json           dataset -> {classifier: {file, sha256}, reference: {...}, ...}
                                   (the evaluation classifiers, evaluation.py)

Every pinned file is checked against its SHA-256 each time it is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CheckpointError
from .files import sha256_file, write_atomic
from .run import RUNS_DIR

if TYPE_CHECKING:
    from torch import nn

    from .config import Config
    from .pipeline import Pipeline

ASSETS = Path(__file__).parent / "assets"
MODELS_DIR = ASSETS / "models"
DEFAULT = "mnist"  # the model used when no --checkpoint is given and no run exists
FLEXIBLE = "mnist"  # ... for inpainting: every sampler, many steps


class Manifest:
    """A folder of pinned files: ``manifest.json`` maps a name to its entry, and every pinned
    part of an entry is ``{"file": path relative to the folder, "sha256": hex digest}``."""

    FILE = "manifest.json"

    def __init__(self, folder: str | Path, what: str = "bundled models", required: bool = False):
        self.folder, self.what, self.required = Path(folder), what, required

    def entries(self) -> dict:
        """name -> entry (empty when the folder has no manifest and it is not ``required``)."""
        path = self.folder / self.FILE
        if not path.is_file():
            if self.required:
                raise CheckpointError(f"cannot read the {self.what}' manifest {path} (it is "
                                      f"missing); reinstall mnistdiff")
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read the {self.what}' manifest {path} ({e}); "
                                  f"reinstall mnistdiff") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"the {self.what}' manifest {path} is malformed; reinstall "
                                  f"mnistdiff")
        return data

    def names(self) -> list[str]:
        return sorted(self.entries())

    def entry(self, name: str) -> dict:
        entries = self.entries()
        if name not in entries:
            have = ", ".join(sorted(entries)) or "none installed"
            raise CheckpointError(f"no {self.what.rstrip('s')} named '{name}' ({self.what}: "
                                  f"{have})")
        return entries[name]

    def path(self, name: str, part: str) -> Path:
        """The file of ``entry[part]``, checked against its pinned SHA-256."""
        pin = self.entry(name).get(part)
        if not isinstance(pin, dict) or not {"file", "sha256"} <= pin.keys():
            raise CheckpointError(f"the {self.what}' manifest has no pinned {part} for '{name}'; "
                                  f"reinstall mnistdiff")
        path = self.folder / pin["file"]
        if not path.is_file():
            raise CheckpointError(f"bundled file {path} is missing; reinstall mnistdiff")
        if sha256_file(path) != pin["sha256"]:
            raise CheckpointError(f"bundled file {path} does not match the SHA-256 pinned in "
                                  f"{self.FILE}; it is corrupted or was changed, reinstall "
                                  f"mnistdiff")
        return path

    def read_json(self, name: str, part: str) -> dict:
        return json.loads(self.path(name, part).read_text())

    def pin(self, name: str, files: dict[str, Path], **fields) -> dict:
        """Add (or replace) ``name``: each of ``files`` (part -> a path inside the folder) pinned
        by its SHA-256, plus plain ``fields``; the manifest is rewritten atomically."""
        entry = dict(fields)
        for part, path in files.items():
            entry[part] = {"file": Path(path).relative_to(self.folder).as_posix(),
                           "sha256": sha256_file(path), "bytes": Path(path).stat().st_size}
        entries = self.entries()
        entries[name] = entry
        write_atomic(self.folder / self.FILE,
                     (json.dumps(dict(sorted(entries.items())), indent=2) + "\n").encode())
        return entry


def bundled(models_dir: Path = MODELS_DIR) -> Manifest:
    """The manifest of the bundled models in ``models_dir``."""
    return Manifest(models_dir, "bundled models")


def names(models_dir: Path = MODELS_DIR) -> list[str]:
    """The names of the bundled models, e.g. ['fashion-mnist', 'mnist', ...]."""
    return bundled(models_dir).names()


def card(name: str, models_dir: Path = MODELS_DIR) -> dict:
    """The model card of a bundled model (how it was trained, its measured quality), verified."""
    return bundled(models_dir).read_json(name, "card")


# --------------------------------------------------------------------------------- resolving

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


def resolve(spec: str | Path | None = None, *, runs_dir: str | Path = RUNS_DIR,
            models_dir: Path = MODELS_DIR, default: str | None = None) -> ModelSource:
    """The model a user means by ``spec`` (see the module docstring for the order);
    ``default`` is the bundled model for no spec and no run (None: ``DEFAULT``)."""
    from .checkpoint import resolve_checkpoint

    manifest = bundled(models_dir)
    if spec is None:
        default = default or DEFAULT
        try:
            return ModelSource(resolve_checkpoint(None, runs_dir=runs_dir))
        except CheckpointError:
            if default not in manifest.entries():
                raise
            return ModelSource(manifest.path(default, "model"), default)
    text = str(spec)
    if text != "latest" and not Path(text).expanduser().exists() and text in manifest.entries():
        return ModelSource(manifest.path(text, "model"), text)
    try:
        return ModelSource(resolve_checkpoint(spec, runs_dir=runs_dir))
    except CheckpointError as e:
        have = manifest.names()
        if text == "latest" or not have or Path(text).expanduser().exists():
            raise
        raise CheckpointError(f"{e}; bundled models: {', '.join(have)}") from None


# --------------------------------------------------------------------------------- reading

@dataclass
class Loaded:
    """A model read from its checkpoint: the network (CPU, eval mode), its config, and what a
    pipeline remembers about where it came from (``info``, shown by ``mnistdiff summarize``)."""

    model: nn.Module
    config: Config
    info: dict
    source: ModelSource


def read(spec: str | Path | None = None, *, ema: bool = True, runs_dir: str | Path = RUNS_DIR,
         models_dir: Path = MODELS_DIR, default: str | None = None) -> Loaded:
    """Resolve ``spec`` and read its checkpoint (``weights_only``, verified): the network with
    the EMA weights when the checkpoint has them and ``ema`` is true (bundled models hold only
    their EMA weights), the config, and the info with the model card of a bundled model."""
    from .checkpoint import load_checkpoint, model_from_checkpoint

    source = resolve(spec, runs_dir=runs_dir, models_dir=models_dir, default=default)
    ckpt = load_checkpoint(source.path)
    model, config = model_from_checkpoint(ckpt, ema=ema)
    info = {"path": str(source.path), "name": source.name, "source": source.describe(),
            "step": ckpt.get("step"), "epoch": ckpt.get("epoch"), "created": ckpt.get("created"),
            "version": ckpt.get("version"), "ema": bool(ema and ckpt.get("ema") is not None),
            "train_seconds": ckpt.get("train_seconds"), "images_seen": ckpt.get("images_seen"),
            "sha256": sha256_file(source.path)}
    if source.name is not None:
        info["card"] = card(source.name, models_dir)
    return Loaded(model, config, info, source)


def load(spec: str | Path | None = None, device: str = "auto", ema: bool = True, *,
         runs_dir: str | Path = RUNS_DIR, models_dir: Path = MODELS_DIR,
         channels_last: bool | None = None, compile: bool = False,
         default: str | None = None, bf16: bool | None = None,
         backend: str = "torch") -> Pipeline:
    """A Pipeline from a checkpoint file, a run folder, a bundled model's name, "latest" (the
    newest run) or None (the newest run, else the bundled default); see :func:`resolve`.
    ``channels_last``, ``compile`` and ``backend``: the fast paths of :class:`pipeline.Pipeline`
    (``backend="onnxruntime"``: the network in onnxruntime on the CPU)."""
    from .pipeline import Pipeline, resolve_device

    if backend == "onnxruntime" and str(device) == "auto":
        device = "cpu"
    dev = resolve_device(device)  # a bad device is refused before the file is read
    loaded = read(spec, ema=ema, runs_dir=runs_dir, models_dir=models_dir, default=default)
    return Pipeline(loaded.model, loaded.config, device=dev, info=loaded.info,
                    channels_last=channels_last, compile=compile, bf16=bf16,
                    backend=backend)


# --------------------------------------------------------------------------------- a catalog

@dataclass(frozen=True)
class Entry:
    """One model a catalog offers."""

    id: str  # "bundled:mnist", "run:NAME" or "file:PATH"
    label: str
    kind: str  # bundled, run or file
    spec: str  # what load takes


class Catalog:
    """The models a long-running process (the page) offers: the bundled ones, the runs under
    ``runs_dir`` (newest first) and a --checkpoint that is neither; the last three loaded stay
    in memory. Only these can be asked for by id."""

    KEEP = 3

    def __init__(self, *, checkpoint: str | Path | None = None, models_dir: Path = MODELS_DIR,
                 runs_dir: str | Path = RUNS_DIR, device: str = "auto"):
        import threading
        from collections import OrderedDict

        from .pipeline import resolve_device

        self.models_dir, self.runs_dir = Path(models_dir), Path(runs_dir)
        self.device = resolve_device(device)
        self.extra = None if checkpoint is None else resolve(
            checkpoint, runs_dir=self.runs_dir, models_dir=self.models_dir)
        found = self.models()
        if not found:
            raise CheckpointError(f"no models to offer: none bundled in {self.models_dir} and "
                                  f"no run under {self.runs_dir}; train one or pass --checkpoint")
        if self.extra is not None:
            e = self.extra
            self.default = next(m.id for m in found if m.spec == e.name or
                                (m.kind != "bundled" and Path(m.spec).resolve() == e.path.resolve()))
        else:  # the bundled default, else the first bundled model, else the newest run
            ids = [m.id for m in found]
            self.default = f"bundled:{DEFAULT}" if f"bundled:{DEFAULT}" in ids else ids[0]
        self._loaded: OrderedDict[str, Pipeline] = OrderedDict()
        self._lock = threading.Lock()

    def models(self) -> list[Entry]:
        from .checkpoint import LAST

        found = [Entry(f"bundled:{n}", f"{n} (bundled)", "bundled", n)
                 for n in names(self.models_dir)]
        runs = sorted(self.runs_dir.glob(f"*/checkpoints/{LAST}"),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        found += [Entry(f"run:{p.parent.parent.name}", f"{p.parent.parent.name} (run)", "run",
                        str(p)) for p in runs]
        e = self.extra
        if e is not None and e.name is None and not any(
                m.kind != "bundled" and Path(m.spec).resolve() == e.path.resolve() for m in found):
            found.append(Entry(f"file:{e.path}", f"{e.path} (checkpoint)", "file", str(e.path)))
        return found

    def pipeline(self, model_id: object) -> Pipeline:
        """The loaded Pipeline of a listed model."""
        from .errors import MnistdiffError

        model_id = self.default if model_id in (None, "") else model_id
        m = next((m for m in self.models() if m.id == model_id), None)
        if m is None:
            raise MnistdiffError(f"model: unknown model {str(model_id)[:60]!r}; reload the page "
                                 f"for the list")
        with self._lock:
            if m.id not in self._loaded:
                self._loaded[m.id] = load(m.spec, device=self.device, models_dir=self.models_dir,
                                          runs_dir=self.runs_dir)
                while len(self._loaded) > self.KEEP:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(m.id)
            return self._loaded[m.id]


# --------------------------------------------------------------------------------- bundling

def bundle(checkpoint: str | Path, name: str, model_card: dict, *, sample: dict | None = None,
           half: bool = False, models_dir: Path = MODELS_DIR) -> dict:
    """Make a run's checkpoint a bundled model: write ``<name>/model.pt`` (its EMA weights, or
    the raw ones without an EMA, as the checkpoint's only weights; no optimizer or RNG state),
    ``<name>/card.json`` and the manifest entry pinning both. ``sample`` overrides the stored
    sampler defaults (e.g. {"guidance": 1.5}). ``half`` stores the floating-point weights as
    float16 (half the file; loading casts them back to float32). Returns the manifest entry.

    The weights go through ``model_from_checkpoint`` first, so a bundle always loads."""
    import dataclasses
    import io
    from datetime import datetime, timezone

    import torch

    from . import __version__
    from .checkpoint import load_checkpoint, make_state, model_from_checkpoint
    from .config import config_from_dict, config_to_dict

    ckpt = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(ckpt, ema=True)
    if sample:
        cfg = config_from_dict({**config_to_dict(cfg),
                                "sample": {**dataclasses.asdict(cfg.sample), **sample}})
    weights = {k: (v.half() if half and v.is_floating_point() else v).detach().clone()
               .contiguous() for k, v in model.state_dict().items()}
    state = make_state(config_to_dict(cfg), weights, step=ckpt.get("step"),
                       epoch=ckpt.get("epoch"), batch=ckpt.get("batch"),
                       train_seconds=ckpt.get("train_seconds"),
                       images_seen=ckpt.get("images_seen"), version=ckpt.get("version"),
                       created=ckpt.get("created"))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    folder = Path(models_dir) / name
    model_path = write_atomic(folder / "model.pt", buffer.getvalue())
    full_card = {"name": name, "dataset": cfg.data.dataset, **model_card,
                 "bundled": {"date": datetime.now(timezone.utc).date().isoformat(),
                             "mnistdiff_version": __version__,
                             "weights": f"EMA, float{16 if half else 32}",
                             "sampler_defaults": dataclasses.asdict(cfg.sample)}}
    card_path = write_atomic(folder / "card.json",
                             (json.dumps(full_card, indent=2) + "\n").encode())
    return bundled(models_dir).pin(name, {"model": model_path, "card": card_path},
                                   dataset=cfg.data.dataset)


# --------------------------------------------------------------------------------- summary

def summary(loaded: Loaded | None = None, *, model: nn.Module | None = None,
            config: Config | None = None, depth: int = 2) -> dict:
    """torchinfo's view of the network on one image (layers, output shapes, parameters,
    multiply-accumulates) with what the config and the checkpoint say about training: of a
    read model, or of ``model`` (default: built from ``config`` alone, ``summarize -c``)."""
    import dataclasses

    import torch
    import torchinfo

    from .unet import build_model, count_parameters

    if loaded is not None:
        model, config = loaded.model, loaded.config
    size = config.data.image_size
    model = (build_model(config.model, size) if model is None else model).to("cpu").eval()
    inputs = [torch.zeros(1, config.model.in_channels, size, size),
              torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)]  # x, t, y
    stats = torchinfo.summary(model, input_data=inputs, depth=depth, verbose=0)
    layers, seen = [], set()
    for layer in stats.summary_list[1:]:  # [0] is the whole model
        if layer.depth > depth or id(layer.module) in seen:  # containers reappear as "recursive"
            continue
        seen.add(id(layer.module))
        names_, p = [], layer
        while p is not None and p.depth > 0:
            names_.append(p.var_name)
            p = p.parent_info
        layers.append({"name": ".".join(reversed(names_)), "type": layer.class_name,
                       "depth": layer.depth, "output_shape": layer.output_size or None,
                       "parameters": layer.num_params})
    d, train = config.diffusion, config.train
    return {
        "parameters": count_parameters(model),
        "trainable_parameters": stats.trainable_params,
        "mult_adds_per_image": stats.total_mult_adds,
        "size_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6,
        "layers": layers,
        "model": dataclasses.asdict(config.model),
        "dataset": config.data.dataset,
        "diffusion": {"schedule": d.schedule, "timesteps": d.timesteps, "objective": d.objective},
        "sampler_defaults": {k: getattr(config.sample, k) for k in
                             ("sampler", "steps", "spacing", "guidance", "guidance_interval")},
        "ema_decay": train.ema_decay,
        "distilled_from": dataclasses.asdict(config.distill) if config.distill.teacher else None,
        "checkpoint": None if loaded is None else loaded.info,
    }


def layer_rows(summary_: dict) -> list[list[str]]:
    """The layers of :func:`summary` as table rows: name (indented by depth), type, output
    shape, parameters."""
    return [["  " * (layer["depth"] - 1) + layer["name"], layer["type"],
             "x".join(map(str, layer["output_shape"])) if layer["output_shape"] else "--",
             f"{layer['parameters']:,}"] for layer in summary_["layers"]]


def facts(config: Config, info: dict | None, summary_: dict | None = None) -> list[tuple[str, str]]:
    """A model in words, one (name, value) row each: what ``mnistdiff summarize`` prints and the
    page's model card shows. ``info`` from :func:`read` (None for a bare config), ``summary_``
    from :func:`summary` (parameters and multiply-accumulates) when known."""
    d, s = config.diffusion, config.sample
    lo, hi = s.guidance_interval
    rows = [("dataset", _dataset_text(config.data)),
            ("network", f"U-Net, channels {list(config.model.channels)}, "
                        f"{config.model.num_res_blocks} residual blocks per level"
                        + (", attention at the lowest level" if config.model.attention else "")),
            ("diffusion", f"{d.schedule} schedule, T = {d.timesteps}, predicts {d.objective}"),
            ("sampler defaults", f"{s.sampler}, {s.steps} "
                                 + ("" if s.spacing == "linspace" else f"{s.spacing} ")
                                 + f"steps, guidance {s.guidance:g}"
                                 + ("" if (lo, hi) == (0.0, 1.0) else
                                    f" in t/(T-1) [{lo:g}, {hi:g}]"))]
    if summary_ is not None:
        rows[1:1] = [("parameters", f"{summary_['parameters']:,} ({summary_['size_mb']:.2f} MB as "
                                    f"float32)"),
                     ("multiply-accumulates", f"{summary_['mult_adds_per_image'] / 1e6:,.1f} M "
                                              f"per image and pass")]
    if config.distill.teacher:
        dc = config.distill
        lo, hi = dc.guidance_interval
        rows.append(("distilled from",
                     f"{dc.teacher} (SHA-256 {dc.teacher_sha256[:12]}...): its guidance "
                     f"{dc.guidance:g}" + ("" if (lo, hi) == (0.0, 1.0) else
                                          f" in t/(T-1) [{lo:g}, {hi:g}]")
                     + f", built into {s.steps} pass{'es' if s.steps > 1 else ''}"))
    if info is not None:
        rows += _checkpoint_facts(config, info)
    return rows


def _dataset_text(dc) -> str:
    """'mnist', or for other images their shape and classes: 'folder: 32x32 RGB, 3 classes
    (circle, square, triangle)'."""
    if (dc.image_size, dc.channels) == (28, 1) and dc.classes is None:
        return dc.dataset
    text = f"{dc.dataset}: {dc.image_size}x{dc.image_size} {'RGB' if dc.channels == 3 else 'grey'}"
    if dc.classes:
        names = ", ".join(dc.classes[:8]) + (", ..." if len(dc.classes) > 8 else "")
        text += f", {len(dc.classes)} classes ({names})"
    return text


def _checkpoint_facts(config: Config, info: dict) -> list[tuple[str, str]]:
    card_ = info.get("card") or {}
    training, bundled_ = card_.get("training") or {}, card_.get("bundled") or {}
    if info.get("name") is not None:  # a bundled model holds only its EMA weights
        weights = f"the EMA weights (decay {config.train.ema_decay:g}), bundled as the model's"
    elif info.get("ema"):
        weights = "the EMA weights (--no-ema for the raw ones)"
    else:
        weights = "the raw weights"
    version = str(info.get("version") or "-")
    if bundled_.get("mnistdiff_version"):
        version = (f"trained with {training.get('mnistdiff_version') or version}, bundled with "
                   f"{bundled_['mnistdiff_version']}")
    rows = [("model", info.get("source") or info.get("path") or "-"),
            ("training step", _fmt(info.get("step"))),
            ("images seen", _fmt(info.get("images_seen"))),
            ("training time", _duration(info.get("train_seconds"))),
            ("sampling uses", weights),
            ("created", str(info.get("created") or "-")),
            ("mnistdiff version", version)]
    for key, label in (("command", "training command"), ("hardware", "hardware"),
                       ("wall_seconds", "wall time")):
        if training.get(key) is not None:
            value = training[key]
            rows.append((label, _duration(value) if key == "wall_seconds" else str(value)))
    for row in metrics(info):
        rows.append((f"measured ({row['label']})", row["text"]))
    return rows


def metrics(info: dict) -> list[dict]:
    """The measured rows of a model: its card's, or for a run the newest ``evaluate`` report in
    its folder (``run.latest_report``); each with a line of text."""
    from .run import latest_report

    rows = [r for r in (info.get("card") or {}).get("metrics", []) if isinstance(r, dict)]
    if not rows and info.get("path"):
        report = latest_report(info["path"])
        if report is not None:
            rows = [{**r, "label": f"evaluate, {report['created']}",
                     "real_floor": report.get("real_floor") or {}} for r in report["results"]]
    out = []
    for r in rows:
        floor = (r.get("real_floor") or {}).get("fid")
        spacing = r.get("spacing") or "linspace"
        ratio = f" = {r['fid'] / floor:.2f}x" if floor else ""
        text = (f"n = {r['n']:,}, {r.get('sampler')} {r.get('steps')} "
                f"{'' if spacing == 'linspace' else spacing + ' '}steps, guidance "
                f"{r.get('guidance', 1.0):g}: accuracy {r['accuracy']:.2%}, FID {r['fid']:.3f}"
                + (f" (real floor {floor:.3f}{ratio})" if floor else ""))
        out.append({"label": r.get("label", ""), "n": r.get("n"), "sampler": r.get("sampler"),
                    "steps": r.get("steps"), "guidance": r.get("guidance"),
                    "accuracy": r.get("accuracy"), "fid": r.get("fid"), "real_fid": floor,
                    "text": text})
    return out


def _fmt(value) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
