"""What an export writes: a self-describing folder whose manifest is the runtime's only contract."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from crossonnx.manifest import load_manifest, sha256_file
from crossonnx.registry import load_registry
from installed import expected_default_precisions, expected_pending


def test_manifest_describes_the_folder(tiny_exports):
    for family, folder in tiny_exports.items():
        manifest = load_manifest(folder)
        assert set(manifest.precisions) == expected_default_precisions()
        assert {name for name, entry in manifest.precisions.items() if entry.pending} == expected_pending()
        for name, entry in manifest.precisions.items():
            path = folder / entry.file
            assert sha256_file(path) == entry.sha256 and path.stat().st_size == entry.bytes
            if name in expected_pending():  # bf16 exported on a CPU without bf16: validated where it next runs
                assert entry.parity is None and entry.pending["gate"]["max_abs_diff"] > 0
                continue
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
    assert all(entry.parity.passed for entry in manifest.precisions.values() if entry.pending is None)


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
        if entry.pending is not None:  # bf16 exported on a CPU without bf16: validated where it next runs
            continue
        assert parity.passed and parity.spearman_gated is False and parity.reference_logit_std < 1e-3
        assert parity.max_abs_diff <= parity.gate.max_abs_diff, precision
    results = verify_folder(folder, skip_unavailable=True)  # as the CLI: a pending bf16 is skipped on this CPU
    assert all(result.get("passed") or ("skipped" in result and result["pending"]) for result in results.values())
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
    for entry in (entry for entry in data["precisions"].values() if entry["parity"]):  # not one pending validation
        del entry["parity"]["reference_logit_std"], entry["parity"]["spearman_gated"]
    data["precisions"]["fp16"]["parity"] = {}
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    manifest = load_manifest(folder)
    assert manifest.precisions["fp16"].parity is None
    assert manifest.precisions["int8"].parity.spearman_gated is True
    assert manifest.precisions["int8"].parity.gate.max_abs_diff == 0.05  # the RANDOM_WEIGHT_GATES override
    results = verify_folder(folder, skip_unavailable=True)  # as the CLI: a pending bf16 is skipped on this CPU
    assert results["fp16"]["gate"] == {} and results["fp16"]["passed"]  # no record: finite scores pass
    assert results["int8"]["spearman_gated"] is True and results["int8"]["gate"]["min_spearman"] is None


def test_every_precision_stage_is_a_known_precision_with_a_default_gate():
    from crossonnx.exporter.pipeline import STAGES
    from crossonnx.exporter.validate import default_gates
    from crossonnx.manifest import PRECISIONS, UNFUSED_GRAPH

    precisions = [stage.precision for stage in STAGES]
    assert set(precisions) <= set(PRECISIONS) | {UNFUSED_GRAPH}
    assert set(precisions) <= set(default_gates("sigmoid")) and set(precisions) <= set(default_gates("identity"))


# --- a default export keeps what passes ---------------------------------------------------------------------------

TIGHT_INT8 = "int8:max_abs=1e-9"  # no int8 graph is that close to PyTorch: int8 fails, the rest pass


def _cli_export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crossonnx.cli", "export", *args], capture_output=True, text=True,
                          check=False)


def _gate_args(*gates: str) -> list[str]:
    return [arg for gate in gates for arg in ("--gate", gate)]


def test_a_default_export_keeps_what_passes_and_names_what_it_left_out(tmp_path, tiny_checkpoints):
    """Without --precision, int8 missing its gate is left out: the folder holds the rest, the manifest and the output
    name int8 with its measured error and the --gate that admits it, the runtime does not offer it, and that flag
    admits it on a re-export."""
    from crossonnx import CrossEncoder
    from crossonnx.errors import PrecisionNotExportedError
    from crossonnx.exporter.pipeline import export_model
    from crossonnx.levels import Machine, resolve_level
    from crossonnx.manifest import LeftOut, Miss
    from pairs import RANDOM_WEIGHT_GATES

    checkpoint, out = str(tiny_checkpoints["bert"]), tmp_path / "kept"
    done = _cli_export(checkpoint, "--out", str(out), *_gate_args(*RANDOM_WEIGHT_GATES, TIGHT_INT8))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    manifest = load_manifest(out)
    assert set(manifest.precisions) == expected_default_precisions() - {"int8"}
    assert not (out / "model_int8.onnx").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        {"crossonnx.json", "reference.json", "tokenizer.json"}
        | {name for entry in manifest.precisions.values() for name in (entry.file, *entry.extra_files)}
    )
    [left] = [item for item in manifest.left_out if item.not_built is None]
    measured = left.parity.max_abs_diff
    assert left.precision == "int8" and left.parity.passed is False and measured > 1e-9
    assert left.misses == (Miss("max_abs_diff", measured, 1e-9),)
    limit = float(left.flag.removeprefix("--gate int8:max_abs="))
    assert measured < limit <= measured * 1.1 and float(f"{limit:.1e}") == limit  # two significant digits
    said = f"int8 left out: max abs diff {measured:.4g} misses its gate 1e-09; re-export with {left.flag} to admit it"
    assert said in done.stderr
    on_disk = json.loads((out / "crossonnx.json").read_text())
    assert on_disk["left_out"][0]["misses"] == [{"metric": "max_abs_diff", "measured": measured, "gate": 1e-9}]
    assert on_disk["left_out"][0]["flag"] == left.flag and LeftOut.from_dict(on_disk["left_out"][0]) == left

    # not available anywhere: the runtime names why and the flag; verify checks what is there; levels never pick it
    with pytest.raises(PrecisionNotExportedError, match=rf"left it out, max abs diff .*{left.flag}"):
        CrossEncoder(out, precision="int8")
    verify = subprocess.run([sys.executable, "-m", "crossonnx.cli", "verify", str(out)], capture_output=True,
                            text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    int8_lines = [line for line in verify.stdout.splitlines() if line.startswith("int8 ")]
    assert [line.split(None, 1)[1] for line in int8_lines] == [f"not in the folder: {left.reason()}"]  # not checked
    choice = resolve_level(manifest, "fast", machine=Machine(openvino=False, bf16=False))
    assert (choice.precision, choice.met) == ("fp32", "exact") and "int8 on ONNX Runtime CPU: not in the folder" in (
        choice.reason
    )

    # the flag it named admits it
    again = export_model(checkpoint, out=out, gate_overrides=[*RANDOM_WEIGHT_GATES, TIGHT_INT8, *left.flag.split()[1:]],
                         overwrite=True, log=None)
    readmitted = load_manifest(again)
    assert set(readmitted.precisions) == expected_default_precisions()
    assert all(item.not_built for item in readmitted.left_out)  # only what this machine cannot build
    assert readmitted.precisions["int8"].parity.gate.max_abs_diff == limit


def test_named_precisions_must_all_pass(tmp_path, tiny_checkpoints):
    """--precision fp32,int8 with int8 missing its gate: an error naming int8 and its flag, and nothing written."""
    parent = tmp_path / "exports"
    parent.mkdir()
    done = _cli_export(str(tiny_checkpoints["bert"]), "--out", str(parent / "out"), "--precision", "fp32,int8",
                       *_gate_args(TIGHT_INT8))
    assert done.returncode != 0
    [error] = [line for line in done.stderr.splitlines() if line.startswith("crossonnx: error: ")]
    assert "nothing was written: int8: max abs diff" in error and "--precision must pass" in error
    assert "--gate int8:max_abs=" in error
    assert list(parent.iterdir()) == []  # neither the folder nor a temporary one


def test_a_default_export_writes_nothing_when_fp32_fails(tmp_path, tiny_checkpoints):
    from crossonnx.errors import ValidationError
    from crossonnx.exporter.pipeline import export_model
    from pairs import RANDOM_WEIGHT_GATES

    parent = tmp_path / "exports"
    parent.mkdir()
    with pytest.raises(ValidationError, match=r"nothing was written: fp32: max abs diff .* > 0 .*\(fp32 must pass"):
        export_model(str(tiny_checkpoints["bert"]), out=parent / "out",
                     gate_overrides=[*RANDOM_WEIGHT_GATES, "fp32:max_abs=0"], log=None)
    assert list(parent.iterdir()) == []


@settings(max_examples=300, deadline=None, database=None)
@given(st.floats(1e-9, 10.0), st.floats(-1.0, 1.0), st.floats(1e-10, 10.0), st.floats(-1.0, 1.0))
def test_the_flag_that_admits_a_left_out_precision(max_abs, rho, gate_abs, gate_rho):
    """Each missed limit moves just past what was measured (two significant digits up for max abs, four decimals down
    for Spearman), and the gate's own rule admits the result."""
    from crossonnx.exporter.validate import left_out, parse_gate_overrides
    from crossonnx.parity import Gate, Parity

    gate = Gate(gate_abs, gate_rho)
    measured = {"finite": True, "max_abs_diff": max_abs, "spearman": rho, "spearman_gated": True}
    assume(gate.failures(measured))
    parity = Parity(n=75, finite=True, max_abs_diff=max_abs, mean_abs_diff=max_abs / 2, spearman=rho, gate=gate)
    left = left_out("int8", parity)
    missed = {"max_abs_diff": max_abs > gate_abs, "spearman": rho < gate_rho}
    assert [miss.metric for miss in left.misses] == [metric for metric, yes in missed.items() if yes]
    admitted = parse_gate_overrides([left.flag.removeprefix("--gate ")], {"int8": gate})["int8"]
    assert not admitted.failures(measured)
    if missed["max_abs_diff"]:
        assert admitted.max_abs_diff <= max_abs * 1.11
    if missed["spearman"]:
        assert admitted.min_spearman >= math.floor(rho * 1e4) / 1e4


def test_no_flag_admits_scores_that_are_not_finite():
    from crossonnx.exporter.validate import left_out
    from crossonnx.parity import Gate, Parity

    parity = Parity(n=75, finite=False, max_abs_diff=math.nan, mean_abs_diff=math.nan, spearman=math.nan,
                    gate=Gate(0.1, 0.9))
    left = left_out("int8", parity)
    assert left.flag is None and left.reason() == "scores contain NaN or inf; no gate admits it"


def test_a_default_export_accounts_for_every_default_precision(tiny_exports):
    """Each of the table's default precisions is in the folder (validated, or pending validation where this machine
    cannot validate it: bf16 on a CPU without bf16), or in left_out saying why: what this machine lacks to build it
    (e.g. OpenVINO), or what it missed."""
    from crossonnx.exporter.pipeline import build_problem, validation_deferred
    from crossonnx.precisions import ROWS

    manifest = load_manifest(tiny_exports["bert"])
    left = {item.precision: item for item in manifest.left_out}
    for row in (row for row in ROWS if row.default):
        problem = build_problem(row.name)
        if problem is None:
            assert row.name in manifest.precisions or left[row.name].not_built is None, row.name
            if row.name in manifest.precisions:
                pending = manifest.precisions[row.name].pending is not None
                assert pending == (validation_deferred(row.name) is not None), row.name
        else:
            assert row.name not in manifest.precisions and left[row.name].reason() == f"not built: {problem}"
            assert left[row.name].misses == () and left[row.name].flag is None


def test_a_precision_whose_build_raises_is_left_out_unless_named(tmp_path, tiny_checkpoints, monkeypatch):
    """A default export goes on without a precision whose build raised, naming the error; an export that named it
    fails whole and writes nothing."""
    import dataclasses

    from crossonnx.exporter import pipeline
    from pairs import RANDOM_WEIGHT_GATES

    def broken(export: object, row: object) -> dict:
        raise RuntimeError("quantizer ran out of disk\nsecond line")

    stages = tuple(dataclasses.replace(s, build=broken) if s.precision == "int8" else s for s in pipeline.STAGES)
    monkeypatch.setattr(pipeline, "STAGES", stages)
    monkeypatch.setattr(pipeline, "STAGE_OF", {s.precision: s for s in stages})
    checkpoint, out = str(tiny_checkpoints["bert"]), tmp_path / "default"
    lines: list[str] = []
    pipeline.export_model(checkpoint, out=out, gate_overrides=RANDOM_WEIGHT_GATES, log=lines.append)
    manifest = load_manifest(out)
    assert set(manifest.precisions) == expected_default_precisions() - {"int8"}
    assert not (out / "model_int8.onnx").exists()
    [left] = [item for item in manifest.left_out if item.precision == "int8"]
    assert left.reason() == "not built: its build failed: RuntimeError: quantizer ran out of disk"
    assert any("int8 left out: not built: its build failed" in line for line in lines)

    named = tmp_path / "named"
    with pytest.raises(RuntimeError, match="out of disk"):
        pipeline.export_model(checkpoint, out=named, precisions="fp32,int8", gate_overrides=RANDOM_WEIGHT_GATES,
                              log=None)
    assert not named.exists() and not list(tmp_path.glob(".named.partial-*"))
