"""``mnistdiff ui`` in a real browser: headless Chromium (the Debian package ``chromium``)
driven by Playwright (``pip install -e ".[ui-test]"``; no ``playwright install`` needed, the
system browser is used). Skips with the reason when either is missing.

With the tiny test model the digits are not legible, so these check what comes back (counts,
labels, shapes, the kept pixels), not what it looks like; docs/ui-*.png come from
scripts/ui_screenshots.py with a trained model."""

from __future__ import annotations

import base64
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from uihelpers import running_server

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
WAIT = 120_000  # ms: sampling shares two cores with whatever else runs


def chromium() -> str | None:
    for candidate in (os.environ.get("MNISTDIFF_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


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


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    with running_server(tiny_checkpoint, tmp_path_factory.mktemp("models")) as s:
        yield s


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1100, "height": 950})
    page = context.new_page()
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(server.url)
    page.wait_for_selector("body[data-ready='1']", timeout=WAIT)
    yield page
    context.close()
    elsewhere = [u for u in requested if not (u.startswith(server.url) or u.startswith("data:"))]
    assert not elsewhere, f"the page asked for {elsewhere}"  # offline: nothing from elsewhere


def decode(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def fill(page, form: str, **fields) -> None:
    for name, value in fields.items():
        field = page.locator(f"{form} [name={name}]")
        if field.evaluate("el => el.tagName") == "SELECT":
            field.select_option(str(value))
        else:
            field.fill(str(value))


def no_broken_images(page) -> bool:
    """No visible <img> shows a broken-image icon (no source, or one that did not load)."""
    return page.evaluate("""() => Array.from(document.images)
        .filter((img) => img.offsetParent !== null)
        .every((img) => img.complete && img.naturalWidth > 0)""")


def test_the_page_loads_without_placeholders_on_any_tab(page):
    for tab in ("Make", "Complete my drawing", "Morph", "Model card"):
        page.get_by_role("tab", name=tab).click()
        assert no_broken_images(page), tab


def test_live_make_regenerates_when_a_control_changes(page):
    """Live on (the default for a model of a few steps): changing the digit makes again, no
    click, and the grid shows the new digit."""
    from playwright.sync_api import expect

    fill(page, "#make-form", digits="3", n=2, steps=2, seed=0)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector("#make[data-state='done']", timeout=WAIT)
    page.locator("#live").check()
    result = page.locator("#make .result")
    page.locator("#make-form [name=digits]").fill("8")  # an input event, no click
    expect(result).to_have_attribute("data-labels", "8,8", timeout=WAIT)
    page.locator("#make-form [name=seed]").fill("5")
    expect(page.locator("#make .command")).to_contain_text("--seed 5", timeout=WAIT)
    expect(result).to_have_attribute("data-labels", "8,8", timeout=WAIT)


def test_the_page_loads_with_the_models_and_the_card(page):
    from playwright.sync_api import expect

    assert page.title() == "mnistdiff"
    options = page.locator("#model option").all_text_contents()
    assert options == ["mnist (bundled)", "run (run)"]
    assert page.locator("#model").input_value() == "bundled:mnist"
    assert page.locator("#make-form [name=steps]").input_value() == "10"  # the model's default
    page.get_by_role("tab", name="Model card").click()
    facts = page.locator("#card .facts").inner_text()
    assert "mnistdiff train -c configs/tiny.yaml" in facts and "dataset" in facts
    assert "45.600" in page.locator("#card .metrics").inner_text()
    page.locator("#model").select_option("run:run")
    expect(page.locator("#card .card-title")).to_have_text("run (run)", timeout=WAIT)
    assert page.locator("#card .no-metrics").is_visible()


def test_generate_streams_the_steps_and_returns_the_requested_digits(page, server):
    fill(page, "#make-form", digits="2,5", n=3, steps=6, seed=1)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector("#make[data-state='done']", timeout=WAIT)
    result = page.locator("#make .result")
    assert result.get_attribute("data-labels") == "2,2,2,5,5,5"
    assert result.get_attribute("data-shape") == "6,28,28"
    xt, x0 = (page.locator(f"#make .live .{c}").get_attribute("src") for c in ("xt", "x0"))
    assert decode(xt).shape == decode(x0).shape == (2 * 30 + 2, 3 * 30 + 2)  # the last step
    assert page.locator("#make .status").inner_text().startswith("done; first frame after")
    assert "6 images (2 digits x 3) with ddim, 6 steps" in result.inner_text()
    links = page.locator("#make .downloads a")
    assert links.all_text_contents() == ["Download grid PNG", "Download GIF", "Download NPZ"]
    npz = page.request.get(server.url.rstrip("/") + links.nth(2).get_attribute("href"))
    with np.load(io.BytesIO(npz.body())) as data:
        assert data["images"].shape == (6, 28, 28) and data["labels"].tolist() == [2] * 3 + [5] * 3
    with page.expect_download() as download:
        links.nth(0).click()
    assert download.value.suggested_filename == "samples.png"


def draw(page) -> None:
    """Two strokes on the canvas with the mouse: a bar and a downstroke (part of a 7)."""
    box = page.locator("#canvas").bounding_box()
    at = lambda cx, cy: (box["x"] + box["width"] * cx / 28, box["y"] + box["height"] * cy / 28)
    for start, end in (((7, 7), (21, 7)), ((20, 8), (15, 16))):
        page.mouse.move(*at(*start))
        page.mouse.down()
        page.mouse.move(*at(*end), steps=12)
        page.mouse.up()


def test_completing_a_drawing_keeps_the_drawn_pixels(page):
    page.get_by_role("tab", name="Complete my drawing").click()
    draw(page)
    drawing = page.evaluate("window.mnistdiff.drawing()")
    pixels = np.array(drawing["pixels"]).round().astype(np.uint8).reshape(28, 28)
    keep = np.array(drawing["mask"], bool).reshape(28, 28)
    assert 20 < keep.sum() < 200 and pixels[keep].max() == 255
    fill(page, "#complete-form", digits=7, n=3, steps=5)
    page.get_by_role("button", name="Complete").click()
    page.wait_for_selector("#complete[data-state='done']", timeout=WAIT)
    assert page.locator("#complete .result").get_attribute("data-labels") == "7,7,7"
    images = [decode(src) for src in
              page.locator("#complete .completions img").evaluate_all("els => els.map(e => e.src)")]
    assert len(images) == 3
    for image in images:
        assert image.shape == (28, 28)
        assert np.array_equal(image[keep], pixels[keep])  # the strokes, pixel for pixel
    assert "--init-image drawing.png --mask mask.png" in page.locator("#complete .command").inner_text()


def test_the_morph_strip_appears(page):
    page.get_by_role("tab", name="Morph").click()
    fill(page, "#morph-form", digit_a=1, digit_b=7, seed_a=0, seed_b=3, frames=5, steps=4)
    page.get_by_role("button", name="Morph").click()
    page.wait_for_selector("#morph[data-state='done']", timeout=WAIT)
    strip = page.locator("#morph .result .strip")
    assert strip.is_visible()
    assert strip.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [2 * (5 * 30 + 2), 64]
    assert page.locator("#morph .result .gif").get_attribute("src").startswith("data:image/gif")
    assert page.locator("#morph .result").get_attribute("data-frames") == "5"
    assert "1 (seed 0) to 7 (seed 3): 5 frames with ddim" in page.locator("#morph .summary").inner_text()


def test_bad_input_shows_a_message_and_the_server_keeps_serving(page, server):
    error = page.locator("#make .error")
    for fields, message in (
        ({"digits": "0,1,2,3,4,5,6,7,8,9,1"}, "too many digits: 11 asked for, at most 10 at once"),
        ({"digits": "3", "steps": 0}, "steps: got 0, must be an integer between 1 and 50"),
        ({"steps": 10, "n": 500}, "how many: got 500, must be between 1 and 64"),
    ):
        fill(page, "#make-form", **fields)
        page.get_by_role("button", name="Generate").click()
        page.wait_for_selector("#make[data-state='error']", timeout=WAIT)
        assert error.is_visible() and message in error.inner_text()
        assert "Traceback" not in page.content()
        assert no_broken_images(page)  # the last result's pictures do not stay under the message
        assert not page.locator("#make .result").is_visible()
        fill(page, "#make-form", n=1)
    page.get_by_role("tab", name="Complete my drawing").click()
    page.get_by_role("button", name="Complete").click()  # nothing drawn
    page.wait_for_selector("#complete[data-state='error']", timeout=WAIT)
    assert "the canvas is empty: draw part of a digit first" in page.locator("#complete .error").inner_text()

    assert page.request.get(server.url + "api/models").ok  # still serving
    page.get_by_role("tab", name="Make").click()
    fill(page, "#make-form", digits="4", n=2, steps=3)
    page.get_by_role("button", name="Generate").click()
    page.wait_for_selector("#make[data-state='done']", timeout=WAIT)
    assert not error.is_visible()
    assert page.locator("#make .result").get_attribute("data-labels") == "4,4"
