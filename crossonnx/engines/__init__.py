"""Inference engines behind one small interface, and the choice between them.

An engine runs one graph of a model folder: ``run(feed) -> logits``. Two engines exist:

- ONNX Runtime (``engines/onnxruntime.py``): providers ``cpu``, ``cuda`` and ``tensorrt``; the base install.
- OpenVINO (``engines/openvino.py``): provider ``openvino``, with explicit precision hints; the ``openvino`` extra.

Which precisions each engine runs, and which file it runs them from, is stated in its module (``PRECISIONS``);
this module only chooses. Batching, tokenization, activation and input checks live above the engines, in
``CrossEncoder``, and are the same for all of them.
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

# provider name -> engine module name
ENGINE_OF = {"cpu": "onnxruntime", "cuda": "onnxruntime", "tensorrt": "onnxruntime", "openvino": "openvino"}
PROVIDERS = tuple(ENGINE_OF)
# Precisions only the OpenVINO engine runs (kept here so that choosing needs no openvino)
OPENVINO_INT8 = ("int8-static", "int8-dynamic")  # quantized by NNCF at export; their MatMuls run in int8
OPENVINO_ONLY = ("bf16", *OPENVINO_INT8)
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
    precision: str = "fp32",
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
            f"Install it with: {OPENVINO_INSTALL}, or use precision 'fp32' or 'int8' on ONNX Runtime"
        )
    if _tensorrt_ready(available, tensorrt_ready) and precision in ("fp32", "fp16"):
        return ProviderChoice("tensorrt", "auto: TensorRT provider and libraries present")
    if "cuda" in available:
        skipped = " (TensorRT provider offered but libnvinfer not loadable)" if "tensorrt" in available else ""
        return ProviderChoice("cuda", f"auto: CUDA provider present{skipped}")
    if "openvino" in available:
        # fp32 on OpenVINO (exact f32) measured 0.82x-1.12x ONNX Runtime's fp32 in five runs of
        # benchmarks/throughput.py --issue-13, with about 2x its memory: not a clear win, so auto keeps ONNX Runtime
        return ProviderChoice(
            "cpu", f"auto: no GPU; {precision} runs on ONNX Runtime's CPU provider (OpenVINO is installed: it is "
            "auto's pick for bf16 and the OpenVINO int8s, and provider='openvino' runs fp32 there too)"
        )
    return ProviderChoice("cpu", "auto: no GPU provider in this onnxruntime build and no OpenVINO")


def validation_provider(precision: str) -> str:
    """The engine a precision is validated on (at export and by verify): OpenVINO for its own precisions, ONNX
    Runtime's CPU otherwise."""
    return "openvino" if precision in OPENVINO_ONLY else "cpu"


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
            f"Use provider='openvino' ({OPENVINO_INSTALL}), or precision 'fp32' / 'int8' on ONNX Runtime"
        )
    return ort_engine.OrtEngine.load(
        model_dir, manifest, precision, provider,
        threads=threads, max_batch=max_batch, max_length=max_length, device_id=device_id,
    )
