"""Batch scoring at scale: `crossonnx score-file` and the Ray Data integration (needs the `scale` extra).

Nothing here imports pyarrow or ray at import time: ``crossonnx.scale.files`` imports pyarrow only to read or
write Parquet, and ``crossonnx.scale.ray_data`` imports ray when used.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from crossonnx.errors import CrossOnnxError

INSTALL_HINT = 'pip install "crossonnx[scale]"'
FORMATS = ("parquet", "jsonl", "csv")
DEFAULT_CHUNK_ROWS = 8192  # rows read, scored and written together: a few MB of text for query-passage pairs


class ScaleError(CrossOnnxError, ValueError):
    """A file or dataset cannot be scored as asked (missing column, non-text cell, output exists, ...)."""


class ScaleExtraMissingError(CrossOnnxError, ImportError):
    """pyarrow or ray is needed for this command but is not installed."""


def require(module: str, package: str, what: str) -> ModuleType:
    """Import ``module`` or raise an error naming the `scale` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ScaleExtraMissingError(
            f"{what} needs {package}, which is not installed ({exc}). Install it with: {INSTALL_HINT}"
        ) from None


__all__ = ["DEFAULT_CHUNK_ROWS", "FORMATS", "INSTALL_HINT", "ScaleError", "ScaleExtraMissingError", "require"]
