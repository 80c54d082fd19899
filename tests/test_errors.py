"""Bad input gets a clear error naming the problem and the fix; a failed export leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from crossonnx import (
    CrossEncoder,
    ExportError,
    InvalidInputError,
    ModelFolderError,
    PrecisionNotExportedError,
    ProviderUnavailableError,
    UnknownModelError,
    ValidationError,
)
from installed import expected_auto


@pytest.fixture(scope="module")
def model(tiny_exports):
    return CrossEncoder(tiny_exports["bert"])


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (None, "pairs is None"),
        ("just one string", "single string"),
        ([("a", "b"), ("c", None)], r"pairs\[1\]\[1\] is None, expected str"),
        ([("a", "b"), ("c", 3)], r"pairs\[1\]\[1\] is int, expected str"),
        ([("a", "b"), "c"], r"pairs\[1\] is str, not a \(text_a, text_b\) pair"),
        ([("a", "b", "c")], r"pairs\[0\] has 3 items"),
        ([("a",)], r"pairs\[0\] has 1 items"),
        ((1, "b"), r"the pair\[0\] is int"),
        ({"query": "a"}, "must be a list"),
        (42, "must be a list"),
        (np.zeros((2, 2)), "numpy array of float64"),
    ],
)
def test_bad_pairs_name_the_problem(model, pairs, message):
    with pytest.raises(InvalidInputError, match=message):
        model.predict(pairs)


def test_input_errors_are_type_errors_and_inputs_are_not_mutated(model):
    pairs = [["a", "b"], ["c", "d"]]
    snapshot = json.dumps(pairs)
    model.predict(pairs)
    assert json.dumps(pairs) == snapshot
    with pytest.raises(TypeError):  # InvalidInputError is a TypeError for code that catches those
        model.predict([("a", 1)])


def test_rank_input_errors(model):
    with pytest.raises(InvalidInputError, match=r"query is None"):
        model.rank(None, ["a"])
    with pytest.raises(InvalidInputError, match=r"documents\[1\] is int"):
        model.rank("q", ["a", 2])
    with pytest.raises(InvalidInputError, match=r"documents must be a list"):
        model.rank("q", "not a list")
    with pytest.raises(ValueError, match=r"top_k"):
        model.rank("q", ["a"], top_k=-1)


def test_bad_batch_size_and_options(model, tiny_exports):
    with pytest.raises(ValueError, match=r"batch_size"):
        model.predict([("a", "b")], batch_size=0)
    with pytest.raises(ValueError, match=r"max_length"):
        CrossEncoder(tiny_exports["bert"], max_length=100_000)
    with pytest.raises(ValueError, match=r"token_budget"):
        CrossEncoder(tiny_exports["bert"], token_budget=0)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelFolderError, match=r"does not exist.*crossonnx export"):
        CrossEncoder(tmp_path / "nowhere")


def test_folder_without_manifest(tmp_path):
    with pytest.raises(ModelFolderError, match=r"crossonnx.json is missing.*crossonnx export"):
        CrossEncoder(tmp_path)


def test_corrupt_manifest(tmp_path, tiny_exports):
    folder = shutil.copytree(tiny_exports["bert"], tmp_path / "m")
    (folder / "crossonnx.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFolderError, match=r"corrupt.*crossonnx export"):
        CrossEncoder(folder)
    (folder / "crossonnx.json").write_text(json.dumps({"schema_version": 1}), encoding="utf-8")
    with pytest.raises(ModelFolderError, match=r"incomplete or corrupt"):
        CrossEncoder(folder)


def test_truncated_and_missing_onnx_file(tmp_path, tiny_exports):
    folder = shutil.copytree(tiny_exports["bert"], tmp_path / "m")
    onnx_file = folder / "model_fp32.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    with pytest.raises(ModelFolderError, match=r"corrupt: 1000 bytes.*crossonnx export"):
        CrossEncoder(folder)
    onnx_file.unlink()
    with pytest.raises(ModelFolderError, match=r"model_fp32.onnx is missing"):
        CrossEncoder(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelFolderError, match=r"tokenizer.json is missing"):
        CrossEncoder(folder, precision="int8")


def test_same_size_garbage_is_caught_by_verify(tmp_path, tiny_exports):
    from crossonnx.verify import verify_folder

    folder = shutil.copytree(tiny_exports["bert"], tmp_path / "m")
    onnx_file = folder / "model_int8.onnx"
    onnx_file.write_bytes(b"\0" * onnx_file.stat().st_size)
    with pytest.raises(ModelFolderError, match=r"sha256 does not match"):
        verify_folder(folder, ["int8"])
    with pytest.raises(ModelFolderError, match=r"not a readable ONNX file"):
        CrossEncoder(folder, precision="int8")


def test_precision_not_exported(tmp_path, tiny_exports):
    folder = shutil.copytree(tiny_exports["bert"], tmp_path / "m")
    manifest = json.loads((folder / "crossonnx.json").read_text())
    del manifest["precisions"]["int8"]
    (folder / "crossonnx.json").write_text(json.dumps(manifest))
    with pytest.raises(PrecisionNotExportedError, match=r"'int8' was not exported.*exported: (bf16, )?fp16, fp32"):
        CrossEncoder(folder, precision="int8")


def test_unavailable_and_unknown_provider(tiny_exports):
    if expected_auto("fp32") not in ("cuda", "tensorrt"):
        with pytest.raises(ProviderUnavailableError, match=r"'cuda' is not available here \(available: .*cpu\)"):
            CrossEncoder(tiny_exports["bert"], provider="cuda")
    with pytest.raises(ProviderUnavailableError, match=r"unknown provider 'tpu'"):
        CrossEncoder(tiny_exports["bert"], provider="tpu")
    assert CrossEncoder(tiny_exports["bert"], provider="auto").provider == expected_auto("fp32")
    assert CrossEncoder(tiny_exports["bert"], provider="CPUExecutionProvider").provider == "cpu"


def test_unknown_model_name_lists_known_ones():
    from crossonnx.exporter.source import resolve_source

    with pytest.raises(UnknownModelError, match=r"Known models: ms-marco-TinyBERT-L-2, .*quora-roberta-large"):
        resolve_source("no such model")


def test_hub_unreachable_offline_is_explained(tmp_path, monkeypatch):
    from crossonnx.exporter.source import resolve_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ExportError, match=r"HF_HUB_OFFLINE is set and cross-encoder/ms-marco-TinyBERT-L-6 is not"):
        resolve_source("ms-marco-TinyBERT-L-6")


def test_pickled_weights_need_explicit_consent(tmp_path, tiny_checkpoints):
    import torch
    from safetensors.torch import load_file

    from crossonnx.exporter.source import resolve_source

    folder = shutil.copytree(tiny_checkpoints["bert"], tmp_path / "pickled")
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ExportError, match=r"only pickled weights.*--allow-pickle"):
        resolve_source(str(folder))
    assert resolve_source(str(folder), allow_pickle=True).kind == "local"


def test_failed_validation_writes_nothing(tmp_path, tiny_checkpoints):
    from crossonnx.exporter.pipeline import export_model

    out = tmp_path / "out"
    with pytest.raises(ValidationError, match=r"nothing was written: .*int8: max abs diff .* > 1e-09"):
        # named precisions must all pass (a default export would leave int8 out and write the rest)
        export_model(
            str(tiny_checkpoints["roberta"]), out=out, precisions="fp32,int8", gate_overrides=["int8:max_abs=1e-9"],
            log=None,
        )
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary folder is left


def test_existing_output_needs_overwrite(tmp_path, tiny_checkpoints):
    from crossonnx.exporter.pipeline import export_model

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"already exists; pass --overwrite"):
        export_model(str(tiny_checkpoints["bert"]), out=out, precisions="fp32", log=None)
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_export_arguments(tiny_checkpoints, tmp_path):
    from crossonnx.exporter.pipeline import export_model

    ckpt = str(tiny_checkpoints["bert"])
    with pytest.raises(ExportError, match=r"unknown precision"):
        export_model(ckpt, out=tmp_path / "a", precisions="fp8", log=None)
    with pytest.raises(ExportError, match=r"bad gate"):
        export_model(ckpt, out=tmp_path / "b", gate_overrides=["int8"], log=None)
    with pytest.raises(ExportError, match=r"no config.json"):
        export_model(str(tmp_path), out=tmp_path / "c", log=None)
    with pytest.raises(ExportError, match=r"--max-length 100000 exceeds"):
        export_model(ckpt, out=tmp_path / "d", precisions="fp32", max_length=100_000, log=None)


def test_cli_reports_errors_without_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "crossonnx.cli", "predict", str(tmp_path / "missing"), "--pair", "a", "b"],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("crossonnx: error: model folder") and "Traceback" not in done.stderr
