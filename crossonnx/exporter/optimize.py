"""Graph work on the plain export: transformer fusions (fp32) and mixed fp16 conversion."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx

from crossonnx.architectures import architecture
from crossonnx.exporter.graph_files import is_external, save_self_contained, save_weights_apart, working_directory

NORMALIZATION_OPS = (
    "LayerNormalization",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
)
# kept in fp32 by the fp16 variant: they overflow or lose too much in half precision
FP32_OPS = (*NORMALIZATION_OPS, "Softmax")


def _quiet_ort_python_tools() -> None:
    for name in ("onnxruntime.transformers", "fusion", "onnx_model", "optimizer", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)


def head_node_names(model: onnx.ModelProto) -> list[str]:
    """Nodes between the last normalization and the graph output: pooler, classifier, their activations."""
    producers = {out: node for node in model.graph.node for out in node.output}
    head: list[str] = []
    seen: set[str] = set()
    stack = [value.name for value in model.graph.output]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen or node.op_type in NORMALIZATION_OPS:
            continue
        seen.add(node.name)
        head.append(node.name)
        stack.extend(node.input)
    return head


def fuse(plain: Path, out: Path, config: Any, apart: Path | None = None) -> dict[str, Any]:
    """Fuse attention, embedding/skip layer norms and GELU with ORT's transformer optimizer (portable level).

    The optimizer works on the graph without its weights loaded (read from the plain graph's external data file as
    fusions need them), and the fused graph is written one weight at a time: on a large model, one copy of the
    weights in memory at most, where loading, fusing and serializing would hold several.
    """
    structure = onnx.load(str(plain), load_external_data=False)
    family = architecture(config.model_type).fusion
    if family is None:
        save_self_contained(structure, plain.parent, out)
        if apart is not None:
            save_weights_apart(structure, apart)
        return {"graph": "plain (no fusion table for this architecture)"}
    _quiet_ort_python_tools()
    from onnxruntime.transformers.optimizer import optimize_model

    with working_directory(plain.parent):  # where the fusions' reads of external weights resolve
        model = optimize_model(
            structure,
            model_type=family,
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
            opt_level=0,  # python fusions only: the file stays valid for CPU and CUDA providers
            use_gpu=False,
        )
    model.topological_sort()  # as ONNX Runtime's own save does: fusions append nodes out of order
    save_self_contained(model.model, plain.parent, out)
    if apart is not None:
        save_weights_apart(model.model, apart)
    fused = {op: count for op, count in model.get_fused_operator_statistics().items() if count}
    return {"graph": f"fused ({family} optimizer)", "fused_operators": fused}


@contextmanager
def _shapes_from_dims() -> Iterator[None]:
    """ONNX Runtime's fp16 conversion reads each weight it converts only to learn its shape
    (``float16.make_value_info_from_tensor``); a weight kept apart still holds float32 there while it already declares
    float16, so during the conversion the shape comes from the tensor's dims, as it is written in the graph."""
    from onnxruntime.transformers import onnx_model

    # the module OnnxModel converts with (ONNX Runtime imports it as top-level "float16", a module of its own)
    float16 = sys.modules[onnx_model.convert_float_to_float16.__module__]
    original = float16.make_value_info_from_tensor
    float16.make_value_info_from_tensor = lambda tensor: onnx.helper.make_tensor_value_info(
        tensor.name, tensor.data_type, list(tensor.dims))
    try:
        yield
    finally:
        float16.make_value_info_from_tensor = original


def to_mixed_fp16(fused: Path, out: Path) -> dict[str, Any]:
    """fp16 weights and math, fp32 inputs/outputs, normalizations, softmax and the classifier head.

    Where ``fused`` keeps its weights in a file beside it (the exporter's weights-apart copy), the conversion runs
    on the graph without them: ONNX Runtime's shape inference copies the model it works on, which on a large model
    is the weights twice over. The weights it marked float16 are then read, converted (as it would convert them)
    and written one at a time.
    """
    _quiet_ort_python_tools()
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    structure = onnx.load(str(fused), load_external_data=False)
    stored_float = {tensor.name for tensor in structure.graph.initializer
                    if tensor.data_type == onnx.TensorProto.FLOAT and is_external(tensor)}
    model = OnnxModel(structure)
    head = head_node_names(model.model)
    with working_directory(fused.parent), _shapes_from_dims():  # shape inference may read a small external constant
        model.convert_float_to_float16(
            keep_io_types=True,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS),
            node_block_list=head,
        )
    model.topological_sort()  # the conversion inserts casts after their consumers
    halve = {tensor.name for tensor in model.model.graph.initializer
             if tensor.name in stored_float and tensor.data_type == onnx.TensorProto.FLOAT16}
    save_self_contained(model.model, fused.parent, out, halve=halve)  # one weight serialized at a time
    return {"graph": "fused, mixed fp16", "fp32_ops": list(FP32_OPS), "fp32_nodes": head, "io": "float32"}
