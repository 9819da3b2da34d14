"""Time the exported web page in headless Chromium (the Debian package, driven by Playwright).

    python scripts/bench_web.py -k mnist-fast                # export to a temp folder, then time
    python scripts/bench_web.py --site site/ --repeats 5 --json

For each mode (a plain static server, as python -m http.server: one thread; and one that sends
the COOP and COEP headers, so the page is cross-origin isolated and onnxruntime-web may use
--threads threads) it measures, median of --repeats:

- first grid: ms from opening the page (navigation start) to the first finished grid of 16;
- control change: ms from a digit button's click to the finished grid of 16 new digits (and to
  the first step's preview); then the count up by one (one new image) and back to a digit
  shown before (its 16 kept, 3 new);
- the sampler alone (the page's own function, no drawing) at batches 1, 16 and 100.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import statistics
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
SAMPLE_JS = """async (b) => {
  const p = window.mnistdiffPage, labels = Array.from({length: b}, (_, i) => i % 10);
  const start = performance.now();
  await p.sample(labels, 0, p.token);
  return performance.now() - start;
}"""


@contextmanager
def serve(folder: Path, isolated: bool):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def end_headers(self):
            if isolated:
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            super().end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def wait(page, labels: str) -> None:
    page.wait_for_function(
        "(labels) => document.querySelector('#grid').dataset.labels === labels && "
        "document.querySelector('#grid').dataset.shows === 'done' && "
        "document.body.dataset.state === 'done'", arg=labels, timeout=120_000)


def click(page, selector: str, labels: str) -> None:
    page.locator(selector).click()
    wait(page, labels)


def measure(browser, url: str, repeats: int, batches: list[int]) -> dict:
    firsts, changes, previews, marks, grows, revisits = [], [], [], [], [], []
    sampler = {b: [] for b in batches}
    for r in range(repeats):
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=120_000)
        error = page.locator("#message").text_content()
        if error:
            raise SystemExit(f"the page says: {error}")
        firsts.append(float(page.evaluate("document.body.dataset.firstGridMs")))
        marks.append(page.evaluate("window.mnistdiffPage.marks"))
        threads = page.evaluate("window.mnistdiffPage.threads")
        for d in (1, 2, 3, 4, 5, 6):  # a click on a digit not shown before: 16 new images
            click(page, f"#digits label >> nth={d}", f"{d}," * 15 + f"{d}")
        for n in (17, 18, 19):  # the count up by one: one new image, the others kept
            page.locator("#count").fill(str(n))
            wait(page, ",".join(["6"] * n))
        click(page, "#digits label >> nth=2", ",".join(["2"] * 19))  # back to a digit: 16 kept
        timings = page.evaluate("window.mnistdiffPage.timings")[1:]
        changes += [t["ms"] for t in timings if t["computed"] == 16]
        previews += [t["previewMs"] for t in timings if t["computed"] == 16]
        grows += [t["ms"] for t in timings if t["computed"] == 1]
        revisits += [t["ms"] for t in timings if t["computed"] == 3 and t["count"] == 19]
        for b in batches:
            sampler[b].append(page.evaluate(SAMPLE_JS, b))
        context.close()
    med = statistics.median
    return {"threads": threads, "first_grid_ms": med(firsts), "change_ms": med(changes),
            "fetched_ms": med([m["fetched"] for m in marks]),
            "session_ms": med([m["session"] for m in marks]),
            "change_preview_ms": med(previews) if previews else None,
            "count_up_one_ms": med(grows), "back_to_a_digit_ms": med(revisits),
            "sampler_ms": {b: med(v) for b, v in sampler.items()},
            "runs": {"first_grid_ms": firsts, "change_ms": changes}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", "--checkpoint", default="mnist-fast")
    ap.add_argument("--site", type=Path, help="an exported site (default: export one)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,16,100")
    ap.add_argument("--threads", type=int, default=2,
                    help="onnxruntime-web's threads when isolated (the page's ?threads=)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        site = args.site
        if site is None:
            from mnistdiff.export import export_web

            site = Path(tmp) / "site"
            export_web(args.checkpoint, site)
        weight = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        rows = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=ARGS)
            modes = (("plain server", False, ""),
                     ("cross-origin isolated", True, f"?threads={args.threads}"))
            for mode, isolated, query in modes:
                with serve(site, isolated) as url:
                    rows[mode] = measure(browser, url + query, args.repeats,
                                         [int(b) for b in args.batches.split(",")])
            browser.close()
    if args.json:
        print(json.dumps({"bytes": weight, "modes": rows}, indent=2))
        return
    print(f"{site}: {weight / 1e6:.2f} MB; median of {args.repeats} page loads each")
    for mode, r in rows.items():
        per = ", ".join(f"batch {b}: {ms:.0f} ms" for b, ms in r["sampler_ms"].items())
        print(f"{mode} ({r['threads']} thread(s)): files fetched and inflated "
              f"{r['fetched_ms']:.0f} ms, session ready {r['session_ms']:.0f} ms, "
              f"first grid {r['first_grid_ms']:.0f} ms, "
              f"control change -> 16 digits {r['change_ms']:.0f} ms (first step shown after "
              f"{r['change_preview_ms']:.0f} ms); count up by one {r['count_up_one_ms']:.0f} ms, "
              f"back to a digit (16 kept, 3 new) {r['back_to_a_digit_ms']:.0f} ms; sampler "
              f"alone {per}")


if __name__ == "__main__":
    main()
