"""Execution provider choice and ONNX Runtime session options."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from crossonnx.errors import ModelFolderError, ProviderUnavailableError
from crossonnx.providers import cuda_options, tensorrt_loadable

logger = logging.getLogger("crossonnx")

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
AUTO_ORDER = ("tensorrt", "cuda", "cpu")


GPU_INSTALL_HINT = (
    "Install the GPU build with: pip uninstall -y onnxruntime && pip install crossonnx-gpu "
    "(see README, GPU), or use provider='cpu'."
)
TENSORRT_INSTALL_HINT = (
    "ONNX Runtime offers the TensorRT provider but the TensorRT libraries (libnvinfer) cannot be loaded: "
    "pip install tensorrt (matching your CUDA major version), or use provider='cuda'."
)


@dataclass(frozen=True)
class ProviderChoice:
    """The provider a session will use and why it was chosen (what ``auto`` reports)."""

    provider: str
    reason: str


def available_providers() -> list[str]:
    """Short names of the providers this onnxruntime build offers, in crossonnx's preference order."""
    offered = set(ort.get_available_providers())
    return [name for name in AUTO_ORDER if PROVIDERS[name] in offered]


def resolve_provider(
    provider: str, available: list[str] | None = None, tensorrt_ready: bool | None = None
) -> ProviderChoice:
    """'auto' or a short/long provider name -> an available provider and the reason, or a clear error.

    ``auto`` prefers TensorRT > CUDA > CPU, and takes TensorRT only when its libraries load. ``available`` and
    ``tensorrt_ready`` default to what this machine has; tests pass them to cover other machines.
    """
    if not isinstance(provider, str):
        raise TypeError(f"provider must be a string, got {type(provider).__name__}")
    available = available_providers() if available is None else list(available)
    if tensorrt_ready is None:
        tensorrt_ready = "tensorrt" in available and tensorrt_loadable()
    wanted = provider.strip().lower()
    if wanted == "auto":
        if "tensorrt" in available and tensorrt_ready:
            return ProviderChoice("tensorrt", "auto: TensorRT provider and libraries present")
        if "cuda" in available:
            skipped = " (TensorRT provider offered but libnvinfer not loadable)" if "tensorrt" in available else ""
            return ProviderChoice("cuda", f"auto: CUDA provider present{skipped}")
        return ProviderChoice("cpu", "auto: no GPU provider in this onnxruntime build (onnxruntime CPU wheel)")
    by_long_name = {long.lower(): short for short, long in PROVIDERS.items()}
    short = by_long_name.get(wanted, wanted)
    if short not in PROVIDERS:
        raise ProviderUnavailableError(f"unknown provider {provider!r}; use 'auto' or one of: {', '.join(PROVIDERS)}")
    if short not in available:
        hint = "" if short == "cpu" else " " + GPU_INSTALL_HINT
        raise ProviderUnavailableError(
            f"provider {short!r} is not available in this onnxruntime build "
            f"(available: {', '.join(available)}).{hint}"
        )
    if short == "tensorrt" and not tensorrt_ready:
        raise ProviderUnavailableError(TENSORRT_INSTALL_HINT)
    return ProviderChoice(short, "requested")


def default_threads() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class SessionConfig:
    """What a session is created with; kept so that callers can report it."""

    provider: str
    threads: int
    provider_chain: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def session_options(threads: int) -> ort.SessionOptions:
    """CPU-side options: explicit thread counts, full graph optimisation, no per-shape memory plan."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Batches change shape all the time: a memory pattern planned for one shape only costs time and memory.
    options.enable_mem_pattern = False
    # Smaller, shrinking work blocks per thread: +7% on small models (TinyBERT-L-2), neutral on larger ones.
    options.add_session_config_entry("session.dynamic_block_base", "4")
    options.log_severity_level = 3
    return options


def create_session(
    model_path: Path,
    provider: str,
    threads: int,
    provider_options: dict[str, Any] | None = None,
) -> tuple[ort.InferenceSession, SessionConfig]:
    """An InferenceSession on ``provider`` (already resolved); errors if the provider silently fell back."""
    chain: list[tuple[str, dict[str, Any]]] = []
    if provider == "tensorrt":
        trt = dict(provider_options or {})
        chain.append((PROVIDERS["tensorrt"], trt))
        chain.append((PROVIDERS["cuda"], cuda_options(int(trt.get("device_id", 0)))))
    elif provider == "cuda":
        chain.append((PROVIDERS["cuda"], dict(provider_options if provider_options is not None else cuda_options())))
    chain.append((PROVIDERS["cpu"], {}))
    try:
        session = ort.InferenceSession(
            str(model_path),
            sess_options=session_options(threads),
            providers=[name for name, _ in chain],
            provider_options=[opts for _, opts in chain],
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        message = str(exc)
        if "Protobuf parsing failed" in message or "INVALID_PROTOBUF" in message or "ModelProto" in message:
            raise ModelFolderError(
                f"{model_path} is not a readable ONNX file ({message.splitlines()[0]}). "
                f"Re-export it with: crossonnx export <model> --out {model_path.parent}"
            ) from None
        raise
    active = session.get_providers()
    if provider != "cpu" and active[0] != PROVIDERS[provider]:
        raise ProviderUnavailableError(
            f"onnxruntime fell back from {provider} to {active[0]}: the {provider} libraries could not be "
            "loaded (CUDA/cuDNN/TensorRT missing or mismatched). Run with provider='cpu' or fix the GPU install."
        )
    return session, SessionConfig(provider=provider, threads=threads, provider_chain=chain)
