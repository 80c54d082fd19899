"""The portable QDQ static int8 (benchmarks/graph_formats.py): int8-static's recipe written as a QDQ ONNX file that
both ONNX Runtime and OpenVINO run, with the same nodes in float."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from crossonnx.manifest import UNFUSED_GRAPH, load_manifest
from crossonnx.metrics import spearman
from pairs import RANDOM_WEIGHT_GATES

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason="needs crossonnx[openvino] and nncf",
)


@pytest.fixture(scope="module")
def unfused_export(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict[str, Path]) -> Path:
    from crossonnx.exporter.pipeline import export_model

    return export_model(str(tiny_checkpoints["bert"]), out=tmp_path_factory.mktemp("qdq") / "export",
                        precisions="fp32,int8-static", gate_overrides=RANDOM_WEIGHT_GATES, tensorrt=True, log=None)


def test_qdq_file_keeps_the_plans_nodes_in_float_and_runs_on_both_engines(unfused_export: Path,
                                                                         tmp_path: Path) -> None:
    import openvino as ov

    from crossonnx.exporter.pipeline import calibration_feeds
    from lab.qdq_int8 import activation_matmuls, quantize_qdq_static

    manifest = load_manifest(unfused_export)
    unfused = unfused_export / manifest.entry(UNFUSED_GRAPH).file
    plan = manifest.entry("int8-static").details["float_matmuls"]
    names = [node.name for node in onnx.load(str(unfused), load_external_data=False).graph.input]
    feeds = calibration_feeds(unfused_export / manifest.tokenizer.file, manifest.tokenizer, manifest.max_length,
                              names, batch=1)
    out = tmp_path / "qdq.onnx"
    details = quantize_qdq_static(unfused, out, feeds[:16], plan)

    written = onnx.load(str(out))
    plain = onnx.load(str(unfused), load_external_data=False)
    assert details["int8_matmuls"] > 0
    assert details["int8_matmuls"] + len(details["float_matmuls"]) == sum(
        node.op_type in ("MatMul", "Gemm") for node in plain.graph.node)
    assert {name.removesuffix("/WithoutBiases") for name in plan} <= set(details["float_matmuls"])
    assert set(activation_matmuls(plain)) <= set(details["float_matmuls"]), "attention stays in float"
    assert any(node.op_type == "QuantizeLinear" for node in written.graph.node)

    reference = ort.InferenceSession(str(unfused), providers=["CPUExecutionProvider"])
    quantized = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    compiled = ov.Core().compile_model(str(out), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    fp32 = np.concatenate([reference.run(None, feed)[0] for feed in feeds[:16]])[:, 0]
    on_ort = np.concatenate([quantized.run(None, feed)[0] for feed in feeds[:16]])[:, 0]
    on_openvino = np.concatenate([request.infer(feed)[compiled.outputs[0]] for feed in feeds[:16]])[:, 0]
    spread = float(np.ptp(fp32))
    assert np.abs(on_openvino - on_ort).max() < 0.1 * spread, "both engines run the same int8 graph"
    assert spearman(on_ort, fp32) > 0.5 and spearman(on_openvino, fp32) > 0.5


def test_qdq_file_refuses_a_plan_naming_a_node_the_graph_lacks(unfused_export: Path, tmp_path: Path) -> None:
    from lab.qdq_int8 import quantize_qdq_static

    unfused = unfused_export / load_manifest(unfused_export).entry(UNFUSED_GRAPH).file
    with pytest.raises(ValueError, match="no node named '/no/such/MatMul'"):
        quantize_qdq_static(unfused, tmp_path / "qdq.onnx", [], ["/no/such/MatMul"])
    assert not (tmp_path / "qdq.onnx").exists()
