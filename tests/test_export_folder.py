"""What an export writes: a self-describing folder whose manifest is the runtime's only contract."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from crossonnx.manifest import load_manifest, sha256_file
from crossonnx.registry import load_registry
from installed import expected_default_precisions


def test_manifest_describes_the_folder(tiny_exports):
    for family, folder in tiny_exports.items():
        manifest = load_manifest(folder)
        assert set(manifest.precisions) == expected_default_precisions()
        for entry in manifest.precisions.values():
            path = folder / entry.file
            assert sha256_file(path) == entry.sha256 and path.stat().st_size == entry.bytes
            assert entry.parity.passed is True and entry.parity.n >= 70
        assert manifest.precisions["fp32"].parity.max_abs_diff <= 1e-5
        assert manifest.activation == "sigmoid" and manifest.num_labels == 1
        assert manifest.max_length == 512
        assert manifest.source["kind"] == "local"
        assert manifest.versions["torch"] and manifest.versions["onnxruntime"]
        expected_inputs = ["input_ids", "attention_mask"]
        if family in ("bert", "electra"):
            expected_inputs.append("token_type_ids")
        assert manifest.inputs == expected_inputs
        reference = json.loads((folder / "reference.json").read_text())
        assert len(reference["pairs"]) == len(reference["scores"]) == manifest.reference["pairs"]


def test_roberta_max_length_is_usable_positions(tiny_exports):
    manifest = load_manifest(tiny_exports["roberta"])
    assert manifest.architecture["max_position_embeddings"] == 514
    assert manifest.architecture["max_tokens"] == 512 == manifest.max_length


def test_fused_graph_and_fp16_keep_sensitive_ops_in_fp32(tiny_exports):
    import onnx

    folder = tiny_exports["bert"]
    manifest = load_manifest(folder)
    # two layers: the first fuses to Attention, the last computes the [CLS] position only
    assert manifest.precisions["fp32"].details["fused_operators"]["Attention"] == 1
    assert all(entry.details["cls_only_last_layer"] for entry in manifest.precisions.values())
    fp16 = onnx.load(str(folder / manifest.precisions["fp16"].file))
    assert [i.type.tensor_type.elem_type for i in fp16.graph.output] == [onnx.TensorProto.FLOAT]
    details = manifest.precisions["fp16"].details
    assert "SkipLayerNormalization" in details["fp32_ops"] and "Softmax" in details["fp32_ops"]
    assert any("classifier" in name for name in details["fp32_nodes"])
    initializers = {i.name: i.data_type for i in fp16.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in initializers.values()


def test_cli_list_prints_every_registry_model():
    done = subprocess.run([sys.executable, "-m", "crossonnx.cli", "list"], capture_output=True, text=True,
                          check=True)
    for name, spec in load_registry().items():
        assert name in done.stdout and spec.hub_id in done.stdout
    assert "STSb test Spearman x100 85.50" in done.stdout
    assert "MRR@10 (MS MARCO dev) 36.13" in done.stdout


def test_registry_covers_the_seed_models():
    seed = {
        "ms-marco-TinyBERT-L-2", "ms-marco-TinyBERT-L-4", "ms-marco-TinyBERT-L-6", "ms-marco-electra-base",
        "stsb-TinyBERT-L-4", "stsb-distilroberta-base", "stsb-roberta-base", "stsb-roberta-large",
        "quora-distilroberta-base", "quora-roberta-base", "quora-roberta-large",
        "ms-marco-MiniLM-L-6-v2", "ms-marco-MiniLM-L-12-v2",
    }
    registry = load_registry()
    assert set(registry) == seed
    for spec in registry.values():
        assert spec.hub_id == f"cross-encoder/{spec.name}"
        assert spec.metric["value"] > 0 and spec.activation in {"sigmoid", "identity"}


def test_cli_export_then_verify(tmp_path, tiny_checkpoints):
    out = tmp_path / "cli-export"
    export = subprocess.run(
        [sys.executable, "-m", "crossonnx.cli", "export", str(tiny_checkpoints["distilroberta"]), "--out", str(out),
         "--precision", "fp32,int8", "--max-length", "128", "--gate", "int8:max_abs=0.05,spearman=off"],
        capture_output=True, text=True, check=False,
    )
    assert export.returncode == 0, export.stderr
    assert "[1/" in export.stderr and "validating int8" in export.stderr  # progress is shown
    manifest = load_manifest(out)
    assert set(manifest.precisions) == {"fp32", "int8"} and manifest.max_length == 128
    assert manifest.precisions["int8"].parity.gate.min_spearman is None
    verify = subprocess.run([sys.executable, "-m", "crossonnx.cli", "verify", str(out)], capture_output=True,
                            text=True, check=False)
    assert verify.returncode == 0 and verify.stdout.count(" ok ") == 2


@pytest.mark.parametrize("name", ["ms-marco-TinyBERT-L-2"])
def test_seed_shape_exports_in_all_precisions(tmp_path, name):
    """The smallest seed model at its exact shape; scripts in export/ do the same for every entry."""
    from crossonnx.checkpoints.synthetic import build_seed_shape
    from crossonnx.exporter.pipeline import export_model
    from pairs import RANDOM_WEIGHT_GATES

    checkpoint = build_seed_shape(name, tmp_path / "ckpt")
    folder = export_model(str(checkpoint), out=tmp_path / "onnx", gate_overrides=RANDOM_WEIGHT_GATES, log=None)
    manifest = load_manifest(folder)
    assert manifest.architecture["hidden_size"] == load_registry()[name].shape["hidden"]
    assert all(entry.parity.passed for entry in manifest.precisions.values())


def test_registry_name_resolves_through_the_hugging_face_cache(tmp_path):
    """The Hub path, offline: a models.yaml name -> Hub id -> a snapshot in the standard HF cache."""
    import os

    from crossonnx.checkpoints.synthetic import build_seed_shape

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--cross-encoder--ms-marco-TinyBERT-L-2"
    build_seed_shape("ms-marco-TinyBERT-L-2", repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    done = subprocess.run(
        [sys.executable, "-m", "crossonnx.cli", "export", "ms-marco-TinyBERT-L-2", "--precision", "fp32,int8",
         "--gate", "int8:max_abs=0.05,spearman=off"],
        capture_output=True, text=True, check=False, cwd=tmp_path, env=env,
    )
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "models" / "ms-marco-TinyBERT-L-2"
    assert done.stdout.strip() == "models/ms-marco-TinyBERT-L-2"
    source = load_manifest(folder).source
    assert source == {"kind": "registry", "id": "cross-encoder/ms-marco-TinyBERT-L-2", "revision": revision,
                      "registry_name": "ms-marco-TinyBERT-L-2"}
    assert folder.stat().st_mode & 0o077  # not left private like a temporary folder


def test_nearly_tied_scores_export_with_default_gates(tmp_path):
    """An untrained head scores every pair alike: the rank gate steps aside, the absolute gate still holds."""
    from safetensors.torch import load_file, save_file

    from crossonnx import CrossEncoder
    from crossonnx.checkpoints.synthetic import build_tiny
    from crossonnx.exporter.pipeline import export_model
    from crossonnx.verify import verify_folder

    checkpoint = build_tiny("bert", tmp_path / "ckpt", seed=5)
    weights = load_file(checkpoint / "model.safetensors")
    weights["classifier.weight"] *= 1e-4  # logits spread ~1e-4: their order is numerical noise
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    folder = export_model(str(checkpoint), out=tmp_path / "onnx", log=None)  # the default gates
    for precision, entry in load_manifest(folder).precisions.items():
        parity = entry.parity
        assert parity.passed and parity.spearman_gated is False and parity.reference_logit_std < 1e-3
        assert parity.max_abs_diff <= parity.gate.max_abs_diff, precision
    assert all(result["passed"] for result in verify_folder(folder).values())
    scores = CrossEncoder(folder).predict([("a", "b"), ("c", "d")])
    assert np.ptp(scores) < 1e-3


def test_rank_gate_applies_to_spread_scores():
    from crossonnx.parity import Gate

    gate = Gate(max_abs_diff=0.1, min_spearman=0.99)
    measured = {"finite": True, "max_abs_diff": 0.01, "spearman": 0.9}
    assert gate.failures({**measured, "spearman_gated": True}) == ["Spearman 0.90000 < 0.99"]
    assert gate.failures({**measured, "spearman_gated": False}) == []
    assert gate.failures({**measured, "max_abs_diff": 0.2, "spearman_gated": False}) == ["max abs diff 0.2 > 0.1"]


def test_manifest_json_round_trips_and_old_parity_records_load(tiny_exports, tmp_path):
    """The typed parity record reads and writes the manifest's JSON unchanged; a record written before the rank-gate
    fields existed loads with the rank gate on, and an entry without a record loads as None."""
    import shutil

    from crossonnx.manifest import MANIFEST_NAME, Manifest
    from crossonnx.verify import verify_folder

    data = json.loads((tiny_exports["bert"] / MANIFEST_NAME).read_text())
    assert Manifest.from_dict(data).to_dict() == data
    folder = tmp_path / "old"
    shutil.copytree(tiny_exports["bert"], folder)
    for entry in data["precisions"].values():
        del entry["parity"]["reference_logit_std"], entry["parity"]["spearman_gated"]
    data["precisions"]["fp16"]["parity"] = {}
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    manifest = load_manifest(folder)
    assert manifest.precisions["fp16"].parity is None
    assert manifest.precisions["int8"].parity.spearman_gated is True
    assert manifest.precisions["int8"].parity.gate.max_abs_diff == 0.05  # the RANDOM_WEIGHT_GATES override
    results = verify_folder(folder)
    assert results["fp16"]["gate"] == {} and results["fp16"]["passed"]  # no record: finite scores pass
    assert results["int8"]["spearman_gated"] is True and results["int8"]["gate"]["min_spearman"] is None


def test_every_precision_stage_is_a_known_precision_with_a_default_gate():
    from crossonnx.exporter.pipeline import STAGES
    from crossonnx.exporter.validate import default_gates
    from crossonnx.manifest import PRECISIONS, UNFUSED_GRAPH

    precisions = [stage.precision for stage in STAGES]
    assert set(precisions) <= set(PRECISIONS) | {UNFUSED_GRAPH}
    assert set(precisions) <= set(default_gates("sigmoid")) and set(precisions) <= set(default_gates("identity"))
