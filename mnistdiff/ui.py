"""``mnistdiff ui``: a local web page to make, watch, complete and morph digits.

Built on the standard library, not Gradio: Gradio pulls in hundreds of MB of dependencies,
loads fonts from a CDN and sends telemetry by default, and this project must run offline on a
small CPU. Here ``http.server.ThreadingHTTPServer`` serves one self-contained page (package
data under ``assets/ui/``: no CDN, no external fonts or scripts, enforced by a
Content-Security-Policy), a small JSON API, and server-sent events that stream every denoising
step as PNG data URLs. The server stays thin: sampling is ``Pipeline`` (``sample_live``,
``inpaint``, ``interpolate``, ``trajectory``), pictures are ``visualize``'s helpers, and the
downloads are written by the same functions the CLI uses, so they are the files it writes.

Routes::

    GET  /                          the page; GET /static/ui.css, /static/ui.js
    GET  /api/models                {"models": [{id, label, kind}], "default": id}
    GET  /api/card?model=ID         the model card: facts, measured quality, sampler defaults
    POST /api/make                  JSON in, events out: start, step..., done (or error)
    POST /api/complete              the same for completing a drawing (inpainting)
    POST /api/morph                 JSON in, JSON out: the strip and the GIF of a morph
    GET  /api/file/ID/NAME          a result's downloads (samples.png, samples.npz, ...)

Bad input gets HTTP 400 and {"error": "<one line>"} (or an ``error`` event once a stream has
started), with the library's own messages; the page shows the line, never a traceback, and the
server keeps serving. Unexpected errors print their traceback in the terminal only.
"""

from __future__ import annotations

import base64
import io
import json
import math
import numbers
import signal
import sys
import tempfile
import threading
import traceback
import webbrowser
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from .checkpoint import LAST, RUNS_DIR
from .errors import MnistdiffError
from .pretrained import DEFAULT, MODELS_DIR, ModelSource

# What the page may ask for at once (the CLI has no such limits).
MAX_DIGITS = 10  # digits in one request
MAX_PER_DIGIT = 32  # images of each
MAX_IMAGES = 100  # in all
MAX_BODY = 64 * 1024  # bytes of JSON
KEEP_RESULTS = 16  # results whose downloads stay available
# The CLI's defaults, so downloads are the files `sample` / `animate` write.
GRID_SCALE, GIF_SCALE, GIF_FPS, GIF_HOLD = 2, 4, 10.0, 1.0
STATIC = {"index.html": "text/html; charset=utf-8", "ui.css": "text/css; charset=utf-8",
          "ui.js": "text/javascript; charset=utf-8"}
DOWNLOADS = {".png": "image/png", ".gif": "image/gif", ".npz": "application/octet-stream"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


# --------------------------------------------------------------------------------- models

@dataclass(frozen=True)
class Model:
    """One entry of the page's model list."""

    id: str  # what the page sends back: "bundled:mnist", "run:NAME" or "file:PATH"
    label: str
    kind: str  # bundled, run or file
    path: Path
    name: str | None = None  # the bundled name


def find_models(models_dir: Path = MODELS_DIR, runs_dir: Path = RUNS_DIR,
                extra: ModelSource | None = None) -> list[Model]:
    """The bundled models, then the runs under ``runs_dir`` (newest first), then ``extra``
    (a --checkpoint that is neither). Only these can be asked for by the page."""
    from .pretrained import manifest

    found = [Model(f"bundled:{name}", f"{name} (bundled)", "bundled",
                   models_dir / entry.get("file", f"{name}/model.pt"), name)
             for name, entry in sorted(manifest(models_dir).items())]
    runs = sorted(Path(runs_dir).glob(f"*/checkpoints/{LAST}"),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    found += [Model(f"run:{p.parent.parent.name}", f"{p.parent.parent.name} (run)", "run", p)
              for p in runs]
    if extra is not None and not any(m.path.resolve() == extra.path.resolve() for m in found):
        found.append(Model(f"file:{extra.path}", f"{extra.path} (checkpoint)", "file",
                           extra.path, extra.name))
    return found


class App:
    """The server's state: which models it offers, loaded pipelines, finished results."""

    def __init__(self, *, checkpoint: str | Path | None = None, models_dir: Path = MODELS_DIR,
                 runs_dir: Path = RUNS_DIR, device: str = "auto"):
        from .pipeline import resolve_device
        from .pretrained import resolve_model

        self.models_dir, self.runs_dir = Path(models_dir), Path(runs_dir)
        self.device = resolve_device(device)
        self.extra = None
        if checkpoint is not None:
            self.extra = resolve_model(checkpoint, runs_dir=self.runs_dir,
                                       models_dir=self.models_dir)
        models = self.models()
        if not models:
            raise MnistdiffError(f"no models to offer: none bundled in {self.models_dir} and no "
                                 f"run under {self.runs_dir}; train one or pass --checkpoint")
        if self.extra is not None:
            self.default = next(m.id for m in models
                                if m.path.resolve() == self.extra.path.resolve())
        else:  # the page opens on the bundled model
            bundled = [m.id for m in models if m.kind == "bundled"]
            self.default = (f"bundled:{DEFAULT}" if f"bundled:{DEFAULT}" in bundled
                            else (bundled or [models[0].id])[0])
        self._pipes: OrderedDict[str, object] = OrderedDict()
        self._load_lock = threading.Lock()
        self.busy = threading.Lock()  # one sampling job at a time: the CPU has few cores
        self._results: OrderedDict[str, dict] = OrderedDict()
        self._results_lock = threading.Lock()
        self._next = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="mnistdiff-ui-")

    def close(self) -> None:
        self._tmp.cleanup()

    # -- models

    def models(self) -> list[Model]:
        return find_models(self.models_dir, self.runs_dir, self.extra)

    def model(self, model_id: object) -> Model:
        if model_id in (None, ""):
            model_id = self.default
        for m in self.models():
            if m.id == model_id:
                return m
        raise MnistdiffError(f"model: unknown model {model_id!r}; reload the page for the list")

    def pipeline(self, model_id: object):
        """The loaded Pipeline of a listed model (the last three stay loaded)."""
        from .checkpoint import load_checkpoint, model_from_checkpoint
        from .pipeline import Pipeline, checkpoint_info
        from .pretrained import bundled_checkpoint, model_card

        m = self.model(model_id)
        with self._load_lock:
            if m.id in self._pipes:
                self._pipes.move_to_end(m.id)
                return self._pipes[m.id]
            path = bundled_checkpoint(m.name, self.models_dir) if m.kind == "bundled" else m.path
            ckpt = load_checkpoint(path)
            model, config = model_from_checkpoint(ckpt, ema=True)
            info = checkpoint_info(ckpt, path, ema=True)
            if m.name is not None:
                info["name"], info["card"] = m.name, model_card(m.name, self.models_dir)
            info["source"] = ModelSource(path, m.name).describe()
            pipe = Pipeline(model, config, device=self.device, info=info)
            self._pipes[m.id] = pipe
            while len(self._pipes) > 3:
                self._pipes.popitem(last=False)
            return pipe

    def card(self, model_id: object) -> dict:
        """What the page shows about a model: facts, measured quality, sampler defaults."""
        import dataclasses

        from .samplers import SAMPLERS
        from .unet import count_parameters

        m = self.model(model_id)
        pipe = self.pipeline(m.id)
        info, cfg, d = pipe.info, pipe.config, pipe.config.diffusion
        card = info.get("card") or {}
        training = card.get("training") or {}
        rows = [
            ("model", info.get("source", str(m.path))),
            ("dataset", cfg.data.dataset),
            ("network", f"U-Net, {count_parameters(pipe.model):,} parameters, channels "
                        f"{list(cfg.model.channels)}"),
            ("diffusion", f"{d.schedule} schedule, T = {d.timesteps}, predicts {d.objective}"),
            ("training step", _fmt(info.get("step"))),
            ("images seen", _fmt(info.get("images_seen"))),
            ("training time", _duration(info.get("train_seconds"))),
            ("EMA weights", "yes" if info.get("ema") or m.kind == "bundled" else "no"),
            ("created", str(info.get("created") or "-")),
            ("mnistdiff version", str(info.get("version") or "-")),
        ]
        for key, label in (("command", "training command"), ("hardware", "hardware"),
                           ("wall_seconds", "wall time")):
            if training.get(key) is not None:
                value = training[key]
                rows.append((label, _duration(value) if key == "wall_seconds" else str(value)))
        metrics = [{"label": r.get("label", ""), "n": r.get("n"), "sampler": r.get("sampler"),
                    "steps": r.get("steps"), "guidance": r.get("guidance"),
                    "accuracy": r.get("accuracy"), "fid": r.get("fid"),
                    "real_fid": (r.get("real_floor") or {}).get("fid")}
                   for r in card.get("metrics", []) if isinstance(r, dict)]
        return {"id": m.id, "label": m.label, "kind": m.kind, "rows": rows, "metrics": metrics,
                "defaults": dataclasses.asdict(pipe.settings()), "timesteps": d.timesteps,
                "samplers": list(SAMPLERS), "classes": list(pipe.classes),
                "batch_size": cfg.sample.batch_size}

    # -- results and their downloads

    def keep(self, files: dict[str, bytes | Callable[[], bytes]]) -> str:
        """Store a result's downloads (bytes, or a function making them on first request)."""
        with self._results_lock:
            self._next += 1
            rid = f"r{self._next}"
            self._results[rid] = dict(files)
            while len(self._results) > KEEP_RESULTS:
                self._results.popitem(last=False)
            return rid

    def download(self, rid: str, name: str) -> bytes:
        with self._results_lock:
            files = self._results.get(rid)
            if files is None or name not in files:
                raise KeyError(name)
            item = files[name]
        if callable(item):  # made on demand (the GIF needs its own sampling run)
            with self.busy:
                data = item()
            with self._results_lock:
                files[name] = data
            return data
        return item

    def write(self, save: Callable[[Path], object], name: str) -> bytes:
        """The bytes a CLI ``save_*`` function writes for ``name``."""
        with tempfile.TemporaryDirectory(dir=self._tmp.name) as folder:
            path = Path(folder) / name
            save(path)
            return path.read_bytes()

    # -- jobs: validate everything first, then return the work to run

    def make(self, body: dict) -> Callable[[Callable[[str, dict], None]], dict]:
        """Generate: stream x_t and the predicted x0 of every step, then the grid."""
        pipe = self.pipeline(body.get("model"))
        s = _settings(pipe, body)
        digits = _digits(pipe, body.get("digits"))
        n = _count(body.get("n"), len(digits))

        def run(emit: Callable[[str, dict], None]) -> dict:
            from .evaluation import save_npz_samples
            from .visualize import image_grid, labelled_grid, save_image

            emit("start", {"steps": s.steps, "images": len(digits) * n})
            result = pipe.sample_live(digits, n, settings=s,
                                      callback=_stepper(emit, n))
            if len(digits) == 1:
                grid = image_grid(result.images, nrow=math.ceil(math.sqrt(n)), scale=GRID_SCALE)
            else:
                grid = labelled_grid(result.images, [pipe.classes[c] for c in digits],
                                     scale=GRID_SCALE)

            def gif() -> bytes:
                from .visualize import animation_frames, save_animation

                traj = pipe.trajectory(digits, settings=s)
                frames = animation_frames(traj.frames, traj.captions, scale=GIF_SCALE)
                return self.write(lambda p: save_animation(frames, p, fps=GIF_FPS,
                                                           hold=GIF_HOLD), "denoise.gif")

            rid = self.keep({
                "samples.png": self.write(lambda p: save_image(grid, p), "samples.png"),
                "samples.npz": self.write(lambda p: save_npz_samples(p, result.images,
                                                                     result.labels), "samples.npz"),
                "denoise.gif": gif,
            })
            flag = ("--digit " + str(digits[0]) if len(digits) == 1
                    else "--digits " + ",".join(map(str, digits)))
            return {
                "id": rid, "grid": _data_url(grid), "labels": result.labels.tolist(),
                "shape": list(result.images.shape),
                "summary": _summary(result, s, f"{len(digits)} digits x {n}" if len(digits) > 1
                                    else f"digit {digits[0]}"),
                "command": _command(pipe, f"sample {flag} --n {n}", s, "-o samples.png --npz "
                                    "samples.npz"),
                "files": [{"name": "samples.png", "label": "grid PNG"},
                          {"name": "denoise.gif", "label": "GIF"},
                          {"name": "samples.npz", "label": "NPZ"}],
            }

        return run

    def complete(self, body: dict) -> Callable[[Callable[[str, dict], None]], dict]:
        """Complete my drawing: inpainting that keeps the drawn pixels."""
        import numpy as np

        from .pipeline import _drawing

        pipe = self.pipeline(body.get("model"))
        s = _settings(pipe, body)
        digits = _digits(pipe, body.get("digits", body.get("digit")))
        n = _count(body.get("n"), len(digits))
        resample = _whole(body, "resample", 1)
        if not 1 <= resample <= 10:
            raise MnistdiffError(f"resample: got {resample}, must be between 1 and 10")
        pixels = _grid(body.get("pixels"), "drawing")
        keep = _grid(body.get("mask"), "mask")
        if not keep.any():
            raise MnistdiffError("the canvas is empty: draw part of a digit first")
        _drawing(pixels, keep)  # the library's checks, before any work

        def run(emit: Callable[[str, dict], None]) -> dict:
            from .evaluation import save_npz_samples
            from .visualize import image_grid, labelled_grid, save_image

            emit("start", {"steps": s.steps, "images": len(digits) * n})
            result = pipe.inpaint(pixels, keep, digits, n, settings=s, resample=resample,
                                  callback=_stepper(emit, n))
            if len(digits) == 1:
                grid = image_grid(result.images, nrow=math.ceil(math.sqrt(n)), scale=GRID_SCALE)
            else:
                grid = labelled_grid(result.images, [pipe.classes[c] for c in digits],
                                     scale=GRID_SCALE)
            drawing_png = image_grid(pixels[None], nrow=1, padding=0)
            mask_png = image_grid((keep * 255).astype(np.uint8)[None], nrow=1, padding=0)
            rid = self.keep({
                "completed.png": self.write(lambda p: save_image(grid, p), "completed.png"),
                "completed.npz": self.write(lambda p: save_npz_samples(
                    p, result.images, result.labels), "completed.npz"),
                "drawing.png": self.write(lambda p: save_image(drawing_png, p), "drawing.png"),
                "mask.png": self.write(lambda p: save_image(mask_png, p), "mask.png"),
            })
            flag = ("--digit " + str(digits[0]) if len(digits) == 1
                    else "--digits " + ",".join(map(str, digits)))
            extra = f" --resample {resample}" if resample > 1 else ""
            return {
                "id": rid, "labels": result.labels.tolist(), "shape": list(result.images.shape),
                "images": [_data_url(image_grid(im[None], nrow=1, padding=0))
                           for im in result.images],
                "grid": _data_url(grid),
                "summary": _summary(result, s, f"completing the drawing into {len(digits)} "
                                    f"digit{'s' if len(digits) > 1 else ''} x {n}"),
                "command": _command(pipe, f"sample {flag} --n {n}", s,
                                    f"--init-image drawing.png --mask mask.png{extra} "
                                    f"-o completed.png --npz completed.npz"),
                "files": [{"name": "completed.png", "label": "grid PNG"},
                          {"name": "completed.npz", "label": "NPZ"},
                          {"name": "drawing.png", "label": "drawing"},
                          {"name": "mask.png", "label": "mask"}],
            }

        return run

    def morph(self, body: dict) -> Callable[[], dict]:
        """Morph between two seeds or two digits: a strip and a GIF."""
        pipe = self.pipeline(body.get("model"))
        sampler = body.get("sampler") or None
        steps = _whole(body, "steps", None)
        guidance = _number(body, "guidance", None)
        frames = _whole(body, "frames", 8)
        digits = (_whole(body, "digit_a", None), _whole(body, "digit_b", None))
        seeds = (_whole(body, "seed_a", None), _whole(body, "seed_b", None))
        if None in digits:
            raise MnistdiffError("morph: choose both digits")
        if frames is not None and not 2 <= frames <= 32:
            raise MnistdiffError(f"frames: got {frames}, must be between 2 and 32")
        seeds = None if seeds == (None, None) else tuple(
            pipe.settings().seed if v is None else v for v in seeds)
        # Everything but the sampling itself is checked by interpolate before it starts.

        def run() -> dict:
            from .visualize import add_caption, image_grid, save_animation, save_image

            m = pipe.interpolate(digits, seeds, frames, sampler=sampler, steps=steps,
                                 guidance=guidance)
            strip = image_grid(m.images, nrow=len(m.images), scale=GRID_SCALE)
            names = [pipe.classes[c] for c in m.digits]
            pictures = [add_caption(image_grid(im[None], nrow=1, padding=0, scale=GIF_SCALE),
                                    f"{round(100 * a)}%", scale=2)
                        for im, a in zip(m.images, m.alphas)]
            loop = pictures + pictures[-2:0:-1]  # there and back again
            gif = self.write(lambda p: save_animation(loop, p, fps=GIF_FPS / 2, hold=0), "morph.gif")
            rid = self.keep({"morph.png": self.write(lambda p: save_image(strip, p), "morph.png"),
                             "morph.gif": gif})
            return {
                "id": rid, "strip": _data_url(strip), "frames": len(m.images),
                "gif": "data:image/gif;base64," + base64.b64encode(gif).decode(),
                "alphas": m.alphas, "digits": list(m.digits), "seeds": list(m.seeds),
                "summary": (f"{names[0]} (seed {m.seeds[0]}) to {names[1]} (seed {m.seeds[1]}): "
                            f"{len(m.images)} frames with {m.sampler}, {m.steps} steps, guidance "
                            f"{m.guidance:g}: {m.seconds:.1f} s"),
                "files": [{"name": "morph.png", "label": "strip PNG"},
                          {"name": "morph.gif", "label": "GIF"}],
            }

        return run


# --------------------------------------------------------------------------------- input

def _whole(body: dict, key: str, default: int | None) -> int | None:
    """An integer field of the request (a number or a numeric string), or ``default``."""
    value = body.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, bool):
        raise MnistdiffError(f"{key}: expected a whole number, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise MnistdiffError(f"{key}: expected a whole number, got {str(value)[:40]!r}") from None


def _number(body: dict, key: str, default: float | None) -> float | None:
    value = body.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, bool):
        raise MnistdiffError(f"{key}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise MnistdiffError(f"{key}: expected a number, got {str(value)[:40]!r}") from None


def _settings(pipe, body: dict):
    """Sampler, steps, guidance, eta, seed: the page's values checked by Pipeline.settings."""
    return pipe.settings(body.get("sampler") or None, _whole(body, "steps", None),
                         _number(body, "guidance", None), _number(body, "eta", None),
                         _whole(body, "seed", None))


def _digits(pipe, value: object) -> list[int]:
    """'0,3,7', 'all', a number or a list -> checked digits (Pipeline.check_digits)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all")):
        digits: list = list(range(len(pipe.classes)))
    elif isinstance(value, str):
        try:
            digits = [int(d) for d in value.replace(" ", "").split(",")]
        except ValueError:
            raise MnistdiffError(f"digits: expected comma-separated integers like 0,3,7, got "
                                 f"{value[:40]!r}") from None
    elif isinstance(value, list):
        digits = value
    else:
        digits = [value]
    if len(digits) > MAX_DIGITS:
        raise MnistdiffError(f"too many digits: {len(digits)} asked for, at most {MAX_DIGITS} at "
                             f"once")
    return pipe.check_digits([_whole({"digit": d}, "digit", None) for d in digits])


def _count(value: object, digits: int) -> int:
    n = _whole({"n": value}, "n", 4)
    if not 1 <= n <= MAX_PER_DIGIT:
        raise MnistdiffError(f"how many: got {n}, must be between 1 and {MAX_PER_DIGIT} per digit "
                             f"here (mnistdiff sample makes more)")
    if n * digits > MAX_IMAGES:
        raise MnistdiffError(f"too many images: {digits} digits x {n} = {n * digits}, at most "
                             f"{MAX_IMAGES} at once here (mnistdiff sample makes more)")
    return n


def _grid(value: object, name: str):
    """784 numbers (a 28x28 canvas, row by row) -> a (28, 28) array."""
    import numpy as np

    if not isinstance(value, list) or len(value) != 28 * 28:
        raise MnistdiffError(f"{name}: expected 784 pixels (28x28, row by row)")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 <= v <= 255
               for v in value):
        raise MnistdiffError(f"{name}: expected pixel values from 0 to 255")
    return np.asarray([round(v) for v in value], dtype=np.uint8).reshape(28, 28)


# --------------------------------------------------------------------------------- output

def _data_url(image) -> str:
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
                      "xt": _data_url(image_grid(info["x"], nrow=cols)),
                      "x0": _data_url(image_grid(info["x0"], nrow=cols))})

    return step


def _summary(result, s, what: str) -> str:
    return (f"{len(result.images)} images ({what}) with {s.sampler}, {s.steps} steps, guidance "
            f"{s.guidance:g}, seed {s.seed}: {result.nfe} NFE, {result.seconds:.1f} s")


def _command(pipe, head: str, s, tail: str) -> str:
    """The CLI command that writes the same files."""
    from .samplers import SAMPLERS

    name = pipe.info.get("name") or pipe.info.get("path")
    eta = f" --eta {s.eta:g}" if "eta" in SAMPLERS[s.sampler].options and s.eta else ""
    return (f"mnistdiff {head} --checkpoint {name} --sampler {s.sampler} --steps {s.steps} "
            f"--guidance {s.guidance:g}{eta} --seed {s.seed} {tail}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# --------------------------------------------------------------------------------- HTTP

def _static(name: str) -> bytes:
    return (resources.files("mnistdiff") / "assets" / "ui" / name).read_bytes()


class Handler(BaseHTTPRequestHandler):
    """The routes of the module docstring; ``server.app`` is the App."""

    server_version = "mnistdiff-ui"
    protocol_version = "HTTP/1.0"  # each response ends by closing: streams need no chunking
    timeout = 60  # seconds a socket read or write may block: a stalled page frees the server

    @property
    def app(self) -> App:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    # -- plumbing

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _common_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Referrer-Policy", "no-referrer")

    def _json(self, data: object, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, message: str, status: int = 400) -> None:
        self._json({"error": message}, status)

    def _host_ok(self) -> bool:
        """On loopback, only requests addressed to this machine by name (no DNS rebinding)."""
        if not getattr(self.server, "loopback", False):
            return True
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        return host in ("127.0.0.1", "localhost", "::1")

    def _body(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            raise MnistdiffError(f"the request must be JSON of at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError):
            raise MnistdiffError("the request is not valid JSON") from None
        if not isinstance(body, dict):
            raise MnistdiffError("the request must be a JSON object")
        return body

    def _internal(self) -> str:
        """Print the traceback in the terminal; the page gets one line."""
        print(f"mnistdiff ui: internal error in {self.command} {self.path}", file=sys.stderr)
        traceback.print_exc()
        return ("internal error (the traceback is in the terminal running mnistdiff ui); "
                "the server keeps serving")

    # -- routes

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._host_ok():
            return self._error("wrong Host header", HTTPStatus.FORBIDDEN)
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            if url.path in ("/", "/index.html"):
                return self._send(200, _static("index.html"), STATIC["index.html"])
            if url.path.startswith("/static/") and url.path[8:] in STATIC:
                name = url.path[8:]
                return self._send(200, _static(name), STATIC[name])
            if url.path == "/api/models":
                return self._json({"models": [{"id": m.id, "label": m.label, "kind": m.kind}
                                              for m in self.app.models()],
                                   "default": self.app.default})
            if url.path == "/api/card":
                return self._json(self.app.card(query.get("model")))
            parts = url.path.split("/")
            if len(parts) == 5 and parts[:3] == ["", "api", "file"]:
                rid, name = parts[3], parts[4]
                try:
                    data = self.app.download(rid, name)
                except KeyError:
                    return self._error("that result is gone (only the latest results are "
                                       "kept); make it again", HTTPStatus.NOT_FOUND)
                return self._send(200, data, DOWNLOADS.get(Path(name).suffix, "application/"
                                                           "octet-stream"),
                                  {"Content-Disposition": f'attachment; filename="{name}"'})
            if url.path == "/favicon.ico":
                return self._send(204, b"", "image/x-icon")
            return self._error(f"no page {url.path}", HTTPStatus.NOT_FOUND)
        except MnistdiffError as e:
            return self._error(str(e))
        except (BrokenPipeError, ConnectionResetError):
            return None
        except Exception:  # noqa: BLE001 (a bug must not stop the server)
            return self._error(self._internal(), HTTPStatus.INTERNAL_SERVER_ERROR)

    def do_POST(self) -> None:
        if not self._host_ok():
            return self._error("wrong Host header", HTTPStatus.FORBIDDEN)
        path = urlsplit(self.path).path
        jobs = {"/api/make": self.app.make, "/api/complete": self.app.complete}
        if path not in (*jobs, "/api/morph"):
            return self._error(f"no page {path}", HTTPStatus.NOT_FOUND)
        try:
            body = self._body()
            if path == "/api/morph":
                run = self.app.morph(body)
                with self.app.busy:
                    return self._json(run())
            work = jobs[path](body)  # validates: bad input is a 400 before the stream starts
        except MnistdiffError as e:
            return self._error(str(e))
        except (BrokenPipeError, ConnectionResetError):
            return None
        except Exception:  # noqa: BLE001
            return self._error(self._internal(), HTTPStatus.INTERNAL_SERVER_ERROR)
        self._stream(work)

    def _stream(self, work: Callable[[Callable[[str, dict], None]], dict]) -> None:
        """Server-sent events: start, one step per denoising step, then done (or error)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("X-Accel-Buffering", "no")
        self._common_headers()
        self.end_headers()

        def emit(event: str, data: dict) -> None:
            self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        try:
            with self.app.busy:
                result = work(emit)
            emit("done", result)
        except (BrokenPipeError, ConnectionResetError):
            return  # the page went away: the callback stopped the sampling
        except MnistdiffError as e:
            self._try_emit(emit, str(e))
        except Exception:  # noqa: BLE001
            self._try_emit(emit, self._internal())

    @staticmethod
    def _try_emit(emit, message: str) -> None:
        try:
            emit("error", {"error": message})
        except OSError:
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: App, host: str, port: int, verbose: bool = False):
        import ipaddress
        import socket

        self.app, self.verbose = app, verbose
        try:
            self.loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            self.loopback = host == "localhost"
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


def make_server(host: str = "127.0.0.1", port: int = 0, *, checkpoint: str | Path | None = None,
                models_dir: Path = MODELS_DIR, runs_dir: Path = RUNS_DIR, device: str = "auto",
                verbose: bool = False, preload: bool = True) -> Server:
    """A ready server (not yet serving): port 0 picks a free port (see ``server.url``).
    ``preload`` loads the default model now and draws one grid as a PNG (first-use costs of the
    image path; before 0.5 the first grid imported torchvision, ~2 s), so the first Generate
    streams at once."""
    app = App(checkpoint=checkpoint, models_dir=models_dir, runs_dir=runs_dir, device=device)
    if preload:
        import numpy as np

        from .visualize import image_grid

        app.pipeline(app.default)
        _data_url(image_grid(np.zeros((1, 28, 28), dtype=np.uint8), nrow=1))
    try:
        return Server(app, host, port, verbose)
    except OSError as e:
        app.close()
        raise MnistdiffError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None


def serve(server: Server, *, browser: bool = True, say: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C, optionally opening the page in the default browser."""
    say(f"mnistdiff ui: serving {server.url}  (model: {server.app.default}; Ctrl-C stops)")
    if not server.loopback:
        say("warning: not on loopback: anyone who can reach this machine can use the page")
    if browser:
        threading.Timer(0.3, webbrowser.open, args=(server.url,)).start()
    if threading.current_thread() is threading.main_thread():  # `kill` stops it cleanly too
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.app.close()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
