"""Where crossonnx keeps caches (the reference model, TensorRT engines)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """CROSSONNX_CACHE, else $XDG_CACHE_HOME/crossonnx, else ~/.cache/crossonnx."""
    if os.environ.get("CROSSONNX_CACHE"):
        return Path(os.environ["CROSSONNX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "crossonnx"
