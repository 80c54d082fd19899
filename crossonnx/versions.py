"""Versions of the installed libraries that shaped a result, for manifests and benchmark reports."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata

NOT_INSTALLED = "not installed"


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """Python's version, then each distribution's (``NOT_INSTALLED`` for one that is not installed)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = NOT_INSTALLED
    return out
