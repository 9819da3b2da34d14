"""Shared by the ``mnistdiff ui`` tests: a server on a free loopback port, in a thread, that
offers a bundled "mnist" (the tiny test model bundled into a temporary folder) and the tiny run."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

from mnistdiff import models
from mnistdiff.ui import make_server

CARD = {
    "training": {"command": "mnistdiff train -c configs/tiny.yaml", "config_file": "configs/tiny.yaml",
                 "steps": 20, "images_seen": 320, "hardware": "test CPU", "wall_seconds": 4.0,
                 "mnistdiff_version": "0.1.0"},
    "metrics": [{"label": "tiny test", "n": 100, "sampler": "ddim", "steps": 10, "guidance": 2.0,
                 "accuracy": 0.123, "fid": 45.6, "real_floor": {"fid": 0.7}}],
}


def bundle_tiny(tiny_checkpoint: Path, models_dir: Path) -> Path:
    models.bundle(tiny_checkpoint, "mnist", CARD, models_dir=models_dir)
    return models_dir


@contextlib.contextmanager
def running_server(tiny_checkpoint: Path, models_dir: Path, **kwargs):
    """Yields the Server; its URL is ``server.url``. Stopped and cleaned up on exit."""
    server = make_server("127.0.0.1", 0, models_dir=bundle_tiny(tiny_checkpoint, models_dir),
                         runs_dir=Path(tiny_checkpoint).parents[2], device="cpu", **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        server.app.close()
        thread.join(10)


def request(url: str, body: object | None = None, headers: dict | None = None,
            method: str | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a GET, or of a POST when ``body`` is given (JSON-encoded
    unless it is bytes, sent as application/json unless ``headers`` say otherwise); HTTP
    errors are returned, not raised."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = dict(headers or {})
    if data is not None:  # what the page's fetch sends
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def events(raw: bytes) -> list[tuple[str, dict]]:
    """Parse a server-sent-events body into (event, data) pairs."""
    out = []
    for chunk in raw.decode().split("\n\n"):
        if not chunk.strip():
            continue
        fields = dict(line.split(": ", 1) for line in chunk.splitlines())
        out.append((fields["event"], json.loads(fields["data"])))
    return out
