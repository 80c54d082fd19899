"""Where an OpenVINO precision spends its time, and how close its matrix multiplications run to this CPU's peak.

The profile runs the model folder's own graph with the runtime engine's compile options plus ``PERF_COUNT``, over
the batches the runtime plans for a workload, and adds up OpenVINO's per-layer times by kind:

- ``int8 matmul`` / ``float matmul``: FullyConnected layers (weight MatMuls), by the precision they ran in;
- ``attention``: the fused Snippets subgraphs that hold attention's softmax (query x key, softmax, x value);
- ``other``: everything else (layer norms, residual adds, quantize / dequantize steps, splits, transposes).

The work each kind did comes from the fp32 graph reshaped to each batch's shape (2 x multiply-adds of every weight
MatMul and of attention's two activation MatMuls), so each kind's rate is work / time. The peak is one weight
MatMul of the model's largest shape alone, at the workload's typical batch, in the same arithmetic (bf16, f32, or
int8 through a FakeQuantize pair, the pattern NNCF writes); its kernel name is reported with it. What the profile
showed and what was decided from it: docs/design/engine-profile.md.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.batching import plan_batches
from crossonnx.engines import Engine
from crossonnx.engines.openvino import OpenVinoEngine
from crossonnx.exporter.openvino_int8 import attention_matmuls, weight_matmuls
from crossonnx.manifest import load_manifest
from crossonnx.tokenization import PairTokenizer

Feed = dict[str, np.ndarray]
KINDS = ("int8 matmul", "float matmul", "attention", "other")


@dataclass(frozen=True)
class Work:
    """Operations (2 x multiply-adds) of one forward pass at one batch shape."""

    matmuls: dict[str, float]  # per weight MatMul of the fp32 graph, by name
    attention: float  # attention's activation MatMuls, all layers
    matmul_shapes: list[tuple[int, int]]  # (K, N) of each weight MatMul


def workload_feeds(model_dir: Path, engine: Engine, pairs: list[tuple[str, str]], batch_size: int) -> list[Feed]:
    """The padded batches the runtime would run for ``pairs`` on ``engine`` (length-sorted, under its token
    budget), as ``CrossEncoder`` plans them."""
    manifest = load_manifest(model_dir)
    tokenizer = PairTokenizer(model_dir / manifest.tokenizer.file, manifest.tokenizer, manifest.max_length,
                              engine.input_names)
    encoded = tokenizer.encode(pairs)
    return [tokenizer.batch(encoded, rows)
            for rows in plan_batches(encoded.lengths, batch_size, engine.token_budget)]


def forward_work(fp32_graph: Path, shapes: set[tuple[int, int]]) -> dict[tuple[int, int], Work]:
    """Operations of one pass at each (rows, tokens) shape, from the fp32 graph reshaped to it."""
    import openvino as ov

    graph = ov.Core().read_model(str(fp32_graph))
    out: dict[tuple[int, int], Work] = {}
    for shape in sorted(shapes):
        model = graph.clone()
        model.reshape({port.get_any_name(): list(shape) for port in model.inputs})
        ops_of, shape_of = {}, {}
        for op in model.get_ordered_ops():
            if op.get_type_name() == "MatMul":
                a = op.input(0).get_partial_shape().to_shape()
                result = op.get_output_partial_shape(0).to_shape()
                inner = a[-2] if op.get_attributes().get("transpose_a") else a[-1]
                ops_of[op.get_friendly_name()] = 2.0 * float(np.prod(result)) * inner
                shape_of[op.get_friendly_name()] = (int(inner), int(result[-1]))
        weights = [op.get_friendly_name() for op in weight_matmuls(model)]
        out[shape] = Work(matmuls={name: ops_of[name] for name in weights},
                          attention=sum(ops_of[name] for name in attention_matmuls(model)),
                          matmul_shapes=[shape_of[name] for name in weights])
    return out


def kind_of(layer_type: str, runtime_precision: str, original_names: str) -> str:
    """The profile's kind of one runtime layer: a FullyConnected runs int8 when its runtime precision is int8
    (static FakeQuantize or run-time quantization of int8 weights); a Snippets subgraph holding a Softmax is
    attention."""
    if layer_type.startswith("FullyConnected"):
        return "int8 matmul" if runtime_precision.lower() in ("i8", "u8") else "float matmul"
    if layer_type == "Subgraph" and "softmax" in original_names.lower():
        return "attention"
    return "other"


def float_matmul_names(details: dict[str, Any]) -> set[str]:
    """Weight MatMuls an int8 precision's plan keeps in float (int8-static: ``float_matmuls``; int8-dynamic: the
    MatMuls among ``float_weights``)."""
    return set(details.get("float_matmuls") or details.get("float_weights") or ())


def model_folder(path: Path | None, work: Path) -> Path:
    """The given export, or the throughput benchmark's export of the reference model under ``work`` (made there if
    missing)."""
    if path is not None:
        return path
    from crossonnx.checkpoints.stsb_minilm import build_reference_model
    from crossonnx.exporter.pipeline import export_model

    out = work / "onnx" / "stsb-minilm-l6"
    if not (out / "crossonnx.json").is_file():
        export_model(str(build_reference_model()), out=out)
    return out


def open_openvino(model_dir: Path, precision: str, threads: int) -> OpenVinoEngine:
    """The runtime's OpenVINO engine for ``precision`` (its compile options are what the profile runs)."""
    return OpenVinoEngine.load(model_dir, load_manifest(model_dir), precision, threads=threads)


def profile_engine(model_dir: Path, engine: OpenVinoEngine, feeds: list[Feed], reps: int = 3) -> dict[str, Any]:
    """Time of ``engine``'s graph over ``feeds`` (compiled with the engine's own options and ``PERF_COUNT``), the
    fastest of ``reps`` passes, split by kind; and how many FullyConnected layers ran as each kind.

    Each batch runs twice in a row. The first run, after a batch of another shape as in real use, gives the
    workload's wall time; the second, at an unchanged shape, gives the per-layer counters and the "settled" wall
    time. After a shape change OpenVINO re-prepares its layers; that cost is the difference of the two wall times,
    reported on its own. The counters add up to a few percent over the wall time (OpenVINO prepares layers while
    others run), so shares are of their sum.
    """
    import openvino as ov

    config = {key: value for key, value in engine.config.items() if key != "CACHE_DIR"}
    compiled = ov.Core().compile_model(str(model_dir / engine.graph_file), "CPU", {**config, "PERF_COUNT": True})
    kinds = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kinds[op.get_friendly_name()] = kind_of(*(info[key].astype(str) for key in (
            "layerType", "runtimePrecision", "originalLayersNames")))
    request = compiled.create_infer_request()
    for feed in feeds:  # every shape once: first-time kernel preparation stays out of the timing
        request.infer(feed)
    best: dict[str, Any] = {"wall_ms": float("inf")}
    kernels: dict[str, set[str]] = defaultdict(set)
    for _ in range(reps):
        totals, wall, settled = dict.fromkeys(KINDS, 0.0), 0.0, 0.0
        for feed in feeds:
            started = time.perf_counter()
            request.infer(feed)
            between = time.perf_counter()
            request.infer(feed)
            wall, settled = wall + between - started, settled + time.perf_counter() - between
            for layer in request.profiling_info:
                kind = kinds.get(layer.node_name, "other")
                totals[kind] += layer.real_time.total_seconds() * 1000
                if kind != "other":
                    kernels[kind].add(layer.exec_type)
        if wall < best["wall_ms"]:
            best = {"wall_ms": wall * 1000, "settled_wall_ms": settled * 1000, "ms": totals}
    layers = {kind: sum(k == kind for k in kinds.values()) for kind in ("int8 matmul", "float matmul")}
    return {"executes": engine.executes, **best, "matmul_layers": layers,
            "kernels": {kind: sorted(names) for kind, names in kernels.items()}}


def kind_rates(profile: dict[str, Any], work: list[Work], float_names: set[str] | None) -> dict[str, dict[str, float]]:
    """G operations, milliseconds and G operations/s of each matmul kind and of attention over the profiled feeds
    (``work``: one entry per feed). ``float_names``: the weight MatMuls an int8 plan keeps in float (None: a float
    precision, every MatMul float)."""
    ops = dict.fromkeys(("int8 matmul", "float matmul", "attention"), 0.0)
    for item in work:
        ops["attention"] += item.attention
        for name, count in item.matmuls.items():
            ops["float matmul" if float_names is None or name in float_names else "int8 matmul"] += count
    return {kind: {"gops": count / 1e9, "ms": profile["ms"][kind],
                   "gops_per_s": count / 1e6 / profile["ms"][kind] if profile["ms"][kind] else 0.0}
            for kind, count in ops.items() if count}


def matmul_peak(hint: str, tokens: int, inner: int, outer: int, threads: int, int8: bool, reps: int = 20) -> dict:
    """One weight MatMul alone ([tokens, inner] x [inner, outer]): its rate in G operations/s and its kernel."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([tokens, inner], ov.Type.f32, name="x")
    weight = rng.standard_normal((inner, outer)).astype(np.float32) * 0.05
    if int8:
        low, high = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
        act = ops.fake_quantize(x, low, high, low, high, 256)  # activations, per tensor
        scale = np.abs(weight).max(axis=0, keepdims=True) / 127  # weights: symmetric int8 per output channel
        stored = ops.constant(np.round(weight / scale).astype(np.int8))
        dequantized = ops.multiply(ops.convert(stored, ov.Type.f32), ops.constant(scale.astype(np.float32)))
        result = ops.matmul(act, dequantized, False, False)
    else:
        result = ops.matmul(x, ops.constant(weight), False, False)
    model = ov.Model([result], [x], "matmul")
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "NUM_STREAMS": 1,
                                                      "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    feed = {"x": rng.standard_normal((tokens, inner)).astype(np.float32)}
    for _ in range(3):
        request.infer(feed)
    best = float("inf")
    for _ in range(reps):
        request.infer(feed)
        fc = [layer for layer in request.profiling_info if layer.node_type.startswith("FullyConnected")]
        best = min(best, sum(layer.real_time.total_seconds() for layer in fc))
    kernel = ",".join(sorted({layer.exec_type for layer in fc}))
    return {"shape": [tokens, inner, outer], "gops": 2 * tokens * inner * outer / best / 1e9, "kernel": kernel,
            "arithmetic": "int8" if int8 else hint}
