"""A portable static int8: one QDQ ONNX file that ONNX Runtime and OpenVINO both run, for comparison with the
engine-specific int8-static (an OpenVINO IR) that crossonnx ships.

The same NNCF recipe as int8-static (``nncf_static_int8``: asymmetric activations, SmoothQuant, the same calibration
pairs) on the unfused fp32 graph of an export made with ``tensorrt=True`` (the fused graph's ``Attention`` ops have
no QDQ form), with the same nodes left in float: int8-static's plan (the classifier head and its float
down-projections) and the MatMuls that multiply two activations (attention). NNCF's ONNX backend writes
QuantizeLinear / DequantizeLinear pairs, which both engines read. Why crossonnx ships the IR instead:
docs/design/int8-static-ir.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from crossonnx.exporter.openvino_int8 import nncf_static_int8

Feed = dict[str, np.ndarray]
OPENVINO_SUFFIX = "/WithoutBiases"  # OpenVINO's name for a Gemm's MatMul part, in int8-static's plan


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes neither of whose inputs is a weight (attention's query x key and probabilities x value)."""
    weights = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type == "MatMul" and not any(name in weights for name in node.input)]


def quantize_qdq_static(unfused: Path, out: Path, feeds: list[Feed], plan_float: list[str]) -> dict[str, Any]:
    """Write ``out``: ``unfused`` quantized by int8-static's recipe, with the nodes of ``plan_float`` (int8-static's
    ``float_matmuls``) and attention's MatMuls in float; returns what it did."""
    model = onnx.load(str(unfused))
    nodes = {node.name for node in model.graph.node}
    keep_float = [name.removesuffix(OPENVINO_SUFFIX) for name in plan_float]
    missing = [name for name in keep_float if name not in nodes]
    if missing:
        raise ValueError(f"{unfused} has no node named {missing[0]!r} to keep in float, as int8-static's plan says")
    keep_float += activation_matmuls(model)
    quantized = nncf_static_int8(model, feeds, keep_float)
    onnx.save(quantized, str(out))
    dequantized = {node.output[0] for node in quantized.graph.node if node.op_type == "DequantizeLinear"}
    weight_nodes = [node for node in quantized.graph.node if node.op_type in ("MatMul", "Gemm")]
    int8 = [node.name for node in weight_nodes if node.input[0] in dequantized and node.input[1] in dequantized]
    return {"quantizer": "NNCF (int8-static's recipe), QDQ ONNX", "calibration_feeds": len(feeds),
            "int8_matmuls": len(int8), "float_matmuls": sorted({node.name for node in weight_nodes} - set(int8))}
