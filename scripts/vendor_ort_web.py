"""Put onnxruntime-web's browser runtime into the package, for `mnistdiff export web`.

    python scripts/vendor_ort_web.py                 # npm pack the pinned version (needs npm)
    python scripts/vendor_ort_web.py --from DIR      # or take it from node_modules/onnxruntime-web

The pinned version and its npm integrity (sha512) are `mnistdiff.export.ORT_WEB`; a tarball
whose integrity differs is refused. Three files of its dist/ are kept, in
mnistdiff/assets/web/ort/ (git-ignored, shipped in the wheel as package data):

    ort.wasm.min.mjs                  the JavaScript API, WASM backend only (about 50 KB)
    ort-wasm-simd-threaded.mjs        the Emscripten glue that loads the WASM (about 25 KB)
    ort-wasm-simd-threaded.wasm.gz    the runtime itself, gzipped: 14.8 MB -> 3.8 MB; the page
                                      inflates it with the browser's DecompressionStream

and ort.json (the version, the integrity, each file's SHA-256) with LICENSE (MIT). Run it
before building a release wheel; CI runs it before the tests (.ci/run). Without these files
`mnistdiff export web` says to run this script, and tests/test_export.py skips its web tests.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mnistdiff.export import ORT_WEB, RUNTIME_DIR  # noqa: E402  (after the path)

KEEP = {"dist/ort.wasm.min.mjs": "ort.wasm.min.mjs",
        "dist/ort-wasm-simd-threaded.mjs": "ort-wasm-simd-threaded.mjs",
        "dist/ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm.gz"}

LICENSE = """onnxruntime-web {version} (the npm package of that name), files from its
dist/ folder; the .wasm is gzipped, otherwise unchanged.

MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def npm_pack(version: str, folder: Path) -> bytes:
    """The registry's tarball of onnxruntime-web@version, through the npm client."""
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("error: npm is not installed (it fetches onnxruntime-web from the npm registry)")
    done = subprocess.run([npm, "pack", f"onnxruntime-web@{version}", "--json",
                           "--pack-destination", str(folder)], capture_output=True, text=True,
                          cwd=folder, timeout=600)
    if done.returncode != 0:
        sys.exit(f"error: npm pack failed: {done.stderr.strip()[-500:]}")
    name = json.loads(done.stdout)[0]["filename"]
    return (folder / name).read_bytes()


def from_tarball(data: bytes) -> dict[str, bytes]:
    got = integrity(data)
    if got != ORT_WEB["integrity"]:
        sys.exit(f"error: onnxruntime-web {ORT_WEB['version']}'s tarball has integrity {got}, "
                 f"not the pinned {ORT_WEB['integrity']}")
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.split("/", 1)[-1]  # package/dist/... -> dist/...
            if name in KEEP and member.isfile():
                files[name] = tar.extractfile(member).read()
            if name == "package.json":
                version = json.loads(tar.extractfile(member).read())["version"]
    if version != ORT_WEB["version"] or set(files) != set(KEEP):
        sys.exit(f"error: the tarball is onnxruntime-web {version} with {sorted(files)}")
    return files


def from_folder(folder: Path) -> dict[str, bytes]:
    """The files of an installed node_modules/onnxruntime-web (npm checked its integrity)."""
    version = json.loads((folder / "package.json").read_text())["version"]
    if version != ORT_WEB["version"]:
        sys.exit(f"error: {folder} is onnxruntime-web {version}; the pinned version is "
                 f"{ORT_WEB['version']} (npm install onnxruntime-web@{ORT_WEB['version']})")
    return {name: (folder / name).read_bytes() for name in KEEP}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="source", type=Path, metavar="DIR",
                    help="an installed onnxruntime-web package folder instead of npm pack")
    ap.add_argument("--out", type=Path, default=RUNTIME_DIR, help="where to put the files")
    args = ap.parse_args()
    if args.source is not None:
        files = from_folder(args.source)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            files = from_tarball(npm_pack(ORT_WEB["version"], Path(tmp)))
    args.out.mkdir(parents=True, exist_ok=True)
    listing = {}
    for name, target in KEEP.items():
        data = files[name]
        if target.endswith(".gz"):  # reproducible: no name, no time stamp in the header
            data = gzip.compress(data, compresslevel=9, mtime=0)
        (args.out / target).write_bytes(data)
        listing[target] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        print(f"wrote {args.out / target} ({len(data):,} bytes)")
    (args.out / "LICENSE").write_text(LICENSE.format(version=ORT_WEB["version"]))
    (args.out / "ort.json").write_text(json.dumps({**ORT_WEB, "files": listing}, indent=2) + "\n")
    print(f"wrote {args.out / 'ort.json'}")


if __name__ == "__main__":
    main()
