"""crossonnx: cross-encoder rerankers exported to ONNX and run without PyTorch.

>>> from crossonnx import CrossEncoder, LongDocuments
>>> model = CrossEncoder("models/stsb-minilm-l6")
>>> model.predict([("A man is playing a guitar.", "A man plays the guitar.")])
>>> model.rank("query", ["a long document ..."], long_documents=LongDocuments("chunk", chunk_tokens=256))

``CrossEncoder`` and ``LongDocuments`` are imported on first use, so ``import crossonnx`` (or the CLI's argument
parsing) does not load onnxruntime, tokenizers or numpy. Every error crossonnx raises on purpose is a
``CrossOnnxError`` from ``crossonnx.errors``, exported here.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

from crossonnx.errors import (
    CrossOnnxError,
    DocumentCappedError,
    ExportError,
    InvalidInputError,
    InvalidOptionError,
    MissingExtraError,
    ModelFolderError,
    MovedArgumentError,
    PrecisionNotExportedError,
    ProviderUnavailableError,
    ScaleError,
    UnknownModelError,
    ValidationError,
)

if TYPE_CHECKING:
    from crossonnx.encoder import CrossEncoder
    from crossonnx.long_documents import LongDocuments

try:
    __version__ = metadata.version("crossonnx")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {"CrossEncoder": "crossonnx.encoder", "LongDocuments": "crossonnx.long_documents"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crossonnx' has no attribute {name!r}")


__all__ = [
    "CrossEncoder",
    "CrossOnnxError",
    "DocumentCappedError",
    "ExportError",
    "InvalidInputError",
    "InvalidOptionError",
    "LongDocuments",
    "MissingExtraError",
    "ModelFolderError",
    "MovedArgumentError",
    "PrecisionNotExportedError",
    "ProviderUnavailableError",
    "ScaleError",
    "UnknownModelError",
    "ValidationError",
    "__version__",
]
