"""What each crossonnx install line installs, emulated inside the all-extras test environment.

``pip install "crossonnx[serve]"`` brings crossonnx's base requirements, the ``serve`` extra's, and everything those
require in turn. ``install_view`` lays out a folder of links to exactly those packages of this environment's
site-packages (and the packages no extra brings, such as pip), leaving out what only the other extras bring: their
modules and their ``.dist-info``. A process that runs on that folder alone (``python -S`` plus ``site.addsitedir``)
then sees the other extras as a user's fresh virtual environment does: not installed. ``find_spec`` returns None,
``importlib.metadata`` knows nothing of them, and an import fails with ModuleNotFoundError.

The closure is read from the installed packages' own metadata (``Requires-Dist`` with its markers), so it follows
pyproject.toml and the dependencies' releases without a list kept here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from functools import cache
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# Extras for working on crossonnx itself, not for users; the README names the rest.
DEVELOPMENT_EXTRAS = frozenset({"bench", "test"})

# argv: VIEW ROOT ARGS...: the view's packages and this checkout's crossonnx on the path, then ARGS
_BOOT = "import site, sys; site.addsitedir(sys.argv.pop(1)); sys.path.insert(0, sys.argv.pop(1))\n"
_RUN_CLI = _BOOT + "from crossonnx.cli import main; sys.exit(main(sys.argv[1:]))"


def project_extras() -> dict[str, list[str]]:
    """pyproject.toml's optional dependencies."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]


def readme_install_lines() -> list[tuple[str, frozenset[str]]]:
    """Every ``pip install crossonnx...`` line of the README, as (the line, the extras it names)."""
    found = []
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r'\s*pip install "?crossonnx(?:\[([a-z0-9_,\- ]+)\])?"?(?:\s|$)', line)
        if match:
            extras = frozenset(e.strip() for e in (match.group(1) or "").split(",") if e.strip())
            found.append((line.split("#")[0].strip(), extras))
    return found


def _requirements(dist: metadata.Distribution, extras: frozenset[str]) -> list[Requirement]:
    wanted = []
    for text in dist.requires or ():
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in ("", *extras)):
            wanted.append(requirement)
    return wanted


@cache
def closure(extras: frozenset[str]) -> frozenset[str]:
    """Canonical names of the installed distributions ``pip install "crossonnx[extras]"`` brings (crossonnx too)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    pending = [("crossonnx", extras)]
    while pending:
        name, wanted = pending.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement not installed here (another platform's, or optional at run time)
        names.add(canonicalize_name(name))
        pending.extend((canonicalize_name(r.name), frozenset(r.extras)) for r in _requirements(dist, wanted))
    return frozenset(names)


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _owners() -> dict[str, set[str]]:
    """Top-level entries of site-packages -> the distributions whose files live there."""
    owners: dict[str, set[str]] = {}
    site = _site_packages()
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            located = Path(dist.locate_file(file)).resolve()
            if located.is_relative_to(site):
                top = located.relative_to(site).parts[0]
                owners.setdefault(top, set()).add(name)
    return owners


def install_view(extras: frozenset[str], folder: Path) -> Path:
    """A site-packages of links holding what ``pip install "crossonnx[extras]"`` would (see the module docstring)."""
    every_extra = frozenset(project_extras())
    absent = closure(every_extra) - closure(extras)
    owners = _owners()
    folder.mkdir(parents=True, exist_ok=True)
    for entry in _site_packages().iterdir():
        owned_by = owners.get(entry.name, set())
        if owned_by and owned_by <= absent:
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


def run_cli(view: Path, *args: str, timeout: float = 600, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess:
    """``crossonnx ARGS`` in a process that sees only ``view``'s packages."""
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    environ.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, "-S", "-c", _RUN_CLI, str(view), str(ROOT), *args],
        capture_output=True, text=True, timeout=timeout, env=environ, check=False,
    )


def run_python(view: Path, code: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -c CODE ARGS`` in a process that sees only ``view``'s packages (and this checkout's crossonnx)."""
    environ = {**os.environ, "HF_HUB_OFFLINE": "1"}
    environ.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, "-S", "-c", _BOOT + code, str(view), str(ROOT), *args],
        capture_output=True, text=True, timeout=timeout, env=environ, check=False,
    )


def cli_command(view: Path, *args: str) -> list[str]:
    """The argv that runs ``crossonnx ARGS`` on ``view`` (for a process the test manages itself)."""
    return [sys.executable, "-S", "-c", _RUN_CLI, str(view), str(ROOT), *args]
