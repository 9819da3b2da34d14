"""The ``mnistdiff`` command line: parse options, call one library function, report.

Each command validates its values (``jobs.*.from_values``, before torch is imported, so a bad
value is one line at once), opens the model, runs the job and prints its result. No library
work lives here. A :class:`MnistdiffError` becomes one ``error: ...`` line and exit status 1
(``--debug`` shows the traceback instead); SIGTERM and SIGHUP stop a command like Ctrl-C, with
nothing half-written left behind.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__, jobs
from .errors import MnistdiffError

app = typer.Typer(help="Train a class-conditional diffusion model on MNIST and sample digits.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
config_app = typer.Typer(help="Show resolved configs.", no_args_is_help=True)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

# No line wrapping: output piped to a file or a program stays whole (tables get a wide page).
def _quiet_help_option() -> None:
    """--help is a flag: give it no value label (Typer shows it as '<bool>')."""
    try:
        from typer._click.core import Command
    except ImportError:  # another Typer layout: its help keeps the label
        return
    get = Command.get_help_option

    def help_option(self, ctx):
        option = get(self, ctx)
        if option is not None:
            option.metavar = ""
        return option
    Command.get_help_option = help_option


_quiet_help_option()
out = Console(soft_wrap=True, highlight=False, width=None if os.isatty(1) else 200)
err = Console(stderr=True, soft_wrap=True, highlight=False, width=None if os.isatty(2) else 200)
_state = {"debug": False}


def _opt(*names: str, help: str, **kw) -> typer.models.OptionInfo:
    return typer.Option(*names, help=help, show_default=kw.pop("show_default", False), **kw)


def _flag(*names: str, help: str, **kw) -> typer.models.OptionInfo:
    """An on/off option: no value, so no type label in --help."""
    return _opt(*names, help=help, metavar="", **kw)


# Options, declared once (the `hf` CLI's aliases).
Config = Annotated[Optional[Path], _opt("--config", "-c", help="YAML config file (defaults if "
                                        "omitted).")]
Sets = Annotated[Optional[List[str]], _opt("--set", "-s", metavar="KEY=VALUE", help="Override a "
                                           "config value, e.g. --set train.lr=2e-4 (repeatable).")]
DataDir = Annotated[Optional[Path], _opt("--data-dir", help="Folder of IDX files (sets "
                                         "data.root).")]
Dataset = Annotated[Optional[str], _opt("--dataset", help="mnist or fashion-mnist (sets "
                                        "data.dataset).")]
Json = Annotated[bool, _flag("--json", help="Print JSON instead of a table.")]
Checkpoint = Annotated[Optional[str], _opt(
    "--checkpoint", "-k", metavar="NAME|PATH", help="A bundled model (mnist, mnist-small, "
    "mnist-fast, fashion-mnist), a checkpoint file, a run folder or 'latest' (default: the "
    "newest run under runs/, else the bundled mnist). An existing path wins over a name.")]
Device = Annotated[str, _opt("--device", help="auto (CUDA when available), cpu, cuda, cuda:N or "
                             "mps.", show_default=True)]
Threads = Annotated[Optional[int], _opt("--threads", metavar="N", help="CPU threads for torch "
                                        "(default: torch's, one per core); on a busy machine 1 "
                                        "is often faster.")]
Ema = Annotated[bool, _flag("--ema/--no-ema", help="Use the EMA weights when the checkpoint has "
                           "them (default: yes).")]
Progress = Annotated[bool, _flag("--progress/--no-progress", help="Show a progress bar (default: "
                                "yes).")]
Digit = Annotated[Optional[int], _opt("--digit", help="One class (0-9: a digit, or a clothing "
                                      "item for fashion-mnist).")]
Digits = Annotated[Optional[str], _opt("--digits", metavar="0,3,7", help="Comma-separated "
                                       "classes.")]
All = Annotated[bool, _flag("--all", help="Every class (the default).")]
Sampler = Annotated[Optional[str], _opt("--sampler", help="ddpm, ddim or dpmpp (default: the "
                                        "model's).")]
Steps = Annotated[Optional[int], _opt("--steps", help="Sampling steps, i.e. network evaluations "
                                      "per image, 1 to T (default: the model's).")]
Guidance = Annotated[Optional[float], _opt("--guidance", help="Classifier-free guidance scale w, "
                                           "0 to 100: 0 unconditional, 1 conditional, >1 "
                                           "stronger (default: the model's).")]
Interval = Annotated[Optional[str], _opt("--guidance-interval", metavar="LO,HI", help="Guide "
                                         "only at noise levels t/(T-1) in [LO, HI], one pass "
                                         "elsewhere; 0,1 guides every step (default: the "
                                         "model's).")]
Spacing = Annotated[Optional[str], _opt("--spacing", help="How the steps spread over the "
                                        "timesteps: linspace, trailing or karras (short steps "
                                        "at low noise) (default: the model's).")]
Eta = Annotated[Optional[float], _opt("--eta", help="DDIM noise, 0 (deterministic) to 1.")]
Seed = Annotated[Optional[int], _opt("--seed", help="Random seed (default: the model's).")]
Scale = Annotated[int, _opt("--scale", help="Nearest-neighbour upscaling, 1 to 16.",
                            show_default=True)]
BatchSize = Annotated[Optional[int], _opt("--batch-size", help="Images per forward pass "
                                          "(default: the model's sample.batch_size).")]
OutDir = Annotated[Optional[Path], _opt("--out", "-o", help="Run folder (default: runs/<name>-"
                                        "<time>, or the resumed run's).")]
Resume = Annotated[Optional[str], _opt("--resume", "-r", metavar="latest|PATH", help="Continue a "
                                       "run: 'latest', a run folder or a checkpoint file.")]


def _settings(sampler, steps, guidance, eta, seed, interval, spacing) -> dict:
    return dict(sampler=sampler, steps=steps, guidance=guidance, eta=eta, seed=seed,
                guidance_interval=jobs.parse_interval(interval), spacing=spacing)


def _version(value: bool) -> None:
    if value:
        out.print(f"mnistdiff {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, _flag("--version", callback=_version, is_eager=True,
                                        help="Print the version and exit.")] = False,
          debug: Annotated[bool, _flag("--debug", help="Show tracebacks for errors.")] = False
          ) -> None:
    _state["debug"] = debug


def _threads(threads: Optional[int]) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(jobs.whole("--threads", threads, "threads"))


def _open(job, checkpoint: Optional[str], device: str, ema: bool, threads: Optional[int]):
    """Load the model a job runs on (saying which), then let the job check itself against it."""
    from .models import load

    _threads(threads)
    pipe = load(checkpoint, device=device, ema=ema)
    out.print(f"model: {pipe.info.get('source', pipe.info.get('path'))}")
    return job.bind(pipe)


def _report(result: jobs.Result) -> None:
    """The one output helper of the sampling commands: the summary, then each file written."""
    out.print(escape(result.summary))
    for path in result.files:
        out.print(f"wrote {escape(str(path))}")


def _cfg(config: Optional[Path], sets: Optional[List[str]], data_dir: Optional[Path] = None,
         dataset: Optional[str] = None):
    from .config import load_config

    overrides = list(sets or [])
    if dataset is not None:
        overrides.append(f"data.dataset={dataset}")
    if data_dir is not None:
        overrides.append(f"data.root={json.dumps(str(data_dir))}")
    return load_config(config, overrides)


# --------------------------------------------------------------------------------- config, data

@config_app.command("show")
def config_show(config: Config = None, set_: Sets = None, as_json: Json = False) -> None:
    """Print the resolved config (defaults <- file <- --set)."""
    from .config import config_to_dict, dump_yaml

    cfg = _cfg(config, set_)
    print(json.dumps(config_to_dict(cfg), indent=2) if as_json else dump_yaml(cfg), end="")


@data_app.command("info")
def data_info(config: Config = None, set_: Sets = None, data_dir: DataDir = None,
              dataset: Dataset = None, as_json: Json = False) -> None:
    """Per-class counts, pixel mean/std and file checksums of a dataset folder."""
    from .data import describe, find_data_dir

    cfg = _cfg(config, set_, data_dir, dataset)
    info = describe(find_data_dir(cfg.data.dataset, cfg.data.root, cfg.data.download),
                    cfg.data.dataset)
    if as_json:
        return print(json.dumps(info, indent=2))
    out.print(f"[bold]{info['dataset']}[/] in {escape(info['folder'])}")
    table = Table("class", *(f"{s} (n={v['n']})" for s, v in info["splits"].items()))
    for i, name in enumerate(info["classes"]):
        table.add_row(f"{i} {name}", *(str(v["per_class"][i]) for v in info["splits"].values()))
    table.add_row("pixel mean / std", *(f"{v['pixel_mean']:.4f} / {v['pixel_std']:.4f}"
                                        for v in info["splits"].values()))
    files = Table("file", "sha256 (decompressed)", "verified")
    for name, f in info["files"].items():
        files.add_row(name, f["sha256"], {True: "[green]yes[/]", False: "[red]MISMATCH[/]",
                                          None: "unknown"}[f["verified"]])
    out.print(table, files)


@data_app.command("preview")
def data_preview(
    out_path: Annotated[Path, _opt("--out", "-o", help="PNG file to write.",
                                   show_default=True)] = Path("preview.png"),
    per_class: Annotated[int, _opt("--n", help="Images per class (one row of n per class; 10 "
                                   "classes give 10 n images).", show_default=True)] = 8,
    split: Annotated[str, _opt("--split", help="train or test.", show_default=True)] = "train",
    scale: Scale = 2, config: Config = None, set_: Sets = None, data_dir: DataDir = None,
    dataset: Dataset = None,
) -> None:
    """Write a PNG grid of real images, one row per class."""
    _report(jobs.preview(_cfg(config, set_, data_dir, dataset), out_path, per_class, split, scale))


# --------------------------------------------------------------------------------- train, distill

@app.command()
def train(config: Config = None, set_: Sets = None, out_dir: OutDir = None, resume: Resume = None,
          device: Device = "auto", data_dir: DataDir = None, threads: Threads = None,
          progress: Progress = True) -> None:
    """Train a model into a run folder: checkpoints, log.jsonl, sample grids, loss.png.

    Multi-GPU: torchrun --nproc_per_node=N -m mnistdiff train ... (same global batch)."""
    from . import training
    from .run import prepare_run

    overrides = list(set_ or []) + ([f"data.root={json.dumps(str(data_dir))}"] if data_dir
                                    else [])
    cfg, run_dir, checkpoint = prepare_run(config, overrides, out_dir, resume)
    _threads(threads)
    _report_training(training.train(cfg, run_dir, resume=checkpoint, device=device,
                                    progress=progress, console=out), run_dir, "train")


@app.command()
def distill(
    teacher: Annotated[Optional[str], _opt("--teacher", "-t", metavar="NAME|PATH", help="The "
                                           "teacher: a bundled model or a v-prediction "
                                           "checkpoint (default: mnist).")] = None,
    steps: Annotated[Optional[int], _opt("--steps", help="The student's network passes per "
                                         "image, 1 to 4 (default: 2).")] = None,
    config: Annotated[Optional[Path], _opt("--config", "-c", help="YAML with train / distill / "
                                           "sample / eval / data sections (default: "
                                           "distill.RECIPE).")] = None,
    set_: Sets = None, out_dir: OutDir = None, resume: Resume = None, device: Device = "auto",
    data_dir: DataDir = None, threads: Threads = None, progress: Progress = True,
) -> None:
    """Distill a teacher into a student that samples in --steps passes, guidance built in.

    The student is an ordinary checkpoint: sample, animate and evaluate use its stored sampler
    and steps. See distill.py for the method."""
    from . import distill as distillation, training

    overrides = list(set_ or []) + ([f"data.root={json.dumps(str(data_dir))}"] if data_dir
                                    else [])
    cfg, run_dir, checkpoint = distillation.prepare(teacher, steps, config, overrides, out_dir,
                                                    resume)
    _threads(threads)
    _report_training(training.train(cfg, run_dir, resume=checkpoint, device=device,
                                    progress=progress, console=out), run_dir, "distill")


def _report_training(result, run_dir: Path, command: str) -> None:
    """The summary table after ``train`` or ``distill``."""
    if result.checkpoint is None:  # ranks > 0 of a torchrun job print nothing
        return
    if result.interrupted:
        out.print(f"[yellow]stopped at step {result.step} of {result.total_steps}[/]; "
                  f"continue with: mnistdiff {command} --resume {escape(str(run_dir))}")
    table = Table(title="training summary", show_header=False)
    minutes = result.train_seconds / 60
    for name, value in [
        ("run folder", str(run_dir)), ("checkpoint", str(result.checkpoint)),
        ("steps", f"{result.step} / {result.total_steps}"),
        ("images seen", f"{result.images_seen:,}"),
        ("training time", (f"{result.train_seconds:.0f} s" if minutes < 2 else
                           f"{minutes:.1f} min") + " (all sessions)"),
        ("throughput", f"{result.images_per_s:,.0f} images/s (this session)"),
        ("peak memory", f"{result.peak_memory_mb:,.0f} MiB"),
        ("final loss", "-" if result.final_loss is None else f"{result.final_loss:.4f}"),
        ("sampling uses", "the EMA weights (--no-ema for the raw ones)"
         if result.sampling_weights == "ema" else "the raw weights (no EMA: train.ema_decay=0)"),
    ]:
        table.add_row(name, escape(value))
    out.print(table)


# --------------------------------------------------------------------------------- sample, animate

@app.command()
def sample(
    checkpoint: Checkpoint = None, digit: Digit = None, digits: Digits = None, all_: All = False,
    n: Annotated[int, _opt("--n", help="Images per digit, or per class (--all: 10 n images in "
                           "total).",
                           show_default=True)] = 16,
    sampler: Sampler = None, steps: Steps = None, guidance: Guidance = None, eta: Eta = None,
    seed: Seed = None, guidance_interval: Interval = None, spacing: Spacing = None,
    batch_size: BatchSize = None,
    out_path: Annotated[Path, _opt("--out", "-o", help="Grid PNG to write.",
                                   show_default=True)] = Path("samples.png"),
    npz: Annotated[Optional[Path], _opt("--npz", help="Also write the images as NPZ: images "
                                        "uint8 (N,28,28), labels int64 (N,).")] = None,
    individual: Annotated[Optional[Path], _opt("--individual", metavar="DIR", help="Also write "
                                               "one PNG per image into DIR.")] = None,
    scale: Scale = 2, device: Device = "auto", ema: Ema = True, threads: Threads = None,
    init_image: Annotated[Optional[Path], _opt("--init-image", help="Complete this drawing "
                                               "(28x28 grey PNG, white strokes on black): "
                                               "inpainting keeps its pixels where --mask is "
                                               "set.")] = None,
    mask: Annotated[Optional[Path], _opt("--mask", help="PNG, white = keep the --init-image "
                                         "pixel (default: its non-black pixels).")] = None,
    resample: Annotated[int, _opt("--resample", help="RePaint resampling: redo each inpainting "
                                  "step this many times, 1 to 20 (costs as many times the "
                                  "time).", show_default=True)] = 1,
) -> None:
    """Generate digits: a grid PNG (one labelled row per class, or a square grid for one class).

    With --init-image, complete a partial drawing into each class asked for."""
    job = jobs.SampleJob.from_values(
        classes=jobs.parse_classes(digit, digits, all_), n=n, out=out_path, npz=npz,
        individual=individual, scale=scale, batch_size=batch_size, init_image=init_image,
        mask=mask, resample=resample, checkpoint=checkpoint,
        **_settings(sampler, steps, guidance, eta, seed, guidance_interval, spacing))
    _open(job, checkpoint, device, ema, threads)
    with _step_progress(job.total * job.s.steps) as advance:
        _report(job.run(on_step=advance))


def _step_progress(total: int):
    """A progress bar on stderr (when it is a terminal) that advances with every sampler step
    of every batch: on_step(info) counts the batch's images once per step."""
    import contextlib

    from rich.progress import Progress as Bar

    @contextlib.contextmanager
    def bar():
        with Bar(console=err, transient=True, disable=not err.is_terminal) as b:
            task = b.add_task("sampling", total=total)
            yield lambda info: b.advance(task, len(info["labels"]))
    return bar()


@app.command()
def animate(
    checkpoint: Checkpoint = None, digit: Digit = None, digits: Digits = None, all_: All = False,
    sampler: Sampler = None, steps: Steps = None, guidance: Guidance = None, eta: Eta = None,
    seed: Seed = None, guidance_interval: Interval = None, spacing: Spacing = None,
    frames: Annotated[Optional[int], _opt("--frames", help="Frames, denser near the end "
                                          "(default: steps + 1, at most 30).")] = None,
    fps: Annotated[float, _opt("--fps", help="Frames per second, 0.1 to 50.",
                               show_default=True)] = 10.0,
    hold: Annotated[float, _opt("--hold", help="Seconds the final frame stays on screen, 0 to "
                                "60.", show_default=True)] = 1.0,
    scale: Scale = 4,
    out_path: Annotated[Path, _opt("--out", "-o", help="GIF to write (.mp4 with imageio's ffmpeg "
                                   "plugin).", show_default=True)] = Path("denoise.gif"),
    strip: Annotated[Optional[Path], _opt("--strip", help="Also write the frames as one PNG: a "
                                          "row per class, a column per frame.")] = None,
    device: Device = "auto", ema: Ema = True, threads: Threads = None,
) -> None:
    """Animate the reverse process, from pure noise to digits side by side."""
    job = jobs.AnimateJob.from_values(
        classes=jobs.parse_classes(digit, digits, all_), out=out_path, strip=strip, frames=frames,
        fps=fps, hold=hold, scale=scale, checkpoint=checkpoint,
        **_settings(sampler, steps, guidance, eta, seed, guidance_interval, spacing))
    _report(_open(job, checkpoint, device, ema, threads).run())


# --------------------------------------------------------------------------------- summarize, evaluate

@app.command()
def summarize(checkpoint: Checkpoint = None, config: Config = None, set_: Sets = None,
              depth: Annotated[int, _opt("--depth", help="Module nesting depth to list, 1 to "
                                         "10.", show_default=True)] = 2,
              as_json: Json = False) -> None:
    """Layers, shapes, parameters and MACs of the U-Net, and how a checkpoint was trained."""
    from . import models

    depth = jobs.whole("--depth", depth, "depth")
    if checkpoint is not None and (config is not None or set_):
        raise MnistdiffError("--checkpoint and --config/--set exclude each other; use one of them")
    if config is not None or set_:
        from .unet import build_model

        cfg = _cfg(config, set_)
        summary, info = models.summary(model=build_model(cfg.model), config=cfg, depth=depth), None
    else:
        loaded = models.read(checkpoint)
        summary, cfg, info = models.summary(loaded, depth=depth), loaded.config, loaded.info
    if as_json:
        return print(json.dumps(summary, indent=2))
    table = Table("layer", "type", "output shape", "parameters", title="ConditionalUNet")
    for layer in summary["layers"]:
        shape = "x".join(map(str, layer["output_shape"])) if layer["output_shape"] else "--"
        table.add_row("  " * (layer["depth"] - 1) + layer["name"], layer["type"], shape,
                      f"{layer['parameters']:,}")
    out.print(table)
    if info is not None:
        out.print(f"model: {escape(info['source'])}")
    facts = Table(show_header=False, box=None)
    for key, value in models.facts(cfg, info, summary):
        facts.add_row(f"[bold]{key}[/]", escape(value))
    out.print(facts)


@app.command()
def evaluate(
    checkpoint: Checkpoint = None,
    n: Annotated[Optional[int], _opt("--n", help="Samples to generate in total, balanced across "
                                     "classes: rounded to a multiple of the class count, which "
                                     "is said (default: the model's eval.n).")] = None,
    sampler: Sampler = None, steps: Steps = None, guidance: Guidance = None,
    sweep: Annotated[Optional[str], _opt("--guidance-sweep", metavar="0,1,2,3", help="Evaluate "
                                         "several guidance scales; also plots them.")] = None,
    eta: Eta = None, seed: Seed = None, guidance_interval: Interval = None,
    spacing: Spacing = None,
    samples: Annotated[Optional[Path], _opt("--samples", help="Score an existing NPZ (images "
                                            "uint8 (N,28,28), labels (N,)) instead of sampling "
                                            "a model.")] = None,
    dataset: Dataset = None,
    out_path: Annotated[Optional[Path], _opt("--out", "-o", help="JSON report to write "
                                             "(default: report.json, or for a run its "
                                             "reports/ folder).")] = None,
    floor: Annotated[bool, _flag("--floor/--no-floor", help="Also score n real training images "
                                "(the best a generator can hope for; default: yes).")] = True,
    batch_size: BatchSize = None,
    cas: Annotated[bool, _flag("--cas", help="Also the Classification Accuracy Score: train the "
                              "reference classifier on the samples, test it on real test images, "
                              "next to the same classifier trained on as many real ones.")] = False,
    cas_epochs: Annotated[int, _opt("--cas-epochs", help="Training epochs of each --cas "
                                    "classifier.", show_default=True)] = 10,
    npz: Annotated[Optional[Path], _opt("--npz", help="Also save the generated images as NPZ "
                                        "(one guidance setting only).")] = None,
    data_dir: DataDir = None, device: Device = "auto", ema: Ema = True, threads: Threads = None,
) -> None:
    """Class accuracy, FID and precision/recall in a bundled classifier's feature space."""
    job = jobs.EvaluateJob.from_values(
        n=n, scales=jobs.parse_sweep(guidance, sweep), samples=samples, dataset=dataset,
        data_dir=data_dir, out=out_path, floor=floor, batch_size=batch_size, cas=cas,
        cas_epochs=cas_epochs, npz=npz, checkpoint=checkpoint,
        **_settings(sampler, steps, None, eta, seed, guidance_interval, spacing))
    if samples is None:
        _open(job, checkpoint, device, ema, threads)
    else:
        _threads(threads)
        job.bind(None)
    result = job.run(say=lambda line: err.print(escape(line)))
    _print_evaluation(job, result.extra)
    _report(jobs.Result(result.files, ""))


def _print_evaluation(job, r: dict) -> None:
    """A row per setting, the real floor, each row's weakest class, the CAS."""
    table = Table("", "n", "accuracy", "FID", "x floor", "precision", "recall", "NFE", "s / 100",
                  title=f"{job.reference.dataset}: classifier features, FID vs the test set, "
                        f"k = {r['k']}")
    floor = r["floor"]
    for row in r["rows"]:
        name = f"guidance {row['guidance']:g}" if "guidance" in row else str(job.samples)
        ratio = f"{row['fid'] / floor['fid']:.2f}x" if floor else "-"
        table.add_row(name, str(row["n"]), f"{row['accuracy']:.2%}", f"{row['fid']:.3f}", ratio,
                      f"{row['precision']:.3f}", f"{row['recall']:.3f}", str(row.get("nfe", "-")),
                      f"{row['seconds_per_100']:.2f}" if "seconds_per_100" in row else "-")
    if floor is not None:
        table.add_row("real (train)", str(floor["n"]), f"{floor['accuracy']:.2%}",
                      f"{floor['fid']:.3f}", "1x", f"{floor['precision']:.3f}",
                      f"{floor['recall']:.3f}", "-", "-", style="dim")
    out.print(table)
    for row in r["rows"]:
        known = [c for c in row["per_class"] if c["accuracy"] is not None]
        if known:
            worst = min(known, key=lambda c: c["accuracy"])
            where = f" (guidance {row['guidance']:g})" if len(r["rows"]) > 1 else ""
            out.print(f"lowest class accuracy{where}: {escape(worst['class'])} "
                      f"{worst['accuracy']:.2%}")
    if r["cas"] is not None:
        c = r["cas"]
        out.print(f"classification accuracy score (n = {c['n']}, {c['epochs']} epochs): "
                  f"{c['generated']:.2%} trained on samples, {c['real']:.2%} trained on real "
                  f"images")


# --------------------------------------------------------------------------------- ui, doctor

@app.command()
def ui(
    checkpoint: Annotated[Optional[str], _opt("--checkpoint", "-k", metavar="NAME|PATH",
                                              help="The model the page opens on (default: the "
                                              "bundled default); the page also lists the "
                                              "bundled models and the runs under --runs-dir.")
                          ] = None,
    host: Annotated[str, _opt("--host", help="Address to serve on; loopback keeps the page on "
                              "this machine.", show_default=True)] = "127.0.0.1",
    port: Annotated[int, _opt("--port", help="Port (0: a free one).", show_default=True)] = 0,
    browser: Annotated[bool, _flag("--browser/--no-browser", help="Open the page in the default "
                                  "web browser (default: yes).")] = True,
    runs_dir: Annotated[Path, _opt("--runs-dir", help="Folder of runs to offer.",
                                   show_default=True)] = Path("runs"),
    models_dir: Annotated[Optional[Path], typer.Option("--models-dir", hidden=True)] = None,
    device: Device = "auto", threads: Threads = None,
    verbose: Annotated[bool, _flag("--verbose", help="Log every request.")] = False,
) -> None:
    """A local web page: make digits and watch them denoise, complete a drawing, morph between
    seeds or digits, read the model card. Offline; Ctrl-C stops it."""
    from .models import MODELS_DIR
    from .ui import make_server, serve

    jobs.whole("--port", port, (0, 65535))
    _threads(threads)
    server = make_server(host, port, checkpoint=checkpoint, runs_dir=runs_dir,
                         models_dir=models_dir or MODELS_DIR, device=device, verbose=verbose)
    serve(server, browser=browser, say=lambda line: out.print(escape(line)))


@app.command()
def doctor() -> None:
    """Check this installation: versions, devices, threads, data, bundled files (one line each;
    exit status 1 when something is broken)."""
    from .doctor import checks

    broken = False
    for item in checks():
        out.print(escape(str(item)))
        broken |= item.status == "FAIL"
    raise typer.Exit(1 if broken else 0)


# --------------------------------------------------------------------------------- entry point

def _stop(signum, frame) -> None:
    """SIGTERM / SIGHUP end a command the way Ctrl-C does: every temp file is removed."""
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point: user errors become one line and exit status 1."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    try:
        app()
    except MnistdiffError as e:
        if _state["debug"]:
            raise
        _error(str(e))
    except KeyboardInterrupt:
        err.print("interrupted; nothing half-written was left behind")
        sys.exit(130)
    except OSError as e:  # a full disk in a write not made through files.py: still one line
        if _state["debug"] or e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        where = f" while writing {e.filename}" if e.filename else ""
        _error(f"{e.strerror}{where}")


def _error(message: str) -> None:
    """The one line a user error gets; its text is escaped so rich shows [ffmpeg] as written."""
    err.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}")
    sys.exit(1)
