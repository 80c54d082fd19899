"""Graph files of large models: weights kept apart and read on demand, one self-contained file written a weight at a
time, and the int8 file crossonnx writes itself equal to ONNX Runtime's own dynamic quantization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from crossonnx.exporter.graph_files import Initializers, data_file, save_self_contained, save_weights_apart


def _two_layer_graph(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = {"w1": rng.standard_normal((64, 96)).astype(np.float32),
               "b1": rng.standard_normal(96).astype(np.float32),
               "w2": rng.standard_normal((96, 8)).astype(np.float32),
               "tiny": np.arange(3, dtype=np.int64)}  # b1 and tiny: under the size threshold, stay inside
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return weights


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_weights_kept_apart_then_self_contained_is_the_same_graph(tmp_path: Path) -> None:
    graph = tmp_path / "g.onnx"
    weights = _two_layer_graph(graph)
    x = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    expected = _run(graph, x)
    original = onnx.load(str(graph))

    save_weights_apart(onnx.load(str(graph)), graph)
    assert data_file(graph).stat().st_size >= weights["w1"].nbytes + weights["w2"].nbytes
    structure = onnx.load(str(graph), load_external_data=False)
    stored = Initializers(tmp_path, structure)
    for name, value in weights.items():
        np.testing.assert_array_equal(stored[name], value)
    np.testing.assert_array_equal(_run(graph, x), expected)  # ONNX Runtime reads the weights file too

    out = tmp_path / "self-contained.onnx"
    save_self_contained(structure, tmp_path, out)
    data_file(graph).unlink()  # the written file needs nothing beside it
    written = onnx.load(str(out))
    assert written.graph == original.graph
    onnx.checker.check_model(written)
    np.testing.assert_array_equal(_run(out, x), expected)
    assert [i.name for i in structure.graph.initializer] == list(weights)  # the model given is left as it was


def test_plain_graph_is_torchs_own_export_with_weights_written_apart(tmp_path: Path, tiny_checkpoints) -> None:
    """The exporter traces the graph without its parameters and writes the constant-folded ones itself, one at a
    time into the weights file: the graph is the one torch writes with its parameters inside, weights included."""
    import warnings

    import torch

    from crossonnx.exporter.convert import (
        _LogitsOnly,
        cls_only_last_layer,
        dummy_inputs,
        export_plain_graph,
        graph_input_names,
        load_checkpoint,
    )

    checkpoint = load_checkpoint(tiny_checkpoints["roberta"])
    names = graph_input_names(checkpoint)
    ours = tmp_path / "plain.onnx"
    assert export_plain_graph(checkpoint, names, ours, 17) is True
    theirs = tmp_path / "torch.onnx"
    model = checkpoint.load_model()
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings(), cls_only_last_layer(model):
        warnings.simplefilter("ignore")
        torch.onnx.export(_LogitsOnly(model, names).eval(), dummy_inputs(checkpoint, names), str(theirs),
                          input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=17,
                          do_constant_folding=True, dynamo=False)
    structure = onnx.load(str(ours), load_external_data=False)
    assert sum(init.data_location == TensorProto.EXTERNAL for init in structure.graph.initializer) > 10
    assert data_file(ours).stat().st_size > theirs.stat().st_size * 0.9  # the weights are apart, not inside
    expected, written = onnx.load(str(theirs)), onnx.load(str(ours))
    assert list(written.graph.node) == list(expected.graph.node)
    assert list(written.graph.input) == list(expected.graph.input)
    assert list(written.graph.output) == list(expected.graph.output)
    assert [i.name for i in written.graph.initializer] == [i.name for i in expected.graph.initializer]
    for mine, torchs in zip(written.graph.initializer, expected.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(mine), numpy_helper.to_array(torchs))


def _run_plain(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_own_int8_writer_matches_onnxruntime_quantize_dynamic(tmp_path: Path, tiny_checkpoints) -> None:
    """The int8 file crossonnx writes one weight at a time gives the logits of ONNX Runtime's quantize_dynamic on
    the same graph and nodes (the pattern it replaces), and ONNX Runtime fuses it into its int8 MatMul kernels."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from crossonnx.exporter.convert import export_plain_graph, graph_input_names, load_checkpoint
    from crossonnx.exporter.quantize import Int8Plan, weight_matmuls, write_int8

    checkpoint = load_checkpoint(tiny_checkpoints["bert"])
    plain = tmp_path / "plain.onnx"
    export_plain_graph(checkpoint, graph_input_names(checkpoint), plain, 17)
    plan = Int8Plan(first_position_fp32=False)
    theirs = tmp_path / "theirs.onnx"
    targets = sorted(n.name for n in weight_matmuls(onnx.load(str(plain))))
    quantize_dynamic(str(plain), str(theirs), op_types_to_quantize=["MatMul"], nodes_to_quantize=targets,
                     per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                     extra_options={"MatMulConstBOnly": True})
    ours = tmp_path / "ours.onnx"
    write_int8(plain, ours, plan)

    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(5, 300, (3, 12)), "attention_mask": np.ones((3, 12), dtype=np.int64),
            "token_type_ids": np.zeros((3, 12), dtype=np.int64)}
    feed = {k: v for k, v in feed.items() if k in {i.name for i in onnx.load(str(ours)).graph.input}}
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (theirs, ours)]
    theirs_logits, ours_logits = (s.run(None, feed)[0] for s in sessions)
    # the same quantized values and scales: equal up to float summation order, far below int8's own error (1e-3)
    np.testing.assert_allclose(ours_logits, theirs_logits, atol=1e-5)
    assert np.abs(ours_logits - _run_plain(plain, feed)).max() > 1e-5  # it is int8, not the fp32 graph
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(ours), options, providers=["CPUExecutionProvider"])
    fused = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"} & fused and "MatMulInteger" not in fused


def test_a_fused_export_is_a_valid_onnx_file(tiny_exports) -> None:
    """The files written a weight at a time declare every operator domain they use (ONNX Runtime's fused operators
    live in com.microsoft), so the ONNX checker accepts them."""
    for precision in ("fp32", "fp16", "int8"):  # int8 is built from the unfused graph: standard operators only
        model = onnx.load(str(tiny_exports["bert"] / f"model_{precision}.onnx"))
        assert ("com.microsoft" in {node.domain for node in model.graph.node}) == (precision != "int8")
        onnx.checker.check_model(model)


def test_fp16_converted_without_its_weights_loaded_equals_onnxruntimes_conversion(tmp_path: Path, tiny_exports) -> None:
    """to_mixed_fp16 on a graph whose weights are kept apart (the exporter's large-model path) converts the
    structure alone and halves each weight as it writes it: the same graph and weights, bit for bit, as ONNX
    Runtime's conversion of the loaded graph, which holds the model several times over."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    from crossonnx.exporter.graph_files import save_weights_apart
    from crossonnx.exporter.optimize import FP32_OPS, head_node_names, to_mixed_fp16

    fused = onnx.load(str(tiny_exports["bert"] / "model_fp32.onnx"))
    loaded = OnnxModel(onnx.load(str(tiny_exports["bert"] / "model_fp32.onnx")))
    loaded.convert_float_to_float16(keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS),
                                    node_block_list=head_node_names(loaded.model))
    loaded.topological_sort()
    apart = tmp_path / "apart.onnx"
    save_weights_apart(fused, apart)
    out = tmp_path / "fp16.onnx"
    to_mixed_fp16(apart, out)

    ours, theirs = onnx.load(str(out)), loaded.model
    assert [(n.op_type, list(n.input), list(n.output)) for n in ours.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in theirs.graph.node]
    want = {t.name: numpy_helper.to_array(t) for t in theirs.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in ours.graph.initializer}
    assert got.keys() == want.keys() and any(value.dtype == np.float16 for value in got.values())
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    onnx.checker.check_model(ours)
