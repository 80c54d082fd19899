"""Graph work on the plain export: transformer fusions (fp32) and mixed fp16 conversion."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx

from crossonnx.architectures import architecture
from crossonnx.exporter.graph_files import save_self_contained, save_weights_apart, working_directory

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


def to_mixed_fp16(fused: Path, out: Path) -> dict[str, Any]:
    """fp16 weights and math, fp32 inputs/outputs, normalizations, softmax and the classifier head."""
    _quiet_ort_python_tools()
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(fused)))
    head = head_node_names(model.model)
    model.convert_float_to_float16(
        keep_io_types=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS),
        node_block_list=head,
    )
    model.topological_sort()  # the conversion inserts casts after their consumers
    save_self_contained(model.model, fused.parent, out)  # one weight serialized at a time
    return {"graph": "fused, mixed fp16", "fp32_ops": list(FP32_OPS), "fp32_nodes": head, "io": "float32"}
