"""int8 variant: dynamic quantization of the weight MatMuls, with the first ([CLS]) position kept in fp32.

Where the error comes from (docs/design/ort-int8-plan.md; benchmarks/results/accuracy.md compares the outcome with
plain dynamic int8): activations are quantized per tensor at run time (uint8, ONNX Runtime's DynamicQuantizeLinear),
and the [CLS] token carries massive activations in a few channels, several times larger than the other tokens' at
the feed-forward inputs. One row sets the quantization step for the whole batch, so every other token loses most of
its resolution. The exporter therefore splits each weight MatMul into the first position (fp32 math on fp16-stored
weights, B rows) and the other positions (int8). The int8 rows then get a several times finer step.

On top of that plan, MatMuls are ranked by their simulated int8 error (captured activations, numpy) and the
fewest of the worst are kept fp32 until the whole model meets the target on calibration pairs (real
onnxruntime sessions). The plan is recorded in the manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from crossonnx.exporter.graph_files import (
    Initializers,
    WeightsFile,
    data_file,
    declare_node_domains,
    remove_graph,
    save_self_contained,
)
from crossonnx.exporter.memory import release_memory
from crossonnx.exporter.optimize import head_node_names
from crossonnx.exporter.search import fewest_that_meet
from crossonnx.metrics import logit_agreement

Feeds = list[dict[str, np.ndarray]]
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Int8Target:
    """What the chosen plan must reach on the calibration pairs against the fp32 graph."""

    min_spearman: float = 0.999
    max_rel_error: float = 0.05  # mean |int8 - fp32| logit error / std of fp32 logits
    max_fp32_fraction: float = 0.25  # never keep more than this share of the MatMuls fully fp32


@dataclass
class Int8Plan:
    """How the int8 file was made; stored in the manifest."""

    scheme: str = "dynamic"
    weight_type: str = np.dtype(np.int8).name  # signed int8 (else uint8)
    per_channel: bool = True
    reduce_range: bool = True  # 7-bit weights: no int16 saturation in U8S8 kernels on CPUs without VNNI
    first_position_fp32: bool = True  # the [CLS] row of every MatMul in fp32 math (fp16-stored weights)
    fp32_matmuls: list[str] = field(default_factory=list)  # MatMuls left entirely in fp32
    quantized_matmuls: int = 0
    sensitivity: dict[str, float] = field(default_factory=dict)  # worst nodes, simulated relative output error
    search: list[dict[str, Any]] = field(default_factory=list)
    met_target: bool | None = None


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul nodes whose second input is a weight (initializer), outside the classifier head."""
    weights = {init.name for init in model.graph.initializer}
    head = set(head_node_names(model))
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights and n.name not in head]


def split_first_position(model: onnx.ModelProto, names: set[str]) -> list[str]:
    """Rewrite each named MatMul as Concat(MatMul(x[:, :1]), MatMul(x[:, 1:])); returns the 'rest' MatMuls."""
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array([0], dtype=np.int64), "crossonnx_split_0"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "crossonnx_split_1"),
        numpy_helper.from_array(np.array([INT64_MAX], dtype=np.int64), "crossonnx_split_end"),
    ])
    nodes, rest, sliced = [], [], set()
    for node in model.graph.node:
        if node.name not in names:
            nodes.append(node)
            continue
        x, w = node.input
        first_x, rest_x = f"{x}__first", f"{x}__rest"
        if x not in sliced:  # Q, K and V share their input: slice it once
            sliced.add(x)
            nodes.append(helper.make_node("Slice", [x, "crossonnx_split_0", "crossonnx_split_1", "crossonnx_split_1"],
                                          [first_x], name=f"{node.name}__slice_first"))
            nodes.append(helper.make_node("Slice", [x, "crossonnx_split_1", "crossonnx_split_end",
                                                    "crossonnx_split_1"], [rest_x], name=f"{node.name}__slice_rest"))
        y = node.output[0]
        nodes.append(helper.make_node("MatMul", [first_x, w], [f"{y}__first"], name=f"{node.name}__first"))
        nodes.append(helper.make_node("MatMul", [rest_x, w], [f"{y}__rest"], name=f"{node.name}__rest"))
        nodes.append(helper.make_node("Concat", [f"{y}__first", f"{y}__rest"], [y], name=f"{node.name}__concat",
                                      axis=1))
        rest.append(f"{node.name}__rest")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rest


# Weights are symmetric int8 per output channel; with reduce_range, 7-bit: [-64, 64] (ONNX Runtime's own range, so
# its U8S8 kernels never saturate their 16-bit sums on CPUs without VNNI)
WEIGHT_RANGE = {True: 64, False: 127}


def quantized_weight(w: np.ndarray, reduce_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-column int8 of a MatMul weight (K, N): the int8 values and the (N,) float32 scales."""
    levels = WEIGHT_RANGE[reduce_range]
    absmax = np.abs(w).max(axis=0).astype(np.float32)
    scale = np.where(absmax == 0, np.float32(1.0), 2 * absmax / np.float32(2 * levels)).astype(np.float32)
    return np.clip(np.round(w / scale), -levels, levels).astype(np.int8), scale


def write_int8(plain: Path, out: Path, plan: Int8Plan, apart: bool = False) -> None:
    """Quantize ``plain`` according to ``plan``; the classifier head and ``plan.fp32_matmuls`` stay fp32.

    ONNX Runtime's dynamic quantization, written one weight at a time: each weight MatMul becomes
    DynamicQuantizeLinear(x) -> MatMulInteger -> Cast -> Mul(x scale x weight scales), the pattern ONNX Runtime
    fuses into DynamicQuantizeMatMul when it loads the file. Weights are read from the plain graph's external data
    and each quantized weight goes to a scratch file beside it as soon as it is made, so memory holds one weight's
    work, not the model's quantized weights, then the output file's copy of them.

    ``apart``: ``out`` (which must be beside ``plain``) keeps its weights outside: the new ones in its data file
    (``graph_files.data_file``), the others in the plain graph's. ONNX Runtime then maps them instead of holding
    the parsed file and a copy of every weight; a trial file, removed with ``graph_files.remove_graph``.
    """
    if apart and out.parent != plain.parent:
        raise ValueError(f"a graph with its weights apart must be beside {plain}: {out}")
    model = onnx.load(str(plain), load_external_data=False)
    targets = {n.name for n in weight_matmuls(model)} - set(plan.fp32_matmuls)
    if plan.first_position_fp32:
        targets = set(split_first_position(model, targets))
    # beside the plain graph's weights: one folder to read from
    scratch = data_file(out) if apart else plain.with_name(f".{out.name}.weights")
    try:
        with open(scratch, "wb") as handle:
            nodes, new = _quantized_nodes(model, Initializers(plain.parent, model), targets, plan,
                                          WeightsFile(handle, scratch.name))
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {name for node in nodes for name in node.input}
        kept = [init for init in model.graph.initializer if init.name in used]  # external ones stay so until written
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        model.graph.initializer.extend(tensor for tensor in new if tensor.name in used)
        if apart:
            declare_node_domains(model)
            onnx.save(model, str(out))
        else:
            save_self_contained(model, plain.parent, out)
    finally:
        if not apart:
            scratch.unlink(missing_ok=True)


def _quantized_nodes(model: onnx.ModelProto, arrays: Initializers, targets: set[str], plan: Int8Plan,
                     weights: WeightsFile) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``model``'s nodes with the ``targets`` MatMuls quantized, and the new weights' graph entries (their values
    written to ``weights`` one at a time)."""
    new: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    quantized_inputs: dict[str, tuple[str, str, str]] = {}  # x -> (x_q, x_scale, x_zero_point)
    quantized_weights: set[str] = set()
    for node in model.graph.node:
        if node.name not in targets:
            nodes.append(node)
            continue
        x, weight = node.input
        y = node.output[0]
        if x not in quantized_inputs:
            quantized_inputs[x] = (f"{x}_quantized", f"{x}_scale", f"{x}_zero_point")
            nodes.append(helper.make_node("DynamicQuantizeLinear", [x], list(quantized_inputs[x]),
                                          name=f"{x}_QuantizeLinear"))
        x_q, x_scale, x_zero = quantized_inputs[x]
        if weight not in quantized_weights:
            quantized_weights.add(weight)
            fp32 = arrays[weight]
            values, scales = quantized_weight(fp32, plan.reduce_range)
            new.append(weights.add(f"{weight}_quantized", values))
            new.append(weights.add(f"{weight}_scale", scales))
            new.append(weights.add(f"{weight}_zero_point", np.zeros(scales.shape, dtype=np.int8)))
            if plan.first_position_fp32:
                # fp16 keeps the [CLS] path within ~1e-3 relative of fp32 (7-bit int8 weights would cost a third
                # of the int8 variant's rank agreement) at half the bytes of an fp32 copy
                new.append(weights.add(f"{weight}_fp16", fp32.astype(np.float16)))
            del fp32, values
        nodes += [
            helper.make_node("MatMulInteger", [x_q, f"{weight}_quantized", x_zero, f"{weight}_zero_point"],
                             [f"{y}_int32"], name=f"{node.name}_quant"),
            helper.make_node("Cast", [f"{y}_int32"], [f"{y}_int32_cast"], name=f"{node.name}_cast",
                             to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [x_scale, f"{weight}_scale"], [f"{y}_scales"], name=f"{node.name}_scales"),
            helper.make_node("Mul", [f"{y}_int32_cast", f"{y}_scales"], [y], name=f"{node.name}_dequantize"),
        ]
    if plan.first_position_fp32:
        nodes = _first_rows_from_fp16(nodes, quantized_weights)
    return nodes, new


def _first_rows_from_fp16(nodes: list[onnx.NodeProto], quantized: set[str]) -> list[onnx.NodeProto]:
    """The first-position MatMuls of quantized weights read the fp16 copy, cast up to fp32 once at load."""
    out: list[onnx.NodeProto] = []
    cast: set[str] = set()
    for node in nodes:
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else ""
        if weight in quantized:
            if weight not in cast:
                cast.add(weight)
                out.append(helper.make_node("Cast", [f"{weight}_fp16"], [f"{weight}_from_fp16"],
                                            name=f"{weight}_cast", to=onnx.TensorProto.FLOAT))
            node.input[1] = f"{weight}_from_fp16"
        out.append(node)
    return out


def _session(path: Path, keep_intermediates: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if keep_intermediates:
        # the arena stays on: without it every buffer is malloc'ed and freed by the worker threads, glibc keeps
        # what they free in its heaps, and on a large model resident memory grew with every run, far past what
        # one run holds; the arena keeps the largest run's buffers for the next and is freed with the session
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_logits(path: Path, feeds: Feeds) -> np.ndarray:
    session = _session(path)
    return np.concatenate([session.run(None, feed)[0] for feed in feeds]).astype(np.float64)


def _fake_quant_activation(x: np.ndarray) -> np.ndarray:
    """uint8 asymmetric per-tensor quantize-dequantize, range including 0 (DynamicQuantizeLinear), in x's dtype."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = np.float32((high - low) / 255.0 or 1.0)
    zero = np.float32(np.clip(np.round(-low / scale), 0, 255))
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_weight(w: np.ndarray, plan: Int8Plan) -> tuple[np.ndarray, np.ndarray | np.float32]:
    """Symmetric int8 (7-bit with reduce_range) per output channel (or per tensor) quantization: the int8 values
    and their scale, kept apart (a quarter of the weight's bytes); ``_dequantized`` makes the float32 weight."""
    if plan.per_channel:
        return quantized_weight(w, plan.reduce_range)
    levels = WEIGHT_RANGE[plan.reduce_range]
    scale = np.float32(np.abs(w).max() / levels or 1.0)
    return np.clip(np.round(w / scale), -levels, levels).astype(np.int8), scale


def _dequantized(quantized: tuple[np.ndarray, np.ndarray | np.float32]) -> np.ndarray:
    values, scale = quantized
    return values.astype(np.float32) * scale


CAPTURE_BUDGET = 512 * 2**20  # bytes of captured MatMul inputs held at once


def _capture_groups(inputs: dict[str, int], tokens: int, budget: int) -> list[list[str]]:
    """Split the MatMul inputs (name -> width) into runs whose fp32 captures of ``tokens`` fit in ``budget``."""
    groups: list[list[str]] = [[]]
    held = 0
    for name, width in inputs.items():
        size = tokens * width * 4
        if groups[-1] and held + size > budget:
            groups.append([])
            held = 0
        groups[-1].append(name)
        held += size
    return groups


def analyse_matmuls(
    plain: Path, feeds: Feeds, plan: Int8Plan, capture_budget: int = CAPTURE_BUDGET
) -> tuple[set[str], dict[str, float]]:
    """Capture every weight MatMul's input on ``feeds``.

    Returns the MatMuls that only ever see the first position (the [CLS]-only last layer: left fp32, they are
    B rows) and, for the others, the relative Frobenius error of their output when only they are quantized.
    Memory stays bounded on large models: each session exposes only a group of inputs whose captures of the
    largest batch fit in ``capture_budget`` bytes (ONNX Runtime allocates every graph output on every run),
    every capture covers the whole batch (so the per-tensor activation ranges are those of the batch), the
    weights are read from the plain graph's external data (memory-mapped) by the sessions, and the simulation
    holds only the group's int8 weights, reading each fp32 weight when it needs it.
    The simulation runs in float32 (the error it measures is a thousand times above float32's rounding), each
    MatMul as one product of all the batch's rows (one BLAS call, not one per sequence: faster).
    """
    model = onnx.load(str(plain), load_external_data=False)
    dims = {init.name: tuple(init.dims) for init in model.graph.initializer}
    # plain tuples: a NodeProto would keep the whole loaded model alive
    nodes = [(node.name, node.input[0], node.input[1]) for node in weight_matmuls(model)]
    widths = {x: int(dims[w][0]) for _, x, w in nodes}  # input name -> its last dimension
    readers: dict[str, list[tuple[str, str]]] = {}  # input name -> its MatMuls (name, weight): Q, K and V share one
    for name, x, w in nodes:
        readers.setdefault(x, []).append((name, w))
    tokens = max((int(np.prod(next(iter(feed.values())).shape)) for feed in feeds), default=0)
    first_only: set[str] = {name for name, _, _ in nodes}
    num = dict.fromkeys(first_only, 0.0)
    den = dict.fromkeys(first_only, 0.0)
    arrays = Initializers(plain.parent, model)
    path = plain.with_name(f".{plain.stem}.capture.onnx")  # beside the weights file it references
    try:
        for group in _capture_groups(widths, tokens, capture_budget):
            capture = onnx.load(str(plain), load_external_data=False)
            existing = {o.name for o in capture.graph.output}
            capture.graph.output.extend(
                helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in group
                if name not in existing
            )
            onnx.save(capture, str(path))
            del capture
            session = _session(path, keep_intermediates=True)
            # this group's weights in int8 (one group's worth in memory at a time)
            quantized = {w: _fake_quant_weight(arrays[w], plan) for x in group for _, w in readers[x]}
            for feed in feeds:
                width = next(iter(feed.values())).shape[1]
                captured = dict(zip(group, session.run(group, feed), strict=True))
                for input_name in group:
                    x = captured.pop(input_name)  # each capture leaves memory once measured
                    if x.ndim != 3 or x.shape[1] == 1 < width:
                        continue
                    if plan.first_position_fp32:
                        x = x[:, 1:]
                    x = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
                    simulated = _fake_quant_activation(x)
                    for name, weight_name in readers[input_name]:
                        first_only.discard(name)
                        exact = x @ arrays[weight_name]
                        error = simulated @ _dequantized(quantized[weight_name])
                        error -= exact
                        num[name] += float(np.square(error, dtype=np.float64).sum())
                        den[name] += float(np.square(exact, dtype=np.float64).sum())
                        del exact, error
                    del x, simulated
            del session, quantized
    finally:
        path.unlink(missing_ok=True)
    errors = {name: (num[name] / den[name]) ** 0.5 for name in num if name not in first_only and den[name]}
    return first_only, errors


def choose_plan(
    plain: Path,
    feeds: Feeds,
    target: Int8Target = Int8Target(),
    log: Callable[[str], None] | None = None,
    analysis_feeds: Feeds | None = None,
) -> Int8Plan:
    """Keep the fewest of the most error-prone MatMuls in fp32 that bring the model within ``target``: MatMuls
    ranked on ``analysis_feeds`` (default ``feeds``; a sample is enough to rank them, and the ranking is most of a
    large model's export time), the plan checked on ``feeds``."""
    base = Int8Plan()
    first_only, errors = analyse_matmuls(plain, analysis_feeds or feeds, base)
    release_memory()
    ranked = sorted(errors, key=errors.get, reverse=True)
    reference = run_logits(plain, feeds)
    cap = int(len(ranked) * target.max_fp32_fraction)
    ladder = sorted({k for k in (0, 2, 4, 8, 12, 16, 24, 32, 48) if k <= cap} | {cap})
    tried: dict[int, tuple[bool, float]] = {}  # keep -> (met, score)
    # each trial's graph keeps its weights apart, beside the plain graph's (ONNX Runtime maps them: no parsed
    # copy of a self-contained file and of its weights); only the chosen plan is written self-contained
    trial_path = plain.with_name(".int8-trial.onnx")
    try:

        def trial(keep: int) -> bool:
            write_int8(plain, trial_path, Int8Plan(fp32_matmuls=sorted(first_only) + ranked[:keep]), apart=True)
            measured = logit_agreement(run_logits(trial_path, feeds), reference)
            remove_graph(trial_path)
            release_memory()
            met = measured["spearman"] >= target.min_spearman and measured["rel_error"] <= target.max_rel_error
            base.search.append({"fp32_matmuls": keep, **measured, "met": met})
            if log:
                log(f"int8 with {keep} more MatMuls in fp32: Spearman {measured['spearman']:.5f}, "
                    f"rel. error {measured['rel_error']:.4f}{'  (target met)' if met else ''}")
            tried[keep] = (met, (1 - measured["spearman"]) + measured["rel_error"])
            return met

        fewest_that_meet(ladder, trial, most_first=False)  # most models meet it with none in float
    finally:
        remove_graph(trial_path)
    met = [keep for keep, (ok, _) in tried.items() if ok]
    best = (0.0, min(met)) if met else min((score, keep) for keep, (_, score) in tried.items())
    assert best is not None
    keep = best[1]
    base.fp32_matmuls = sorted(first_only) + ranked[:keep]
    base.quantized_matmuls = len(ranked) - keep
    base.met_target = any(step["met"] for step in base.search)
    base.sensitivity = {name: round(errors[name], 5) for name in ranked[: max(8, keep)]}
    return base


def quantize_int8(plain: Path, out: Path, feeds: Feeds | None = None, target: Int8Target = Int8Target(),
                  log: Callable[[str], None] | None = None, analysis_feeds: Feeds | None = None) -> dict[str, Any]:
    """Write the int8 file; with calibration ``feeds`` the plan is measured and chosen, else all are quantized."""
    if feeds:
        plan = choose_plan(plain, feeds, target, log, analysis_feeds)
    else:
        plan = Int8Plan(quantized_matmuls=len(weight_matmuls(onnx.load(str(plain), load_external_data=False))))
    write_int8(plain, out, plan)
    details = asdict(plan)
    details["target"] = asdict(target)
    details["activation_type"] = "uint8, per tensor, computed at run time (first position excluded)"
    details["fp32_nodes"] = head_node_names(onnx.load(str(plain), load_external_data=False))
    return details
