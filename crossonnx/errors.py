"""The few typed errors crossonnx raises. Each message names the problem and the fix."""

from __future__ import annotations


class CrossOnnxError(Exception):
    """Base class of every error crossonnx raises on purpose."""


class InvalidInputError(CrossOnnxError, TypeError):
    """The pairs passed to ``predict``/``rank`` are not what a cross-encoder takes."""


class ModelFolderError(CrossOnnxError, FileNotFoundError):
    """A model folder is missing, incomplete or corrupt."""


class UnknownModelError(CrossOnnxError, KeyError):
    """A model name that is neither in models.yaml, a local folder nor a Hub id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PrecisionNotExportedError(CrossOnnxError, ValueError):
    """The requested precision is not in the model folder."""


class ProviderUnavailableError(CrossOnnxError, RuntimeError):
    """The requested ONNX Runtime execution provider is not installed or not usable."""


class ExportError(CrossOnnxError, RuntimeError):
    """An export could not be carried out (bad source, unsupported model, missing extra)."""


class ValidationError(ExportError):
    """An exported variant disagrees with PyTorch beyond its threshold; nothing was written."""


def missing_extra(extra: str, package: str) -> ExportError:
    """The error for a heavy dependency that lives in an optional extra."""
    return ExportError(
        f"{package} is needed here but is not installed. "
        f"Install it with: pip install 'crossonnx[{extra}]'"
    )
