"""The ONNX Runtime engine: CPU, CUDA and TensorRT sessions, their options and which graph each one runs.

Nothing but ``OrtEngine.load`` needs a GPU: the CUDA/TensorRT options, shape profiles and cache keys are plain
data, so they are tested on the CPU.
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

import numpy as np
import onnxruntime as ort

from crossonnx.errors import ModelFolderError, PrecisionNotExportedError, ProviderUnavailableError
from crossonnx.manifest import UNFUSED_GRAPH, Manifest, check_file
from crossonnx.paths import cache_root
from crossonnx.precisions import PRECISIONS, TENSORRT, runs_on

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
SHORT_NAMES = {long.lower(): short for short, long in PROVIDERS.items()}
AUTO_ORDER = ("tensorrt", "cuda", "cpu")

TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so")
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_libs", "tensorrt-cu13-libs")
DEFAULT_MAX_BATCH = 64
# Padded tokens per model call. On CPU, batches beyond a few thousand tokens are no faster than batches of this
# many, but activation memory grows with them (docs/design/token-budget.md).
TOKEN_BUDGET = 2048
OPT_BATCH = 32
OPT_LENGTH = 128

GPU_INSTALL_HINT = (
    "Install the GPU build with: pip uninstall -y onnxruntime && pip install crossonnx-gpu "
    "(see README, GPU), or use provider='cpu'."
)
# What TensorRT runs (the precision table's rows for it), and the name of its engine arithmetic: fp16 or not
TENSORRT_PRECISIONS = runs_on(TENSORRT)
TENSORRT_ARITHMETIC = {PRECISIONS[name].tensorrt_fp16: name for name in TENSORRT_PRECISIONS}
TENSORRT_INSTALL_HINT = (
    "ONNX Runtime offers the TensorRT provider but the TensorRT libraries (libnvinfer) cannot be loaded: "
    "pip install tensorrt (matching your CUDA major version), or use provider='cuda'."
)


def available_providers() -> list[str]:
    """Short names of the providers this onnxruntime build offers, in crossonnx's preference order."""
    offered = set(ort.get_available_providers())
    return [name for name in AUTO_ORDER if PROVIDERS[name] in offered]


# -- GPU provider options -------------------------------------------------------------------------------------
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
        [model_sha256, gpu, trt_version, TENSORRT_ARITHMETIC[fp16], f"{profile.max_batch}x{profile.max_length}"]
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


# -- the plan: which graph, which options ---------------------------------------------------------------------
def graph_for(
    manifest: Manifest,
    model_dir: Path,
    precision: str,
    provider: str,
    max_batch: int,
    max_length: int,
    device_id: int = 0,
) -> tuple[str, dict[str, Any] | None]:
    """The graph (precision entry) a provider runs for ``precision``, and the provider's options.

    CPU and CUDA run the precision's own graph; TensorRT builds fp32 or fp16 engines from the unfused graph.
    """
    if provider == "cuda":
        return precision, cuda_options(device_id)
    if provider != "tensorrt":
        return precision, None
    if precision not in TENSORRT_PRECISIONS:
        half = TENSORRT_ARITHMETIC[True]
        raise PrecisionNotExportedError(
            f"precision {precision!r} is not supported on TensorRT (its int8 needs static QDQ calibration); "
            f"use precision={half!r} (TensorRT builds {half} from the unfused graph) or provider='cuda'"
        )
    if UNFUSED_GRAPH not in manifest.precisions:
        raise PrecisionNotExportedError(
            f"TensorRT builds its engine from the unfused graph, which this folder lacks (exported: "
            f"{', '.join(sorted(manifest.precisions))}). Re-export with: crossonnx export <model> "
            f"--out {model_dir} --tensorrt --overwrite"
        )
    options = tensorrt_options(
        model_sha256=manifest.entry(UNFUSED_GRAPH).sha256,
        input_names=list(manifest.inputs),
        profile=Profile(max_batch=max_batch, max_length=max_length),
        cache_root=cache_root(),
        fp16=PRECISIONS[precision].tensorrt_fp16,
        device_id=device_id,
    )
    return UNFUSED_GRAPH, options


# -- sessions -------------------------------------------------------------------------------------------------
def session_options(threads: int) -> ort.SessionOptions:
    """CPU-side options: explicit thread counts, full graph optimisation, no per-shape memory plan."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Batches change shape all the time: a memory pattern planned for one shape only costs time and memory.
    options.enable_mem_pattern = False
    # Smaller, shrinking work blocks per thread: faster on small models, neutral on larger ones.
    options.add_session_config_entry("session.dynamic_block_base", "4")
    options.log_severity_level = 3
    return options


def create_session(
    model_path: Path,
    provider: str,
    threads: int,
    provider_options: dict[str, Any] | None = None,
) -> ort.InferenceSession:
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
    return session


class OrtEngine:
    """One ONNX Runtime session. On a GPU the inputs are bound once to device memory (IO binding)."""

    token_budget = TOKEN_BUDGET
    # padded to the longest pair only: int8's activation scales are per tensor, so extra padding would move scores,
    # and ONNX Runtime's CPU memory stays flat over shapes without it (benchmarks/results/soak.md)
    width_multiple = 1

    def __init__(
        self, session: ort.InferenceSession, provider: str, graph_file: str, options: dict[str, Any], device_id: int
    ):
        self.session = session
        self.provider = provider
        self.graph_file = graph_file
        self.provider_options = options
        self.device_id = device_id
        self.input_names = tuple(node.name for node in session.get_inputs())
        self._output = session.get_outputs()[0].name

    @classmethod
    def load(
        cls,
        model_dir: Path,
        manifest: Manifest,
        precision: str,
        provider: str,
        *,
        threads: int,
        max_batch: int,
        max_length: int,
        device_id: int = 0,
    ) -> OrtEngine:
        graph, options = graph_for(manifest, model_dir, precision, provider, max_batch, max_length, device_id)
        entry = manifest.entry(graph)
        session = create_session(check_file(model_dir, entry), provider, threads, options)
        return cls(session, provider, entry.file, options or {}, device_id)

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if self.provider == "cpu":
            return self.session.run([self._output], feed)[0]
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(self._output, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def info(self) -> dict[str, Any]:
        return {
            "engine": "onnxruntime",
            "engine_version": ort.__version__,
            "graph": self.graph_file,
            "provider_options": dict(self.provider_options),
            "executes": "as stored in the graph",
        }
