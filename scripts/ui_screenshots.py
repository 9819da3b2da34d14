"""Screenshots of ``mnistdiff ui`` for the README (docs/ui-make.png, ui-complete.png,
ui-morph.png, ui-card.png), taken in headless Chromium with Playwright; the time to the first
streamed frame at the page's default settings, and with a live model (a few-step student) the
time from a control's change to the new page of 60 digits (the median of 5 changes).

    python scripts/ui_screenshots.py --checkpoint mnist --out docs

Needs the [ui-test] extra and the system chromium (/usr/bin/chromium or $MNISTDIFF_CHROMIUM).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from mnistdiff.ui import make_server

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
WAIT = 600_000


def live_ms(page) -> int:
    """Change the seed five times, each after the last page is done: the median time from the
    change to the new grid, as the page measures it (its data-made-ms)."""
    import statistics
    import time

    times = []
    for seed in range(1, 6):
        before = page.locator("#make .command").inner_text()
        page.locator("#make-form [name=seed]").fill(str(seed))
        deadline = time.time() + 60
        while page.locator("#make .command").inner_text() == before and time.time() < deadline:
            time.sleep(0.02)
        page.wait_for_selector("#make[data-state='done']", timeout=WAIT)
        times.append(int(page.locator("#make").get_attribute("data-change-ms")))
    return round(statistics.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", "-k", default=None, help="model NAME or PATH")
    parser.add_argument("--out", default="docs", type=Path, help="folder for the PNGs")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="runs to list (default: none, only --checkpoint)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    exe = os.environ.get("MNISTDIFF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="mnistdiff-shots-"))
    server = make_server(checkpoint=args.checkpoint, runs_dir=runs, device=args.device)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.goto(server.url)
            page.wait_for_selector("body[data-ready='1']", timeout=WAIT)

            # Make, at the page's defaults (first-frame time), then a fuller grid to show.
            page.get_by_role("button", name="Generate").click()
            page.wait_for_selector("#make[data-state='done']", timeout=WAIT)
            first = page.locator("#make .result").get_attribute("data-first-frame-ms")
            print(f"first frame at the page's defaults: {first} ms")
            page.locator("#make-form [name=digits]").fill("all")
            page.locator("#make-form [name=n]").fill("6")
            page.get_by_role("button", name="Generate").click()
            page.wait_for_selector("#make[data-state='done']", timeout=WAIT)
            if page.locator("#live").is_checked():  # a control's change makes the page again
                print(f"live: a new page of 60 digits {live_ms(page)} ms after a change "
                      f"(median of 5 seed changes)")
            page.screenshot(path=str(args.out / "ui-make.png"), full_page=True)

            # Complete my drawing: the top bar of a 7, completed four ways.
            page.get_by_role("tab", name="Complete my drawing").click()
            box = page.locator("#canvas").bounding_box()
            at = lambda cx, cy: (box["x"] + box["width"] * cx / 28,
                                 box["y"] + box["height"] * cy / 28)
            for start, end in (((7, 7), (20, 7)), ((20, 7), (16, 14))):
                page.mouse.move(*at(*start))
                page.mouse.down()
                page.mouse.move(*at(*end), steps=15)
                page.mouse.up()
            page.locator("#complete-form [name=digits]").select_option("7")
            page.locator("#complete-form [name=n]").fill("6")
            page.locator("#complete-form [name=resample]").fill("2")
            page.get_by_role("button", name="Complete").click()
            page.wait_for_selector("#complete[data-state='done']", timeout=WAIT)
            page.screenshot(path=str(args.out / "ui-complete.png"), full_page=True)

            # Morph: 1 into 7.
            page.get_by_role("tab", name="Morph").click()
            page.locator("#morph-form [name=frames]").fill("10")
            page.get_by_role("button", name="Morph").click()
            page.wait_for_selector("#morph[data-state='done']", timeout=WAIT)
            page.screenshot(path=str(args.out / "ui-morph.png"), full_page=True)
            page.get_by_role("tab", name="Model card").click()
            page.screenshot(path=str(args.out / "ui-card.png"), full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
        server.app.close()
        if args.runs_dir is None:
            shutil.rmtree(runs, ignore_errors=True)
    for name in ("ui-make.png", "ui-complete.png", "ui-morph.png", "ui-card.png"):
        print(f"wrote {args.out / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
