"""mnistdiff: a class-conditional diffusion model for MNIST, as a library and a CLI.

    import mnistdiff
    pipe = mnistdiff.load("mnist")                      # the bundled model; or a run folder / .pt
                                                        # file; None: the newest run, else the
                                                        # bundled default (models.load)
    out = pipe.sample(digits=[7], n=16)                 # out.images: uint8 (16, 28, 28)
    out.grid()                                          # a PIL image (notebooks show `out`)

``load`` and ``Pipeline`` are imported on first use, so ``import mnistdiff`` (and
``mnistdiff --version``) stays fast and does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.5.1"
__all__ = ["load", "Pipeline", "__version__"]

if TYPE_CHECKING:
    from .models import load
    from .pipeline import Pipeline


def __getattr__(name: str):
    if name == "load":
        from .models import load

        return load
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'mnistdiff' has no attribute {name!r}")
