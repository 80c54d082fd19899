"""Batch scoring at scale: `crossonnx score-file` and the Ray Data integration (needs the `scale` extra).

Nothing here imports pyarrow or ray at import time: ``crossonnx.scale.files`` imports pyarrow only to read or
write Parquet, and ``crossonnx.scale.ray_data`` imports ray when used. ``crossonnx.scale.columns`` holds the column
names, checks and predict options that score-file and the Spark integration share.
"""

from __future__ import annotations

from types import ModuleType

from crossonnx.errors import ScaleError, install_command, require_module

INSTALL_HINT = install_command("scale")
FORMATS = ("parquet", "jsonl", "csv")
DEFAULT_CHUNK_ROWS = 8192  # rows read, scored and written together: a few MB of text for query-passage pairs


def require(module: str, package: str, what: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` naming the `scale` extra."""
    return require_module(module, "scale", package, what)


__all__ = ["DEFAULT_CHUNK_ROWS", "FORMATS", "INSTALL_HINT", "ScaleError", "require"]  # ScaleError: crossonnx.errors
