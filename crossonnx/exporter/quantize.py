"""int8 variant: dynamic quantization of the plain graph's MatMuls, with the most sensitive ones kept in fp32.

Where the error comes from is measured, not assumed: every weight MatMul's input activations are captured on
calibration pairs and its int8 output error is simulated in numpy (uint8 asymmetric per-tensor activations, as
ONNX Runtime's DynamicQuantizeLinear makes them, against int8 per-channel weights). The MatMuls are ranked by
that error and the exporter keeps the fewest of the worst in fp32 that bring the whole model within the target
on the calibration pairs (end-to-end, real onnxruntime sessions). The plan is recorded in the manifest.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from crossonnx.exporter.optimize import head_node_names
from crossonnx.metrics import spearman

Feeds = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class Int8Target:
    """What the chosen plan must reach on the calibration pairs against the fp32 graph."""

    min_spearman: float = 0.9995
    max_rel_error: float = 0.05  # mean |int8 - fp32| logit error / std of fp32 logits
    max_fp32_fraction: float = 0.25  # never keep more than this share of the MatMuls in fp32


@dataclass
class Int8Plan:
    """How the int8 file was made; stored in the manifest."""

    scheme: str = "dynamic"
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = True  # 7-bit weights: no int16 saturation in U8S8 kernels on CPUs without VNNI
    fp32_matmuls: list[str] = field(default_factory=list)
    quantized_matmuls: int = 0
    sensitivity: dict[str, float] = field(default_factory=dict)  # worst nodes, simulated relative output error
    search: list[dict[str, Any]] = field(default_factory=list)
    met_target: bool | None = None


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul nodes whose second input is a weight (initializer), outside the classifier head."""
    weights = {init.name for init in model.graph.initializer}
    head = set(head_node_names(model))
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights and n.name not in head]


def write_int8(plain: Path, out: Path, plan: Int8Plan) -> None:
    """quantize_dynamic with the plan's options; the head and ``plan.fp32_matmuls`` stay fp32."""
    logging.getLogger("root").setLevel(logging.ERROR)  # quantize_dynamic warns on the root logger
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(plain), load_external_data=False)
    head = head_node_names(model)
    quantize_dynamic(
        str(plain),
        str(out),
        op_types_to_quantize=["MatMul"],
        per_channel=plan.per_channel,
        reduce_range=plan.reduce_range,
        weight_type=QuantType.QInt8 if plan.weight_type == "int8" else QuantType.QUInt8,
        nodes_to_exclude=head + list(plan.fp32_matmuls),
        extra_options={"MatMulConstBOnly": True},
    )


def _session(path: Path, outputs: list[str] | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if outputs:  # keep captured intermediates intact
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_logits(path: Path, feeds: Feeds) -> np.ndarray:
    session = _session(path)
    return np.concatenate([session.run(None, feed)[0] for feed in feeds]).astype(np.float64)


def _fake_quant_activation(x: np.ndarray) -> np.ndarray:
    """uint8 asymmetric per-tensor quantize-dequantize, range including 0 (DynamicQuantizeLinear)."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / 255.0 or 1.0
    zero = np.clip(np.round(-low / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _fake_quant_weight(w: np.ndarray, plan: Int8Plan) -> np.ndarray:
    """Symmetric int8 (7-bit with reduce_range) per output channel (or per tensor) quantize-dequantize."""
    levels = 63.0 if plan.reduce_range else 127.0
    absmax = np.abs(w).max(axis=0, keepdims=True) if plan.per_channel else np.abs(w).max()
    scale = np.where(absmax == 0, 1.0, absmax / levels)
    return np.clip(np.round(w / scale), -levels, levels) * scale


def simulated_sensitivity(plain: Path, feeds: Feeds, plan: Int8Plan) -> dict[str, float]:
    """Relative Frobenius error of each weight MatMul's output when only that MatMul is quantized."""
    model = onnx.load(str(plain))
    nodes = weight_matmuls(model)
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    wanted = list(dict.fromkeys(node.input[0] for node in nodes))
    existing = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "capture.onnx"
        onnx.save(model, str(path))
        session = _session(path, outputs=wanted)
        num = {node.name: 0.0 for node in nodes}
        den = {node.name: 0.0 for node in nodes}
        for feed in feeds:
            captured = dict(zip(wanted, session.run(wanted, feed), strict=True))
            for node in nodes:
                x = captured[node.input[0]].astype(np.float64)
                w = weights[node.input[1]].astype(np.float64)
                exact = x @ w
                approx = _fake_quant_activation(x) @ _fake_quant_weight(w, plan)
                num[node.name] += float(((approx - exact) ** 2).sum())
                den[node.name] += float((exact**2).sum())
    return {name: (num[name] / den[name]) ** 0.5 if den[name] else 0.0 for name in num}


def _agreement(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    scale = float(reference.std()) or 1.0
    rhos = [spearman(candidate[:, j], reference[:, j]) for j in range(reference.shape[1])]
    return {"spearman": min(rhos), "rel_error": float(np.abs(candidate - reference).mean() / scale)}


def choose_plan(
    plain: Path,
    feeds: Feeds,
    target: Int8Target = Int8Target(),
    log: Callable[[str], None] | None = None,
) -> Int8Plan:
    """Rank MatMuls by simulated error, then keep the fewest of the worst in fp32 that meet ``target``."""
    plan = Int8Plan()
    sensitivity = simulated_sensitivity(plain, feeds, plan)
    ranked = sorted(sensitivity, key=sensitivity.get, reverse=True)
    reference = run_logits(plain, feeds)
    cap = int(len(ranked) * target.max_fp32_fraction)
    ladder = sorted({k for k in (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48) if k <= cap} | {cap})
    best: tuple[float, int] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        trial_path = Path(tmp) / "trial.onnx"
        for keep in ladder:
            trial = Int8Plan(fp32_matmuls=ranked[:keep])
            write_int8(plain, trial_path, trial)
            measured = _agreement(run_logits(trial_path, feeds), reference)
            met = measured["spearman"] >= target.min_spearman and measured["rel_error"] <= target.max_rel_error
            plan.search.append({"fp32_matmuls": keep, **measured, "met": met})
            if log:
                log(f"int8 with {keep} MatMuls in fp32: Spearman {measured['spearman']:.5f}, "
                    f"rel. error {measured['rel_error']:.4f}{'  (target met)' if met else ''}")
            if met:
                best = (0.0, keep)
                break
            score = (1 - measured["spearman"]) + measured["rel_error"]
            if best is None or score < best[0]:
                best = (score, keep)
    assert best is not None
    keep = best[1]
    plan.fp32_matmuls = ranked[:keep]
    plan.quantized_matmuls = len(ranked) - keep
    plan.met_target = any(step["met"] for step in plan.search)
    plan.sensitivity = {name: round(sensitivity[name], 5) for name in ranked[: max(8, keep)]}
    return plan


def quantize_int8(plain: Path, out: Path, feeds: Feeds | None = None, target: Int8Target = Int8Target(),
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the int8 file; with calibration ``feeds`` the sensitive MatMuls are chosen, else all are quantized."""
    if feeds:
        plan = choose_plan(plain, feeds, target, log)
    else:
        plan = Int8Plan(quantized_matmuls=len(weight_matmuls(onnx.load(str(plain), load_external_data=False))))
    write_int8(plain, out, plan)
    details = asdict(plan)
    details["target"] = asdict(target)
    details["activation_type"] = "uint8, per tensor, computed at run time"
    details["fp32_nodes"] = head_node_names(onnx.load(str(plain), load_external_data=False))
    return details
