"""``mnistdiff ui``'s server without a browser: the JSON API, the event stream, the downloads
(the files the CLI writes), bad input, and that the page loads nothing from elsewhere."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mnistdiff.cli import app
from mnistdiff.ui import STATIC, _static
from uihelpers import events, request, running_server

runner = CliRunner()


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    with running_server(tiny_checkpoint, tmp_path_factory.mktemp("models")) as s:
        yield s


def api(server, path: str, body=None, **kw):
    return request(server.url.rstrip("/") + path, body, **kw)


def decode(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def cli(*args) -> None:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_models_lists_bundled_then_runs_and_opens_on_the_bundled_model(server):
    status, _, body = api(server, "/api/models")
    data = json.loads(body)
    assert status == 200 and data["default"] == "bundled:mnist"
    assert [(m["id"], m["kind"]) for m in data["models"]] == [("bundled:mnist", "bundled"),
                                                             ("run:run", "run")]


def test_the_model_card_shows_training_and_measured_quality(server):
    card = json.loads(api(server, "/api/card?model=bundled:mnist")[2])
    rows = dict(card["rows"])
    assert rows["training command"] == "mnistdiff train -c configs/tiny.yaml"
    assert rows["dataset"] == "mnist" and rows["training step"] == "20"
    assert "bundled model 'mnist'" in rows["model"]
    assert [{k: v for k, v in m.items() if k != "text"} for m in card["metrics"]] == [{"label": "tiny test", "n": 100, "sampler": "ddim", "steps": 10,
                                "guidance": 2.0, "accuracy": 0.123, "fid": 45.6, "real_fid": 0.7}]
    assert card["defaults"] == {"sampler": "ddim", "steps": 10, "guidance": 2.0, "eta": 0.0,
                                "seed": 0, "guidance_interval": [0.0, 1.0], "spacing": "linspace"}
    assert card["timesteps"] == 50 and len(card["classes"]) == 10
    run = json.loads(api(server, "/api/card?model=run:run")[2])
    assert run["metrics"] == [] and "checkpoint" in dict(run["rows"])["model"]


def test_make_streams_every_step_then_gives_the_files_the_cli_writes(server, tiny_checkpoint,
                                                                     tmp_path):
    settings = {"digits": "1,4", "n": 3, "steps": 4, "seed": 2, "sampler": "ddpm",
                "guidance": "1.5"}
    status, headers, raw = api(server, "/api/make", {"model": "bundled:mnist", **settings})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    stream = events(raw)
    assert [e for e, _ in stream] == ["start", "step", "step", "step", "step", "done"]
    steps = [d for e, d in stream if e == "step"]
    assert [s["i"] for s in steps] == [1, 2, 3, 4] and [s["t"] for s in steps] == [49, 33, 16, 0]
    assert decode(steps[0]["xt"]).shape == decode(steps[0]["x0"]).shape == (2 * 30 + 2, 3 * 30 + 2)
    done = stream[-1][1]
    assert done["labels"] == [1, 1, 1, 4, 4, 4] and done["shape"] == [6, 28, 28]
    assert "6 images (2 digits x 3) with ddpm, 4 steps, guidance 1.5, seed 2" in done["summary"]
    assert done["command"].startswith("mnistdiff sample --checkpoint mnist --digits 1,4 --n 3 "
                                      "--sampler ddpm --steps 4 --guidance 1.5 ")
    assert {f["name"] for f in done["files"]} == {"samples.png", "samples.npz", "denoise.gif"}

    flags = ["--digits", "1,4", "--sampler", "ddpm", "--steps", 4, "--seed", 2, "--guidance", 1.5]
    cli("sample", "-k", tiny_checkpoint, *flags, "--n", 3, "-o", tmp_path / "cli.png", "--npz",
        tmp_path / "cli.npz")
    cli("animate", "-k", tiny_checkpoint, *flags, "-o", tmp_path / "cli.gif")
    got = {f: api(server, f"/api/file/{done['id']}/{f}") for f in
           ("samples.png", "samples.npz", "denoise.gif")}
    assert all(status == 200 for status, _, _ in got.values())
    assert got["samples.png"][2] == (tmp_path / "cli.png").read_bytes()
    assert got["denoise.gif"][2] == (tmp_path / "cli.gif").read_bytes()
    assert got["denoise.gif"][1]["Content-Disposition"] == 'attachment; filename="denoise.gif"'
    with np.load(io.BytesIO(got["samples.npz"][2])) as page, np.load(tmp_path / "cli.npz") as ours:
        assert np.array_equal(page["images"], ours["images"])
        assert np.array_equal(page["labels"], ours["labels"])
    assert np.array_equal(decode(done["grid"]), np.asarray(Image.open(tmp_path / "cli.png")))


def canvas() -> tuple[list[int], list[int]]:
    image = np.zeros((28, 28), dtype=np.uint8)
    image[6:9, 7:21] = 255
    image[9:18, 16:19] = 170
    return image.ravel().tolist(), (image > 0).astype(int).ravel().tolist()


def test_complete_keeps_the_drawing_and_the_cli_command_reproduces_it(server, tiny_checkpoint,
                                                                      tmp_path):
    pixels, mask = canvas()
    status, _, raw = api(server, "/api/complete", {"digits": "7", "n": 3, "steps": 5, "seed": 4,
                                                   "pixels": pixels, "mask": mask})
    stream = events(raw)
    assert status == 200 and [e for e, _ in stream][-1] == "done"
    assert sum(e == "step" for e, _ in stream) == 5
    done = stream[-1][1]
    assert done["labels"] == [7, 7, 7] and done["shape"] == [3, 28, 28]
    keep = np.array(mask, bool).reshape(28, 28)
    drawn = np.array(pixels, np.uint8).reshape(28, 28)
    for url in done["images"]:
        image = decode(url)
        assert image.shape == (28, 28) and (image[keep] == drawn[keep]).all()
    files = {f: api(server, f"/api/file/{done['id']}/{f}")[2] for f in
             ("drawing.png", "mask.png", "completed.npz")}
    for name in ("drawing.png", "mask.png"):
        (tmp_path / name).write_bytes(files[name])
    cli("sample", "-k", tiny_checkpoint, "--digit", 7, "--n", 3, "--steps", 5, "--seed", 4,
        "--init-image", tmp_path / "drawing.png", "--mask", tmp_path / "mask.png",
        "-o", tmp_path / "c.png", "--npz", tmp_path / "c.npz")
    with np.load(io.BytesIO(files["completed.npz"])) as page, np.load(tmp_path / "c.npz") as ours:
        assert np.array_equal(page["images"], ours["images"])
    assert "--init-image drawing.png --mask mask.png" in done["command"]


def test_morph_gives_a_strip_and_a_gif(server):
    status, _, raw = api(server, "/api/morph", {"digit_a": 1, "digit_b": 7, "seed_a": 0,
                                                "seed_b": 5, "frames": 5, "steps": 4})
    data = json.loads(raw)
    assert status == 200 and data["frames"] == 5 and data["digits"] == [1, 7]
    assert decode(data["strip"]).shape == (2 * 32, 2 * (5 * 30 + 2))
    gif = base64.b64decode(data["gif"].split(",", 1)[1])
    assert iio.imread(gif, index=None).shape[0] == 5 + 3  # there and back
    assert api(server, f"/api/file/{data['id']}/morph.gif")[2] == gif


@pytest.mark.parametrize("path,body,message", [
    ("/api/make", {"digits": "0,1,2,3,4,5,6,7,8,9,0"}, "too many digits: 11 asked for"),
    ("/api/make", {"digits": "1,12"}, "digit: got 12, must be an integer between 0 and 9"),
    ("/api/make", {"digits": "seven"}, "digits: expected comma-separated integers"),
    ("/api/make", {"steps": "0"}, "steps: got 0, must be an integer between 1 and 50"),
    ("/api/make", {"steps": 51}, "steps: got 51"),
    ("/api/make", {"steps": "ten"}, "steps: expected a whole number, got 'ten'"),
    ("/api/make", {"n": 0}, "how many: got 0, must be between 1 and 64"),
    ("/api/make", {"digits": "all", "n": 20}, "too many images: 10 digits x 20 = 200"),
    ("/api/make", {"guidance": -1}, "guidance: got -1.0, must be between 0 and 100"),
    ("/api/make", {"guidance": 1e9}, "guidance: got 1000000000.0, must be between 0 and 100"),
    ("/api/make", {"sampler": ["ddim"]}, "sampler: expected a name, got ['ddim']"),
    ("/api/make", {"sampler": "euler"}, "unknown sampler 'euler'; choose one of ddpm, ddim"),
    ("/api/make", {"seed": -3}, "seed: got -3"),
    ("/api/make", {"model": "file:/etc/passwd"}, "model: unknown model 'file:/etc/passwd'"),
    ("/api/make", ["not", "an", "object"], "the request must be a JSON object"),
    ("/api/make", b"{oops", "the request is not valid JSON"),
    ("/api/complete", {"digits": "7", "pixels": [0] * 784, "mask": [0] * 784},
     "the canvas is empty: draw part of a digit first"),
    ("/api/complete", {"digits": "7", "pixels": [0] * 10, "mask": [1] * 10},
     "drawing: expected 784 pixels"),
    ("/api/complete", {"digits": "7", "pixels": [999] * 784, "mask": [1] * 784},
     "drawing: expected pixel values from 0 to 255"),
    ("/api/complete", {"digits": "7", "pixels": [9] * 784, "mask": [1] * 784},
     "the mask keeps every pixel"),
    ("/api/morph", {"digit_a": 3, "digit_b": 3, "seed_a": 1, "seed_b": 1},
     "both ends are digit 3 with seed 1"),
    ("/api/morph", {"digit_a": 3, "digit_b": 4, "sampler": "ddpm"}, "deterministic sampler"),
    ("/api/morph", {"digit_a": 3, "digit_b": 4, "frames": 99}, "frames: got 99"),
    ("/api/morph", {"digit_a": 3}, "morph: choose both digits"),
])
def test_bad_input_is_one_clear_line_and_the_server_keeps_serving(server, path, body, message):
    status, headers, raw = api(server, path, body)
    assert status == 400 and headers["Content-Type"] == "application/json"
    error = json.loads(raw)["error"]
    assert message in error and "\n" not in error and "Traceback" not in error
    assert api(server, "/api/models")[0] == 200


def test_a_bug_is_a_500_with_one_line_and_the_traceback_stays_in_the_terminal(server, monkeypatch,
                                                                              capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(type(server.app.pipeline("bundled:mnist")), "batches", broken)
    status, _, raw = api(server, "/api/make", {"steps": 2})  # the error arrives in the stream
    assert status == 200 and events(raw)[-1][0] == "error"
    assert "internal error" in events(raw)[-1][1]["error"]
    monkeypatch.setattr(server.app, "morph", broken)
    status, _, raw = api(server, "/api/morph", {"digit_a": 1, "digit_b": 2})
    assert status == 500 and "internal error" in json.loads(raw)["error"]
    assert "RuntimeError: boom" in capsys.readouterr().err
    monkeypatch.undo()
    assert api(server, "/api/make", {"steps": 2})[0] == 200


def test_closing_the_page_mid_stream_stops_the_work_and_frees_the_server(server):
    host, port = urlsplit(server.url).netloc.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/api/make", json.dumps({"digits": "all", "n": 8, "steps": 50}),
                  {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and b"event: start" in response.readline()
    response.close()
    conn.close()  # the page went away
    status, _, raw = api(server, "/api/make", {"digits": "3", "n": 1, "steps": 2})
    assert status == 200 and events(raw)[-1][0] == "done"


def test_the_page_loads_nothing_from_elsewhere(server):
    status, headers, html = api(server, "/")
    assert status == 200 and b"<title>mnistdiff</title>" in html
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    for name in STATIC:
        text = _static(name).decode()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name
        assert "@import" not in text and "fonts.g" not in text
    for path in ("/static/ui.js", "/static/ui.css"):
        assert api(server, path)[0] == 200
    for path in ("/static/../ui.py", "/static/index.htm", "/api/file/r999/x.png", "/nope"):
        status, _, raw = api(server, path)
        assert status == 404 and "error" in json.loads(raw)


def test_requests_for_another_host_name_are_refused(server):
    """A web page elsewhere cannot reach the loopback server through DNS rebinding."""
    status, _, raw = api(server, "/api/models", headers={"Host": "attacker.example:80"})
    assert status == 403
    assert api(server, "/api/models", headers={"Host": "localhost"})[0] == 200


def test_the_package_data_glob_ships_the_page():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"assets/ui/*"' in text
