"""The OpenVINO engine (the ``openvino`` extra): compiles a model folder's graph for the CPU with explicit hints.

OpenVINO's CPU plugin runs bf16 by default wherever the CPU has bf16 (``INFERENCE_PRECISION_HINT``), so an
unhinted fp32 would silently be bf16. Here every precision states what it executes as: its row of the precision
table (crossonnx/precisions.py) names its hint (f32 for exact fp32; bf16, refused on a CPU without bf16), and an
exported precision's manifest entry may name its own (``details["inference_precision"]``, e.g. for the static int8
graph) and compile options (``details["openvino_config"]``). The compiled model is cached (``CACHE_DIR``), so later
processes start faster.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.engines import CPU_ALTERNATIVES
from crossonnx.errors import PrecisionNotExportedError, ProviderUnavailableError, install_command, require_module
from crossonnx.manifest import Manifest, check_file
from crossonnx.paths import cache_root
from crossonnx.precisions import DEFAULT_PRECISION, OPENVINO, OPENVINO_BF16, OPENVINO_F32, ROWS

# precision -> (manifest entry it runs, OpenVINO inference precision unless the entry names its own), from the table
PRECISIONS: dict[str, tuple[str, str]] = {
    row.name: (row.name, row.openvino_hint) for row in ROWS if OPENVINO in row.providers and row.openvino_hint
}
# what ONNX Runtime runs and OpenVINO does not
ONNXRUNTIME_ONLY = tuple(row.name for row in ROWS if OPENVINO not in row.providers)
INSTALL = install_command("openvino")
# OpenVINO's CPU kernels run faster on larger calls than ONNX Runtime's, up to this many padded tokens per call,
# which still bounds activation memory (docs/design/token-budget.md).
TOKEN_BUDGET = 8192
# The CPU plugin keeps the kernels it prepared for each input shape (rows x padded length) in a cache of up to
# 5000 entries by default, and a service sees thousands of distinct shapes: its memory then grows for hours. With
# calls padded to WIDTH_MULTIPLE, predict's batches take at most 32 rows (its default batch_size) x 16 widths (512
# tokens) = 512 shapes, and this capacity holds them all: nothing is evicted and prepared again. A smaller cache
# than the traffic's shapes churns, and churn itself leaves memory behind (the soak measured a capacity of 128 on
# 1-16 rows settling higher than 256 or 512 did), so the capacity covers the shapes instead of trimming them
# (docs/design/bounded-engine-memory.md). None leaves OpenVINO's default (the soak benchmark's unbounded arm).
RUNTIME_CACHE_CAPACITY: int | None = 512
# Calls are padded to a multiple of this many tokens, so a service's traffic maps onto a few shapes per row count
# (16 per row count at 512 tokens) instead of one per length: the kernel cache then holds what the traffic repeats,
# and memory stays flat instead of churning up to the capacity. Padded positions are masked, so scores are
# unchanged: every OpenVINO precision quantizes activations per token or with fixed scales, never per batch.
# 1 pads to the longest pair only (the soak benchmark's unbounded arm).
WIDTH_MULTIPLE = 32


def _instead() -> str:
    """The precisions ONNX Runtime's CPU provider offers instead of bf16 arithmetic, quoted, the exact one first."""
    others = [repr(name) for name in CPU_ALTERNATIVES if name != DEFAULT_PRECISION]
    return " or ".join([f"{DEFAULT_PRECISION!r} (exact)", *others])


def _openvino() -> Any:
    return require_module("openvino", "openvino", "the OpenVINO engine (provider='openvino')")


def cpu_capabilities(core: Any = None) -> list[str]:
    """What OpenVINO's CPU plugin says this CPU can compute in (e.g. FP32, BF16, INT8)."""
    return list((core or _openvino().Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def has_bf16(core: Any = None) -> bool:
    return "BF16" in cpu_capabilities(core)


def float_hint(core: Any = None) -> str:
    """The inference precision for the float operations of a graph exported here: bf16 where the CPU has it."""
    return OPENVINO_BF16 if has_bf16(core) else OPENVINO_F32


def precision_name(hint: Any) -> str:
    """An OpenVINO element type as the plain name it prints (``<Type: 'bfloat16'>`` -> ``bfloat16``)."""
    return str(hint).removeprefix("<Type: '").removesuffix("'>")


def executed_precision(compiled: Any) -> str:
    """What the compiled model really runs, read back from it (not assumed from the file): its inference precision,
    as "int8 + bf16" when int8 matrix multiplications run beside it. A FullyConnected layer with int8 weights runs
    in int8 when its input is quantized too: statically (an int8 primitive) or at run time
    (``DYNAMIC_QUANTIZATION_GROUP_SIZE`` > 0); else the plugin expands the weights to float ("int8 weights + ...")."""
    hint = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    layers = [{key: info[key].astype(str) for key in ("layerType", "runtimePrecision", "primitiveType")}
              for info in (op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops())]
    int8 = [info for info in layers if info["layerType"] == "FullyConnected"
            and info["runtimePrecision"] in ("i8", "u8")]
    if not int8:
        return hint
    static = any(info["primitiveType"].lower().endswith("_i8") for info in int8)
    if static or int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) > 0:
        return f"int8 + {hint}"
    return f"int8 weights + {hint}"


class OpenVinoEngine:
    """One compiled OpenVINO model on the CPU; one infer request per calling thread."""

    provider = "openvino"
    token_budget = TOKEN_BUDGET

    @property
    def width_multiple(self) -> int:
        """Calls are padded to a multiple of this many tokens (``WIDTH_MULTIPLE``, read at call time)."""
        return WIDTH_MULTIPLE

    def __init__(self, compiled: Any, graph_file: str, config: dict[str, Any], version: str):
        self._compiled = compiled
        self.graph_file = graph_file
        self.config = config
        self.version = version
        self.input_names = tuple(port.get_any_name() for port in compiled.inputs)
        self._output = compiled.outputs[0]
        self._local = threading.local()
        self.executes = executed_precision(compiled)

    @classmethod
    def load(cls, model_dir: Path, manifest: Manifest, precision: str, *, threads: int) -> OpenVinoEngine:
        if precision not in PRECISIONS:
            raise PrecisionNotExportedError(
                f"precision {precision!r} does not run on OpenVINO; it runs {', '.join(PRECISIONS)}. "
                f"Use provider='cpu' (ONNX Runtime) for {' and '.join(ONNXRUNTIME_ONLY)}"
            )
        ov = _openvino()
        entry_name, default_hint = PRECISIONS[precision]
        entry = manifest.entry(entry_name)
        hint = str(entry.details.get("inference_precision", default_hint))
        core = ov.Core()
        if hint == OPENVINO_BF16 and not has_bf16(core):
            raise ProviderUnavailableError(
                f"precision {precision!r} was validated with bf16 arithmetic, which this CPU lacks (no AVX-512 BF16 "
                f"or AMX), and crossonnx never falls back to fp32 silently. Use precision={_instead()} "
                "(ONNX Runtime), or export on this CPU (its OpenVINO int8s are then validated with f32)"
            )
        path = check_file(model_dir, entry)
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            "INFERENCE_NUM_THREADS": int(threads),
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "CACHE_DIR": str(cache_root() / "openvino"),
            **({"CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_CAPACITY} if RUNTIME_CACHE_CAPACITY is not None else {}),
            # compile options the export validated this precision with (e.g. dynamic quantization settings)
            **entry.details.get("openvino_config", {}),
        }
        try:
            compiled = core.compile_model(str(path), "CPU", config)
        except RuntimeError as exc:
            raise ProviderUnavailableError(
                f"OpenVINO could not compile {path} ({str(exc).splitlines()[0]}). Use provider='cpu' "
                f"(ONNX Runtime), or reinstall the extra: {INSTALL}"
            ) from None
        return cls(compiled, entry.file, config, ov.__version__)

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        result = self._request().infer(feed)
        return np.asarray(result[self._output], dtype=np.float32)

    def info(self) -> dict[str, Any]:
        return {
            "engine": "openvino",
            "engine_version": self.version,
            "graph": self.graph_file,
            "provider_options": {k: v for k, v in self.config.items() if k != "CACHE_DIR"},
            "executes": self.executes,
        }
