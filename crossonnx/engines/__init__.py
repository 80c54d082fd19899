"""Inference engines behind one small interface, and the choice between them.

An engine runs one graph of a model folder: ``run(feed) -> logits``. Two engines exist:

- ONNX Runtime (``engines/onnxruntime.py``): providers ``cpu``, ``cuda`` and ``tensorrt``; the base install.
- OpenVINO (``engines/openvino.py``): provider ``openvino``, with explicit precision hints; the ``openvino`` extra.

Which providers run each precision, from which file, is stated in the precision table (crossonnx/precisions.py);
this module maps providers to engines and chooses. Batching, tokenization, activation and input checks live above
the engines, in ``CrossEncoder``, and are the same for all of them.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from crossonnx.engines import onnxruntime as ort_engine
from crossonnx.errors import PrecisionNotExportedError, ProviderUnavailableError, install_command
from crossonnx.manifest import Manifest
from crossonnx.precisions import (
    CPU,
    CUDA,
    DEFAULT_PRECISION,
    GPUS,
    GRAPH_OF,
    NEEDS_NNCF,
    OPENVINO,
    ROWS,
    TENSORRT,
)

# provider name -> engine module name
ENGINE_OF = {CPU: "onnxruntime", CUDA: "onnxruntime", TENSORRT: "onnxruntime", OPENVINO: "openvino"}
PROVIDERS = tuple(ENGINE_OF)
# What the precision table says each engine runs (here so that choosing needs no openvino)
OPENVINO_ONLY = tuple(row.name for row in ROWS if {ENGINE_OF[p] for p in row.providers} == {"openvino"})
OPENVINO_INT8 = tuple(name for name in OPENVINO_ONLY if NEEDS_NNCF in GRAPH_OF[name].needs)  # NNCF's int8 MatMuls
TENSORRT_PRECISIONS = ort_engine.TENSORRT_PRECISIONS  # TensorRT builds their engines from the unfused graph
# What ONNX Runtime's CPU provider offers instead of a precision it cannot run (not those meant for GPUs)
CPU_ALTERNATIVES = tuple(row.name for row in ROWS if CPU in row.providers and row.hardware != GPUS)
OPENVINO_INSTALL = install_command("openvino")


class Engine(Protocol):
    """One loaded graph: feed int64 token arrays, get float32 logits of shape (rows, num_labels)."""

    provider: str
    input_names: tuple[str, ...]
    token_budget: int  # padded tokens per call this engine runs best with (CrossEncoder's token_budget="auto")

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray: ...

    def info(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ProviderChoice:
    """The provider an engine will use and why it was chosen (what ``auto`` reports)."""

    provider: str
    reason: str


def openvino_installed() -> bool:
    """Whether the ``openvino`` package (the ``openvino`` extra) can be imported."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def default_threads() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def available_providers(openvino: bool | None = None) -> list[str]:
    """Short names of the providers installed here, in crossonnx's preference order."""
    found = ort_engine.available_providers()
    if openvino_installed() if openvino is None else openvino:
        found.insert(found.index("cpu"), "openvino")
    return found


def resolve_provider(
    provider: str,
    available: list[str] | None = None,
    tensorrt_ready: bool | None = None,
    *,
    precision: str = DEFAULT_PRECISION,
) -> ProviderChoice:
    """'auto' or a provider name -> an installed provider that runs ``precision``, and the reason; or a clear error.

    ``auto`` prefers TensorRT > CUDA (when their libraries load) > ONNX Runtime CPU; OpenVINO's own precisions, which
    only OpenVINO runs, go to OpenVINO. ``available`` and ``tensorrt_ready`` default to what this machine has; tests
    pass them to cover other machines.
    """
    if not isinstance(provider, str):
        raise TypeError(f"provider must be a string, got {type(provider).__name__}")
    available = available_providers() if available is None else list(available)
    wanted = provider.strip().lower()
    if wanted == "auto":
        return _auto(precision, available, tensorrt_ready)
    short = ort_engine.SHORT_NAMES.get(wanted, wanted)
    if short not in PROVIDERS:
        raise ProviderUnavailableError(f"unknown provider {provider!r}; use 'auto' or one of: {', '.join(PROVIDERS)}")
    if short not in available:
        raise ProviderUnavailableError(
            f"provider {short!r} is not available here (available: {', '.join(available)}). {install_hint(short)}"
        )
    if short == "tensorrt" and not _tensorrt_ready(available, tensorrt_ready):
        raise ProviderUnavailableError(ort_engine.TENSORRT_INSTALL_HINT)
    return ProviderChoice(short, "requested")


def _tensorrt_ready(available: list[str], ready: bool | None) -> bool:
    return "tensorrt" in available and (ort_engine.tensorrt_loadable() if ready is None else ready)


def _auto(precision: str, available: list[str], tensorrt_ready: bool | None) -> ProviderChoice:
    if precision in OPENVINO_ONLY:
        if "openvino" in available:
            return ProviderChoice("openvino", f"auto: {precision} runs on OpenVINO only")
        raise ProviderUnavailableError(
            f"precision {precision!r} runs on the OpenVINO engine, which is not installed. "
            f"Install it with: {OPENVINO_INSTALL}, or use precision {_either(' or ')} on ONNX Runtime"
        )
    if _tensorrt_ready(available, tensorrt_ready) and precision in TENSORRT_PRECISIONS:
        return ProviderChoice("tensorrt", "auto: TensorRT provider and libraries present")
    if "cuda" in available:
        skipped = " (TensorRT provider offered but libnvinfer not loadable)" if "tensorrt" in available else ""
        return ProviderChoice("cuda", f"auto: CUDA provider present{skipped}")
    if "openvino" in available:
        # exact fp32 on OpenVINO is not a clear win over ONNX Runtime's and takes more memory, so auto keeps ONNX
        # Runtime (docs/design/fp32-on-onnxruntime.md)
        return ProviderChoice(
            "cpu", f"auto: no GPU; {precision} runs on ONNX Runtime's CPU provider (OpenVINO is installed: it is "
            "auto's pick for bf16 and the OpenVINO int8s, and provider='openvino' runs fp32 there too)"
        )
    return ProviderChoice("cpu", "auto: no GPU provider in this onnxruntime build and no OpenVINO")


def _either(separator: str) -> str:
    """The precisions ONNX Runtime's CPU provider offers instead, quoted: "'a' or 'b'"."""
    return separator.join(repr(name) for name in CPU_ALTERNATIVES)


def validation_provider(precision: str) -> str:
    """The provider a precision is validated on (at export and by verify), as its table row says: OpenVINO for its
    own precisions, ONNX Runtime's CPU otherwise."""
    row = GRAPH_OF.get(precision)
    return row.validated_on if row is not None else CPU


def install_hint(provider: str) -> str:
    if provider == "openvino":
        return f"Install it with: {OPENVINO_INSTALL}"
    if provider == "cpu":
        return ""
    return ort_engine.GPU_INSTALL_HINT


def open_engine(
    model_dir: Path,
    manifest: Manifest,
    precision: str,
    provider: str,
    *,
    threads: int,
    max_batch: int,
    max_length: int,
    device_id: int = 0,
) -> Engine:
    """Load the graph that ``provider`` (already resolved) runs for ``precision``."""
    if ENGINE_OF[provider] == "openvino":
        from crossonnx.engines import openvino as ov_engine

        return ov_engine.OpenVinoEngine.load(model_dir, manifest, precision, threads=threads)
    if precision in OPENVINO_ONLY:
        raise PrecisionNotExportedError(
            f"precision {precision!r} runs on the OpenVINO engine only, not on ONNX Runtime ({provider}). "
            f"Use provider='openvino' ({OPENVINO_INSTALL}), or precision {_either(' / ')} on ONNX Runtime"
        )
    return ort_engine.OrtEngine.load(
        model_dir, manifest, precision, provider,
        threads=threads, max_batch=max_batch, max_length=max_length, device_id=device_id,
    )
