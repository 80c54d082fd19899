"""What this machine has installed, probed without crossonnx, so provider tests do not compare crossonnx with itself.

The precision table (crossonnx/precisions.py) says which providers run each precision and what building it needs;
what this machine offers is probed here, independently of crossonnx's own probes.
"""

from __future__ import annotations

import ctypes
import importlib.util

import onnxruntime as ort

from crossonnx.precisions import (
    NEEDS_CPU_BF16,
    NEEDS_NNCF,
    NEEDS_OPENVINO,
    OPENVINO,
    PRECISIONS,
    ROWS,
    TENSORRT,
    VALIDATION_NEEDS,
)


def expected_auto(precision: str) -> str:
    """The auto rule, written out from what is installed here (independently of crossonnx's own probe).

    A precision only OpenVINO runs: OpenVINO. Otherwise TensorRT (its provider and libnvinfer; the precisions the
    table lets it run) > CUDA > ONNX Runtime CPU.
    """
    row = PRECISIONS.get(precision)
    if row is not None and row.providers == (OPENVINO,):
        return OPENVINO
    offered = ort.get_available_providers()
    libnvinfer = any(_loads(name) for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"))
    if "TensorrtExecutionProvider" in offered and libnvinfer and row is not None and TENSORRT in row.providers:
        return "tensorrt"
    if "CUDAExecutionProvider" in offered:
        return "cuda"
    return "cpu"


def _loads(library: str) -> bool:
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def cpu_has_bf16() -> bool:
    """bf16 arithmetic in the CPU's own flags (Linux /proc/cpuinfo): AVX-512 BF16 or AMX."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = set(handle.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _met(need: str) -> bool:
    if need in (NEEDS_OPENVINO, NEEDS_NNCF):
        return importlib.util.find_spec(need) is not None
    if need == NEEDS_CPU_BF16:
        return cpu_has_bf16()
    raise ValueError(f"no probe for {need!r}")


def expected_default_precisions() -> set[str]:
    """What an export without --precision writes here: the table's default precisions whose build needs (OpenVINO,
    NNCF) this machine meets; one whose validation needs what it lacks (a CPU with bf16) is written all the same,
    pending validation (``expected_pending``)."""
    return {row.name for row in ROWS
            if row.default and all(_met(need) for need in row.needs if need not in VALIDATION_NEEDS)}


def expected_pending() -> set[str]:
    """The precisions of ``expected_default_precisions`` that an export here writes pending validation."""
    return {name for name in expected_default_precisions()
            if not all(_met(need) for need in PRECISIONS[name].needs if need in VALIDATION_NEEDS)}
