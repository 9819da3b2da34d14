"""``mnistdiff ui``: a local web page to make, watch, complete and morph digits.

Built on the standard library, not Gradio: Gradio pulls in hundreds of MB of dependencies,
loads fonts from a CDN and sends telemetry by default, and this project must run offline on a
small CPU. ``http.server.ThreadingHTTPServer`` serves one self-contained page (package data
under ``assets/ui/``: no CDN, no external fonts or scripts, enforced by a Content-Security-Policy),
a small JSON API, and server-sent events that stream every denoising step as PNG data URLs.
This module is HTTP only: what a request asks for is ``page.App``'s, which makes it a
``jobs`` job (the CLI's), so a result's downloads are the files that job wrote.

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

import json
import signal
import socket
import sys
import threading
import traceback
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from .errors import MnistdiffError
from .models import MODELS_DIR, RUNS_DIR
from .page import App, data_url

MAX_BODY = 64 * 1024  # bytes of JSON
BODY_SECONDS = 10  # a request body must arrive within this
STALL_SECONDS = 10  # a page that stops reading its stream for this long loses it
STATIC = {"index.html": "text/html; charset=utf-8", "ui.css": "text/css; charset=utf-8",
          "ui.js": "text/javascript; charset=utf-8"}
DOWNLOADS = {".png": "image/png", ".gif": "image/gif", ".npz": "application/octet-stream"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


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
        self.connection.settimeout(self.server.body_seconds)
        try:
            raw = self.rfile.read(length)
        except (TimeoutError, socket.timeout):
            raise MnistdiffError(f"the request body did not arrive within "
                                 f"{self.server.body_seconds:g} s "
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

        self.connection.settimeout(self.server.stall_seconds)
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
    body_seconds, stall_seconds = BODY_SECONDS, STALL_SECONDS

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
            data_url(image_grid(np.zeros((1, 28, 28), dtype=np.uint8), nrow=1))
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
