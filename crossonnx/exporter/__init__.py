"""The export pipeline (needs the `export` extra: torch, transformers, sentence-transformers, onnx).

``from crossonnx.exporter import export_model`` raises an error naming the install command when the extra is
missing, instead of an ImportError from deep inside.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from crossonnx.errors import missing_extra

_NEEDED = {
    "torch": "torch",
    "transformers": "transformers",
    "sentence_transformers": "sentence-transformers",
    "onnx": "onnx",
}


def require_export_extra() -> None:
    """Raise a clear error unless the export dependencies are importable."""
    for module, dist in _NEEDED.items():
        if importlib.util.find_spec(module) is None:
            raise missing_extra("export", dist, "exporting")


def __getattr__(name: str) -> Any:
    if name == "export_model":
        require_export_extra()
        from crossonnx.exporter.pipeline import export_model

        return export_model
    raise AttributeError(f"module 'crossonnx.exporter' has no attribute {name!r}")


__all__ = ["export_model", "require_export_extra"]
