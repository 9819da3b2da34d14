"""``mnistdiff ui``: a local web page to make, watch, complete and morph digits.

Built on the standard library, not Gradio: Gradio pulls in hundreds of MB of dependencies,
loads fonts from a CDN and sends telemetry by default, and this project must run offline on a
small CPU. ``http.server.ThreadingHTTPServer`` serves one self-contained page (package data
under ``assets/ui/``: no CDN, no external fonts or scripts, enforced by a Content-Security-Policy),
a small JSON API, and server-sent events that stream every denoising step as PNG data URLs.
This module is HTTP only: every request becomes a ``jobs`` job (the CLI's), so a result's
downloads are the files that job wrote, and the page shows the command that writes them.

Routes::

    GET  /                          the page; GET /static/ui.css, /static/ui.js
    GET  /api/models                {"models": [{id, label, kind}], "default": id}
    GET  /api/card?model=ID         the model card: facts, measured quality, sampler defaults
    POST /api/make                  JSON in, events out: start, step..., done (or error)
    POST /api/complete              the same for completing a drawing (inpainting)
    POST /api/morph                 JSON in, JSON out: the strip and the GIF of a morph
    GET  /api/file/ID/NAME          a result's downloads (samples.png, samples.npz, ...)

Bad input gets HTTP 400 and {"error": "<one line>"} (or an ``error`` event once a stream has
started); the page shows the line, never a traceback, and the server keeps serving. A POST must
be JSON (``Content-Type: application/json``, which a cross-site form or a no-preflight fetch
cannot send) from this page's own origin, so other web pages cannot make this machine work.
"""

from __future__ import annotations

import base64
import io
import json
import numbers
import shutil
import signal
import socket
import sys
import tempfile
import threading
import traceback
import webbrowser
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from . import jobs
from .config import excerpt
from .errors import MnistdiffError
from .models import DEFAULT, MODELS_DIR, RUNS_DIR

MAX_BODY = 64 * 1024  # bytes of JSON
KEEP_RESULTS = 16  # results whose downloads stay available
BODY_SECONDS = 10  # a request body must arrive within this
STALL_SECONDS = 10  # a page that stops reading its stream for this long loses it
STATIC = {"index.html": "text/html; charset=utf-8", "ui.css": "text/css; charset=utf-8",
          "ui.js": "text/javascript; charset=utf-8"}
DOWNLOADS = {".png": "image/png", ".gif": "image/gif", ".npz": "application/octet-stream"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


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
        return {"id": model_id or self.default, "label": label,
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

        pipe = self.pipeline(body.get("model"))
        classes = _classes(pipe, body.get("digits", body.get("digit")))
        n = _whole(body, "n", 4)
        _page_count(pipe, n, len(classes))
        pixels, keep = _canvas(body.get("pixels"), "drawing"), _canvas(body.get("mask"), "mask")
        if not keep.any():
            raise MnistdiffError("the canvas is empty: draw part of a digit first")
        rid, folder = self.folder()
        job = jobs.SampleJob.from_values(
            classes=classes, n=n, out=folder / "completed.png", npz=folder / "completed.npz",
            drawing=(pixels, keep), resample=_whole(body, "resample", 1),
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
            done["images"] = [_data_url(image_grid(im[None], nrow=1, padding=0)) for im in images]
            return done

        return run

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
            return {"id": rid, "strip": _data_url(result.extra["strip"]), "frames": len(m.images),
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


def _done(rid: str, result: jobs.Result, files: list[tuple[str, str]]) -> dict:
    samples = result.extra["samples"]
    from PIL import Image

    return {"id": rid, "grid": _data_url(Image.open(result.files[0])),
            "labels": samples.labels.tolist(), "shape": list(samples.images.shape),
            "summary": result.summary, "command": result.command,
            "files": [{"name": name, "label": label} for name, label in files]}


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
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower().rstrip(".")
        return host in ("127.0.0.1", "localhost", "::1", self.server.host_name)

    def _same_origin(self) -> bool:
        """A POST from this page (or from no page at all: curl, scripts), not another site."""
        origin = self.headers.get("Origin")
        if origin is None:
            return True
        own = {f"http://{name}:{self.server.server_address[1]}" for name in
               ("127.0.0.1", "localhost", "[::1]", self.server.host_name)}
        return origin in own

    def _body(self) -> dict:
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise MnistdiffError("the request must be JSON (Content-Type: application/json)")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            raise MnistdiffError(f"the request must be JSON of at most {MAX_BODY} bytes")
        self.connection.settimeout(BODY_SECONDS)
        try:
            raw = self.rfile.read(length)
        except (TimeoutError, socket.timeout):
            raise MnistdiffError(f"the request body did not arrive within {BODY_SECONDS} s "
                                 f"(Content-Length {length})") from None
        finally:
            self.connection.settimeout(self.timeout)
        if len(raw) < length:
            raise MnistdiffError("the request body is shorter than its Content-Length")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise MnistdiffError("the request is not valid JSON") from None
        except RecursionError:
            raise MnistdiffError("the request is nested too deeply") from None
        if not isinstance(body, dict):
            raise MnistdiffError("the request must be a JSON object")
        return body

    def _internal(self) -> str:
        """Print the traceback in the terminal; the page gets one line."""
        print(f"mnistdiff ui: internal error in {self.command} {self.path}", file=sys.stderr)
        traceback.print_exc()
        return ("internal error (the traceback is in the terminal running mnistdiff ui); "
                "the server keeps serving")

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
                return self._send(200, _static(url.path[8:]), STATIC[url.path[8:]])
            if url.path == "/api/models":
                return self._json({"models": [{"id": m.id, "label": m.label, "kind": m.kind}
                                              for m in self.app.models()],
                                   "default": self.app.default})
            if url.path == "/api/card":
                return self._json(self.app.card(query.get("model")))
            parts = url.path.split("/")
            if len(parts) == 5 and parts[:3] == ["", "api", "file"]:
                return self._download(parts[3], parts[4])
            if url.path == "/favicon.ico":
                return self._send(204, b"", "image/x-icon")
            return self._error(f"no page {url.path[:60]}", HTTPStatus.NOT_FOUND)
        except MnistdiffError as e:
            return self._error(str(e))
        except (BrokenPipeError, ConnectionResetError):
            return None
        except Exception:  # noqa: BLE001 (a bug must not stop the server)
            return self._error(self._internal(), HTTPStatus.INTERNAL_SERVER_ERROR)

    def _download(self, rid: str, name: str) -> None:
        try:
            data = self.app.download(rid, name)
        except KeyError:
            return self._error("that result is gone (only the latest results are kept); make "
                               "it again", HTTPStatus.NOT_FOUND)
        return self._send(200, data, DOWNLOADS.get(Path(name).suffix, "application/octet-stream"),
                          {"Content-Disposition": f'attachment; filename="{name}"'})

    def do_POST(self) -> None:
        if not self._host_ok():
            return self._error("wrong Host header", HTTPStatus.FORBIDDEN)
        if not self._same_origin():
            return self._error("requests from other web sites are refused", HTTPStatus.FORBIDDEN)
        path = urlsplit(self.path).path
        routes = {"/api/make": self.app.make, "/api/complete": self.app.complete,
                  "/api/morph": self.app.morph}
        if path not in routes:
            return self._error(f"no page {path[:60]}", HTTPStatus.NOT_FOUND)
        try:
            work = routes[path](self._body())  # validates: bad input is a 400 before any work
            if path == "/api/morph":
                with self.app.busy:
                    return self._json(work())
        except MnistdiffError as e:
            return self._error(str(e))
        except (BrokenPipeError, ConnectionResetError):
            return None
        except Exception:  # noqa: BLE001
            return self._error(self._internal(), HTTPStatus.INTERNAL_SERVER_ERROR)
        self._stream(work)

    def _stream(self, work: Callable[[Callable[[str, dict], None]], dict]) -> None:
        """Server-sent events: start, one step per denoising step, then done (or error). A page
        that stops reading for STALL_SECONDS loses its stream, so it cannot hold the server."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("X-Accel-Buffering", "no")
        self._common_headers()
        self.end_headers()

        def emit(event: str, data: dict) -> None:
            self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        self.connection.settimeout(STALL_SECONDS)
        try:
            with self.app.busy:
                result = work(emit)
            emit("done", result)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, socket.timeout):
            return  # the page went away or stopped reading: the callback stopped the sampling
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
    request_queue_size = 128  # 20 pages opening at once queue for the one sampling job

    def __init__(self, app: App, host: str, port: int, verbose: bool = False):
        self.app, self.verbose = app, verbose
        family, self.loopback = _address(host)
        self.host_name = host.lower().strip("[]").rstrip(".")
        self.address_family = family
        super().__init__((host.strip("[]"), port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


def _address(host: str) -> tuple[int, bool]:
    """(address family, whether every address ``host`` names is loopback); one line for a
    name that does not resolve."""
    import ipaddress

    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError) as e:
        raise MnistdiffError(f"--host {host[:60]}: not an address of this machine ({e})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    return infos[0][0], all(a.is_loopback for a in addresses)


def make_server(host: str = "127.0.0.1", port: int = 0, *, checkpoint: str | Path | None = None,
                models_dir: Path = MODELS_DIR, runs_dir: Path = RUNS_DIR, device: str = "auto",
                verbose: bool = False, preload: bool = True) -> Server:
    """A ready server (not yet serving): port 0 picks a free port (see ``server.url``).
    ``preload`` loads the default model now and draws one grid as a PNG (first-use costs of the
    image path), so the first Generate streams at once."""
    app = App(checkpoint=checkpoint, models_dir=models_dir, runs_dir=runs_dir, device=device)
    try:
        if preload:
            import numpy as np

            from .visualize import image_grid

            app.pipeline(app.default)
            _data_url(image_grid(np.zeros((1, 28, 28), dtype=np.uint8), nrow=1))
        return Server(app, host, port, verbose)
    except OSError as e:
        app.close()
        raise MnistdiffError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
    except BaseException:
        app.close()
        raise


def run(host: str, port: int, *, browser: bool = True, say: Callable[[str], None] = print,
        models_dir: Path | None = None, **kwargs) -> None:
    """``mnistdiff ui``: make the server (``make_server``'s keywords), then serve until Ctrl-C."""
    serve(make_server(host, port, models_dir=models_dir or MODELS_DIR, **kwargs),
          browser=browser, say=say)


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
