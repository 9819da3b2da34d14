"""`mnistdiff export onnx|web`: the ONNX round trip, the JSON beside it, the refusals, and the
exported page in headless Chromium (Debian's chromium through Playwright, as test_ui_browser.py).

Skips, saying why, without onnx/onnxruntime (pip install -e ".[export]"), without
onnxruntime-web's files (python scripts/vendor_ort_web.py, which needs npm), or without
Playwright or Chromium."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from mnistdiff import export
from mnistdiff.errors import MnistdiffError

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
WAIT = 120_000  # ms: the page shares two cores with whatever else runs

onnxruntime = pytest.importorskip("onnxruntime", reason='onnxruntime is not installed (pip '
                                  'install -e ".[export]")')
pytest.importorskip("onnx", reason='onnx is not installed (pip install -e ".[export]")')


def ort_run(path: Path, x, t, y) -> np.ndarray:
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["out"], {"x": x.numpy(), "t": t.numpy(), "y": y.numpy()})[0]


def round_trip(onnx_path: Path, model, T: int, k: int) -> float:
    """The largest |onnxruntime - PyTorch| at batches 1 and 37 (the dynamic batch)."""
    g = torch.Generator().manual_seed(123)
    worst = 0.0
    for b in (1, 37):
        x = torch.randn(b, 1, 28, 28, generator=g)
        t, y = torch.randint(0, T, (b,), generator=g), torch.randint(0, k + 1, (b,), generator=g)
        with torch.no_grad():
            want = model(x, t, y).numpy()
        got = ort_run(onnx_path, x, t, y)
        assert got.shape == want.shape == (b, 1, 28, 28)
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


@pytest.mark.parametrize("which", ["tiny", "mnist-fast"])
def test_the_onnx_file_computes_what_pytorch_does(which, tiny_checkpoint, tmp_path):
    from mnistdiff.models import read

    spec = tiny_checkpoint if which == "tiny" else "mnist-fast"
    result = export.export_onnx(spec, tmp_path / "model.onnx")
    assert result.files == [tmp_path / "model.onnx", tmp_path / "model.json"]
    assert "max abs difference" in result.summary
    loaded = read(spec)
    c = loaded.config
    diff = round_trip(tmp_path / "model.onnx", loaded.model, c.diffusion.timesteps,
                      c.model.num_classes)
    assert diff < 1e-4
    import onnx

    assert onnx.load(str(tmp_path / "model.onnx")).opset_import[0].version == export.OPSET


@pytest.mark.parametrize("which", ["tiny", "mnist-fast"])
def test_the_json_holds_what_a_sampler_needs(which, tiny_checkpoint, tmp_path):
    from mnistdiff.diffusion import make_schedule
    from mnistdiff.models import read
    from mnistdiff.samplers import step_grid

    spec = tiny_checkpoint if which == "tiny" else "mnist-fast"
    export.export_onnx(spec, tmp_path / "m.onnx")
    meta = json.loads((tmp_path / "m.json").read_text())
    c = read(spec).config
    s, d = c.sample, c.diffusion
    assert meta["format"] == export.FORMAT and meta["model"]["file"] == "m.onnx"
    assert meta["objective"] == d.objective == ("eps" if which == "tiny" else "v")
    assert meta["T"] == d.timesteps and meta["null_label"] == 10
    assert meta["classes"] == [str(i) for i in range(10)]
    assert meta["sample"] == {"sampler": s.sampler, "steps": s.steps, "spacing": s.spacing,
                              "eta": s.eta, "clip_x0": s.clip_x0, "guidance": s.guidance,
                              "guidance_interval": list(s.guidance_interval), "seed": s.seed}
    grid = step_grid(make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end),
                     s.steps, s.spacing)
    assert meta["grid"] == {"timesteps": grid.ts, "alphas": grid.alphas, "sigmas": grid.sigmas}
    assert len(meta["grid"]["alphas"]) == s.steps + 1 and meta["grid"]["sigmas"][-1] == 0
    assert meta["verified"]["max_abs_diff"] <= meta["verified"]["tolerance"] == export.TOLERANCE
    data = (tmp_path / "m.onnx").read_bytes()
    assert meta["model"]["bytes"] == len(data)
    if which == "mnist-fast":
        assert meta["grid"]["timesteps"] == [249, 187, 124, 61]
        assert (meta["sample"]["sampler"], meta["sample"]["guidance"]) == ("ddim", 1.0)


def test_an_export_that_does_not_match_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    from mnistdiff.models import read

    other = read("mnist-fast").model
    with torch.no_grad():
        other.head[-1].bias.add_(0.01)  # a different network: off by 0.01 everywhere
    real = export.to_onnx
    monkeypatch.setattr(export, "to_onnx", lambda model, config: real(other, config))
    with pytest.raises(MnistdiffError, match=r"does not match PyTorch: max abs difference"):
        export.export_onnx("mnist-fast", tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_without_onnxruntime_one_line_says_how_to_get_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(MnistdiffError, match=r'pip install "mnistdiff\[export\]"'):
        export.export_onnx("mnist-fast", tmp_path / "model.onnx")


def test_missing_browser_runtime_files_say_how_to_get_them(tmp_path):
    with pytest.raises(MnistdiffError, match="vendor_ort_web.py"):
        export.runtime_files(tmp_path)


def test_the_web_export_refuses_a_model_the_page_cannot_sample(tmp_path):
    if not (export.RUNTIME_DIR / "ort.json").exists():
        pytest.skip("onnxruntime-web's files are missing (python scripts/vendor_ort_web.py)")
    with pytest.raises(MnistdiffError, match="DDIM at eta 0, and mnist samples with dpmpp"):
        export.export_web("mnist", tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_the_cli_export_prints_the_files(tmp_path):
    from typer.testing import CliRunner

    from mnistdiff.cli import app

    r = CliRunner().invoke(app, ["export", "onnx", "-k", "mnist-fast", "-o",
                                 str(tmp_path / "fast.onnx")])
    assert r.exit_code == 0, r.output
    assert f"wrote {tmp_path / 'fast.onnx'}" in r.output and "max abs difference" in r.output
    r = CliRunner().invoke(app, ["export", "onnx", "-k", "mnist-fast", "-o",
                                 str(tmp_path / "fast.png")])
    assert r.exit_code == 1


def test_the_onnxruntime_backend_samples_the_same_digits():
    import mnistdiff

    a = mnistdiff.load("mnist-fast", device="cpu")
    b = mnistdiff.load("mnist-fast", backend="onnxruntime")
    assert b.backend == "onnxruntime" and b.device.type == "cpu"
    x, y = a.sample([3, 8], n=4, seed=5), b.sample([3, 8], n=4, seed=5)
    assert (x.images.int() - y.images.int()).abs().max() <= 2  # float rounding, one level or so
    with pytest.raises(MnistdiffError, match="unknown backend"):
        mnistdiff.load("mnist-fast", backend="tensorrt")


def test_the_benchmark_script_runs(tiny_checkpoint):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_onnx.py"), "-k",
                          str(tiny_checkpoint), "--batches", "2", "--repeats", "1", "--json"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = json.loads(out.stdout)
    assert row["batch"] == 2 and row["torch_s"] > 0 and row["onnxruntime_s"] > 0
    assert row["max_abs_diff"] < 1e-3


# --------------------------------------------------------------------------------- the page

def chromium() -> str | None:
    for candidate in (os.environ.get("MNISTDIFF_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextmanager
def static_server(folder: Path):
    """python -m http.server in a thread: what docs/export.md says is enough."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def sites(tiny_checkpoint, tmp_path_factory):
    """mnist-fast's site and the tiny model's (eps-prediction, guidance 2, 10 steps), side by
    side under one static server."""
    try:
        export.runtime_files()
    except MnistdiffError as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("sites")
    result = export.export_web("mnist-fast", root / "fast")
    assert result.files[0] == root / "fast" / "index.html"
    export.export_web(tiny_checkpoint, root / "tiny")
    with static_server(root) as url:
        yield url, root


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip('playwright is not installed (pip install -e ".[ui-test]")')
    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium browser (apt-get install chromium, or set MNISTDIFF_CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=ARGS)
        yield b
        b.close()


@contextmanager
def opened(browser, url: str):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    requested, errors = [], []
    page.on("request", lambda r: requested.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=WAIT)
    try:
        yield page
    finally:
        context.close()
    elsewhere = [u for u in requested if not u.startswith(url.rsplit("/", 2)[0])]
    assert not elsewhere, f"the page asked for {elsewhere}"  # offline: nothing from elsewhere
    assert not errors, errors


@pytest.fixture(scope="module")
def fast(browser, sites):
    url, _ = sites
    with opened(browser, url + "fast/") as page:
        yield page


def wait_done(page, labels: str) -> None:
    page.wait_for_function(
        "(labels) => document.querySelector('#grid').dataset.labels === labels && "
        "document.querySelector('#grid').dataset.shows === 'done' && "
        "document.body.dataset.state === 'done'", arg=labels, timeout=WAIT)


def grid_images(page) -> np.ndarray:
    """The canvas read back (toDataURL), cut into its 28x28 digits: uint8 (N, 28, 28)."""
    from PIL import Image

    canvas = page.locator("#grid")
    meta = canvas.evaluate("c => c.dataset")
    url = canvas.evaluate("c => c.toDataURL('image/png')")
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("L"))
    n, cols, cell, gap = (int(meta[k]) for k in ("count", "cols", "cell", "gap"))
    step = cell + gap
    return np.stack([rgb[(i // cols) * step:(i // cols) * step + cell,
                         (i % cols) * step:(i % cols) * step + cell] for i in range(n)])


def test_the_page_draws_the_digit_picked(fast):
    from mnistdiff.evaluation import load_classifier, run_classifier

    assert fast.locator("#message").text_content() == ""
    assert fast.evaluate("document.body.dataset.firstGridMs") is not None
    classifier = load_classifier("mnist")
    for digit in (3, 7, 0):
        fast.locator("#digits label").nth(digit).click()  # an input event: no button to press
        wait_done(fast, ",".join([str(digit)] * 16))
        images = grid_images(fast)
        assert images.shape == (16, 28, 28)
        _, predicted = run_classifier(classifier, torch.from_numpy(images.copy()))
        assert (predicted == digit).mean() >= 0.9, (digit, predicted)


def test_count_and_seed_change_the_grid_and_the_scrub_bar_shows_the_steps(fast):
    fast.locator("#digits label").nth(5).click()
    fast.locator("#count").fill("7")
    wait_done(fast, ",".join(["5"] * 7))
    first = grid_images(fast)
    fast.locator("#seed").fill("42")
    fast.wait_for_function("document.querySelector('#grid').dataset.seed === '42' && "
                           "document.body.dataset.state === 'done'", timeout=WAIT)
    assert not np.array_equal(grid_images(fast), first)
    fast.locator("#seed").fill("0")
    fast.wait_for_function("document.querySelector('#grid').dataset.seed === '0' && "
                           "document.body.dataset.state === 'done'", timeout=WAIT)
    assert np.array_equal(grid_images(fast), first)  # seeded: the same seed, the same digits
    scrub = fast.locator("#scrub")
    assert fast.locator("#denoise").is_visible() and scrub.get_attribute("max") == "4"
    scrub.fill("0")
    assert "pure noise at t = 249" in fast.locator("#scrub-label").text_content()
    scrub.fill("2")
    assert "after step 2 of 4" in fast.locator("#scrub-label").text_content()


def test_bad_counts_get_a_message_and_the_page_keeps_working(fast):
    for bad in ("0", "10000", "2.5", "-3"):
        fast.locator("#count").fill(bad)
        fast.wait_for_function("document.body.dataset.state === 'error'", timeout=WAIT)
        assert "is not a whole number from 1 to 100" in fast.locator("#message").text_content()
        assert fast.evaluate("1 + 1") == 2  # not frozen
    fast.locator("#count").fill("3")
    fast.locator("#seed").fill("99999999999")
    assert "Seed" in fast.locator("#message").text_content()
    fast.locator("#seed").fill("1")
    fast.locator("#digits label").nth(2).click()
    wait_done(fast, "2,2,2")
    assert fast.locator("#message").text_content() == ""


@pytest.mark.parametrize("steps", [1, 2])
def test_the_page_follows_the_students_step_count(steps, browser, sites, tmp_path):
    """A 1- or 2-step student (mnist-fast's weights re-bundled with fewer steps: the shape of
    the student being trained) needs no change: the page reads its steps from model.json."""
    from mnistdiff import models

    models.bundle(models.resolve("mnist-fast").path, f"fast-{steps}", {}, sample={"steps": steps},
                  models_dir=tmp_path / "models")
    site = tmp_path / "site"
    export.export_web(tmp_path / "models" / f"fast-{steps}" / "model.pt", site)
    meta = json.loads((site / "model.json").read_text())
    assert len(meta["grid"]["timesteps"]) == steps and len(meta["grid"]["alphas"]) == steps + 1
    with static_server(site) as url, opened(browser, url) as page:
        wait_done(page, ",".join(["0"] * 16))
        assert page.locator("#denoise").is_visible() == (steps > 1)
        if steps > 1:
            assert page.locator("#scrub").get_attribute("max") == str(steps)
        about = page.locator("#about").text_content()
        assert ("one network pass" if steps == 1 else f"{steps} steps") in about


def test_the_page_opened_as_a_file_says_to_serve_it(browser, sites):
    _, root = sites
    context = browser.new_context()
    page = context.new_page()
    page.goto((root / "fast" / "index.html").as_uri())
    page.wait_for_function("document.body.dataset.state === 'error'", timeout=WAIT)
    assert "python -m http.server" in page.locator("#message").text_content()
    context.close()


def python_ddim(spec, noise: np.ndarray, labels: list[int]) -> np.ndarray:
    """samplers.ddim on the same starting noise, as the pipeline runs it (guidance included)."""
    import mnistdiff
    from mnistdiff.samplers import ddim, step_grid

    pipe = mnistdiff.load(spec, device="cpu")
    s = pipe.settings()
    y = torch.tensor(labels)
    grid = step_grid(pipe.schedule, s.steps, s.spacing)
    with torch.inference_mode():
        x0 = ddim(pipe._eps_fn(y, s), torch.from_numpy(noise).clone(), grid,
                  clip_x0=pipe.config.sample.clip_x0, eta=0.0)
    return x0.numpy()


@pytest.mark.parametrize("which", ["fast", "tiny"])
def test_the_page_sampler_is_samplers_ddim(which, browser, sites, tiny_checkpoint):
    """The same starting noise through the page's sampler (onnxruntime-web) and samplers.ddim
    (PyTorch) gives the same images: v-prediction at guidance 1 (mnist-fast), and
    eps-prediction with guidance 2 on the doubled batch (the tiny model)."""
    url, _ = sites
    labels = [1, 4, 9]
    noise = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    with opened(browser, url + which + "/") as page:
        got = page.evaluate("""async ([labels, noise]) => {
            const p = window.mnistdiffPage;
            const r = await p.sample(labels, 0, p.token, null, noise);
            return Array.from(r.x);
        }""", [labels, noise.ravel().tolist()])
    got = np.asarray(got, np.float32).reshape(noise.shape)
    want = python_ddim("mnist-fast" if which == "fast" else tiny_checkpoint, noise, labels)
    assert np.abs(got - want).max() < 2e-3
