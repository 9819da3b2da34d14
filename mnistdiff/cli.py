"""The ``mnistdiff`` command line: parse options, call the library, report with rich.

No maths lives here. A :class:`MnistdiffError` raised below becomes one ``error: ...`` line and
exit status 1 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .config import Config, dump_yaml, load_config
from .errors import MnistdiffError
from .files import check_outputs, check_space

app = typer.Typer(help="Train a class-conditional diffusion model on MNIST and sample digits.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
config_app = typer.Typer(help="Show resolved configs.", no_args_is_help=True)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True)
_state = {"debug": False}

# Options shared by several commands.
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (defaults if omitted).",
                         show_default=False)
SetOpt = typer.Option(None, "--set", "-s", metavar="KEY=VALUE",
                      help="Override a config value, e.g. --set train.lr=2e-4 (repeatable).")
DataDirOpt = typer.Option(None, "--data-dir", help="Folder of IDX files (sets data.root).",
                          show_default=False)
DatasetOpt = typer.Option(None, "--dataset", help="A dataset of data.DATASETS (sets "
                          "data.dataset; a wrong name lists them).", show_default=False)
JsonOpt = typer.Option(False, "--json", metavar="", help="Print JSON instead of a table.")


def _version(value: bool) -> None:
    if value:
        out.print(f"mnistdiff {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", metavar="", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", metavar="", help="Show tracebacks for errors."),
) -> None:
    _state["debug"] = debug


def load_cfg(config: Optional[Path], sets: Optional[List[str]], *, data_dir: Optional[Path] = None,
             dataset: Optional[str] = None) -> Config:
    """The config file, then --set overrides, then the dedicated options."""
    overrides = list(sets or [])
    if dataset is not None:
        overrides.append(f"data.dataset={dataset}")
    if data_dir is not None:
        overrides.append(f"data.root={json.dumps(str(data_dir))}")
    return load_config(config, overrides)


# --------------------------------------------------------------------------------- config

@config_app.command("show")
def config_show(config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
                as_json: bool = JsonOpt) -> None:
    """Print the resolved config (defaults <- file <- --set)."""
    cfg = load_cfg(config, set_)
    if as_json:
        from .config import config_to_dict
        print(json.dumps(config_to_dict(cfg), indent=2))
    else:
        print(dump_yaml(cfg), end="")


# --------------------------------------------------------------------------------- data

@data_app.command("info")
def data_info(config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
              data_dir: Optional[Path] = DataDirOpt, dataset: Optional[str] = DatasetOpt,
              as_json: bool = JsonOpt) -> None:
    """Per-class counts, pixel mean/std and file checksums of a dataset folder."""
    from .data import describe, find_data_dir

    cfg = load_cfg(config, set_, data_dir=data_dir, dataset=dataset)
    info = describe(find_data_dir(cfg.data.dataset, cfg.data.root, cfg.data.download),
                    cfg.data.dataset)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    out.print(f"[bold]{info['dataset']}[/] in {info['folder']}")
    table = Table("class", *(f"{s} (n={v['n']})" for s, v in info["splits"].items()))
    for i, name in enumerate(info["classes"]):
        table.add_row(f"{i} {name}", *(str(v["per_class"][i]) for v in info["splits"].values()))
    table.add_row("pixel mean / std", *(f"{v['pixel_mean']:.4f} / {v['pixel_std']:.4f}"
                                        for v in info["splits"].values()))
    out.print(table)
    files = Table("file", "sha256 (decompressed)", "verified")
    for name, f in info["files"].items():
        mark = {True: "[green]yes[/]", False: "[red]MISMATCH[/]", None: "unknown"}[f["verified"]]
        files.add_row(name, f["sha256"], mark)
    out.print(files)


@data_app.command("preview")
def data_preview(
    out_path: Path = typer.Option(Path("preview.png"), "--out", "-o", help="PNG file to write."),
    per_class: int = typer.Option(8, "--n", min=1, max=100, help="Images per class (one row of "
                                  "n per class; 10 classes give 10 n images)."),
    split: str = typer.Option("train", "--split", help="train or test."),
    scale: int = typer.Option(2, "--scale", min=1, max=16, help="Nearest-neighbour upscaling."),
    config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
    data_dir: Optional[Path] = DataDirOpt, dataset: Optional[str] = DatasetOpt,
) -> None:
    """Write a PNG grid of real images, one row per class."""
    import torch

    from .data import get_spec, load_dataset
    from .visualize import image_grid, save_image

    cfg = load_cfg(config, set_, data_dir=data_dir, dataset=dataset)
    check_outputs({"--out": out_path}, suffixes={"--out": (".png",)})
    images, labels = load_dataset(cfg.data, split)
    classes = get_spec(cfg.data.dataset).classes
    rows = [images[labels == c][:per_class] for c in range(len(classes))]
    if any(len(r) < per_class for r in rows):
        raise MnistdiffError(f"the {split} split has fewer than {per_class} images of some class")
    path = save_image(image_grid(torch.cat(rows), nrow=per_class, scale=scale), out_path)
    out.print(f"wrote {path} ({len(classes)} classes x {per_class})")


# --------------------------------------------------------------------------------- train

@app.command()
def train(
    config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
    out_dir: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run folder (default: runs/<config name>-<time>, or the resumed "
                                  "checkpoint's run folder).", show_default=False),
    resume: Optional[str] = typer.Option(
        None, "--resume", "-r", metavar="latest|PATH",
        help="Continue a run: 'latest' (the --out folder's, else the newest under runs/), a "
             "checkpoint file or a run folder. Without --config the run keeps its stored config.",
        show_default=False),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda "
                                                        "or cuda:N."),
    data_dir: Optional[Path] = DataDirOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress", metavar="",
                                  help="Show a progress bar."),
) -> None:
    """Train a model into a run folder: checkpoints, log.jsonl, sample grids, loss.png.

    Multi-GPU: torchrun --nproc_per_node=N -m mnistdiff train ... (same global batch)."""
    from . import training
    from .checkpoint import prepare_run

    overrides = list(set_ or [])
    if data_dir is not None:
        overrides.append(f"data.root={json.dumps(str(data_dir))}")
    cfg, run_dir, checkpoint = prepare_run(config, overrides, out_dir, resume)
    result = training.train(cfg, run_dir, resume=checkpoint, device=device, progress=progress,
                            console=out)
    _report_training(result, run_dir, "train")


def _report_training(result, run_dir: Path, command: str) -> None:
    """The summary table after ``train`` or ``distill``."""
    if result.checkpoint is None:  # ranks > 0 of a torchrun job print nothing
        return
    if result.interrupted:
        out.print(f"[yellow]stopped at step {result.step} of {result.total_steps}[/]; "
                  f"continue with: mnistdiff {command} --resume {run_dir}")
    table = Table(title="training summary", show_header=False)
    for name, value in [
        ("run folder", str(run_dir)), ("checkpoint", str(result.checkpoint)),
        ("steps", f"{result.step} / {result.total_steps}"),
        ("images seen", f"{result.images_seen:,}"),
        ("training time", (f"{result.train_seconds:.0f} s" if result.train_seconds < 120 else
                           f"{result.train_seconds / 60:.1f} min") + " (all sessions)"),
        ("throughput", f"{result.images_per_s:,.0f} images/s (this session)"),
        ("peak memory", f"{result.peak_memory_mb:,.0f} MiB"),
        ("final loss", "-" if result.final_loss is None else f"{result.final_loss:.4f}"),
        ("sampling uses", "the EMA weights (--no-ema for the raw ones)"
         if result.sampling_weights == "ema" else "the raw weights (no EMA: train.ema_decay=0)"),
    ]:
        table.add_row(name, value)
    out.print(table)


@app.command()
def distill(
    teacher: Optional[str] = typer.Option(
        None, "--teacher", "-t", metavar="NAME|PATH", help="The teacher: a bundled model or a "
        "checkpoint with v-prediction (default: mnist).", show_default=False),
    steps: Optional[int] = typer.Option(
        None, "--steps", min=1, max=64, help="The student's sampling steps, i.e. network passes "
        "per image (default: 4).", show_default=False),
    teacher_steps: Optional[int] = typer.Option(
        None, "--teacher-steps", min=2, help="DPM-Solver++ steps of the teacher over the whole "
        "grid, the student's target (default: 4x --steps).", show_default=False),
    guidance: Optional[float] = typer.Option(
        None, "--guidance", min=0.0, help="The teacher's guidance scale, built into the student "
        "(default: the teacher's own default).", show_default=False),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="YAML with train / distill / sample / eval / data sections "
        "(default: distill.RECIPE).", show_default=False),
    set_: Optional[List[str]] = SetOpt,
    out_dir: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Run folder (default: runs/distill-<teacher>-<time>).",
        show_default=False),
    resume: Optional[str] = typer.Option(
        None, "--resume", "-r", metavar="latest|PATH",
        help="Continue a distillation run (a run folder or checkpoint file).", show_default=False),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda "
                                                        "or cuda:N."),
    data_dir: Optional[Path] = DataDirOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress", metavar="",
                                  help="Show a progress bar."),
) -> None:
    """Distill a teacher into a student that samples in --steps passes, guidance built in.

    The student is an ordinary checkpoint: sample, animate and evaluate use its stored sampler
    and steps. See distill.py for the method (progressive distillation's target, one round)."""
    from . import distill as distillation, training
    from .checkpoint import prepare_run
    from .config import apply_overrides, read_yaml

    overrides = list(set_ or [])
    if data_dir is not None:
        overrides.append(f"data.root={json.dumps(str(data_dir))}")
    if resume is not None:
        fixed = [name for name, value in (("--teacher", teacher), ("--steps", steps),
                                          ("--teacher-steps", teacher_steps),
                                          ("--guidance", guidance)) if value is not None]
        if fixed:
            raise MnistdiffError(f"{fixed[0]}: a resumed distillation keeps its teacher and "
                                 f"steps; drop it (change others with --set)")
        cfg, run_dir, checkpoint = prepare_run(config, overrides, out_dir, resume)
        if not distillation.is_distillation(cfg):
            raise MnistdiffError(f"{checkpoint} is not a distillation run; continue it with "
                                 f"mnistdiff train --resume")
    else:
        teacher, steps = teacher or "mnist", steps or 4
        d = apply_overrides(read_yaml(config) if config is not None else {}, overrides)
        cfg = distillation.student_config(teacher, d, steps=steps, teacher_steps=teacher_steps,
                                          guidance=guidance)
        if out_dir is None:
            from datetime import datetime
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            out_dir = Path("runs") / f"distill-{Path(teacher).stem}-{steps}step-{stamp}"
        run_dir, checkpoint = out_dir, None
    result = training.train(cfg, run_dir, resume=checkpoint, device=device, progress=progress,
                            console=out)
    _report_training(result, run_dir, "distill")


# --------------------------------------------------------------------------------- sample, animate, summarize

CheckpointOpt = typer.Option(None, "--checkpoint", "-k", metavar="NAME|PATH",
                             help="A bundled model (mnist, mnist-small, mnist-fast, fashion-mnist), a "
                                  "checkpoint file, a run folder or 'latest' (default: the "
                                  "newest run under runs/, "
                                  "else the bundled mnist). An existing path wins over a name.",
                             show_default=False)
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda or cuda:N.")
EmaOpt = typer.Option(True, "--ema/--no-ema", metavar="",
                      help="Use the EMA weights when the checkpoint has them.")
DigitOpt = typer.Option(None, "--digit", help="One digit (class label).", show_default=False)
DigitsOpt = typer.Option(None, "--digits", metavar="0,3,7", help="Comma-separated digits.",
                         show_default=False)
AllOpt = typer.Option(False, "--all", metavar="", help="Every class (the default).")
SamplerOpt = typer.Option(None, "--sampler", help="A sampler of samplers.SAMPLERS; a wrong name "
                          "lists them (default: the checkpoint's sample.sampler).",
                          show_default=False)
StepsOpt = typer.Option(None, "--steps", help="Sampling steps, 1 to T (default: the checkpoint's "
                                              "sample.steps).", show_default=False)
GuidanceOpt = typer.Option(None, "--guidance", help="Classifier-free guidance scale w: 0 "
                           "unconditional, 1 conditional, >1 stronger (default: the checkpoint's).",
                           show_default=False)
GuidanceIntervalOpt = typer.Option(None, "--guidance-interval", metavar="LO,HI",
                                   help="Guide only at noise levels t/(T-1) in [LO, HI], one "
                                   "conditional pass at the other steps (cheaper); 0,1 guides "
                                   "every step (default: the checkpoint's "
                                   "sample.guidance_interval).", show_default=False)
SpacingOpt = typer.Option(None, "--spacing", help="How the steps spread over the timesteps: "
                          "linspace, trailing or karras (short steps at low noise; "
                          "samplers.timesteps) (default: the checkpoint's sample.spacing).",
                          show_default=False)
EtaOpt = typer.Option(None, "--eta", help="DDIM noise, 0 (deterministic) to 1.", show_default=False)
SeedOpt = typer.Option(None, "--seed", help="Random seed (default: the checkpoint's sample.seed).",
                       show_default=False)


def _interval_option(text: Optional[str]) -> Optional[tuple[float, ...]]:
    """--guidance-interval LO,HI as numbers (checked against the range by Pipeline.settings)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2:
        raise MnistdiffError(f"--guidance-interval: expected two comma-separated numbers LO,HI "
                             f"like 0.1,0.8, got '{text}'")
    return values


def _describe_steps(s) -> str:
    """'20 steps' or, off the default linspace grid, '20 karras steps'."""
    return f"{s.steps} " + ("" if s.spacing == "linspace" else f"{s.spacing} ") + "steps"


def _describe_guidance(s) -> str:
    """'guidance 1.75' or, with a guidance interval, 'guidance 1.75 in t/(T-1) [0.1, 0.8]'."""
    lo, hi = s.guidance_interval
    return f"guidance {s.guidance:g}" + ("" if (lo, hi) == (0.0, 1.0) else
                                         f" in t/(T-1) [{lo:g}, {hi:g}]")


def _digit_choice(digit: Optional[int], digits: Optional[str], all_: bool) -> Optional[list[int]]:
    """The digits asked for with --digit / --digits, or None for --all (the default)."""
    given = [name for name, on in (("--digit", digit is not None), ("--digits", digits is not None),
                                   ("--all", all_)) if on]
    if len(given) > 1:
        raise MnistdiffError(f"{' and '.join(given)} exclude each other; use one of them")
    if digit is not None:
        return [digit]
    if digits is not None:
        try:
            return [int(d) for d in digits.split(",")]
        except ValueError:
            raise MnistdiffError(f"--digits: expected comma-separated integers like 0,3,7, "
                                 f"got '{digits}'") from None
    return None


def _say_model(pipe) -> None:
    """The one line every model command prints: which model it is using."""
    out.print(f"model: {pipe.info.get('source', pipe.info.get('path'))}", highlight=False,
              soft_wrap=True)


def _check_scale(scale: int) -> None:
    if not 1 <= scale <= 16:
        raise MnistdiffError(f"--scale: got {scale}, must be between 1 and 16")


@app.command()
def sample(
    checkpoint: Optional[str] = CheckpointOpt,
    digit: Optional[int] = DigitOpt, digits: Optional[str] = DigitsOpt, all_: bool = AllOpt,
    n: int = typer.Option(16, "--n", help="Images per digit (--all: 10 n images in total)."),
    sampler: Optional[str] = SamplerOpt, steps: Optional[int] = StepsOpt,
    guidance: Optional[float] = GuidanceOpt, eta: Optional[float] = EtaOpt,
    seed: Optional[int] = SeedOpt, guidance_interval: Optional[str] = GuidanceIntervalOpt,
    spacing: Optional[str] = SpacingOpt,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per forward pass "
                                             "(default: the checkpoint's sample.batch_size).",
                                             show_default=False),
    out_path: Path = typer.Option(Path("samples.png"), "--out", "-o", help="Grid PNG to write."),
    npz: Optional[Path] = typer.Option(None, "--npz", help="Also write the images as NPZ: images "
                                       "uint8 (N,28,28), labels int64 (N,).", show_default=False),
    individual: Optional[Path] = typer.Option(None, "--individual", metavar="DIR", help="Also "
                                              "write one PNG per image into DIR.",
                                              show_default=False),
    scale: int = typer.Option(2, "--scale", help="Nearest-neighbour upscaling of the grid."),
    device: str = DeviceOpt, ema: bool = EmaOpt,
    init_image: Optional[Path] = typer.Option(None, "--init-image", help="Complete this drawing "
                                              "(28x28 grey PNG, white strokes on black): "
                                              "inpainting keeps its pixels where --mask is set.",
                                              show_default=False),
    mask: Optional[Path] = typer.Option(None, "--mask", help="PNG, white = keep the "
                                        "--init-image pixel (default: its non-black pixels).",
                                        show_default=False),
    resample: int = typer.Option(1, "--resample", help="RePaint resampling: redo each "
                                 "inpainting step this many times (costs as many times the "
                                 "time)."),
) -> None:
    """Generate digits: a grid PNG (one labelled row per digit, or a square grid for one digit).

    With --init-image, complete a partial drawing into each digit asked for."""
    choice = _digit_choice(digit, digits, all_)
    _check_scale(scale)
    drawing = _read_drawing(init_image, mask)
    pipe, wanted, s = _open_model(checkpoint, device, ema, choice, (sampler, steps, guidance, eta,
                                  seed, _interval_option(guidance_interval), spacing),
                                  {"--out": out_path, "--npz": npz},
                                  {"--out": (".png",), "--npz": (".npz",)},
                                  folders={"--individual": individual})
    if drawing is None:
        batches = pipe.batches(wanted, n, settings=s, batch_size=batch_size)  # validates n
    else:  # inpainting returns the whole job at once
        batches = iter([pipe.inpaint(*drawing, wanted, n, settings=s, resample=resample,
                                     batch_size=batch_size)])
    total, shown = len(wanted) * n, min(n, GRID_MAX)
    if n > GRID_MAX and npz is None and individual is None:
        raise MnistdiffError(f"--n {n}: the grid shows at most {GRID_MAX} images per digit; "
                             f"write more with --npz or --individual")
    _check_sample_space(total, len(wanted) * shown, scale, out_path, npz, individual)
    _say_model(pipe)
    written, nfe, seconds = _write_samples(pipe, wanted, n, shown, batches, out_path, npz,
                                           individual, scale)
    what = f"{len(wanted)} digits x {n}" if len(wanted) > 1 else f"digit {wanted[0]}"
    if drawing is not None:
        what += f", completing {init_image}" + (f" (resample {resample})" if resample > 1 else "")
    out.print(f"{total} images ({what}) with {s.sampler}, "
              f"{_describe_steps(s)}, {_describe_guidance(s)}, seed {s.seed}: {nfe} NFE, "
              f"{seconds:.1f} s" + (f"; the grid shows the first {shown} of each digit"
                                    if shown < n else ""))
    _print_written(written)


def _open_model(checkpoint: Optional[str], device: str, ema: bool, choice: Optional[list[int]],
                values: tuple, outputs: dict, suffixes: dict, folders: Optional[dict] = None):
    """The opening that ``sample`` and ``animate`` share: load the model, check the outputs
    against it, then the digits (None: every class) and the sampling settings, once:
    (pipe, digits, Settings)."""
    from .pipeline import load

    pipe = load(checkpoint, device=device, ema=ema)
    check_outputs(outputs, {"checkpoint": pipe.info.get("path")}, suffixes=suffixes,
                  folders=folders)
    wanted = pipe.check_digits(range(len(pipe.classes)) if choice is None else choice)
    return pipe, wanted, pipe.settings(*values)


def _print_written(paths) -> None:
    for path in paths:
        out.print(f"wrote {path}")


def _write_samples(pipe, wanted: list[int], n: int, shown: int, batches, out_path: Path,
                   npz: Optional[Path], individual: Optional[Path], scale: int):
    """Stream the batches into the NPZ and the PNGs, keep the grid's images, write the grid:
    all outputs appear, or none. Returns (what was written, NFE, seconds)."""
    import contextlib
    import math
    import time

    import torch
    from rich.progress import Progress

    from .evaluation import NpzSamplesWriter
    from .files import all_or_nothing
    from .visualize import image_grid, labelled_grid, save_image

    total = len(wanted) * n
    start, kept, offset, nfe = time.perf_counter(), [], 0, 0
    with all_or_nothing(), contextlib.ExitStack() as stack:  # all outputs appear, or none
        writer = None if npz is None else stack.enter_context(NpzSamplesWriter(npz, total))
        with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task("sampling", total=total)
            for batch in batches:  # memory stays bounded by the batch (and the grid's images)
                index = torch.arange(offset, offset + len(batch.images))
                kept.append(batch.images[index % n < shown])
                if writer is not None:
                    writer.write(batch.images, batch.labels)
                if individual is not None:
                    for i, image, label in zip(index.tolist(), batch.images,
                                               batch.labels.tolist()):
                        save_image(image_grid(image[None], nrow=1, padding=0, scale=scale),
                                   individual / f"{i:05d}-{label}.png")
                offset, nfe = offset + len(batch.images), batch.nfe
                bar.advance(task, len(batch.images))
        seconds = time.perf_counter() - start
        images = torch.cat(kept)
        if len(wanted) == 1:
            grid = image_grid(images, nrow=math.ceil(math.sqrt(shown)), scale=scale)
        else:
            grid = labelled_grid(images, [pipe.classes[c] for c in wanted], scale=scale)
        written = [save_image(grid, out_path)]
    if npz is not None:
        written.append(npz)
    if individual is not None:
        written.append(f"{total} PNGs into {individual}/")
    return written, nfe, seconds


GRID_MAX = 1024  # images per digit in a sample grid (32 rows of 32): beyond it no one looks


def _check_sample_space(total: int, in_grid: int, scale: int, out_path: Path,
                        npz: Optional[Path], individual: Optional[Path]) -> None:
    """Refuse before sampling when the outputs cannot fit: estimated bytes per file system
    against its free space, and the grid (the only thing held in memory) against free memory.
    Upper bounds: the NPZ as if it did not compress, a PNG per image at one 4 KiB block plus
    its pixels."""
    from .files import check_space

    grid = in_grid * (30 * scale) ** 2  # pixels (one byte each) with the padding
    disk = {out_path: grid}
    if npz is not None:
        disk[npz] = total * (28 * 28 + 8) + 4096
    if individual is not None:
        disk[individual] = total * (4096 + (28 * scale) ** 2)
    check_space(disk, memory=4 * grid, what=f"{total:,} images")


def _read_drawing(init_image: Optional[Path], mask: Optional[Path]):
    """(pixels, mask) for ``sample --init-image [--mask]``, or None without --init-image."""
    from .visualize import read_drawing

    if init_image is None:
        if mask is not None:
            raise MnistdiffError("--mask needs --init-image (the drawing to complete)")
        return None
    pixels = read_drawing(init_image, what="--init-image")
    keep = (pixels > 0 if mask is None else read_drawing(mask, mask=True, what="--mask"))
    return pixels, keep


@app.command()
def animate(
    checkpoint: Optional[str] = CheckpointOpt,
    digit: Optional[int] = DigitOpt, digits: Optional[str] = DigitsOpt, all_: bool = AllOpt,
    sampler: Optional[str] = SamplerOpt, steps: Optional[int] = StepsOpt,
    guidance: Optional[float] = GuidanceOpt, eta: Optional[float] = EtaOpt,
    seed: Optional[int] = SeedOpt, guidance_interval: Optional[str] = GuidanceIntervalOpt,
    spacing: Optional[str] = SpacingOpt,
    frames: Optional[int] = typer.Option(None, "--frames", help="Frames, denser near the end "
                                         "(default: steps + 1, at most 30).", show_default=False),
    fps: float = typer.Option(10.0, "--fps", help="Frames per second, 0.1 to 50 (GIF delays are "
                              "whole hundredths of a second; players show shorter ones as 0.1 "
                              "s)."),
    hold: float = typer.Option(1.0, "--hold", help="Seconds the final frame stays on screen, 0 "
                               "to 60."),
    scale: int = typer.Option(4, "--scale", help="Nearest-neighbour upscaling."),
    out_path: Path = typer.Option(Path("denoise.gif"), "--out", "-o", help="GIF to write (.mp4 "
                                  "with imageio's ffmpeg plugin)."),
    strip: Optional[Path] = typer.Option(None, "--strip", help="Also write the frames as one PNG: "
                                         "a row per digit, a column per frame.", show_default=False),
    device: str = DeviceOpt, ema: bool = EmaOpt,
) -> None:
    """Animate the reverse process, from pure noise to digits side by side."""
    from .files import all_or_nothing
    from .visualize import (animation_frames, check_animation_path, check_timing, frame_strip,
                            save_animation, save_image)

    choice = _digit_choice(digit, digits, all_)
    _check_scale(scale)
    check_timing(fps, hold)
    check_animation_path(out_path)
    pipe, wanted, s = _open_model(checkpoint, device, ema, choice, (sampler, steps, guidance, eta,
                                  seed, _interval_option(guidance_interval), spacing),
                                  {"--out": out_path, "--strip": strip},
                                  {"--out": (".gif", ".mp4"), "--strip": (".png",)})
    _say_model(pipe)
    traj = pipe.trajectory(wanted, settings=s, frames=frames)

    with all_or_nothing():
        written = [save_animation(animation_frames(traj.frames, traj.captions, scale=scale),
                                  out_path, fps=fps, hold=hold)]
        if strip is not None:
            written.append(save_image(frame_strip(traj.frames, scale=scale), strip))
    out.print(f"{len(traj.frames)} frames of {len(wanted)} digits with {s.sampler}, "
              f"{_describe_steps(s)}, {_describe_guidance(s)}, seed {s.seed}")
    _print_written(written)


@app.command()
def summarize(
    checkpoint: Optional[str] = CheckpointOpt,
    config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
    depth: int = typer.Option(2, "--depth", help="Module nesting depth to list."),
    as_json: bool = JsonOpt,
) -> None:
    """Layers, shapes, parameters and MACs of the U-Net, and how a checkpoint was trained."""
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .pipeline import checkpoint_info, summarize as summarize_model
    from .pretrained import resolve_model
    from .unet import build_model

    if depth < 1:
        raise MnistdiffError(f"--depth: got {depth}, must be >= 1")
    if checkpoint is not None and (config is not None or set_):
        raise MnistdiffError("--checkpoint and --config/--set exclude each other; use one of them")
    if config is not None or set_:
        cfg = load_cfg(config, set_)
        model, info = build_model(cfg.model), None
    else:
        source = resolve_model(checkpoint)
        ckpt = load_checkpoint(source.path)
        model, cfg = model_from_checkpoint(ckpt)
        info = checkpoint_info(ckpt, source.path, ema=True, name=source.name)
        info["source"] = source.describe()
    summary = summarize_model(model, cfg, info, depth=depth)
    if as_json:
        print(json.dumps(summary, indent=2))
        return

    _print_summary(summary, info, cfg)


def _print_summary(summary: dict, info: Optional[dict], cfg: Config) -> None:
    """``summarize``'s tables: the layers, then what the config and the checkpoint say."""
    table = Table("layer", "type", "output shape", "parameters", title="ConditionalUNet")
    for layer in summary["layers"]:
        shape = "x".join(map(str, layer["output_shape"])) if layer["output_shape"] else "--"
        table.add_row("  " * (layer["depth"] - 1) + layer["name"], layer["type"], shape,
                      f"{layer['parameters']:,}")
    out.print(table)
    if info is not None:
        out.print(f"model: {info['source']}", highlight=False, soft_wrap=True)
    out.print(_summary_facts(summary, info, cfg))


def _summary_facts(summary: dict, info: Optional[dict], cfg: Config) -> Table:
    """Parameters, MACs, dataset, diffusion, sampler defaults; a checkpoint's training facts
    and its model card's measured rows."""
    d, sd = summary["diffusion"], summary["sampler_defaults"]
    facts = {
        "parameters": f"{summary['parameters']:,} ({summary['size_mb']:.2f} MB as float32)",
        "multiply-accumulates": f"{summary['mult_adds_per_image'] / 1e6:,.1f} M per image and step",
        "dataset": summary["dataset"],
        "diffusion": f"{d['schedule']} schedule, T = {d['timesteps']}, predicts {d['objective']}",
        "sampler defaults": f"{sd['sampler']}, {sd['steps']} steps, guidance {sd['guidance']:g}"
                            + ("" if list(sd["guidance_interval"]) == [0.0, 1.0] else
                               f" in t/(T-1) [{sd['guidance_interval'][0]:g}, "
                               f"{sd['guidance_interval'][1]:g}]")
                            + ("" if (sd.get("spacing") or "linspace") == "linspace" else
                               f", {sd['spacing']} spacing"),
    }
    if cfg.distill.teacher:
        dc = cfg.distill
        lo, hi = dc.guidance_interval
        facts["distilled from"] = (
            f"{dc.teacher} (SHA-256 {dc.teacher_sha256[:12]}...): its guidance {dc.guidance:g}"
            + ("" if (lo, hi) == (0.0, 1.0) else f" in t/(T-1) [{lo:g}, {hi:g}]")
            + f" and {dc.teacher_steps} DPM-Solver++ steps, built into {sd['steps']} passes")
    if info is not None:
        ema_text = (f"yes (decay {summary['ema_decay']:g}, half-life at most "
                    f"{cfg.train.ema_rampup:.0%} of training)" if info["ema"] else "no")
        if info["name"] is not None:  # a bundled model holds only its EMA weights
            ema_text = f"yes (decay {summary['ema_decay']:g}; bundled as the model weights)"
        facts.update({"checkpoint": info["path"], "training step": f"{info['step']:,}",
                      "EMA weights": ema_text,
                      "sampling uses": ("the EMA weights (--no-ema for the raw ones)"
                                        if info["ema"] else "the raw weights"),
                      "created": str(info["created"]),
                      "mnistdiff version": str(info["version"])})
        for row in (info.get("card") or {}).get("metrics", []):
            floor = row.get("real_floor") or {}
            facts[f"measured ({row['label']})"] = (
                f"n = {row['n']:,}, {row['sampler']} {row['steps']} "
                f"{'' if (row.get('spacing') or 'linspace') == 'linspace' else row['spacing'] + ' '}"
                f"steps, guidance "
                f"{row['guidance']:g}: accuracy {row['accuracy']:.2%}, FID {row['fid']:.3f} "
                f"(real floor {floor.get('fid', float('nan')):.3f})")
    facts_table = Table(show_header=False, box=None)
    for key, value in facts.items():
        facts_table.add_row(f"[bold]{key}[/]", value)
    return facts_table


# --------------------------------------------------------------------------------- evaluate

def _guidance_list(guidance: Optional[float], sweep: Optional[str]) -> Optional[list[float]]:
    """The guidance scales asked for with --guidance / --guidance-sweep (None: the default)."""
    if guidance is not None and sweep is not None:
        raise MnistdiffError("--guidance and --guidance-sweep exclude each other; use one of them")
    if sweep is None:
        return None if guidance is None else [guidance]
    try:
        scales = [float(w) for w in sweep.split(",")]
    except ValueError:
        raise MnistdiffError(f"--guidance-sweep: expected comma-separated numbers like 0,1,2,3, "
                             f"got '{sweep}'") from None
    return scales


@app.command()
def evaluate(
    checkpoint: Optional[str] = CheckpointOpt,
    n: Optional[int] = typer.Option(None, "--n", help="Samples to generate in total, balanced "
                                    "across classes: rounded to a multiple of the class count, "
                                    "which is said (default: the checkpoint's eval.n).",
                                    show_default=False),
    sampler: Optional[str] = SamplerOpt, steps: Optional[int] = StepsOpt,
    guidance: Optional[float] = GuidanceOpt,
    sweep: Optional[str] = typer.Option(None, "--guidance-sweep", metavar="0,1,2,3",
                                        help="Evaluate several guidance scales; also plots them.",
                                        show_default=False),
    eta: Optional[float] = EtaOpt, seed: Optional[int] = SeedOpt,
    guidance_interval: Optional[str] = GuidanceIntervalOpt, spacing: Optional[str] = SpacingOpt,
    samples: Optional[Path] = typer.Option(None, "--samples", help="Score an existing NPZ "
                                           "(images uint8 (N,28,28), labels (N,)) instead of "
                                           "sampling a checkpoint.", show_default=False),
    dataset: Optional[str] = DatasetOpt,
    out_path: Path = typer.Option(Path("report.json"), "--out", "-o", help="JSON report to write."),
    floor: bool = typer.Option(True, "--floor/--no-floor", metavar="", help="Also score n real "
                               "training "
                               "images (the best a generator can hope for)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per forward pass.",
                                             show_default=False),
    cas: bool = typer.Option(False, "--cas", metavar="", help="Also the Classification Accuracy Score: train "
                             "the reference classifier on the samples, test it on real test "
                             "images, next to the same classifier trained on as many real ones."),
    cas_epochs: int = typer.Option(10, "--cas-epochs", help="Training epochs of each --cas "
                                   "classifier."),
    npz: Optional[Path] = typer.Option(None, "--npz", help="Also save the generated images as NPZ "
                                       "(one guidance setting only); score it again with "
                                       "--samples.", show_default=False),
    data_dir: Optional[Path] = DataDirOpt, device: str = DeviceOpt, ema: bool = EmaOpt,
) -> None:
    """Class accuracy, FID and precision/recall in a bundled classifier's feature space."""
    from . import evaluation
    from .files import all_or_nothing
    from .visualize import plot_guidance_sweep

    scales = _guidance_list(guidance, sweep)
    interval = _interval_option(guidance_interval)
    plot = out_path.with_suffix(".png") if scales is not None and len(scales) > 1 else None
    outputs = {"--out": out_path, "the sweep plot": plot, "--npz": npz}
    _check_evaluate(outputs, checkpoint, samples, scales, n, batch_size, cas_epochs, npz, interval,
                    spacing)
    if samples is not None:  # score someone's NPZ: no model needed
        cfg = load_cfg(None, None, data_dir=data_dir, dataset=dataset)
        images, labels = evaluation.load_npz_samples(samples)
        source, pipe = {"samples": str(samples)}, None
    else:
        pipe, cfg, settings = _evaluation_model(checkpoint, device, ema, outputs, n, scales,
                                                (sampler, steps, eta, seed, interval, spacing),
                                                data_dir,
                                                dataset)
        source = {"checkpoint": pipe.info.get("path"), "model": pipe.info.get("name"),
                  "step": pipe.info.get("step")}
    batch, k = batch_size or cfg.eval.batch_size, cfg.eval.knn_k
    ref = _reference(cfg, floor, device, batch)
    if pipe is None:
        rows = [evaluation.score(images, labels, ref, k=k, batch_size=batch)]
    else:
        per_class = _per_class(n or pipe.config.eval.n, len(pipe.classes))
        rows, images, labels = evaluation.sample_and_score(
            pipe, per_class, settings, ref, k=k, batch_size=batch, sample_batch_size=batch_size,
            say=err.print)
    floor_row = evaluation.real_floor(ref, rows[0]["n"], cfg.eval.seed, k=k, batch_size=batch,
                                      labels=labels) if floor else None
    cas_row = _cas(images, labels, ref, cas_epochs, cfg.eval.seed) if cas else None
    with all_or_nothing():  # the report, the sweep plot and the NPZ appear together or not at all
        evaluation.write_report(evaluation.make_report(ref, source, rows, floor_row, cas_row),
                                out_path)
        if plot is not None:  # beside the report, under its own name (checked above)
            plot_guidance_sweep(rows, plot)
        if npz is not None:
            evaluation.save_npz_samples(npz, images, labels)
    _print_evaluation(ref, rows, floor_row, cas_row, k, samples)
    _print_written(p for p in (out_path, npz, plot) if p is not None)


def _check_evaluate(outputs: dict, checkpoint: Optional[str], samples: Optional[Path],
                    scales: Optional[list[float]], n: Optional[int], batch_size: Optional[int],
                    cas_epochs: int, npz: Optional[Path],
                    interval: Optional[tuple[float, ...]] = None,
                    spacing: Optional[str] = None) -> None:
    """``evaluate``'s option checks, before anything is loaded."""
    check_outputs(outputs, {"--samples": samples, "checkpoint": checkpoint if checkpoint and
                            Path(checkpoint).is_file() else None},
                  suffixes={"--out": (".json",), "--npz": (".npz",)})
    if samples is not None and (checkpoint is not None or scales is not None or n is not None
                                or interval is not None or spacing is not None):
        raise MnistdiffError("--samples scores a file: it excludes --checkpoint, --n and guidance")
    if n is not None and n < 2:
        raise MnistdiffError(f"--n: got {n}, must be >= 2 (FID needs a covariance)")
    if batch_size is not None and batch_size < 1:
        raise MnistdiffError(f"--batch-size: got {batch_size}, must be >= 1")
    if cas_epochs < 1:
        raise MnistdiffError(f"--cas-epochs: got {cas_epochs}, must be >= 1")
    if npz is not None and (samples is not None or (scales is not None and len(scales) > 1)):
        raise MnistdiffError("--npz saves the samples of one guidance setting; it excludes "
                             "--samples and --guidance-sweep")


def _evaluation_model(checkpoint: Optional[str], device: str, ema: bool, outputs: dict,
                      n: Optional[int], scales: Optional[list[float]], values: tuple,
                      data_dir: Optional[Path], dataset: Optional[str]):
    """Load the model to evaluate and validate every setting of the sweep before the long work:
    (pipe, config for the data, [Settings per guidance scale])."""
    from .pipeline import load

    sampler, steps, eta, seed, interval, spacing = values
    pipe = load(checkpoint, device=device, ema=ema)
    check_outputs(outputs, {"checkpoint": pipe.info.get("path")})
    cfg = load_cfg(None, None, data_dir=data_dir, dataset=dataset or pipe.config.data.dataset)
    settings = [pipe.settings(sampler, steps, w, eta, seed, interval, spacing)
                for w in scales or [None]]
    # All samples and their features are held for scoring: refuse an n that cannot fit.
    check_space({}, memory=(n or pipe.config.eval.n) * (28 * 28 + 8 + 2 * 128 * 4),
                what=f"{n or pipe.config.eval.n:,} samples and their features")
    _say_model(pipe)
    return pipe, cfg, settings


def _reference(cfg: Config, floor: bool, device: str, batch: int):
    """The bundled classifier and test statistics; missing data is said before any sampling,
    with what --no-floor changes."""
    from . import evaluation
    from .data import DatasetSpec, find_data_dir, has_split
    from .errors import DataError
    from .pipeline import resolve_device

    floor_hint = "; the real floor also needs the training split (--no-floor skips it)"
    try:
        folder = find_data_dir(cfg.data.dataset, cfg.data.root, cfg.data.download, ("test",))
        if floor and not has_split(folder, "train"):
            raise DataError(f"{folder}: no training split "
                            f"({', '.join(DatasetSpec.files('train'))})")
    except DataError as e:
        raise DataError(f"{e}{floor_hint if floor else ''}") from None
    return evaluation.load_reference(cfg.data.dataset, data_root=cfg.data.root,
                                     download=cfg.data.download,
                                     device=resolve_device(device), batch_size=batch)


def _per_class(wanted_n: int, classes: int) -> int:
    """Images per class for --n; says so when balancing changes the total."""
    from .evaluation import per_class_count

    per_class = per_class_count(wanted_n, classes)
    if per_class * classes != wanted_n:  # balanced classes need a multiple of their count
        err.print(f"--n {wanted_n} is not a multiple of the {classes} classes: sampling "
                  f"{per_class * classes} ({per_class} per class, rounded to the nearest)",
                  highlight=False)
    return per_class


def _cas(images, labels, ref, epochs: int, seed: int) -> dict:
    """The classification accuracy score of ``evaluate --cas``."""
    from .evaluation import classification_accuracy_score

    err.print(f"classification accuracy score: training 2 classifiers on {len(labels)} "
              f"images for {epochs} epochs ...")
    return classification_accuracy_score(images, labels, ref, epochs=epochs, seed=seed)


def _print_evaluation(ref, rows: list[dict], floor_row: Optional[dict], cas_row: Optional[dict],
                      k: int, samples: Optional[Path]) -> None:
    """The table of ``evaluate``: a row per setting, the real floor, the weakest class, CAS."""
    table = Table("", "n", "accuracy", "FID", "precision", "recall", "NFE", "s / 100",
                  title=f"{ref.dataset}: classifier features, FID vs the test set, k = {k}")
    for row in rows:
        name = f"guidance {row['guidance']:g}" if "guidance" in row else str(samples)
        table.add_row(name, str(row["n"]), f"{row['accuracy']:.2%}", f"{row['fid']:.2f}",
                      f"{row['precision']:.3f}", f"{row['recall']:.3f}", str(row.get("nfe", "-")),
                      f"{row['seconds_per_100']:.2f}" if "seconds_per_100" in row else "-")
    if floor_row is not None:
        table.add_row("real (train)", str(floor_row["n"]), f"{floor_row['accuracy']:.2%}",
                      f"{floor_row['fid']:.2f}", f"{floor_row['precision']:.3f}",
                      f"{floor_row['recall']:.3f}", "-", "-", style="dim")
    out.print(table)
    worst = min(rows[-1]["per_class"], key=lambda c: -1 if c["accuracy"] is None else c["accuracy"])
    if worst["accuracy"] is not None:
        out.print(f"lowest class accuracy: {worst['class']} {worst['accuracy']:.2%}")
    if cas_row is not None:
        out.print(f"classification accuracy score (n = {cas_row['n']}, {cas_row['epochs']} epochs): "
                  f"{cas_row['generated']:.2%} trained on samples, {cas_row['real']:.2%} trained "
                  f"on real images")


# --------------------------------------------------------------------------------- ui

@app.command()
def ui(
    checkpoint: Optional[str] = typer.Option(
        None, "--checkpoint", "-k", metavar="NAME|PATH",
        help="The model the page opens on (default: the bundled mnist); the page also lists the "
             "bundled models and the runs under --runs-dir.", show_default=False),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on; loopback keeps "
                             "the page on this machine."),
    port: int = typer.Option(0, "--port", help="Port (0: a free one)."),
    browser: bool = typer.Option(True, "--browser/--no-browser", help="Open the page in the "
                                 "default web browser."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Folder of runs to offer."),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", hidden=True,
                                              show_default=False),
    device: str = DeviceOpt,
    verbose: bool = typer.Option(False, "--verbose", help="Log every request."),
) -> None:
    """A local web page: make digits and watch them denoise, complete a drawing, morph between
    seeds or digits, read the model card. Offline; Ctrl-C stops it."""
    from .pretrained import MODELS_DIR
    from .ui import make_server, serve

    if not 0 <= port <= 65535:
        raise MnistdiffError(f"--port: got {port}, must be between 0 and 65535")
    server = make_server(host, port, checkpoint=checkpoint, runs_dir=runs_dir,
                         models_dir=models_dir or MODELS_DIR, device=device, verbose=verbose)
    serve(server, browser=browser, say=lambda line: out.print(line, highlight=False,
                                                               soft_wrap=True))


# --------------------------------------------------------------------------------- entry point

def main() -> None:
    """Console-script entry point: user errors become one line and exit status 1."""
    try:
        app()
    except MnistdiffError as e:
        if _state["debug"]:
            raise
        _error(str(e))
    except OSError as e:  # a full disk in a write not made through files.py: still one line
        if _state["debug"] or e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        where = f" while writing {e.filename}" if e.filename else ""
        _error(f"{e.strerror}{where}")


def _error(message: str) -> None:
    """The one line a user error gets; its text is escaped so rich shows [ffmpeg] as written."""
    err.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", highlight=False,
              soft_wrap=True)
    sys.exit(1)
