"""Jobs: one user request, validated, costed, run, reported: what the CLI and the page call.

    job = SampleJob.from_values(digits=[7], n=16, out="sevens.png", guidance=2.0)  # no torch yet
    job.bind(models.load("mnist"))      # the checks that need the model (classes, T, outputs)
    result = job.run(on_step=...)       # Result(files, summary, command, ...)

``from_values`` checks everything that does not need the model against :data:`LIMITS` (and the
config's ranges for the sampling settings, ``config.bounds``), so a bad value is one line before
torch is even imported; ``bind`` checks the rest and estimates the memory and disk the job
needs, refusing what cannot fit before any work. ``run`` writes its files atomically and all
together (``files.all_or_nothing``): the page's downloads are the very files the CLI writes,
because both run the same job. ``Result.command`` is the ``mnistdiff`` command line that writes
the same files.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .config import bounds, excerpt
from .errors import MnistdiffError
from .files import check_animation_path, check_outputs, check_readable, check_space

# The one table of request limits (inclusive), for the CLI and the page; the sampling settings'
# ranges are the config's (config.bounds("sample.guidance"), ...), checked by Pipeline.settings.
LIMITS: dict[str, tuple[float, float]] = {
    "n": (1, 1_000_000),        # images per class of one sample job
    "grid": (1, 1024),          # images per class shown in a grid (32 rows of 32)
    "scale": (1, 16),           # nearest-neighbour upscaling of grids and animations
    "resample": (1, 20),        # RePaint rounds per step (each costs a pass over the steps)
    "frames": (2, 1001),        # animation frames (also at most the steps + 1)
    "morph_frames": (2, 64),
    "fps": (0.1, 50.0),         # GIF delays are whole centiseconds
    "hold": (0.0, 60.0),        # seconds the last frame stays
    "eval_n": (2, 1_000_000),   # FID needs a covariance
    "cas_epochs": (1, 1000),
    "depth": (1, 10),
    "threads": (1, 1024),
    "page_per_class": (1, 64),  # what the page may ask for at once (mnistdiff sample makes more)
    "page_images": (1, 100),
}
SETTING_NAMES = ("sampler", "steps", "guidance", "eta", "seed", "guidance_interval", "spacing")
BYTES_PER_FLOAT = 4


def whole(name: str, value: Any, limit: str | tuple[float, float], hint: str = "") -> int:
    """``value`` as an int within ``LIMITS[limit]`` (or the given range), else one line."""
    lo, hi = LIMITS[limit] if isinstance(limit, str) else limit
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or not lo <= value <= hi:
        raise MnistdiffError(f"{name}: got {excerpt(value)}, must be an integer between "
                             f"{int(lo):,} and {int(hi):,}{hint}")
    return int(value)


def real(name: str, value: Any, limit: str | tuple[float, float], unit: str = "") -> float:
    """``value`` as a finite float within ``LIMITS[limit]`` (or the given range), else one line."""
    lo, hi = LIMITS[limit] if isinstance(limit, str) else limit
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not lo <= value <= hi:
        raise MnistdiffError(f"{name}: got {excerpt(value)}, must be between {lo:g} and "
                             f"{hi:g}{unit}")
    return float(value)


def parse_classes(digit: Optional[int] = None, digits: Optional[str] = None,
                  all_: bool = False) -> Optional[list[int]]:
    """The classes asked for with --digit / --digits / --all: a list, or None for every class
    (the default). Checked against the model's classes by ``bind``."""
    given = [name for name, on in (("--digit", digit is not None), ("--digits", digits is not None),
                                   ("--all", all_)) if on]
    if len(given) > 1:
        raise MnistdiffError(f"{' and '.join(given)} exclude each other; use one of them")
    if digit is not None:
        return [digit]
    if digits is not None:
        try:
            return [int(d) for d in str(digits).replace(" ", "").split(",")]
        except ValueError:
            raise MnistdiffError(f"--digits: expected comma-separated integers like 0,3,7, "
                                 f"got {excerpt(digits)}") from None
    return None


def parse_interval(text: Optional[str]) -> Optional[tuple[float, ...]]:
    """--guidance-interval LO,HI as two numbers (their range is checked with the settings)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 2:
        raise MnistdiffError(f"--guidance-interval: expected two comma-separated numbers LO,HI "
                             f"like 0.1,0.8, got {excerpt(text)}")
    return values


def parse_sweep(guidance: Optional[float], sweep: Optional[str]) -> Optional[list[float]]:
    """The guidance scales of --guidance / --guidance-sweep (None: the model's default)."""
    if guidance is not None and sweep is not None:
        raise MnistdiffError("--guidance and --guidance-sweep exclude each other; use one of them")
    if sweep is None:
        return None if guidance is None else [guidance]
    try:
        return [float(w) for w in str(sweep).split(",")]
    except ValueError:
        raise MnistdiffError(f"--guidance-sweep: expected comma-separated numbers like 0,1,2,3, "
                             f"got {excerpt(sweep)}") from None


def check_settings(values: dict) -> dict:
    """The sampling settings asked for (None = the model's default), their ranges checked
    before the model is loaded (``config.bounds``, the same messages as Pipeline.settings,
    which checks them all again with the model: steps <= T, the sampler and spacing names)."""
    unknown = set(values) - set(SETTING_NAMES)
    if unknown:
        raise TypeError(f"not a sampling setting: {sorted(unknown)[0]}")
    for key, check in (("guidance", real), ("eta", real), ("seed", whole)):
        if values.get(key) is not None:  # (steps needs the model's T: Pipeline.settings)
            check(key, values[key], bounds(f"sample.{key}"))
    if values.get("guidance_interval") is not None and not isinstance(
            values["guidance_interval"], (tuple, list)):
        raise MnistdiffError("--guidance-interval: expected two numbers LO,HI")
    for key in ("sampler", "spacing"):
        if values.get(key) is not None and not isinstance(values[key], str):
            raise MnistdiffError(f"{key}: expected a name, got {excerpt(values[key])}")
    return {k: v for k, v in values.items() if v is not None}


def _file(checkpoint: Optional[str]) -> dict:
    """The file of a --checkpoint that is a path (a file, or a run folder's last.pt), as an
    input the outputs must not overwrite; checked again with the resolved model by ``bind``."""
    from .run import CHECKPOINTS, LAST

    if not checkpoint:
        return {}
    path = Path(checkpoint).expanduser()
    for candidate in (path, path / CHECKPOINTS / LAST, path / LAST):
        if candidate.is_file():
            return {"checkpoint": candidate}
    return {}


@dataclass
class Result:
    """What a job did: the files it wrote (in order), one line in words, the command line that
    writes the same files, and what the page shows besides (images, labels, ...)."""

    files: list[Path]
    summary: str
    command: str = ""
    extra: dict = field(default_factory=dict)


def _command(pipe, verb: str, what: str, settings, tail: str = "") -> str:
    """The command line: the verb, the model, what to make, the settings, the outputs."""
    return " ".join(part for part in (f"mnistdiff {verb} --checkpoint {pipe.name}", what,
                                      settings.flags(), tail) if part)


def _class_flags(classes: list[int], every: int) -> str:
    if len(classes) == every and classes == list(range(every)):
        return "--all"
    if len(classes) == 1:
        return f"--digit {classes[0]}"
    return "--digits " + ",".join(map(str, classes))


def _noun(pipe, plural: bool = True) -> str:
    """What the dataset's images are called: digits, or items for a dataset of clothes."""
    from .data import get_spec

    spec = get_spec(pipe.config.data.dataset)
    return spec.plural if plural else spec.noun


def _what(pipe, classes: list[int], n: int) -> str:
    """'digit 7' or '10 digits x 3'."""
    if len(classes) == 1:
        return f"{_noun(pipe, False)} {pipe.classes[classes[0]]}"
    return f"{len(classes)} {_noun(pipe)} x {n}"


# --------------------------------------------------------------------------------- sample

@dataclass
class SampleJob:
    """``mnistdiff sample`` and the page's Make / Complete: n images of each class into a grid
    PNG, optionally an NPZ and one PNG per image; with a drawing, completions of it."""

    classes: Optional[list[int]]
    n: int
    settings: dict
    out: Path
    npz: Optional[Path] = None
    individual: Optional[Path] = None
    scale: int = 2
    batch_size: Optional[int] = None
    init_image: Optional[Path] = None
    mask: Optional[Path] = None
    drawing: Any = None  # (pixels, keep) arrays, from init_image/mask or given by the page
    resample: int = 2  # pipeline.RESAMPLE
    pipe: Any = None
    s: Any = None  # the validated pipeline.Settings, after bind

    @classmethod
    def from_values(cls, *, classes: Optional[list[int]] = None, n: int = 16,
                    out: str | Path = "samples.png", npz: str | Path | None = None,
                    individual: str | Path | None = None, scale: int = 2,
                    batch_size: Optional[int] = None, init_image: str | Path | None = None,
                    mask: str | Path | None = None, drawing: Any = None, resample: int = 2,
                    checkpoint: Optional[str] = None, **settings) -> SampleJob:
        n = whole("--n", n, "n", " images per class")
        scale = whole("--scale", scale, "scale")
        resample = whole("--resample", resample, "resample")
        if batch_size is not None:
            whole("--batch-size", batch_size, (1, bounds("sample.batch_size")[1] or 10**9))
        if mask is not None and init_image is None:
            raise MnistdiffError("--mask needs --init-image (the drawing to complete)")
        for option, path in (("--init-image", init_image), ("--mask", mask)):
            if path is not None:
                check_readable(path, option)
        paths = {k: None if v is None else Path(v) for k, v in
                 (("out", out), ("npz", npz), ("individual", individual))}
        check_outputs({"--out": paths["out"], "--npz": paths["npz"]},
                      {"--init-image": init_image, "--mask": mask, **_file(checkpoint)},
                      suffixes={"--out": (".png",), "--npz": (".npz",)},
                      folders={"--individual": paths["individual"]})
        return cls(classes, n, check_settings(settings), paths["out"], paths["npz"],
                   paths["individual"], scale, batch_size,
                   None if init_image is None else Path(init_image),
                   None if mask is None else Path(mask), drawing, resample)

    @property
    def default_model(self) -> str | None:
        """The bundled model to use when none is named and no run exists: the many-step one
        for a completion (a few-step student cannot inpaint), else the default."""
        from .models import FLEXIBLE

        return FLEXIBLE if self.init_image is not None or self.drawing is not None else None

    @property
    def shown(self) -> int:
        return min(self.n, int(LIMITS["grid"][1]))

    def bind(self, pipe) -> SampleJob:
        """Check what needs the model, estimate the cost, read the drawing: ready to run."""
        from .pipeline import check_drawing

        self.pipe = pipe
        check_outputs({"--out": self.out, "--npz": self.npz}, {"checkpoint": pipe.info.get("path")},
                      folders={"--individual": self.individual})
        self.classes = pipe.check_digits(range(len(pipe.classes)) if self.classes is None
                                         else self.classes)
        self.s = pipe.settings(**self.settings)
        self.batch_size = pipe.batch_size(self.batch_size)
        if self.n > self.shown and self.npz is None and self.individual is None:
            raise MnistdiffError(f"--n {self.n}: the grid shows at most {self.shown} images per "
                                 f"{_noun(pipe, False)}; write more with --npz or --individual")
        self._check_individual_names()
        if self.init_image is not None or self.drawing is not None:
            pipe.check_drawable()
        if self.init_image is not None:
            self.drawing = _read_drawing(self.init_image, self.mask)
        if self.drawing is not None:
            check_drawing(*self.drawing)
        self._check_cost()
        return self

    def _check_individual_names(self) -> None:
        """-o DIR/00000-3.png --individual DIR would write the grid where an image belongs."""
        from .files import target_of

        if self.individual is None:
            return
        folder = target_of(self.individual)
        for option, path in (("--out", self.out), ("--npz", self.npz)):
            if path is None or target_of(path).parent != folder:
                continue
            stem = Path(path).stem
            index, _, label = stem.partition("-")
            if index.isdigit() and label.isdigit() and int(index) < self.total and \
                    self.labels_at(int(index)) == int(label) and Path(path).suffix == ".png":
                raise MnistdiffError(f"{option} {path} is also one of the --individual images; "
                                     f"give it another name")

    def labels_at(self, index: int) -> int:
        return self.classes[index // self.n]

    @property
    def total(self) -> int:
        return len(self.classes) * self.n

    def _check_cost(self) -> None:
        """Refuse before sampling what cannot fit: the batch's activations and the grid in
        memory; the NPZ (as if it did not compress), the grid and a 4 KiB block plus its
        pixels per individual PNG on disk."""
        c, size = self.pipe.channels, self.pipe.image_size
        grid = len(self.classes) * self.shown * c * ((size + 2) * self.scale) ** 2  # with padding
        disk = {self.out: grid}
        if self.npz is not None:
            disk[self.npz] = self.total * (c * size * size + 8) + 4096
        if self.individual is not None:
            disk[self.individual] = self.total * (4096 + c * (size * self.scale) ** 2)
        batch = min(self.batch_size, self.total)
        check_space(disk, memory=4 * grid + batch * activation_bytes(self.pipe.config),
                    what=f"{self.total:,} images in batches of {batch:,}")

    def run(self, on_step: Callable[[dict], None] | None = None) -> Result:
        """Sample in batches and stream them into the files: all appear, or none."""
        p = self.pipe
        if self.drawing is None:
            batches = p.batches(self.classes, self.n, settings=self.s, batch_size=self.batch_size,
                                on_step=on_step)
        else:
            batches = iter([p.inpaint(*self.drawing, self.classes, self.n, settings=self.s,
                                      resample=self.resample, batch_size=self.batch_size,
                                      on_step=on_step)])
        from .files import all_or_nothing

        with all_or_nothing():
            written, samples = _write_batches(batches, self.out, self.npz, self.individual,
                                              self.scale, self.n, self.shown, self.total,
                                              (p.channels, p.image_size, p.image_size))
        what = _what(p, self.classes, self.n)
        if self.drawing is not None:
            what += f", completing {self.init_image or 'the drawing'}" + (
                f" (resample {self.resample})" if self.resample != 2 else "")
        summary = (f"{self.total} images ({what}) with {self.s.describe()}: {samples.nfe} NFE, "
                   f"{samples.seconds:.1f} s" + (f"; the grid shows the first {self.shown} of each "
                                                 f"{_noun(p, False)}" if self.shown < self.n else ""))
        return Result(written, summary, self._command(), {"samples": samples})

    def _command(self) -> str:
        tail = [f"-o {self.out.name}"]
        if self.npz is not None:
            tail.append(f"--npz {self.npz.name}")
        if self.drawing is not None:
            tail.append(f"--init-image {self.init_image.name if self.init_image else 'drawing.png'}"
                        f" --mask {self.mask.name if self.mask else 'mask.png'}")
            if self.resample != 2:  # the default, pipeline.RESAMPLE
                tail.append(f"--resample {self.resample}")
        what = f"{_class_flags(self.classes, len(self.pipe.classes))} --n {self.n}"
        return _command(self.pipe, "sample", what, self.s, " ".join(tail))


def activation_bytes(config) -> int:
    """An upper estimate of the memory one image needs in a sampling forward pass of the
    U-Net: every feature map of every level held at once (the skips are), twice for a guided
    pass. Measured peak for the bundled mnist at batch 256 on a CPU: ~1.0 MB per image; this
    gives ~1.3 MB."""
    m = config.model
    size, total = config.data.image_size // m.patch_size, 0
    for level, channels in enumerate(m.channels):
        side = size // (2 ** level)
        total += (4 * m.num_res_blocks + 6) * channels * side * side
    return 2 * BYTES_PER_FLOAT * total


def _read_drawing(init_image: Path, mask: Optional[Path]):
    """(pixels, keep) for ``sample --init-image [--mask]``."""
    from .visualize import read_drawing

    pixels = read_drawing(init_image, what="--init-image")
    keep = pixels > 0 if mask is None else read_drawing(mask, mask=True, what="--mask")
    return pixels, keep


def _write_batches(batches, out: Path, npz: Optional[Path], individual: Optional[Path],
                   scale: int, n: int, shown: int, total: int, shape: tuple = (1, 28, 28)):
    """Stream the batches into the NPZ and the PNGs, keep the grid's images, write the grid
    (images of ``shape``, (C, H, W)).
    Returns (the paths written, the Samples of the grid's images with the run's NFE/seconds)."""
    import contextlib
    import time

    import torch

    from .npz import NpzSamplesWriter
    from .pipeline import Samples
    from .visualize import image_grid, save_image

    start, kept, kept_labels, offset, last = time.perf_counter(), [], [], 0, None
    with contextlib.ExitStack() as stack:
        writer = None if npz is None else stack.enter_context(NpzSamplesWriter(npz, total,
                                                                                shape))
        for batch in batches:  # memory stays bounded by the batch (and the grid's images)
            index = torch.arange(offset, offset + len(batch.images))
            keep = index % n < shown
            kept.append(batch.images[keep])
            kept_labels.append(batch.labels[keep])
            if writer is not None:
                writer.write(batch.images, batch.labels)
            if individual is not None:
                for i, image, label in zip(index.tolist(), batch.images, batch.labels.tolist()):
                    save_image(image_grid(image[None], nrow=1, padding=0, scale=scale),
                               individual / f"{i:05d}-{label}.png")
            offset, last = offset + len(batch.images), batch
    samples = Samples(torch.cat(kept), torch.cat(kept_labels), last.nfe,
                      time.perf_counter() - start, last.passes, last.classes)
    written = [save_image(samples.grid(scale=scale), out)]
    if npz is not None:
        written.append(npz)
    if individual is not None:
        written.append(individual)
    return written, samples


# --------------------------------------------------------------------------------- animate

@dataclass
class AnimateJob:
    """``mnistdiff animate`` and the page's GIF: the reverse process of one image per class."""

    classes: Optional[list[int]]
    settings: dict
    out: Path
    strip: Optional[Path] = None
    frames: Optional[int] = None
    fps: float = 10.0
    hold: float = 1.0
    scale: int = 4
    pipe: Any = None
    s: Any = None

    @classmethod
    def from_values(cls, *, classes: Optional[list[int]] = None, out: str | Path = "denoise.gif",
                    strip: str | Path | None = None, frames: Optional[int] = None,
                    fps: float = 10.0, hold: float = 1.0, scale: int = 4,
                    checkpoint: Optional[str] = None, **settings) -> AnimateJob:
        if frames is not None:
            whole("--frames", frames, "frames")
        fps = real("--fps", fps, "fps", " frames per second")
        hold = real("--hold", hold, "hold", " seconds")
        scale = whole("--scale", scale, "scale")
        check_animation_path(out)
        out, strip = Path(out), None if strip is None else Path(strip)
        check_outputs({"--out": out, "--strip": strip}, _file(checkpoint),
                      suffixes={"--out": (".gif", ".mp4"), "--strip": (".png",)})
        return cls(classes, check_settings(settings), out, strip, frames, fps, hold, scale)

    def bind(self, pipe) -> AnimateJob:
        self.pipe = pipe
        check_outputs({"--out": self.out, "--strip": self.strip},
                      {"checkpoint": pipe.info.get("path")})
        self.classes = pipe.check_digits(range(len(pipe.classes)) if self.classes is None
                                         else self.classes)
        self.s = pipe.settings(**self.settings)
        frames = self.frames or min(self.s.steps + 1, 30)
        size = pipe.image_size
        side = (len(self.classes) * (size + 2) + 2) * self.scale  # a frame: the images side by side
        frame_bytes = pipe.channels * side * (size + 4 + 12) * self.scale  # and a caption band
        check_space({self.out: frames * frame_bytes, **({self.strip: frames * frame_bytes}
                                                        if self.strip else {})},
                    memory=4 * frames * frame_bytes,
                    what=f"{frames} frames of {len(self.classes)} images at scale {self.scale}")
        return self

    def run(self, on_step: Callable[[dict], None] | None = None) -> Result:
        from .files import all_or_nothing
        from .visualize import animation_frames, frame_strip, save_animation, save_image

        traj = self.pipe.trajectory(self.classes, settings=self.s, frames=self.frames)
        with all_or_nothing():
            written = [save_animation(animation_frames(traj.frames, traj.captions,
                                                       scale=self.scale),
                                      self.out, fps=self.fps, hold=self.hold)]
            if self.strip is not None:
                written.append(save_image(frame_strip(traj.frames, scale=self.scale), self.strip))
        summary = (f"{len(traj.frames)} frames of {len(self.classes)} {_noun(self.pipe)} with "
                   f"{self.s.describe()}")
        what = _class_flags(self.classes, len(self.pipe.classes))
        return Result(written, summary, _command(self.pipe, "animate", what, self.s,
                                                 f"-o {self.out.name}"))


# --------------------------------------------------------------------------------- morph

@dataclass
class MorphJob:
    """The page's Morph: from (class a, seed a) to (class b, seed b) as a strip and a GIF."""

    classes: tuple[int, int]
    seeds: Optional[tuple[Optional[int], Optional[int]]]
    frames: int
    settings: dict
    folder: Path
    pipe: Any = None

    @classmethod
    def from_values(cls, *, classes: tuple, seeds: tuple | None = None, frames: int = 8,
                    folder: str | Path = ".", **settings) -> MorphJob:
        if any(c is None for c in classes):
            raise MnistdiffError("morph: choose both digits")
        frames = whole("frames", frames, "morph_frames")
        return cls(tuple(classes), seeds, frames, check_settings(settings), Path(folder))

    def bind(self, pipe) -> MorphJob:
        self.pipe = pipe
        return self

    def run(self, on_step=None) -> Result:
        from .files import all_or_nothing
        from .visualize import add_caption, image_grid, save_animation, save_image

        p = self.pipe
        seeds = None if self.seeds in (None, (None, None)) else tuple(
            p.settings(**self.settings).seed if v is None else v for v in self.seeds)
        m = p.interpolate(self.classes, seeds, self.frames, **self.settings)
        strip = image_grid(m.images, nrow=len(m.images), scale=2)
        pictures = [add_caption(image_grid(im[None], nrow=1, padding=0, scale=4),
                                f"{round(100 * a)}%", scale=2) for im, a in zip(m.images, m.alphas)]
        loop = pictures + pictures[-2:0:-1]  # there and back again
        with all_or_nothing():
            written = [save_image(strip, self.folder / "morph.png"),
                       save_animation(loop, self.folder / "morph.gif", fps=5.0, hold=0)]
        names = [p.classes[c] for c in m.digits]
        summary = (f"{names[0]} (seed {m.seeds[0]}) to {names[1]} (seed {m.seeds[1]}): "
                   f"{len(m.images)} frames with {m.settings.describe()}: {m.seconds:.1f} s")
        return Result(written, summary, "", {"morph": m, "strip": strip})


# --------------------------------------------------------------------------------- evaluate

@dataclass
class EvaluateJob:
    """``mnistdiff evaluate``: class accuracy, FID, precision/recall (and the real floor, CAS) of
    a model's balanced samples at one or more guidance scales, or of an NPZ of samples. The
    classifier is the bundled one of MNIST and Fashion-MNIST, or (a class folder, cifar10,
    ``classifier="train"``) the same architecture trained on the training split on first use."""

    n: Optional[int]
    scales: Optional[list[float]]
    settings: dict
    samples: Optional[Path] = None
    dataset: Optional[str] = None
    data_dir: Optional[Path] = None
    out: Optional[Path] = None  # None: the run folder's reports/ for a run, else report.json
    floor: bool = True
    batch_size: Optional[int] = None
    cas: bool = False
    cas_epochs: int = 10
    npz: Optional[Path] = None
    classifier: str = "auto"
    classifier_epochs: Optional[int] = None  # None: classifier.default_epochs
    pipe: Any = None
    runs: list = field(default_factory=list)  # the validated Settings, one per guidance scale
    reference: Any = None
    config: Any = None

    @classmethod
    def from_values(cls, *, n: Optional[int] = None, scales: Optional[list[float]] = None,
                    samples: str | Path | None = None, dataset: Optional[str] = None,
                    data_dir: str | Path | None = None, out: str | Path | None = None,
                    floor: bool = True, batch_size: Optional[int] = None, cas: bool = False,
                    cas_epochs: int = 10, npz: str | Path | None = None,
                    classifier: str = "auto", classifier_epochs: Optional[int] = None,
                    checkpoint: Optional[str] = None, **settings) -> EvaluateJob:
        from .evaluation import CLASSIFIERS

        settings = check_settings(settings)
        if samples is not None and (checkpoint is not None or scales is not None or
                                    n is not None or settings):
            raise MnistdiffError("--samples scores a file: it excludes --checkpoint, --n and "
                                 "the sampling options")
        if n is not None:
            whole("--n", n, "eval_n", " (FID needs a covariance)")
        if batch_size is not None:
            whole("--batch-size", batch_size, (1, 1_000_000))
        whole("--cas-epochs", cas_epochs, "cas_epochs")
        if classifier_epochs is not None:
            whole("--classifier-epochs", classifier_epochs, "cas_epochs")
        if classifier not in CLASSIFIERS:
            raise MnistdiffError(f"--classifier: got {excerpt(classifier)}, choose one of "
                                 f"{', '.join(CLASSIFIERS)}")
        if npz is not None and (samples is not None or (scales is not None and len(scales) > 1)):
            raise MnistdiffError("--npz saves the samples of one guidance setting; it excludes "
                                 "--samples and --guidance-sweep")
        for w in scales or []:
            real("--guidance", w, bounds("sample.guidance"))
        if samples is not None:
            check_readable(samples, "--samples")
        job = cls(n, scales, settings, None if samples is None else Path(samples), dataset,
                  None if data_dir is None else Path(data_dir), None if out is None else Path(out),
                  floor, batch_size, cas, cas_epochs, None if npz is None else Path(npz),
                  classifier, classifier_epochs)
        job._check_outputs({"--samples": samples, **_file(checkpoint)})
        return job

    @property
    def plot(self) -> Optional[Path]:
        if self.out is None or self.scales is None or len(self.scales) < 2:
            return None
        return self.out.with_suffix(".png")

    def _check_outputs(self, inputs: dict) -> None:
        check_outputs({"--out": self.out, "the sweep plot": self.plot, "--npz": self.npz}, inputs,
                      suffixes={"--out": (".json",), "--npz": (".npz",)})

    def bind(self, pipe=None, say: Callable[[str], None] = lambda line: None) -> EvaluateJob:
        """Check the settings of every scale against the model, find the data (the flag, else
        the run's stored data.root) and load the reference: before any sampling. ``say``
        hears a folder being read or a classifier being trained (both cached)."""
        from .run import report_path

        self.pipe = pipe
        if pipe is not None:
            if self.out is None:
                self.out = report_path(pipe.info.get("path"))
            self._check_outputs({"checkpoint": pipe.info.get("path")})
            self.runs = [pipe.settings(**{**self.settings, "guidance": w})
                         for w in self.scales or [None]]
            n = self.n or pipe.config.eval.n
            # every sample and its features are held for scoring: refuse an n that cannot fit
            image = pipe.channels * pipe.image_size ** 2
            check_space({}, memory=n * (image + 8 + 2 * self._feature_dim() * 8),
                        what=f"{n:,} samples and their features")
        elif self.out is None:
            self.out = Path("report.json")
            self._check_outputs({"--samples": self.samples})
        self.config = self._data_config()
        self.reference = _reference(self.config, self.floor, pipe, self.classifier,
                                    self.classifier_epochs, say)
        return self

    def _data_config(self):
        """Where the data is: --data-dir and --dataset win; else what the model's run stored
        (data.root, verify, download, a folder's image shape and classes: a run remembers its
        data); else the defaults. A samples NPZ of a folder model gives the image shape."""
        import dataclasses

        from .config import config_from_dict
        from .data import get_spec

        d: dict = {"data": {}}
        if self.pipe is not None:
            d = {"data": {k: v for k, v in vars(self.pipe.config.data).items() if v is not None},
                 "model": dataclasses.asdict(self.pipe.config.model)}
        if self.data_dir is not None:
            d["data"]["root"] = str(self.data_dir)
        if self.dataset is not None:
            d["data"]["dataset"] = self.dataset
        if self.pipe is None and get_spec(d["data"].get("dataset", "mnist")).kind != "idx":
            c, size = _npz_shape(self.samples)
            d["data"].update(channels=c, image_size=size)
        return config_from_dict(d)

    def _feature_dim(self) -> int:
        from .data import get_spec
        from .evaluation import classifier_info

        dataset = self.pipe.config.data.dataset
        if self.classifier == "train" or get_spec(dataset).kind != "idx":
            return 128  # the reference architecture's (classifier.Classifier)
        return int(classifier_info(dataset)["feature_dim"])

    def run(self, say: Callable[[str], None] = lambda line: None) -> Result:
        from . import evaluation
        from .files import all_or_nothing
        from .npz import load_npz_samples, save_npz_samples
        from .visualize import plot_guidance_sweep

        ref, k, batch = self.reference, self.config.eval.knn_k, self.batch_size or \
            self.config.eval.batch_size
        if self.pipe is None:
            clf = ref.classifier
            images, labels = load_npz_samples(self.samples, len(ref.names),
                                              (clf.in_channels, clf.image_size, clf.image_size))
            rows = [evaluation.score(images, labels, ref, k=k, batch_size=batch)]
            source = {"samples": str(self.samples)}
        else:
            per_class = _per_class(self.n or self.pipe.config.eval.n, len(self.pipe.classes), say)
            rows, images, labels = evaluation.sample_and_score(
                self.pipe, per_class, self.runs, ref, k=k, batch_size=batch,
                sample_batch_size=self.batch_size, say=say)
            source = {"checkpoint": self.pipe.info.get("path"), "model": self.pipe.info.get("name"),
                      "step": self.pipe.info.get("step")}
        floor = evaluation.real_floor(ref, rows[0]["n"], self.config.eval.seed, k=k,
                                      batch_size=batch, labels=labels) if self.floor else None
        cas = None
        if self.cas:
            say(f"classification accuracy score: training 2 classifiers on {len(labels)} images "
                f"for {self.cas_epochs} epochs ...")
            cas = evaluation.classification_accuracy_score(images, labels, ref,
                                                           epochs=self.cas_epochs,
                                                           seed=self.config.eval.seed)
        with all_or_nothing():  # the report, the plot and the NPZ appear together or not at all
            evaluation.write_report(evaluation.make_report(ref, source, rows, floor, cas), self.out)
            if self.plot is not None:
                plot_guidance_sweep(rows, self.plot)
            if self.npz is not None:
                save_npz_samples(self.npz, images, labels)
        files = [p for p in (self.out, self.npz, self.plot) if p is not None]
        return Result(files, "", "",
                      {"rows": rows, "floor": floor, "cas": cas, "k": k})


def _npz_shape(samples: Path) -> tuple[int, int]:
    """(channels, image side) of the images in a samples NPZ (read to find out)."""
    from .npz import load_npz_samples

    images, _ = load_npz_samples(samples, num_classes=1000, shape=None)
    if images.shape[-1] != images.shape[-2]:
        raise MnistdiffError(f"--samples {samples}: images of {tuple(images.shape[-2:])} "
                             f"pixels; a folder model's are square")
    return (1 if images.ndim == 3 else images.shape[1]), images.shape[-1]


def _reference(cfg, floor: bool, pipe, classifier: str = "auto", epochs: Optional[int] = None,
               say: Callable[[str], None] = lambda line: None):
    """The reference classifier and test statistics; missing data is said before any
    sampling, with what --no-floor changes. A folder is checked (read, or its cache) by
    loading the reference itself."""
    from . import evaluation
    from .data import DatasetSpec, find_data_dir, get_spec, has_split
    from .errors import DataError

    device = pipe.device if pipe is not None else "cpu"
    if get_spec(cfg.data.dataset).kind == "idx":
        floor_hint = "; the real floor also needs the training split (--no-floor skips it)"
        try:
            folder = find_data_dir(cfg.data.dataset, cfg.data.root, cfg.data.download,
                                   ("test",))
            if floor and not has_split(folder, "train"):
                raise DataError(f"{folder}: no training split "
                                f"({', '.join(DatasetSpec.files('train'))})")
        except DataError as e:
            raise DataError(f"{e}{floor_hint if floor else ''}") from None
    return evaluation.load_reference(cfg.data.dataset, data_root=cfg.data.root,
                                     download=cfg.data.download, device=device,
                                     batch_size=cfg.eval.batch_size, data=cfg.data,
                                     classifier=classifier, epochs=epochs, say=say)


def _per_class(wanted_n: int, classes: int, say: Callable[[str], None]) -> int:
    """Images per class for --n; says so when balancing changes the total."""
    from .evaluation import per_class_count

    per_class = per_class_count(wanted_n, classes)
    if per_class * classes != wanted_n:  # balanced classes need a multiple of their count
        say(f"--n {wanted_n} is not a multiple of the {classes} classes: sampling "
            f"{per_class * classes} ({per_class} per class, rounded to the nearest)")
    return per_class


# --------------------------------------------------------------------------------- data preview

def preview(cfg, out: str | Path, per_class: int, split: str = "train", scale: int = 2,
            say: Callable[[str], None] | None = None) -> Result:
    """``mnistdiff data preview``: a PNG grid of real images, one row of ``per_class`` per class
    (a folder's or cifar10's rows are labelled with their class names, and a class with fewer
    images shows what it has; MNIST's digits speak for themselves)."""
    per_class = whole("--n", per_class, (1, 100))
    scale = whole("--scale", scale, "scale")
    if split not in ("train", "test"):
        raise MnistdiffError(f"--split: got {excerpt(split)}, must be train or test")
    check_outputs({"--out": out}, suffixes={"--out": (".png",)})
    import torch

    from .data import class_names, get_spec, load_dataset
    from .visualize import image_grid, labelled_grid, save_image

    images, labels = load_dataset(cfg.data, split, say)
    classes = class_names(cfg.data)
    rows = [images[labels == c][:per_class] for c in range(len(classes))]
    if get_spec(cfg.data.dataset).kind == "idx":
        if any(len(r) < per_class for r in rows):
            raise MnistdiffError(f"the {split} split has fewer than {per_class} images of some "
                                 f"class")
        grid = image_grid(torch.cat(rows), nrow=per_class, scale=scale)
    else:
        blank = torch.zeros((per_class, *images.shape[1:]), dtype=torch.uint8)
        grid = labelled_grid(torch.cat([torch.cat([r, blank[len(r):]]) for r in rows]),
                             classes, max_cols=per_class, scale=scale)
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    path = save_image(grid, out)
    shown = f"{len(classes)} classes x {per_class}"
    if get_spec(cfg.data.dataset).kind != "idx":
        shown += f" of the {split} split (" + ", ".join(
            f"{name} {k}" for name, k in zip(classes[:10], counts)) + (
            ", ..." if len(classes) > 10 else "") + ")"
    return Result([path], shown)
