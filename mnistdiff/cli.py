"""The ``mnistdiff`` command line: parse options, call the library, report with rich.

No maths lives here. A :class:`MnistdiffError` raised below becomes one ``error: ...`` line and
exit status 1 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .config import Config, dump_yaml, load_config
from .errors import MnistdiffError

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
DatasetOpt = typer.Option(None, "--dataset", help="mnist or fashion-mnist (sets data.dataset).",
                          show_default=False)
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _version(value: bool) -> None:
    if value:
        out.print(f"mnistdiff {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
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
    per_class: int = typer.Option(8, "--n", min=1, max=100, help="Images per class (one row each)."),
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
    images, labels = load_dataset(cfg.data, split)
    classes = get_spec(cfg.data.dataset).classes
    rows = [images[labels == c][:per_class] for c in range(len(classes))]
    if any(len(r) < per_class for r in rows):
        raise MnistdiffError(f"the {split} split has fewer than {per_class} images of some class")
    path = save_image(image_grid(torch.cat(rows), nrow=per_class, scale=scale), out_path)
    out.print(f"wrote {path} ({len(classes)} classes x {per_class})")


# --------------------------------------------------------------------------------- train


# --------------------------------------------------------------------------------- sample, animate, summarize


# --------------------------------------------------------------------------------- evaluate


# --------------------------------------------------------------------------------- entry point

def main() -> None:
    """Console-script entry point: user errors become one line and exit status 1."""
    try:
        app()
    except MnistdiffError as e:
        if _state["debug"]:
            raise
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
