"""Exporting a model for other runtimes: an ONNX file, and a static web page that samples in the
browser with onnxruntime-web (no server, nothing fetched from elsewhere).

    export_onnx(spec, "model.onnx")   model.onnx and model.json beside it
    export_web(spec, "site/")         index.html, app.js, model.onnx.gz, model.json, _headers,
                                      ort/ (onnxruntime-web's files, from package data)

The ONNX file is the U-Net alone: inputs ``x`` float32 (B, C, 28, 28) in [-1, 1], ``t`` int64
(B,) timestep indices, ``y`` int64 (B,) labels (``num_classes`` is the null label); output
``out`` float32 (B, C, 28, 28), what the network predicts (ε or v: ``objective`` in the JSON).
The batch is dynamic. Opset 17 (:data:`OPSET`): there the TorchScript exporter writes each
GroupNorm as Reshape, InstanceNormalization, Reshape, Mul, Add, operators every onnxruntime
build runs with its own kernels (the CPU one and the browser's WASM one alike). ONNX's own
GroupNormalization operator came in opset 18 with a scale and bias per group, not per channel
as in PyTorch, and was redefined (per channel) in opset 21; 17 keeps the export off both
definitions and inside what older runtimes load, at no cost here (the exporter writes the same
graph at 18 and 21).

Every export is checked before anything is written: onnxruntime (CPU) and PyTorch run the
same random inputs at batches 1 and 37 (:data:`VERIFY_BATCHES`, so the dynamic batch is
checked too), and a largest absolute difference above :data:`TOLERANCE` refuses the export
(one line). The JSON (:func:`settings_json`) holds what a sampler outside PyTorch needs: the
student's sampler, steps, spacing, its timesteps with their α_t and σ_t (samplers.step_grid),
the parameterisation, clip_x0, guidance, the class names, and the verification's figures.

The web page (assets/web/: index.html and app.js) reads model.json and samples with DDIM at
η = 0 and clip_x0 (samplers.ddim), so ``export_web`` takes a model whose sampler is that: a
distilled student (mnist-fast) above all. onnxruntime-web's files are package data put there by
scripts/vendor_ort_web.py (pinned: :data:`ORT_WEB`); see docs/export.md for why.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import MnistdiffError

OPSET = 17
TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| allowed on the random inputs (outputs ~ 1)
VERIFY_BATCHES = (1, 37)
INPUTS, OUTPUT = ("x", "t", "y"), "out"
FORMAT = "mnistdiff-onnx/1"  # the JSON's layout; the page refuses another

# onnxruntime-web, as scripts/vendor_ort_web.py fetches it (npm pack) and checks it.
ORT_WEB = {"version": "1.31.1",
           "integrity": "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPd"
                        "SQeS7NmuZPXrQ73k82URw=="}
WEB_DIR = Path(__file__).resolve().parent / "assets" / "web"
RUNTIME_DIR = WEB_DIR / "ort"
PAGE_FILES = ("index.html", "app.js")
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs",
                 "ort-wasm-simd-threaded.wasm.gz", "LICENSE", "ort.json")
PAGE_BUDGET = 8_000_000  # bytes: what the whole page may weigh (docs/export.md)
# Cross-origin isolation (SharedArrayBuffer, so onnxruntime-web may use threads) on hosts that
# read a _headers file (Netlify, Cloudflare Pages); elsewhere the page runs on one thread.
HEADERS = """/*
  Cross-Origin-Opener-Policy: same-origin
  Cross-Origin-Embedder-Policy: require-corp
"""


def _runtimes():
    """(onnx, onnxruntime), or the one line that says how to get them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise MnistdiffError('exporting needs onnx and onnxruntime: pip install '
                             '"mnistdiff[export]" (or pip install onnx onnxruntime)') from None
    return onnx, onnxruntime


def runtime_files(folder: Path = RUNTIME_DIR) -> dict[str, Path]:
    """onnxruntime-web's files for the page, checked against their ort.json; one line (how to
    get them) when they are missing or not the pinned version's."""
    how = ("run python scripts/vendor_ort_web.py (it needs npm) in a checkout, or install a "
           "release wheel, which ships them")
    try:
        listing = json.loads((folder / "ort.json").read_text())
    except (OSError, ValueError):
        raise MnistdiffError(f"onnxruntime-web's files are not in {folder}: {how}") from None
    if listing.get("version") != ORT_WEB["version"]:
        raise MnistdiffError(f"{folder} holds onnxruntime-web {listing.get('version')}, not the "
                             f"pinned {ORT_WEB['version']}: {how}")
    files = {name: folder / name for name in RUNTIME_FILES}
    for name, meta in listing.get("files", {}).items():
        path = files.get(name)
        if path is None or not path.is_file() or \
                hashlib.sha256(path.read_bytes()).hexdigest() != meta.get("sha256"):
            raise MnistdiffError(f"onnxruntime-web's {name} in {folder} is missing or changed: "
                                 f"{how}")
    return files


# --------------------------------------------------------------------------------- ONNX

def to_onnx(model, config) -> bytes:
    """The network as ONNX bytes (opset :data:`OPSET`, dynamic batch); ``model`` is left as it
    is (a float32 copy on the CPU is exported)."""
    import copy
    import inspect
    import warnings

    import torch

    net = copy.deepcopy(model).float().cpu().eval()
    c, T, k = config.model.in_channels, config.diffusion.timesteps, config.model.num_classes
    example = (torch.zeros(2, c, 28, 28), torch.tensor([T - 1, 0]), torch.tensor([0, k]))
    batch = {0: "batch"}
    kwargs = dict(input_names=list(INPUTS), output_names=[OUTPUT], opset_version=OPSET,
                  dynamic_axes={name: batch for name in (*INPUTS, OUTPUT)},
                  do_constant_folding=True)
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter: GroupNorm as InstanceNormalization
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about the image-size check
        torch.onnx.export(net, example, buf, **kwargs)
    return buf.getvalue()


def session(onnx_bytes: bytes, threads: int | None = None):
    """An onnxruntime CPU session of ONNX bytes (``threads``: intra-op threads, None: its own
    default of one per core)."""
    _, ort = _runtimes()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def verify(onnx_bytes: bytes, model, config, batches: Sequence[int] = VERIFY_BATCHES,
           seed: int = 0) -> float:
    """The largest |onnxruntime - PyTorch| over random inputs (x ~ N(0, I), t and y uniform, the
    null label included) at each batch size; MnistdiffError (one line) above TOLERANCE."""
    import numpy as np
    import torch

    sess = session(onnx_bytes, threads=torch.get_num_threads())
    net = model.float().cpu().eval()
    c, T, k = config.model.in_channels, config.diffusion.timesteps, config.model.num_classes
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batches:
        x = torch.randn(b, c, 28, 28, generator=g)
        t = torch.randint(0, T, (b,), generator=g)
        y = torch.randint(0, k + 1, (b,), generator=g)
        with torch.no_grad():
            want = net(x, t, y).numpy()
        got = sess.run([OUTPUT], {"x": x.numpy(), "t": t.numpy(), "y": y.numpy()})[0]
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else math.inf
        worst = max(worst, diff if math.isfinite(diff) else math.inf)
    if not worst <= TOLERANCE:
        raise MnistdiffError(f"the ONNX export does not match PyTorch: max abs difference "
                             f"{worst:.3g} > {TOLERANCE:g} on random inputs at batches "
                             f"{', '.join(map(str, batches))}; nothing was written")
    return worst


def settings_json(loaded, model_file: str, onnx_bytes: bytes, diff: float) -> dict:
    """What a sampler outside PyTorch needs (module docstring), as the JSON beside the model."""
    import onnxruntime
    import torch

    from . import __version__
    from .data import get_spec
    from .diffusion import make_schedule
    from .samplers import step_grid

    cfg = loaded.config
    d, s, m = cfg.diffusion, cfg.sample, cfg.model
    grid = step_grid(make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end),
                     s.steps, s.spacing)
    return {
        "format": FORMAT,
        "name": loaded.info.get("name") or _run_name(Path(loaded.info["path"])),
        "source": loaded.info.get("source"),
        "checkpoint_sha256": loaded.info.get("sha256"),
        "mnistdiff": __version__,
        "model": {"file": model_file, "bytes": len(onnx_bytes),
                  "sha256": hashlib.sha256(onnx_bytes).hexdigest(), "opset": OPSET,
                  "inputs": {"x": ["batch", m.in_channels, 28, 28], "t": ["batch"],
                             "y": ["batch"]},
                  "output": OUTPUT, "dtypes": {"x": "float32", "t": "int64", "y": "int64",
                                               OUTPUT: "float32"}},
        "dataset": cfg.data.dataset,
        "classes": list(get_spec(cfg.data.dataset).classes[:m.num_classes]),
        "null_label": m.num_classes,
        "image": {"channels": m.in_channels, "size": 28, "range": [-1.0, 1.0]},
        "objective": d.objective,  # what `out` is: "eps" (ε) or "v" (α_t ε - σ_t x0)
        "schedule": d.schedule,
        "T": d.timesteps,
        "sample": {"sampler": s.sampler, "steps": s.steps, "spacing": s.spacing,
                   "eta": s.eta, "clip_x0": s.clip_x0, "guidance": s.guidance,
                   "guidance_interval": list(s.guidance_interval), "seed": s.seed},
        # samplers.step_grid: the timesteps, then α_t and σ_t of each and (1, 0) for the clean
        # image after the last step (len steps + 1).
        "grid": {"timesteps": grid.ts, "alphas": grid.alphas, "sigmas": grid.sigmas},
        "verified": {"runtime": f"onnxruntime {onnxruntime.__version__} (CPU)",
                     "torch": torch.__version__, "batches": list(VERIFY_BATCHES),
                     "max_abs_diff": diff, "tolerance": TOLERANCE},
    }


def _run_name(path: Path) -> str:
    """A user's checkpoint by name: its run folder's for runs/NAME/checkpoints/last.pt."""
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem


def _export(spec, ema: bool, model_file: str, check: Callable | None = None):
    """Read the model (``check(loaded)`` may refuse it), export it and verify it:
    (loaded, onnx bytes, settings dict)."""
    _runtimes()
    from .models import read

    loaded = read(spec, ema=ema)
    if check is not None:
        check(loaded)
    data = to_onnx(loaded.model, loaded.config)
    diff = verify(data, loaded.model, loaded.config)
    return loaded, data, settings_json(loaded, model_file, data, diff)


def _summary(settings: dict) -> str:
    v, s = settings["verified"], settings["sample"]
    return (f"{settings['name']}: opset {OPSET}, {settings['model']['bytes'] / 1e6:.1f} MB; "
            f"onnxruntime vs PyTorch on random inputs (batches "
            f"{', '.join(map(str, v['batches']))}): max abs difference {v['max_abs_diff']:.2g} "
            f"(tolerance {v['tolerance']:g}); samples with {s['sampler']}, {s['steps']} "
            f"{s['spacing']} steps, guidance {s['guidance']:g}")


def export_onnx(spec: str | Path | None, out: str | Path, *, ema: bool = True):
    """Write the verified ONNX file ``out`` (.onnx) and its settings JSON beside it (same name,
    .json) -> jobs.Result (the files, a line with the verification's figures)."""
    from .files import all_or_nothing, check_outputs, write_atomic
    from .jobs import Result
    from .models import resolve

    out = Path(out)
    meta = out.with_suffix(".json")
    check_outputs({"--out": out, "its JSON": meta}, inputs={"the checkpoint": resolve(spec).path},
                  suffixes={"--out": (".onnx",)})
    loaded, data, settings = _export(spec, ema, out.name)
    with all_or_nothing():
        write_atomic(out, data)
        write_atomic(meta, (json.dumps(settings, indent=2) + "\n").encode())
    return Result([out, meta], _summary(settings))


# --------------------------------------------------------------------------------- the web page

def check_web(loaded) -> None:
    """The page samples with DDIM at η = 0 (samplers.ddim): one line for a model that does not."""
    s = loaded.config.sample
    if s.sampler != "ddim" or s.eta != 0:
        name = loaded.info.get("name") or loaded.info["path"]
        raise MnistdiffError(
            f"export web: the page samples with DDIM at eta 0, and {name} samples with "
            f"{s.sampler}" + (f" at eta {s.eta:g}" if s.sampler == "ddim" else "")
            + "; export a distilled student (mnistdiff distill, e.g. the bundled mnist-fast)")


def export_web(spec: str | Path | None, out: str | Path, *, ema: bool = True):
    """Write the static site into the folder ``out``: the page (index.html, app.js), the
    verified model gzipped (model.onnx.gz), model.json, _headers and onnxruntime-web's files
    under ort/ -> jobs.Result. ``python -m http.server -d out`` serves it."""
    from .files import all_or_nothing, check_outputs, write_atomic
    from .jobs import LIMITS, Result

    out = Path(out)
    check_outputs({}, folders={"--out": out})
    _runtimes()
    runtime = runtime_files()  # before the model is read: a missing file is one line at once
    loaded, data, settings = _export(spec, ema, "model.onnx.gz", check=check_web)

    settings["page"] = {"max_count": LIMITS["page_images"][1], "ort_web": ORT_WEB["version"]}
    files: dict[Path, bytes] = {out / name: (WEB_DIR / name).read_bytes() for name in PAGE_FILES}
    files[out / "model.onnx.gz"] = gzip.compress(data, compresslevel=9, mtime=0)
    files[out / "model.json"] = (json.dumps(settings, indent=2) + "\n").encode()
    files[out / "_headers"] = HEADERS.encode()
    for name, path in runtime.items():
        files[out / "ort" / name] = path.read_bytes()
    with all_or_nothing():
        for path, blob in files.items():
            write_atomic(path, blob)
    total = sum(len(b) for b in files.values())
    over = f", over the {PAGE_BUDGET / 1e6:g} MB a page should weigh" \
        if total > PAGE_BUDGET else ""
    return Result(list(files), f"{_summary(settings)}; the page weighs {total / 1e6:.2f} MB in "
                               f"{len(files)} files{over}; serve it with python -m http.server "
                               f"-d {out}")


# --------------------------------------------------------------------------------- a backend

class OnnxNetwork:
    """The network as an onnxruntime CPU session, called like the module: ``net(x, t, y)``
    with torch tensors -> float32 tensor: the pipeline's opt-in ``backend="onnxruntime"``
    (measured against PyTorch by scripts/bench_onnx.py; docs/export.md)."""

    def __init__(self, onnx_bytes: bytes, threads: int | None = None):
        self.session = session(onnx_bytes, threads)

    def __call__(self, x, t, y):
        import torch

        feeds = {"x": x.float().contiguous().cpu().numpy(),
                 "t": t.long().expand(x.shape[0]).contiguous().cpu().numpy(),
                 "y": y.long().cpu().numpy()}
        return torch.from_numpy(self.session.run([OUTPUT], feeds)[0])



def onnx_network(model, config, threads: int | None = None) -> OnnxNetwork:
    """``model`` exported and verified (:func:`verify`), in onnxruntime on ``threads`` CPU
    threads (None: as many as torch uses)."""
    import torch

    _runtimes()
    data = to_onnx(model, config)
    verify(data, model, config)
    return OnnxNetwork(data, torch.get_num_threads() if threads is None else threads)
