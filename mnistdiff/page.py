"""The page's side of ``mnistdiff ui``: what a request asks for, as the CLI's jobs, and the
results it keeps for download.

    app = App(device="cpu")                 # the models it offers (models.Catalog)
    work = app.make({"digits": "7", "n": 4}) # validated: bad input raises before any work
    result = work(emit)                     # runs the job, emitting its steps; a dict for the page

Every request becomes a ``jobs`` job writing into the result's own folder, so a result's
downloads are the very files ``mnistdiff sample`` / ``animate`` write, and the page shows the
command that writes them. Values arrive as JSON (numbers or strings) and are converted here;
all their limits are the jobs' (``jobs.LIMITS``) and the config's.
"""

from __future__ import annotations

import base64
import io
import numbers
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from . import jobs
from .config import excerpt
from .errors import MnistdiffError
from .models import MODELS_DIR, RUNS_DIR

KEEP_RESULTS = 16  # results whose downloads stay available


class App:
    """The server's state: the models it offers (``models.Catalog``), finished results."""

    def __init__(self, *, checkpoint: str | Path | None = None, models_dir: Path = MODELS_DIR,
                 runs_dir: Path = RUNS_DIR, device: str = "auto"):
        from .models import Catalog

        self.catalog = Catalog(checkpoint=checkpoint, models_dir=models_dir, runs_dir=runs_dir,
                               device=device)
        self.default = self.catalog.default
        self.busy = threading.Lock()  # one sampling job at a time: the CPU has few cores
        self._results: OrderedDict[str, dict] = OrderedDict()
        self._results_lock = threading.Lock()
        self._next = 0
        self._tmp = Path(tempfile.mkdtemp(prefix="mnistdiff-ui-"))

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def models(self):
        return self.catalog.models()

    def pipeline(self, model_id: object):
        return self.catalog.pipeline(model_id)

    def card(self, model_id: object) -> dict:
        """What the page shows about a model: facts, measured quality, sampler defaults."""
        import dataclasses

        from .data import get_spec
        from .models import facts, metrics
        from .samplers import SAMPLERS, SPACINGS

        pipe = self.pipeline(model_id)
        label = next(m.label for m in self.models() if m.id == (model_id or self.default))
        noun = get_spec(pipe.config.data.dataset).noun
        inpainter = self._inpainter(model_id)
        return {"id": model_id or self.default, "label": label,
                "complete_defaults": dataclasses.asdict(inpainter.settings()),
                "complete_model": inpainter.name,
                "rows": [list(r) for r in facts(pipe.config, pipe.info)],
                "metrics": metrics(pipe.info), "defaults": dataclasses.asdict(pipe.settings()),
                "timesteps": pipe.schedule.T, "samplers": list(SAMPLERS),
                "spacings": list(SPACINGS), "classes": list(pipe.classes),
                "noun": noun, "live": pipe.settings().steps <= 4,
                "limits": {"per_class": jobs.LIMITS["page_per_class"][1],
                           "images": jobs.LIMITS["page_images"][1],
                           "resample": jobs.LIMITS["resample"][1],
                           "frames": jobs.LIMITS["morph_frames"][1]}}

    # -- results: each in its own folder, written by the job; downloads read the files back

    def folder(self) -> tuple[str, Path]:
        with self._results_lock:
            self._next += 1
            rid = f"r{self._next}"
        folder = self._tmp / rid
        folder.mkdir()
        return rid, folder

    def keep(self, rid: str, files: dict[str, Path | Callable[[], Path]]) -> None:
        with self._results_lock:
            self._results[rid] = dict(files)
            while len(self._results) > KEEP_RESULTS:
                old, _ = self._results.popitem(last=False)
                shutil.rmtree(self._tmp / old, ignore_errors=True)

    def download(self, rid: str, name: str) -> bytes:
        with self._results_lock:
            item = self._results.get(rid, {}).get(name)
        if item is None:
            raise KeyError(name)
        if callable(item):  # made on demand (the GIF needs its own sampling run)
            with self.busy:
                item = item()
            with self._results_lock:
                self._results.get(rid, {})[name] = item
        return Path(item).read_bytes()

    # -- jobs: validate everything first, then return the work to run

    def make(self, body: dict) -> Callable[[Callable[[str, dict], None]], dict]:
        """Generate: stream x_t and the predicted x0 of every step, then the grid."""
        pipe = self.pipeline(body.get("model"))
        classes, n = _classes(pipe, body.get("digits")), _whole(body, "n", 4)
        _page_count(pipe, n, len(classes))
        rid, folder = self.folder()
        job = jobs.SampleJob.from_values(classes=classes, n=n, out=folder / "samples.png",
                                         npz=folder / "samples.npz", **_settings(body)).bind(pipe)

        def gif() -> Path:
            animate = jobs.AnimateJob.from_values(classes=job.classes, out=folder / "denoise.gif",
                                                  **job.settings).bind(pipe)
            return animate.run().files[0]

        def run(emit: Callable[[str, dict], None]) -> dict:
            emit("start", {"steps": job.s.steps, "images": job.total})
            result = job.run(on_step=_stepper(emit, n))
            self.keep(rid, {"samples.png": result.files[0], "samples.npz": result.files[1],
                            "denoise.gif": gif})
            return _done(rid, result, [("samples.png", "grid PNG"), ("denoise.gif", "GIF"),
                                       ("samples.npz", "NPZ")])

        return run

    def complete(self, body: dict) -> Callable[[Callable[[str, dict], None]], dict]:
        """Complete my drawing: inpainting that keeps the drawn pixels."""
        from .visualize import image_grid, save_image

        pipe = self._inpainter(body.get("model"))
        classes = _classes(pipe, body.get("digits", body.get("digit")))
        n = _whole(body, "n", 4)
        _page_count(pipe, n, len(classes))
        pixels, keep = _canvas(body.get("pixels"), "drawing"), _canvas(body.get("mask"), "mask")
        if not keep.any():
            raise MnistdiffError("the canvas is empty: draw part of a digit first")
        rid, folder = self.folder()
        job = jobs.SampleJob.from_values(
            classes=classes, n=n, out=folder / "completed.png", npz=folder / "completed.npz",
            drawing=(pixels, keep), resample=_whole(body, "resample", 2),
            **_settings(body)).bind(pipe)
        job.init_image, job.mask = folder / "drawing.png", folder / "mask.png"

        def run(emit: Callable[[str, dict], None]) -> dict:
            emit("start", {"steps": job.s.steps, "images": job.total})
            result = job.run(on_step=_stepper(emit, n))
            save_image(image_grid(pixels[None], nrow=1, padding=0), job.init_image)
            save_image(image_grid((keep * 255).astype("uint8")[None], nrow=1, padding=0), job.mask)
            self.keep(rid, {"completed.png": result.files[0], "completed.npz": result.files[1],
                            "drawing.png": job.init_image, "mask.png": job.mask})
            done = _done(rid, result, [("completed.png", "grid PNG"), ("completed.npz", "NPZ"),
                                       ("drawing.png", "drawing"), ("mask.png", "mask")])
            images = result.extra["samples"].images
            done["images"] = [data_url(image_grid(im[None], nrow=1, padding=0)) for im in images]
            return done

        return run

    def _inpainter(self, model_id: object):
        """The model that completes drawings: the one asked for, or for a few-step student the
        bundled many-step model (inpainting replaces the drawn pixels at every step, and two
        steps leave the seam between drawing and model in plain view)."""
        from .models import FLEXIBLE

        pipe = self.pipeline(model_id)
        flexible = f"bundled:{FLEXIBLE}"
        if pipe.settings().steps <= 4 and any(m.id == flexible for m in self.models()):
            return self.pipeline(flexible)
        return pipe

    def morph(self, body: dict) -> Callable[[], dict]:
        """Morph between two seeds or two digits: a strip and a GIF."""
        pipe = self.pipeline(body.get("model"))
        rid, folder = self.folder()
        job = jobs.MorphJob.from_values(
            classes=(_whole(body, "digit_a", None), _whole(body, "digit_b", None)),
            seeds=(_whole(body, "seed_a", None), _whole(body, "seed_b", None)),
            frames=_whole(body, "frames", 8), folder=folder,
            **{k: v for k, v in _settings(body).items() if k in ("sampler", "steps", "guidance")}
        ).bind(pipe)

        def run() -> dict:
            result = job.run()
            m, (strip, gif) = result.extra["morph"], result.files
            self.keep(rid, {"morph.png": strip, "morph.gif": gif})
            return {"id": rid, "strip": data_url(result.extra["strip"]), "frames": len(m.images),
                    "gif": "data:image/gif;base64," + base64.b64encode(gif.read_bytes()).decode(),
                    "alphas": m.alphas, "digits": list(m.digits), "seeds": list(m.seeds),
                    "summary": result.summary,
                    "files": [{"name": "morph.png", "label": "strip PNG"},
                              {"name": "morph.gif", "label": "GIF"}]}

        return run


# --------------------------------------------------------------------------------- input

def _whole(body: dict, key: str, default: int | None) -> int | None:
    """An integer field of the request (a number or a numeric string), or ``default``."""
    value = body.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    try:
        if isinstance(value, str):
            return int(value.strip())
    except ValueError:
        pass
    raise MnistdiffError(f"{key}: expected a whole number, got {excerpt(value)}")


def _number(body: dict, key: str) -> float | None:
    value = body.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        if isinstance(value, str):
            return float(value)
    except ValueError:
        pass
    raise MnistdiffError(f"{key}: expected a number, got {excerpt(value)}")


def _settings(body: dict) -> dict:
    """The sampling settings the page sent (checked by the job against the config's limits)."""
    text = {k: body.get(k) or None for k in ("sampler", "spacing")}
    for key, value in text.items():
        if value is not None and not isinstance(value, str):
            raise MnistdiffError(f"{key}: expected a name, got {excerpt(value)}")
    return {**text, "steps": _whole(body, "steps", None), "guidance": _number(body, "guidance"),
            "eta": _number(body, "eta"), "seed": _whole(body, "seed", None)}


def _classes(pipe, value: object) -> list[int]:
    """'0,3,7', 'all', a number or a list -> checked classes (Pipeline.check_digits)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all")):
        return list(range(len(pipe.classes)))
    if isinstance(value, str):
        classes = jobs.parse_classes(digits=value)
    else:
        classes = value if isinstance(value, list) else [value]
    if len(classes) > len(pipe.classes):
        raise MnistdiffError(f"too many digits: {len(classes)} asked for, at most "
                             f"{len(pipe.classes)} at once")
    return pipe.check_digits([_whole({"digit": c}, "digit", None) for c in classes])


def _page_count(pipe, n: int, classes: int) -> None:
    """What the page may ask for at once (jobs.LIMITS); mnistdiff sample makes more."""
    from .data import get_spec

    lo, hi = jobs.LIMITS["page_per_class"]
    most = jobs.LIMITS["page_images"][1]
    if not lo <= n <= hi:
        raise MnistdiffError(f"how many: got {n}, must be between {lo} and {hi} per class here "
                             f"(mnistdiff sample makes more)")
    if n * classes > most:
        plural = get_spec(pipe.config.data.dataset).plural
        raise MnistdiffError(f"too many images: {classes} {plural} x {n} = {n * classes}, at "
                             f"most {most} at once here (mnistdiff sample makes more)")


def _canvas(value: object, name: str):
    """784 numbers (a 28x28 canvas, row by row) -> a (28, 28) array."""
    import numpy as np

    if not isinstance(value, list) or len(value) != 28 * 28:
        raise MnistdiffError(f"{name}: expected 784 pixels (28x28, row by row)")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 <= v <= 255
               for v in value):
        raise MnistdiffError(f"{name}: expected pixel values from 0 to 255")
    return np.asarray([round(v) for v in value], dtype=np.uint8).reshape(28, 28)


# --------------------------------------------------------------------------------- output

def data_url(image) -> str:
    """A PIL image as a PNG data URL."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _stepper(emit: Callable[[str, dict], None], n: int) -> Callable[[dict], None]:
    """The sampler callback that sends x_t and the predicted x0 of each step to the page."""
    from .visualize import image_grid

    def step(info: dict) -> None:
        cols = max(1, min(n, len(info["x"])))
        emit("step", {"batch": info["batch"] + 1, "batches": info["batches"], "i": info["i"] + 1,
                      "steps": info["steps"], "t": info["t"],
                      "xt": data_url(image_grid(info["x"], nrow=cols)),
                      "x0": data_url(image_grid(info["x0"], nrow=cols))})

    return step


def _done(rid: str, result: jobs.Result, files: list[tuple[str, str]]) -> dict:
    samples = result.extra["samples"]
    from PIL import Image

    return {"id": rid, "grid": data_url(Image.open(result.files[0])),
            "labels": samples.labels.tolist(), "shape": list(samples.images.shape),
            "summary": result.summary, "command": result.command,
            "files": [{"name": name, "label": label} for name, label in files]}


