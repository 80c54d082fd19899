"""crossonnx: cross-encoder rerankers exported to ONNX and run without PyTorch.

>>> from crossonnx import CrossEncoder
>>> model = CrossEncoder("models/stsb-minilm-l6")
>>> model.predict([("A man is playing a guitar.", "A man plays the guitar.")])

``CrossEncoder`` is imported on first use, so ``import crossonnx.errors`` (or the CLI's argument parsing) does not
load onnxruntime.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

from crossonnx.errors import (
    CrossOnnxError,
    ExportError,
    InvalidInputError,
    MissingExtraError,
    ModelFolderError,
    PrecisionNotExportedError,
    ProviderUnavailableError,
    UnknownModelError,
    ValidationError,
)

if TYPE_CHECKING:
    from crossonnx.encoder import CrossEncoder
    from crossonnx.scale import ScaleError

try:
    __version__ = metadata.version("crossonnx")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {"CrossEncoder": "crossonnx.encoder", "ScaleError": "crossonnx.scale"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crossonnx' has no attribute {name!r}")


__all__ = [
    "CrossEncoder",
    "CrossOnnxError",
    "ExportError",
    "InvalidInputError",
    "MissingExtraError",
    "ModelFolderError",
    "PrecisionNotExportedError",
    "ProviderUnavailableError",
    "ScaleError",
    "UnknownModelError",
    "ValidationError",
    "__version__",
]
