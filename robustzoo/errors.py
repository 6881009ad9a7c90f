"""The project's own error types.

Every failure a user can trigger through the public API surfaces as one of these (or a plain
``ValueError``/``TypeError`` subclass of them), never as a stack trace from deep inside torch,
safetensors or huggingface_hub. All derive from :class:`RobustZooError`.
"""

from __future__ import annotations

__all__ = [
    "RobustZooError",
    "UnknownModelError",
    "RetiredModelError",
    "NotPublishedError",
    "WeightFormatError",
    "ChecksumError",
    "DownloadError",
    "OfflineError",
    "ConversionError",
    "DataError",
    "InvalidReferenceError",
    "CacheError",
    "CheckpointError",
    "EvaluationWarning",
]


class RobustZooError(Exception):
    """Base class of every error robustzoo raises on purpose."""


class UnknownModelError(RobustZooError, KeyError):
    """A name that is neither a registry entry nor a recognised reference."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class RetiredModelError(UnknownModelError):
    """A name that was released once and has been replaced; the message names its successor."""


class NotPublishedError(RobustZooError):
    """A registry entry whose weight file has not been published (yet)."""


class WeightFormatError(RobustZooError, ValueError):
    """A weight file that is not a valid robustzoo safetensors file (HTML, pickle, truncated...)."""


class ChecksumError(RobustZooError):
    """Downloaded or cached bytes whose sha256 differs from the expected one."""


class DownloadError(RobustZooError):
    """A download that failed (HTTP error, dropped connection, timeout) after retries."""


class OfflineError(RobustZooError):
    """Offline mode is on and the requested file is not in the cache."""


class ConversionError(RobustZooError, ValueError):
    """A legacy checkpoint that cannot be mapped exactly onto a robustzoo model."""


class DataError(RobustZooError, ValueError):
    """Bad input data: wrong channels, out-of-range pixels, labels, NaN, empty."""


class InvalidReferenceError(RobustZooError, ValueError):
    """A malformed or unsafe reference: a URL without host or file name, a sha256 that is not 64 hex
    digits, a revision given twice, a path segment such as ``..`` that would leave the cache."""


class CacheError(RobustZooError):
    """The cache folder cannot be used: not a folder, read-only, full, or locked by another process."""


class CheckpointError(RobustZooError):
    """A checkpoint that cannot be resumed (corrupted, edited, another run's) or a folder in use."""


class EvaluationWarning(UserWarning):
    """A sign that a robustness number may be wrong (probabilities as outputs, gradient masking...)."""
