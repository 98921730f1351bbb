"""The errors a user can cause, and how the CLI shows them.

Anything raised as :class:`VisiontrainError` is the user's to fix: the CLI prints its message as one line
and exits with code 2. Any other exception is a bug in visiontrain and keeps its traceback.
"""

from __future__ import annotations


class VisiontrainError(Exception):
    """A problem with the user's input: the message says what is wrong, where, and what to do."""

    exit_code = 2


class ConfigError(VisiontrainError):
    """A bad config key, value or flag."""


class DataError(VisiontrainError):
    """A dataset that cannot be found, read or used."""


class ImageError(DataError):
    """One image file that cannot be decoded safely."""

    def __init__(self, path: object, reason: str, hint: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        message = f"{self.path}: {reason}"
        super().__init__(f"{message}; {hint}" if hint else message)


class ModelError(VisiontrainError):
    """An unknown model or a model that does not fit its data or checkpoint."""


class CheckpointError(VisiontrainError):
    """A checkpoint or run folder that is missing, unsafe or does not match."""


class TrustError(VisiontrainError):
    """A value read from a file would decide what code runs (an import spec, an unpickling, a loader argument);
    only the user may say that (see visiontrain.config.trust)."""


class DivergedError(VisiontrainError):
    """Training stopped because the loss or the weights are no longer finite numbers (too high a rate?)."""
