"""Hostile and careless input at the entry points: one line, exit 1, nothing written, nothing
left half-done; the page refuses other sites' requests and cannot be held by a slow client."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from mnistdiff.cli import app
from mnistdiff.errors import MnistdiffError
from uihelpers import events, request, running_server

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def fails(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code != 0 and isinstance(result.exception, MnistdiffError), result.output
    return str(result.exception)


# --------------------------------------------------------------------------------- files

def test_outputs_that_collide_through_individual_are_refused(tiny_checkpoint, tmp_path):
    folder = tmp_path / "each"
    message = fails("sample", "-k", tiny_checkpoint, "--digit", 3, "--n", 2,
                    "-o", folder / "00000-3.png", "--individual", folder)
    assert "is also one of the --individual images" in message
    assert not folder.exists()
    # a grid beside the images under another name is fine
    ok = runner.invoke(app, ["sample", "-k", str(tiny_checkpoint), "--digit", "3", "--n", "2",
                             "--steps", "2", "-o", str(folder / "grid.png"), "--individual",
                             str(folder)])
    assert ok.exit_code == 0, ok.output
    assert sorted(p.name for p in folder.iterdir()) == ["00000-3.png", "00001-3.png", "grid.png"]


@pytest.mark.parametrize("option", ["--init-image", "--mask", "--samples"])
def test_a_fifo_as_an_input_is_refused_at_once(tiny_checkpoint, tmp_path, option):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    if option == "--samples":
        args = ["evaluate", "--samples", fifo, "--out", tmp_path / "r.json"]
    elif option == "--mask":
        (tmp_path / "x.png").write_bytes(b"")
        args = ["sample", "-k", tiny_checkpoint, "--init-image", tmp_path / "x.png",
                "--mask", fifo]
    else:
        args = ["sample", "-k", tiny_checkpoint, "--init-image", fifo]
    assert "is a FIFO; give a regular file" in fails(*args)


def test_a_read_only_output_is_not_replaced(tiny_checkpoint, tmp_path):
    grid = tmp_path / "s.png"
    grid.write_bytes(b"keep me")
    grid.chmod(0o444)
    assert "is read-only" in fails("sample", "-k", tiny_checkpoint, "-o", grid)
    assert grid.read_bytes() == b"keep me"


def test_an_output_name_as_long_as_the_file_system_allows_is_written(tiny_checkpoint, tmp_path):
    name = "x" * 251 + ".png"  # 255 bytes: the temp file beside it has a short name of its own
    result = runner.invoke(app, ["sample", "-k", str(tiny_checkpoint), "--digit", "1", "--n", "1",
                                 "--steps", "2", "-o", str(tmp_path / name)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / name).is_file()
    assert "too long" in fails("sample", "-k", tiny_checkpoint,
                               "-o", tmp_path / ("y" * 300 + ".png"))


def test_an_unwritable_folder_is_found_before_any_work(tiny_checkpoint, tmp_path, monkeypatch):
    from mnistdiff import files

    folder = tmp_path / "ro"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode: False if Path(p) == folder else
                        real(p, mode))
    assert "cannot create files in" in fails("sample", "-k", tiny_checkpoint,
                                             "-o", folder / "s.png")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_sampling_leaves_nothing_behind(tiny_checkpoint, tmp_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistdiff", "sample", "-k", str(tiny_checkpoint), "--all", "--n",
         "400", "--steps", "50", "--batch-size", "50", "--npz", str(out / "big.npz"),
         "-o", str(out / "big.png"), "--individual", str(out / "ind")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not list(out.rglob("*.tmp")) and time.time() < deadline:  # writing has started
        time.sleep(0.2)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr  # as Ctrl-C
    assert not out.exists(), sorted(out.rglob("*"))  # no temp files, no folders it made


# --------------------------------------------------------------------------------- memory

def test_a_batch_that_cannot_fit_is_refused_before_sampling(tiny_checkpoint, tmp_path,
                                                            monkeypatch):
    from mnistdiff import files

    monkeypatch.setattr(files, "available_memory", lambda: 2 * 2**30)  # a 2 GB machine
    message = fails("sample", "-k", tiny_checkpoint, "--all", "--n", "5000", "--batch-size",
                    "65536", "--npz", tmp_path / "s.npz")
    assert "of memory but only" in message and "in batches of 50,000" in message
    assert "--batch-size: got 10000000" in fails("sample", "-k", tiny_checkpoint,
                                                 "--batch-size", 10_000_000)
    monkeypatch.setattr(files, "available_memory", lambda: 50 * 2**20)
    assert "of memory but only" in fails("animate", "-k", tiny_checkpoint, "--all", "--scale", 16,
                                         "--steps", 40, "--frames", 41, "-o", tmp_path / "a.gif")


@pytest.mark.parametrize("device", ["cuda:-1", "meta", "cpu:3", "xla", "cuda:99", "gpu", "  "])
def test_every_device_name_is_a_device_or_one_line(tiny_checkpoint, device):
    assert "device" in fails("sample", "-k", tiny_checkpoint, "--device", device)


# --------------------------------------------------------------------------------- the page

@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    with running_server(tiny_checkpoint, tmp_path_factory.mktemp("models")) as s:
        s.body_seconds, s.stall_seconds = 1.0, 2.0
        yield s


def api(server, path, body=None, **kw):
    return request(server.url.rstrip("/") + path, body, **kw)


def test_another_sites_requests_are_refused(server):
    """A form or fetch from another page can send text/plain without a preflight, and its
    Origin is not ours: neither runs a job."""
    body = json.dumps({"digits": "3", "n": 1, "steps": 2}).encode()
    status, _, raw = api(server, "/api/make", body, headers={"Content-Type": "text/plain"})
    assert status == 400 and "must be JSON (Content-Type: application/json)" in raw.decode()
    status, _, raw = api(server, "/api/morph", body, headers={
        "Content-Type": "application/json", "Origin": "https://evil.example"})
    assert status == 403 and "other web sites" in raw.decode()
    own = server.url.rstrip("/")
    status, _, _ = api(server, "/api/make", body, headers={"Content-Type": "application/json",
                                                           "Origin": own})
    assert status == 200


def test_wrong_types_and_deep_nesting_are_one_line(server):
    for body, message in (({"sampler": ["ddim"]}, "sampler: expected a name"),
                          ({"seed": {"a": 1}}, "seed: expected a whole number"),
                          ({"guidance": 1e9}, "guidance: got 1000000000.0"),
                          (b"[" * 30_000 + b"]" * 30_000, "nested too deeply")):
        status, _, raw = api(server, "/api/make", body)
        assert status == 400 and message in json.loads(raw)["error"], raw[:200]


def test_a_lying_content_length_is_refused_quickly(server):
    host, port = urlsplit(server.url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /api/make HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 5000\r\n\r\n{\"n\": 1}")
        start, reply = time.time(), b""
        while chunk := s.recv(65536):
            reply += chunk
        reply = reply.decode()
    assert time.time() - start < 10 and " 400 " in reply.splitlines()[0]
    assert "did not arrive within 1 s" in reply


def test_a_page_that_stops_reading_cannot_hold_the_server(server):
    host, port = urlsplit(server.url).netloc.split(":")
    stuck = socket.create_connection((host, int(port)), timeout=60)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = json.dumps({"digits": "all", "n": 8, "steps": 50}).encode()
    stuck.sendall(b"POST /api/make HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: "
                  b"application/json\r\nContent-Length: " + str(len(body)).encode() +
                  b"\r\n\r\n" + body)  # ... and never reads the stream
    time.sleep(1)
    start = time.time()
    status, _, raw = api(server, "/api/make", {"digits": "3", "n": 1, "steps": 2})
    stuck.close()
    assert status == 200 and events(raw)[-1][0] == "done"
    assert time.time() - start < 30


def test_twenty_pages_at_once_all_get_their_digits(server):
    results = []

    def one(i):
        results.append(api(server, "/api/make", {"digits": str(i % 10), "n": 1, "steps": 2}))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 20 and all(status == 200 and events(raw)[-1][0] == "done"
                                      for status, _, raw in results)


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("localhost", True),
                                           ("::1", True), ("127.0.0.2", True),
                                           ("0.0.0.0", False)])
def test_loopback_spellings(host, loopback):
    from mnistdiff.ui import _address

    try:
        assert _address(host)[1] is loopback
    except MnistdiffError:  # a machine without IPv6
        assert host == "::1"


def test_a_host_that_is_not_this_machine_is_one_line(tmp_path):
    message = fails("ui", "--no-browser", "--host", "no-such-host.invalid", "--runs-dir",
                    tmp_path)
    assert "--host no-such-host.invalid" in message
