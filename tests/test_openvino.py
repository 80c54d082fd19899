"""The OpenVINO engine: exact fp32, validated bf16 and int8s, clear errors, and what ``auto`` picks."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossonnx import CrossEncoder, MissingExtraError, PrecisionNotExportedError
from crossonnx.engines.openvino import executed_precision
from crossonnx.manifest import load_manifest
from installed import cpu_has_bf16
from pairs import FAMILIES, parity_pairs

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs crossonnx[openvino]")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_on_openvino_matches_sentence_transformers(family, tiny_checkpoints, tiny_exports, st_model_factory):
    pairs = parity_pairs()
    expected = st_model_factory(tiny_checkpoints[family]).predict(pairs, batch_size=32)
    encoder = CrossEncoder(tiny_exports[family], provider="openvino")
    assert encoder.info()["executes"] == "float32"  # the bf16 default of OpenVINO's CPU plugin is overridden
    assert np.abs(encoder.predict(pairs, batch_size=32) - expected).max() <= 1e-5


def test_real_model_fp32_is_exact_and_bf16_int8_static_are_validated(
    reference_checkpoint, reference_export, st_model_factory
):
    pairs = parity_pairs(64, seed=31)
    expected = st_model_factory(reference_checkpoint).predict(pairs, batch_size=32)
    fp32 = CrossEncoder(reference_export, provider="openvino").predict(pairs)
    assert np.abs(fp32 - expected).max() <= 1e-5
    manifest = load_manifest(reference_export)
    if cpu_has_bf16():
        bf16 = manifest.entry("bf16")
        assert bf16.file == manifest.entry("fp32").file  # the same graph, computed in bf16
        assert bf16.details["inference_precision"] == "bf16" and bf16.parity.passed
        encoder = CrossEncoder(reference_export, precision="bf16")  # auto: OpenVINO runs bf16
        assert (encoder.provider, encoder.info()["executes"]) == ("openvino", "bfloat16")
        got = encoder.predict(pairs)
        assert np.abs(got - expected).max() <= 0.02 and not np.array_equal(got, fp32)
    static = manifest.entry("int8-static")
    assert static.file.endswith(".xml") and set(static.extra_files) == {static.file.replace(".xml", ".bin")}
    assert static.parity.passed and static.details["scheme"] == "static"
    got = CrossEncoder(reference_export, precision="int8-static", provider="openvino").predict(pairs)
    assert np.abs(got - expected).max() <= 0.1

    import openvino as ov

    # attention's activation MatMuls stay float (their int8 cost rank agreement and saved no time); the rest is int8
    graph = {op.get_friendly_name(): op for op in ov.Core().read_model(str(reference_export / static.file)).get_ops()}
    attention = static.details["float_attention_matmuls"]
    assert attention and len(attention) % 2 == 0  # query x key and probabilities x value in every layer

    def quantized_inputs(name: str) -> int:
        return sum(port.get_source_output().get_node().get_type_name() == "FakeQuantize"
                   for port in graph[name].inputs())

    assert all(quantized_inputs(name) == 0 for name in attention)
    weight_matmuls = [n for n, op in graph.items() if op.get_type_name() == "MatMul" and n not in attention]
    assert sum(quantized_inputs(n) > 0 for n in weight_matmuls) == static.details["quantized_matmuls"] > 0


def test_int8_dynamic_has_int8_weights_and_quantizes_activations_per_token_group(
    reference_checkpoint, reference_export, st_model_factory
):
    import openvino as ov

    entry = load_manifest(reference_export).entry("int8-dynamic")
    assert entry.parity.passed and entry.details["scheme"] == "dynamic"
    assert set(entry.extra_files) == {entry.file.replace(".xml", ".bin")}
    group = entry.details["openvino_config"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"]
    graph = ov.Core().read_model(str(reference_export / entry.file))
    int8_weights = [  # (u8 zero points are [1, N])
        op for op in graph.get_ops() if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.u8
        and min(op.get_output_shape(0)) > 1
    ]
    assert len(int8_weights) == entry.details["int8_matmuls"] > 0  # every encoder MatMul; head and embeddings float
    encoder = CrossEncoder(reference_export, precision="int8-dynamic")  # auto: OpenVINO
    assert encoder.provider == "openvino" and encoder.info()["executes"].startswith("int8 + ")
    assert encoder.info()["provider_options"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == group
    # read back from the compiled model: without run-time quantization the int8 weights are expanded to float
    unquantized = ov.Core().compile_model(str(reference_export / entry.file), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})
    assert executed_precision(unquantized) == "int8 weights + float32"
    pairs = parity_pairs(64, seed=31)
    expected = st_model_factory(reference_checkpoint).predict(pairs, batch_size=32)
    assert np.abs(encoder.predict(pairs) - expected).max() <= 0.05


def test_openvino_precisions_are_refused_on_onnxruntime(reference_export):
    for precision in ("bf16", "int8-static", "int8-dynamic"):
        with pytest.raises(PrecisionNotExportedError, match=r"OpenVINO engine only.*provider='openvino'"):
            CrossEncoder(reference_export, precision=precision, provider="cpu")
    with pytest.raises(PrecisionNotExportedError, match=r"does not run on OpenVINO.*provider='cpu'"):
        CrossEncoder(reference_export, precision="int8", provider="openvino")


def test_auto_picks_openvino_for_its_own_precisions_only(tiny_exports, reference_export):
    for precision in ("fp32", "int8"):  # OpenVINO's fp32 measured no faster than ONNX Runtime's here
        encoder = CrossEncoder(tiny_exports["bert"], precision=precision)
        assert encoder.provider == "cpu" and "OpenVINO is installed" in encoder.provider_reason
    static = CrossEncoder(reference_export, precision="int8-static")
    assert static.provider == "openvino" and "runs on OpenVINO only" in static.provider_reason


OPENVINO_BLOCKED = """
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "openvino":
            raise ImportError("openvino is blocked")
        return None
sys.meta_path.insert(0, _Blocked())
"""

BLOCK_OPENVINO = OPENVINO_BLOCKED + """
from crossonnx import CrossEncoder, MissingExtraError
folder = sys.argv[1]
auto = CrossEncoder(folder)
print(auto.provider, "|", auto.provider_reason)
try:
    CrossEncoder(folder, provider="openvino")
except Exception as exc:
    print(type(exc).__name__, "|", exc)
"""


def test_without_the_extra_auto_uses_onnxruntime_and_openvino_names_the_install(tiny_exports):
    done = subprocess.run([sys.executable, "-c", BLOCK_OPENVINO, str(tiny_exports["bert"])],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    auto, refused = done.stdout.strip().splitlines()
    assert auto.startswith("cpu |") and "no OpenVINO" in auto
    assert refused.startswith("ProviderUnavailableError |") and 'pip install "crossonnx[openvino]"' in refused


def test_missing_extra_error_is_an_import_error():
    assert issubclass(MissingExtraError, ImportError)


def test_base_install_resolves_without_openvino_nncf_or_torch(tmp_path):
    """What `pip install crossonnx` would install, resolved by pip itself (dry run, against the package index)."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
         str(report), str(ROOT)], capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"crossonnx", "onnxruntime", "tokenizers", "numpy"} <= names
    assert not names & {"openvino", "nncf", "torch", "transformers", "sentence-transformers", "onnxruntime-gpu"}


def test_openvino_calls_take_few_shapes_and_score_as_unpadded(reference_export, monkeypatch):
    """Calls are padded to a multiple of WIDTH_MULTIPLE tokens, so random traffic maps onto a bounded set of
    shapes (what keeps a long-lived engine's kernel cache, and its memory, flat) with unchanged scores."""
    import random

    from crossonnx.engines import openvino as openvino_engine
    from crossonnx.stsb import load_stsb

    words = " ".join(row.sentence1 for row in load_stsb("dev")[:400]).split()
    rng = random.Random(5)
    work = [[(" ".join(rng.sample(words, 4)), " ".join(rng.sample(words, rng.randint(1, 250))))
             for _ in range(rng.randint(1, 8))] for _ in range(60)]
    encoder = CrossEncoder(reference_export, provider="openvino", precision="fp32", threads=1)
    seen: list[tuple[int, int]] = []
    run = encoder._engine.run

    def recording(feed: dict[str, np.ndarray]) -> np.ndarray:
        seen.append(feed["input_ids"].shape)
        return run(feed)

    monkeypatch.setattr(encoder._engine, "run", recording)
    padded = [encoder.predict(request) for request in work]
    multiple, longest = openvino_engine.WIDTH_MULTIPLE, encoder.max_length
    assert multiple > 1 and all(width % multiple == 0 or width == longest for _, width in seen)
    assert len({width for _, width in seen}) <= -(-longest // multiple)
    monkeypatch.setattr(openvino_engine, "WIDTH_MULTIPLE", 1)
    for request, scores in zip(work, padded, strict=True):
        np.testing.assert_allclose(scores, encoder.predict(request), atol=2e-6)
