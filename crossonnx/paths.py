"""Where crossonnx keeps caches (the reference model, TensorRT engines), and how it writes a cache entry."""

from __future__ import annotations

import json
import os
from pathlib import Path


def cache_root() -> Path:
    """CROSSONNX_CACHE, else $XDG_CACHE_HOME/crossonnx, else ~/.cache/crossonnx."""
    if os.environ.get("CROSSONNX_CACHE"):
        return Path(os.environ["CROSSONNX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "crossonnx"


def write_json(path: Path, data: object) -> Path:
    """Write ``data`` as JSON to ``path``, whole or not at all (a temporary file renamed over the old one), creating
    its folder; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path
