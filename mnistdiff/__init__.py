"""mnistdiff: a class-conditional diffusion model for MNIST, as a library and a CLI."""

__version__ = "0.1.0"
