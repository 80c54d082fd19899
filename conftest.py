"""Shared fixtures of tests/ and benchmarks/tests/: offline checkpoints of every architecture family, exported once
per test session (one conftest at the root, so both folders share one session's exports).

tests/ holds helper modules the tests import by name (``pairs``, ``serving``, ...) and benchmarks/ the ``lab``
package of the research benchmarks; both folders go on the path here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
for _folder in (ROOT / "tests", ROOT / "benchmarks"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from pairs import FAMILIES, RANDOM_WEIGHT_GATES  # noqa: E402


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crossonnx")


@pytest.fixture(scope="session")
def tiny_checkpoints(work_dir: Path) -> dict[str, Path]:
    from crossonnx.checkpoints.synthetic import build_tiny

    return {family: build_tiny(family, work_dir / "ckpt" / family, seed=1) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_exports(work_dir: Path, tiny_checkpoints: dict[str, Path]) -> dict[str, Path]:
    from crossonnx.exporter.pipeline import export_model

    return {
        family: export_model(
            str(path), out=work_dir / "onnx" / family, gate_overrides=RANDOM_WEIGHT_GATES, log=None
        )
        for family, path in tiny_checkpoints.items()
    }


@pytest.fixture(scope="session")
def model_dir(tiny_exports: dict[str, Path]) -> Path:
    """The tiny BERT export the serve and scale tests run on."""
    return tiny_exports["bert"]


@pytest.fixture(scope="session")
def encoder(model_dir: Path):
    """One-thread CrossEncoder on ``model_dir`` (the serve and scale tests' model; a test may override it)."""
    from crossonnx.encoder import CrossEncoder

    return CrossEncoder(model_dir, provider="cpu", threads=1)


@pytest.fixture(scope="session")
def reference_checkpoint() -> Path:
    """The real-weight STSb cross-encoder (trained once, cached under CROSSONNX_CACHE)."""
    from crossonnx.checkpoints.stsb_minilm import build_reference_model

    return build_reference_model()


@pytest.fixture(scope="session")
def reference_export(work_dir: Path, reference_checkpoint: Path) -> Path:
    from crossonnx.exporter.pipeline import export_model

    return export_model(str(reference_checkpoint), out=work_dir / "onnx" / "stsb-minilm", log=None)


@pytest.fixture(scope="session")
def st_model_factory():
    """sentence-transformers CrossEncoder per checkpoint, cached (the reference the runtime must match)."""
    from sentence_transformers import CrossEncoder

    cache: dict[str, object] = {}

    def get(path: Path, **kwargs: object) -> object:
        key = f"{path}|{sorted(kwargs.items())}"
        if key not in cache:
            cache[key] = CrossEncoder(str(path), device="cpu", local_files_only=True, **kwargs)
        return cache[key]

    return get


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_exports: dict[str, Path]):
    """A CrossEncoder on the tiny BERT export (ONNX Runtime CPU, one thread), shared by the hardening tests."""
    from crossonnx.encoder import CrossEncoder

    return CrossEncoder(tiny_exports["bert"], provider="cpu", threads=1)


@pytest.fixture(scope="module")
def tiny_server(tiny_encoder):
    """A real server (uvicorn on 127.0.0.1) for ``tiny_encoder`` with ``serving.SMALL_LIMITS``."""
    from serving import SMALL_LIMITS, serving

    with serving(tiny_encoder, SMALL_LIMITS) as running:
        yield running
