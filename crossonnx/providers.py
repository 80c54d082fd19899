"""GPU execution-provider options derived from the model and the user's limits (CUDA, TensorRT).

Nothing here needs a GPU: the options, shape profiles and cache keys are plain data, so they are tested on
the CPU. ``session.py`` hands them to ONNX Runtime.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# TensorRT wants the graph before ONNX Runtime's CPU-oriented fusions (its contrib ops are not TensorRT layers).
UNFUSED_GRAPH = "fp32-unfused"
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so")
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_libs", "tensorrt-cu13-libs")
DEFAULT_MAX_BATCH = 64
OPT_BATCH = 32
OPT_LENGTH = 128


@dataclass(frozen=True)
class Profile:
    """The input shapes a TensorRT engine is built for: any batch in 1..max_batch, any length in 1..max_length.

    One profile covers every shape the runtime can send (its batches never exceed ``max_batch`` rows and its
    tokenizer never exceeds ``max_length``), so no request in service triggers an engine rebuild.
    """

    max_batch: int
    max_length: int
    opt_batch: int = OPT_BATCH
    opt_length: int = OPT_LENGTH

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_length < 2:
            raise ValueError(f"profile needs max_batch >= 1 and max_length >= 2, got {self}")

    def shapes(self, input_names: list[str]) -> dict[str, str]:
        """``trt_profile_{min,opt,max}_shapes`` strings, e.g. ``input_ids:1x1,attention_mask:1x1``."""
        opt_batch = min(self.opt_batch, self.max_batch)
        opt_length = min(self.opt_length, self.max_length)

        def spec(batch: int, length: int) -> str:
            return ",".join(f"{name}:{batch}x{length}" for name in input_names)

        return {
            "trt_profile_min_shapes": spec(1, 1),
            "trt_profile_opt_shapes": spec(opt_batch, opt_length),
            "trt_profile_max_shapes": spec(self.max_batch, self.max_length),
        }


def gpu_name(device_id: int = 0) -> str:
    """The GPU's product name from nvidia-smi, or 'unknown-gpu' when it cannot be read."""
    if shutil.which("nvidia-smi") is None:
        return "unknown-gpu"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={device_id}", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown-gpu"
    return out.splitlines()[0].strip() if out else "unknown-gpu"


def tensorrt_version() -> str | None:
    """The installed TensorRT version (Python distribution, else the loaded library), or None."""
    for dist in TENSORRT_DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    for name in TENSORRT_LIBRARIES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = int(lib.getInferLibVersion())  # e.g. 100800 for 10.8.0
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    return None


def tensorrt_loadable() -> bool:
    """Whether the TensorRT runtime library can be loaded (ONNX Runtime's TensorRT provider needs it)."""
    for name in TENSORRT_LIBRARIES:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def cache_key(model_sha256: str, gpu: str, trt_version: str, fp16: bool, profile: Profile) -> str:
    """Engines are valid only for one graph, GPU model, TensorRT version, precision and shape profile."""
    text = "|".join(
        [model_sha256, gpu, trt_version, "fp16" if fp16 else "fp32", f"{profile.max_batch}x{profile.max_length}"]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tensorrt_options(
    *,
    model_sha256: str,
    input_names: list[str],
    profile: Profile,
    cache_root: Path,
    fp16: bool,
    device_id: int = 0,
    gpu: str | None = None,
    trt_version: str | None = None,
) -> dict[str, Any]:
    """TensorRT provider options: fp16, engine and timing caches in a keyed folder, one shape profile.

    The cache folder is ``cache_root/tensorrt/<key>``, the key covering everything that invalidates an engine,
    so a new model, GPU or TensorRT version builds a new engine instead of loading a wrong one.
    """
    gpu = gpu or gpu_name(device_id)
    trt_version = trt_version or tensorrt_version() or "unknown"
    folder = Path(cache_root) / "tensorrt" / cache_key(model_sha256, gpu, trt_version, fp16, profile)
    return {
        "device_id": device_id,
        "trt_fp16_enable": fp16,
        # LayerNorm accumulates in fp32 even in an fp16 engine: its variance overflows fp16 otherwise
        "trt_layer_norm_fp32_fallback": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(folder),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(folder),
        "trt_max_workspace_size": 4 << 30,
        "trt_builder_optimization_level": 3,
        **profile.shapes(input_names),
    }


def cuda_options(device_id: int = 0) -> dict[str, Any]:
    """CUDA provider options: exact fp32 (no TF32), memory grown only as requested, default-stream copies."""
    return {
        "device_id": device_id,
        "arena_extend_strategy": "kSameAsRequested",
        "use_tf32": 0,
        "do_copy_in_default_stream": 1,
    }
