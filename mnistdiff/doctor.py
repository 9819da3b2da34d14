"""``mnistdiff doctor``: is this installation healthy? One line per item, as ``accelerate env``.

    for item in checks():            # Item(status "ok" | "warn" | "FAIL", name, text)
        print(item)

Versions (Python, torch, torchvision, mnistdiff) and whether torch and torchvision match, the
devices (CUDA, bf16 units of this CPU), torch's threads against the machine's load, where
MNIST and Fashion-MNIST were found (or why not), and the bundled files against their pinned
SHA-256. ``FAIL`` marks what breaks a command; the CLI then exits with status 1.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Iterator, NamedTuple

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class Item(NamedTuple):
    status: str  # ok, warn or FAIL
    name: str
    text: str

    def __str__(self) -> str:
        return f"{self.status:<5} {self.name}: {self.text}"


def matching_torchvision(torch_version: str) -> str | None:
    """The torchvision release line built for a torch release: 0.(15 + k) for torch 2.k."""
    try:
        major, minor = (int(p) for p in torch_version.split("+")[0].split(".")[:2])
    except ValueError:
        return None
    return f"0.{15 + minor}" if major == 2 else None


def torchvision_problem() -> str | None:
    """None when torchvision imports and fits torch, else one line: what is wrong and the
    install command that fixes it (a CUDA torchvision beside a CPU torch fails at import with
    "operator torchvision::nms does not exist")."""
    import torch

    want = matching_torchvision(torch.__version__)
    index = f" --index-url {CPU_INDEX}" if "+cpu" in torch.__version__ or not \
        torch.version.cuda else ""
    fix = f"pip install --force-reinstall 'torch=={torch.__version__.split('+')[0]}' " \
          f"'torchvision=={want}.*'{index}" if want else "reinstall torch and torchvision together"
    try:
        import torchvision
    except ImportError:
        return f"torchvision is not installed (torch {torch.__version__}); {fix}"
    except Exception as e:  # noqa: BLE001 (a broken build raises RuntimeError and others)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:80]
        return (f"torchvision does not load beside torch {torch.__version__} ({reason}); a "
                f"mismatched pair, often a CUDA build of one and a CPU build of the other: {fix}")
    have = ".".join(torchvision.__version__.split("+")[0].split(".")[:2])
    if want and have != want:
        return (f"torchvision {torchvision.__version__} was built for another torch than "
                f"{torch.__version__} (which needs torchvision {want}); {fix}")
    return None


def report(say) -> int:
    """Say every item, one line each; the exit status: 1 when one of them is broken."""
    broken = False
    for item in checks():
        say(str(item))
        broken |= item.status == "FAIL"
    return 1 if broken else 0


def checks() -> Iterator[Item]:
    """Every item, in order; each check catches its own failure."""
    from . import __version__

    yield Item("ok", "python", f"{platform.python_version()} ({sys.executable})")
    yield Item("ok", "mnistdiff", f"{__version__} ({os.path.dirname(__file__)})")
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        yield Item("FAIL", "torch", f"does not import ({e}); pip install torch")
        return
    yield Item("ok", "torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})")
    problem = torchvision_problem()
    if problem:
        yield Item("FAIL", "torchvision", problem)
    else:
        import torchvision

        yield Item("ok", "torchvision", f"{torchvision.__version__}, matches torch")
    yield from _devices(torch)
    yield from _data()
    yield from _bundled()


def _devices(torch) -> Iterator[Item]:
    from .training import cpu_has_bf16

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        yield Item("ok", "cuda", names)
    else:
        yield Item("ok", "cuda", "no CUDA device: everything runs on the CPU")
    units = "yes: training.amp auto trains in bf16" if cpu_has_bf16() else "no: fp32"
    yield Item("ok", "cpu bf16 units", units)
    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy = load > 0.5 * cores
    text = (f"{threads} torch threads on {cores} cores, load {load:.1f}"
            + ("; the machine is busy: --threads 1 (or OMP_NUM_THREADS=1) is often faster"
               if busy and threads > 1 else ""))
    yield Item("warn" if busy and threads > 1 else "ok", "threads", text)


def _data() -> Iterator[Item]:
    from .data import ENV_VAR, IDX_DATASETS, find_data_dir
    from .errors import MnistdiffError

    for name in IDX_DATASETS:  # folder and cifar10 live where a config says
        try:
            folder = find_data_dir(name, None, download=False)
            yield Item("ok", f"data {name}", str(folder))
        except MnistdiffError as e:
            yield Item("warn", f"data {name}", f"{str(e)[:200]} (train and evaluate need it; "
                                               f"${ENV_VAR} or --data-dir points to it)")


def _bundled() -> Iterator[Item]:
    from .errors import MnistdiffError
    from .evaluation import classifiers
    from .models import bundled

    for manifest, parts in ((bundled(), ("model", "card")),
                            (classifiers(), ("classifier", "reference"))):
        for name in manifest.names():
            try:
                for part in parts:
                    manifest.path(name, part)
                sha = manifest.entry(name)[parts[0]]["sha256"][:12]
                yield Item("ok", f"{manifest.what.split()[-1][:-1]} {name}",
                           f"SHA-256 {sha}... verified")
            except MnistdiffError as e:
                yield Item("FAIL", f"{manifest.what} {name}", str(e))
