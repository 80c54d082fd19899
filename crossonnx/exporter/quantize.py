"""int8 variant: dynamic (weight-only calibration-free) quantization of the plain graph's MatMuls."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx

from crossonnx.exporter.optimize import head_node_names


def quantize_int8(plain: Path, out: Path) -> dict[str, Any]:
    """Per-channel int8 weights, uint8 activations quantized at run time; the classifier head stays fp32."""
    logging.getLogger("root").setLevel(logging.ERROR)  # quantize_dynamic warns on the root logger
    from onnxruntime.quantization import QuantType, quantize_dynamic

    head = head_node_names(onnx.load(str(plain), load_external_data=False))
    options = {
        "op_types_to_quantize": ["MatMul"],
        "per_channel": True,
        "reduce_range": True,  # 7-bit weights: no int16 saturation in U8S8 kernels on CPUs without VNNI
        "weight_type": QuantType.QInt8,
        "nodes_to_exclude": head,
    }
    quantize_dynamic(str(plain), str(out), extra_options={"MatMulConstBOnly": True}, **options)
    return {
        "scheme": "dynamic",
        "graph": "plain",
        "op_types": options["op_types_to_quantize"],
        "per_channel": True,
        "reduce_range": True,
        "weight_type": "int8",
        "activation_type": "uint8 (dynamic)",
        "fp32_nodes": head,
    }
