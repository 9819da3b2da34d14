"""User-facing errors.

Anything a user can cause (a bad path, a bad value, a corrupted file) raises a
:class:`MnistdiffError`. The CLI prints its message on one line and exits with status 1;
everything else is a bug and keeps its traceback.
"""


class MnistdiffError(Exception):
    """An error the user can fix; the message is one clear line."""


class ConfigError(MnistdiffError):
    """A config file or override is invalid."""


class DataError(MnistdiffError):
    """A data file is missing, truncated, corrupted or of the wrong kind."""


class CheckpointError(MnistdiffError):
    """A checkpoint is missing, corrupted or does not fit the model."""
