"""The ``mnistdiff`` command line: parse options, call one library function, report.

Each command validates its values (``jobs.*.from_values``, before torch is imported, so a bad
value is one line at once), opens the model, runs the job and prints its result. A
:class:`MnistdiffError` becomes one ``error: ...`` line and exit status 1 (``--debug`` shows the
traceback); SIGTERM and SIGHUP stop a command like Ctrl-C, leaving nothing half-written.
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
out = Console(soft_wrap=True, highlight=False, width=None if os.isatty(1) else 200)
err = Console(stderr=True, soft_wrap=True, highlight=False, width=None if os.isatty(2) else 200)
_state = {"debug": False}


def _opt(*names: str, help: str, **kw) -> typer.models.OptionInfo:
    return typer.Option(*names, help=help, show_default=kw.pop("show_default", False), **kw)


def _flag(*names: str, help: str, **kw) -> typer.models.OptionInfo:
    """An on/off option: no value, so no type label in --help."""
    return _opt(*names, help=help, metavar="", **kw)


# Options, declared once (as the `hf` CLI's aliases).
O, P, S, I, F = Optional, Path, str, int, float  # noqa: E741 (short names for the table)
Config = Annotated[O[P], _opt("--config", "-c", help="YAML config file (defaults if omitted).")]
Sets = Annotated[O[List[S]], _opt("--set", "-s", metavar="KEY=VALUE",
                                  help="Override a config value, e.g. --set train.lr=2e-4.")]
DataDir = Annotated[O[P], _opt("--data-dir", help="Folder of IDX files, of class folders "
                               "(--dataset folder) or of CIFAR-10 (sets data.root).")]
Dataset = Annotated[O[S], _opt("--dataset", help="mnist, fashion-mnist, folder (your images, one "
                               "folder per class) or cifar10 (sets data.dataset).")]
Json = Annotated[bool, _flag("--json", help="Print JSON instead of a table.")]
Checkpoint = Annotated[O[S], _opt("--checkpoint", "-k", metavar="NAME|PATH", help=(
    "A bundled model (mnist-fast, mnist, mnist-small, fashion-mnist), a checkpoint file, a run "
    "folder or 'latest' (default: the newest run under runs/, else the bundled default). An "
    "existing path wins over a name."))]
Device = Annotated[S, _opt("--device", help="auto (CUDA when there is one), cpu, cuda, cuda:N, "
                           "mps.", show_default=True)]
Threads = Annotated[O[I], _opt("--threads", metavar="N", help="CPU threads for torch (default: "
                               "one per core); on a busy machine 1 is often faster.")]
Ema = Annotated[bool, _flag("--ema/--no-ema", help="The EMA weights when there are (default).")]
Progress = Annotated[bool, _flag("--progress/--no-progress", help="Show a progress bar.")]
Digit = Annotated[O[I], _opt("--digit", help="One class: a digit (or an item of fashion-mnist).")]
Digits = Annotated[O[S], _opt("--digits", metavar="0,3,7", help="Comma-separated classes.")]
All = Annotated[bool, _flag("--all", help="Every class (the default).")]
Sampler = Annotated[O[S], _opt("--sampler", help="ddpm, ddim or dpmpp (default: the model's).")]
Steps = Annotated[O[I], _opt("--steps", help="Sampling steps, 1 to T (default: the model's).")]
Guidance = Annotated[O[F], _opt("--guidance", help="Guidance scale w, 0 to 100: 0 unconditional, "
                                "1 conditional, >1 stronger (default: the model's).")]
Interval = Annotated[O[S], _opt("--guidance-interval", metavar="LO,HI", help="Guide only at "
                                "t/(T-1) in [LO, HI], one pass elsewhere (default: the model's).")]
Spacing = Annotated[O[S], _opt("--spacing", help="linspace, trailing or karras: how the steps "
                               "spread over the timesteps (default: the model's).")]
Eta = Annotated[O[F], _opt("--eta", help="DDIM noise, 0 (deterministic) to 1.")]
Seed = Annotated[O[I], _opt("--seed", help="Random seed (default: the model's).")]
Scale = Annotated[I, _opt("--scale", help="Nearest-neighbour upscaling, 1 to 16.",
                          show_default=True)]
BatchSize = Annotated[O[I], _opt("--batch-size", help="Images per forward pass (default: the "
                                 "model's).")]
OutDir = Annotated[O[P], _opt("--out", "-o", help="Run folder (default: runs/<name>-<time>).")]
Resume = Annotated[O[S], _opt("--resume", "-r", metavar="latest|PATH", help="Continue a run: "
                              "'latest', a run folder or a checkpoint file.")]


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


def _open(job, checkpoint: Optional[str], device: str, ema: bool, threads: Optional[int],
          **bind):
    """Load the model a job runs on (saying which), then let the job check itself against it."""
    from .models import load

    _threads(threads)
    pipe = load(checkpoint, device=device, ema=ema, default=getattr(job, "default_model", None))
    out.print(f"model: {escape(str(pipe.info.get('source', pipe.info.get('path'))))}")
    return job.bind(pipe, **bind)


def _say(line: str) -> None:
    """A progress line of the library (reading a folder, training a classifier): on stderr."""
    err.print(escape(line))


def _report(result: jobs.Result) -> None:
    """The one output helper of the jobs: the summary, then each file written."""
    if result.summary:
        out.print(escape(result.summary))
    for path in result.files:
        out.print(f"wrote {escape(str(path))}")


def _table(columns, rows, *, title: str | None = None, box: object = "default") -> None:
    """The one table helper: ``columns`` names (None: a two-column name / value list)."""
    from rich import box as boxes

    table = Table(*(columns or []), title=title, show_header=columns is not None,
                  box=boxes.HEAVY_HEAD if box == "default" else box)
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    out.print(table)


def _cfg(config: Optional[Path], sets: Optional[List[str]], data_dir: Optional[Path] = None,
         dataset: Optional[str] = None):
    from .config import load_config

    overrides = list(sets or []) + ([f"data.dataset={dataset}"] if dataset else [])
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
    """Per-class counts, pixel mean/std, checksums or a class folder's split."""
    from .data import describe_dataset, describe_rows

    cfg = _cfg(config, set_, data_dir, dataset)
    info = describe_dataset(cfg.data, _say)
    if as_json:
        return print(json.dumps(info, indent=2))
    counts, files = describe_rows(info)
    out.print(f"[bold]{info['dataset']}[/] in {escape(info['folder'])}")
    _table(["class", *(f"{s} (n={v['n']})" for s, v in info["splits"].items())], counts)
    if files:
        _table(["file", "sha256 (decompressed)", "verified"], files)
    for line in info.get("notes", []):
        out.print(escape(line))


@data_app.command("preview")
def data_preview(
    out_path: Annotated[P, _opt("--out", "-o", help="PNG file to write.", show_default=True)
                        ] = Path("preview.png"),
    per_class: Annotated[I, _opt("--n", help="Images per class, 1 to 100 (one row of n per "
                                 "class).", show_default=True)] = 8,
    split: Annotated[S, _opt("--split", help="train or test.", show_default=True)] = "train",
    scale: Scale = 2, config: Config = None, set_: Sets = None, data_dir: DataDir = None,
    dataset: Dataset = None,
) -> None:
    """Write a PNG grid of real images, one row per class."""
    _report(jobs.preview(_cfg(config, set_, data_dir, dataset), out_path, per_class, split, scale,
                         _say))


# --------------------------------------------------------------------------------- train, distill

@app.command()
def train(config: Config = None, set_: Sets = None, out_dir: OutDir = None, resume: Resume = None,
          device: Device = "auto", data_dir: DataDir = None, dataset: Dataset = None,
          threads: Threads = None, progress: Progress = True) -> None:
    """Train a model into a run folder: checkpoints, log.jsonl, sample grids, loss.png.

    Multi-GPU: torchrun --nproc_per_node=N -m mnistdiff train ... (same global batch)."""
    from .run import prepare_run

    sets = list(set_ or []) + ([f"data.root={json.dumps(str(data_dir))}"] if data_dir else [])
    sets += [f"data.dataset={json.dumps(dataset)}"] if dataset else []
    cfg, run_dir, checkpoint = prepare_run(config, sets, out_dir, resume)
    _train(cfg, run_dir, checkpoint, device, threads, progress, "train")


@app.command()
def distill(
    teacher: Annotated[O[S], _opt("--teacher", "-t", metavar="NAME|PATH", help="A bundled model "
                                  "or a v-prediction checkpoint (default: mnist).")] = None,
    steps: Annotated[O[I], _opt("--steps", help="The student's passes per image: 1, 2 or 4 "
                                "(default: 2).")] = None,
    config: Config = None, set_: Sets = None, out_dir: OutDir = None, resume: Resume = None,
    device: Device = "auto",
    threads: Threads = None, progress: Progress = True,
) -> None:
    """Distill a teacher into a student that samples in --steps passes, guidance built in.

    The student is an ordinary checkpoint: sample, animate and evaluate use its stored sampler
    and steps. See distill.py for the method."""
    from . import distill as distillation

    cfg, run_dir, checkpoint = distillation.prepare(teacher, steps, config, list(set_ or []),
                                                    out_dir, resume)
    _train(cfg, run_dir, checkpoint, device, threads, progress, "distill")


def _train(cfg, run_dir: Path, checkpoint, device: str, threads, progress: bool,
           command: str) -> None:
    """Train (or distill), then the summary table."""
    from .training import summary_rows, train

    _threads(threads)
    result = train(cfg, run_dir, resume=checkpoint, device=device, progress=progress,
                   console=out)
    if result.checkpoint is None:  # ranks > 0 of a torchrun job print nothing
        return
    if result.interrupted:
        out.print(f"[yellow]stopped at step {result.step} of {result.total_steps}[/]; "
                  f"continue with: mnistdiff {command} --resume {escape(str(run_dir))}")
    _table(None, summary_rows(result), title="training summary")


# --------------------------------------------------------------------------------- sample, animate

@app.command()
def sample(
    checkpoint: Checkpoint = None, digit: Digit = None, digits: Digits = None, all_: All = False,
    n: Annotated[I, _opt("--n", help="Images per digit, or per class (--all: 10 n in total).",
                         show_default=True)] = 16,
    sampler: Sampler = None, steps: Steps = None, guidance: Guidance = None, eta: Eta = None,
    seed: Seed = None, guidance_interval: Interval = None, spacing: Spacing = None,
    batch_size: BatchSize = None,
    out_path: Annotated[P, _opt("--out", "-o", help="Grid PNG.", show_default=True)
                        ] = P("samples.png"),
    npz: Annotated[O[P], _opt("--npz", help="Also the images and labels as NPZ.")] = None,
    individual: Annotated[O[P], _opt("--individual", metavar="DIR",
                                     help="Also a PNG per image.")] = None,
    scale: Scale = 2, device: Device = "auto", ema: Ema = True, threads: Threads = None,
    init_image: Annotated[O[P], _opt("--init-image", help="Complete this drawing (28x28 grey "
                                     "PNG, white on black), keeping its pixels where --mask "
                                     "is set.")] = None,
    mask: Annotated[O[P], _opt("--mask", help="PNG, white = keep the --init-image pixel "
                               "(default: its non-black pixels).")] = None,
    resample: Annotated[I, _opt("--resample", help="RePaint: redo each inpainting step this "
                                "many times, 1 to 20 (2 blends the seam).", show_default=True)] = 2,
) -> None:
    """Generate digits: a grid PNG (one labelled row per class, or a square grid for one class).

    With --init-image, complete a partial drawing into each class asked for."""
    job = jobs.SampleJob.from_values(
        classes=jobs.parse_classes(digit, digits, all_), n=n, out=out_path, npz=npz,
        individual=individual, scale=scale, batch_size=batch_size, init_image=init_image,
        mask=mask, resample=resample, checkpoint=checkpoint,
        **_settings(sampler, steps, guidance, eta, seed, guidance_interval, spacing))
    _open(job, checkpoint, device, ema, threads)
    from rich.progress import Progress as Bar

    with Bar(console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("sampling", total=job.total * job.s.steps)  # advances every step
        result = job.run(on_step=lambda info: bar.advance(task, len(info["labels"])))
    _report(result)


@app.command()
def animate(
    checkpoint: Checkpoint = None, digit: Digit = None, digits: Digits = None, all_: All = False,
    sampler: Sampler = None, steps: Steps = None, guidance: Guidance = None, eta: Eta = None,
    seed: Seed = None, guidance_interval: Interval = None, spacing: Spacing = None,
    frames: Annotated[O[I], _opt("--frames", help="Frames (default: steps + 1, at most 30).")
                      ] = None,
    fps: Annotated[F, _opt("--fps", help="Frames per second, 0.1 to 50.", show_default=True)
                   ] = 10.0,
    hold: Annotated[F, _opt("--hold", help="Seconds on the last frame, 0 to 60.",
                            show_default=True)] = 1.0,
    scale: Scale = 4,
    out_path: Annotated[P, _opt("--out", "-o", help="GIF to write (.mp4 with imageio's ffmpeg "
                                "plugin).", show_default=True)] = Path("denoise.gif"),
    strip: Annotated[O[P], _opt("--strip", help="Also the frames as one PNG (row: class).")] = None,
    device: Device = "auto", ema: Ema = True, threads: Threads = None,
) -> None:
    """Animate the reverse process, from pure noise to digits side by side."""
    job = jobs.AnimateJob.from_values(
        classes=jobs.parse_classes(digit, digits, all_), out=out_path, strip=strip, frames=frames,
        fps=fps, hold=hold, scale=scale, checkpoint=checkpoint,
        **_settings(sampler, steps, guidance, eta, seed, guidance_interval, spacing))
    _report(_open(job, checkpoint, device, ema, threads).run())


# --------------------------------------------------------------------------------- summaries

@app.command()
def summarize(checkpoint: Checkpoint = None, config: Config = None, set_: Sets = None,
              depth: Annotated[I, _opt("--depth", help="Module nesting depth to list, 1 to 10.",
                                       show_default=True)] = 2,
              as_json: Json = False) -> None:
    """Layers, shapes, parameters and MACs of the U-Net, and how a checkpoint was trained."""
    from . import models

    depth = jobs.whole("--depth", depth, "depth")
    if checkpoint is not None and (config is not None or set_):
        raise MnistdiffError("--checkpoint and --config/--set exclude each other; use one of them")
    if config is not None or set_:
        cfg, info = _cfg(config, set_), None
        summary = models.summary(config=cfg, depth=depth)
    else:
        loaded = models.read(checkpoint)
        summary, cfg, info = models.summary(loaded, depth=depth), loaded.config, loaded.info
    if as_json:
        return print(json.dumps(summary, indent=2))
    _table(["layer", "type", "output shape", "parameters"], models.layer_rows(summary),
           title="ConditionalUNet")
    if info is not None:
        out.print(f"model: {escape(info['source'])}")
    _table(None, models.facts(cfg, info, summary), box=None)


@app.command()
def evaluate(
    checkpoint: Checkpoint = None,
    n: Annotated[O[I], _opt("--n", help="Samples in total, balanced across classes (rounded to "
                            "a multiple of the class count, which is said; default: eval.n).")
                 ] = None,
    sampler: Sampler = None, steps: Steps = None, guidance: Guidance = None,
    sweep: Annotated[O[S], _opt("--guidance-sweep", metavar="0,1,2,3", help="Evaluate several "
                                "guidance scales; also plots them.")] = None,
    eta: Eta = None, seed: Seed = None, guidance_interval: Interval = None,
    spacing: Spacing = None,
    samples: Annotated[O[P], _opt("--samples", help="Score an NPZ of samples (images uint8 "
                                  "(N,28,28), or (N,S,S,3) RGB, labels (N,)) instead of a "
                                  "model.")] = None,
    dataset: Dataset = None,
    out_path: Annotated[O[P], _opt("--out", "-o", help="JSON report (default: report.json; for "
                                   "a run, its reports/ folder).")] = None,
    floor: Annotated[bool, _flag("--floor/--no-floor", help="Also score n real training images "
                                 "(the best a generator can do; default).")] = True,
    batch_size: BatchSize = None,
    cas: Annotated[bool, _flag("--cas", help="Also the Classification Accuracy Score: the "
                               "classifier trained on the samples, tested on real test images, "
                               "next to it trained on as many real ones.")] = False,
    cas_epochs: Annotated[I, _opt("--cas-epochs", help="Epochs of each --cas classifier.",
                                  show_default=True)] = 10,
    npz: Annotated[O[P], _opt("--npz", help="Also the samples as NPZ (one setting only).")] = None,
    classifier: Annotated[S, _opt("--classifier", help="bundled, train (the same CNN trained on "
                                  "the training split on first use, then cached) or auto: "
                                  "bundled for mnist and fashion-mnist, else train.",
                                  show_default=True)] = "auto",
    classifier_epochs: Annotated[O[I], _opt("--classifier-epochs", help="Epochs of a trained "
                                            "classifier (default: 20, more for a small set: "
                                            "at least 500 batches).")] = None,
    data_dir: DataDir = None, device: Device = "auto", ema: Ema = True, threads: Threads = None,
) -> None:
    """Class accuracy, FID and precision/recall in a reference classifier's feature space."""
    from .evaluation import notes, table

    job = jobs.EvaluateJob.from_values(
        n=n, scales=jobs.parse_sweep(guidance, sweep), samples=samples, dataset=dataset,
        data_dir=data_dir, out=out_path, floor=floor, batch_size=batch_size, cas=cas,
        cas_epochs=cas_epochs, npz=npz, classifier=classifier,
        classifier_epochs=classifier_epochs, checkpoint=checkpoint,
        **_settings(sampler, steps, None, eta, seed, guidance_interval, spacing))
    if samples is None:
        _open(job, checkpoint, device, ema, threads, say=_say)
    else:
        _threads(threads)
        job.bind(None, say=_say)
    result = job.run(say=_say)
    r = result.extra
    _table(*table(r["rows"], r["floor"], str(job.samples)),
           title=f"{job.reference.dataset}: classifier features, FID vs the test set, k = {r['k']}")
    out.print(f"classifier: {escape(job.reference.info['source'])}")
    for line in notes(r["rows"], r["cas"]):
        out.print(escape(line))
    _report(result)


# --------------------------------------------------------------------------------- export

export_app = typer.Typer(help="Export a model: ONNX, or a static page that samples in the "
                         "browser.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("onnx")
def export_onnx(checkpoint: Checkpoint = None, ema: Ema = True, out_path: Annotated[
        P, _opt("--out", "-o", help="ONNX file; its settings JSON goes beside it.",
                show_default=True)] = P("model.onnx")) -> None:
    """The U-Net as ONNX, checked against PyTorch; its sampling settings in a JSON beside it.

    Opset 17, dynamic batch; onnxruntime must match PyTorch on random inputs or nothing is
    written. Needs pip install "mnistdiff[export]"."""
    from . import export

    _report(export.export_onnx(checkpoint, out_path, ema=ema))


@export_app.command("web")
def export_web(checkpoint: Checkpoint = None, ema: Ema = True, out_dir: Annotated[
        P, _opt("--out", "-o", help="Folder of the static site.", show_default=True)] = P("site")
        ) -> None:
    """A static page that makes digits in the browser (onnxruntime-web), no server needed.

    For a few-step student (DDIM, eta 0), e.g. mnist-fast. Serve the folder with
    python -m http.server -d site, or put it on any static host (docs/export.md)."""
    from . import export

    _report(export.export_web(checkpoint, out_dir, ema=ema))


# --------------------------------------------------------------------------------- ui, doctor

@app.command()
def ui(
    checkpoint: Annotated[O[S], _opt("--checkpoint", "-k", metavar="NAME|PATH", help="The model "
                                     "the page opens on (default: the bundled default); it also "
                                     "offers the bundled models and the runs.")] = None,
    host: Annotated[S, _opt("--host", help="Address to serve on; loopback keeps the page on "
                            "this machine.", show_default=True)] = "127.0.0.1",
    port: Annotated[I, _opt("--port", help="Port (0: a free one).", show_default=True)] = 0,
    browser: Annotated[bool, _flag("--browser/--no-browser", help="Open it (default).")] = True,
    runs_dir: Annotated[P, _opt("--runs-dir", help="Runs to offer.", show_default=True)
                        ] = P("runs"),
    models_dir: Annotated[O[P], typer.Option("--models-dir", hidden=True)] = None,
    device: Device = "auto", threads: Threads = None,
    verbose: Annotated[bool, _flag("--verbose", help="Log every request.")] = False,
) -> None:
    """A local web page: make digits and watch them denoise, complete a drawing, morph between
    seeds or digits, read the model card. Offline; Ctrl-C stops it."""
    from .ui import run

    jobs.whole("--port", port, (0, 65535))
    _threads(threads)
    run(host, port, checkpoint=checkpoint, runs_dir=runs_dir, models_dir=models_dir,
        device=device, verbose=verbose, browser=browser, say=lambda line: out.print(escape(line)))


@app.command()
def doctor() -> None:
    """Check this installation: versions, devices, threads, data, bundled files (one line
    each; exit status 1 when something is broken)."""
    from .doctor import report

    raise typer.Exit(report(lambda line: out.print(escape(line))))


# --------------------------------------------------------------------------------- entry point

def _quiet_help_option() -> None:
    """--help is a flag: no value label for it either (Typer shows '<bool>')."""
    try:
        from typer._click.core import Command
    except ImportError:  # another Typer layout: its --help keeps the label
        return
    get = Command.get_help_option

    def help_option(self, ctx):
        option = get(self, ctx)
        if option is not None:
            option.metavar = ""
        return option
    Command.get_help_option = help_option


_quiet_help_option()


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
        _error(f"{e.strerror}" + (f" while writing {e.filename}" if e.filename else ""))


def _error(message: str) -> None:
    """The one line a user error gets; its text is escaped so rich shows [ffmpeg] as written."""
    err.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}")
    sys.exit(1)
