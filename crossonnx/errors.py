"""The few typed errors crossonnx raises. Each message names the problem and the fix.

Importing this module imports nothing else (no onnxruntime, no numpy), so any layer can raise these.
"""

from __future__ import annotations

import importlib
from types import ModuleType


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
    """The requested precision is not in the model folder, or the chosen engine cannot run it."""


class ProviderUnavailableError(CrossOnnxError, RuntimeError):
    """The requested execution provider (engine) is not installed or not usable."""


class MissingExtraError(CrossOnnxError, ImportError):
    """An optional dependency is not installed; the message names the exact ``pip install`` command."""


class ExportError(CrossOnnxError, RuntimeError):
    """An export could not be carried out (bad source, unsupported model)."""


class ValidationError(ExportError):
    """An exported variant disagrees with PyTorch beyond its threshold; nothing was written."""


def install_command(extra: str) -> str:
    """The exact command that installs one of crossonnx's extras."""
    return f'pip install "crossonnx[{extra}]"'


def missing_extra(extra: str, package: str, what: str = "this") -> MissingExtraError:
    """The error for a dependency that lives in an optional extra."""
    return MissingExtraError(
        f"{what} needs {package}, which is not installed. Install it with: {install_command(extra)}"
    )


def require_module(module: str, extra: str, package: str | None = None, what: str = "this") -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra(extra, package or module, what) from None
