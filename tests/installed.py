"""What this machine has installed, probed without crossonnx, so provider tests do not compare crossonnx with itself."""

from __future__ import annotations

import ctypes
import importlib.util

import onnxruntime as ort


def expected_auto(precision: str) -> str:
    """The auto rule, written out from what is installed here (independently of crossonnx's own probe).

    bf16, int8-static and int8-dynamic: OpenVINO (only it runs them). Otherwise TensorRT (its provider and
    libnvinfer; fp32 and fp16 only) > CUDA > ONNX Runtime CPU.
    """
    if precision in ("bf16", "int8-static", "int8-dynamic"):
        return "openvino"
    offered = ort.get_available_providers()
    libnvinfer = any(_loads(name) for name in ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"))
    if "TensorrtExecutionProvider" in offered and libnvinfer and precision in ("fp32", "fp16"):
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


def expected_default_precisions() -> set[str]:
    """What an export without --precision writes here: fp32, fp16, int8; int8-static and int8-dynamic with
    OpenVINO and NNCF;
    bf16 with OpenVINO on a CPU with bf16."""
    out = {"fp32", "fp16", "int8"}
    if importlib.util.find_spec("openvino") is not None:
        if importlib.util.find_spec("nncf") is not None:
            out.update({"int8-static", "int8-dynamic"})
        if cpu_has_bf16():
            out.add("bf16")
    return out
