"""GPU execution providers, CPU side: provider choice, TensorRT options, cache keys, profiles, install errors.

GPU runs are marked ``gpu`` and skipped where onnxruntime offers no CUDA provider; the GPU check script
(benchmarks/gpu_check.sh) covers them on a GPU machine.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tomllib

from crossonnx import CrossEncoder, PrecisionNotExportedError, ProviderUnavailableError
from crossonnx.engines import resolve_provider
from crossonnx.engines.onnxruntime import (
    GPU_INSTALL_HINT,
    TENSORRT_INSTALL_HINT,
    Profile,
    cache_key,
    cuda_options,
    graph_for,
    tensorrt_options,
)
from crossonnx.manifest import UNFUSED_GRAPH
from installed import expected_auto
from pairs import RANDOM_WEIGHT_GATES, parity_pairs

ROOT = Path(__file__).resolve().parents[1]
BERT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


# ---- provider choice ---------------------------------------------------------------------------------------


def test_auto_prefers_tensorrt_then_cuda_then_cpu() -> None:
    assert resolve_provider("auto", ["tensorrt", "cuda", "cpu"], tensorrt_ready=True).provider == "tensorrt"
    choice = resolve_provider("auto", ["tensorrt", "cuda", "cpu"], tensorrt_ready=False)
    assert choice.provider == "cuda" and "libnvinfer" in choice.reason
    assert resolve_provider("auto", ["cuda", "cpu"], tensorrt_ready=False).provider == "cuda"
    choice = resolve_provider("auto", ["cpu"], tensorrt_ready=False)
    assert choice.provider == "cpu" and "no GPU provider" in choice.reason


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_auto_on_this_machine_reports_its_pick(tiny_exports: dict[str, Path], precision: str) -> None:
    encoder = CrossEncoder(tiny_exports["bert"], precision=precision)
    info = encoder.info()
    assert encoder.provider == info["provider"] == expected_auto(precision), info["provider_reason"]
    assert info["provider_reason"].startswith("auto:")


def test_explicit_provider_names() -> None:
    assert resolve_provider("CUDAExecutionProvider", ["cuda", "cpu"], tensorrt_ready=False).provider == "cuda"
    assert resolve_provider(" CPU ", ["cpu"], tensorrt_ready=False).reason == "requested"
    with pytest.raises(ProviderUnavailableError, match="unknown provider 'rocm'"):
        resolve_provider("rocm", ["cpu"], tensorrt_ready=False)


def test_missing_gpu_build_names_the_install() -> None:
    with pytest.raises(ProviderUnavailableError) as caught:
        resolve_provider("cuda", ["cpu"], tensorrt_ready=False)
    message = str(caught.value)
    assert "available: cpu" in message and GPU_INSTALL_HINT in message and "crossonnx-gpu" in message


def test_missing_tensorrt_libraries_names_the_install() -> None:
    with pytest.raises(ProviderUnavailableError) as caught:
        resolve_provider("tensorrt", ["tensorrt", "cuda", "cpu"], tensorrt_ready=False)
    assert str(caught.value) == TENSORRT_INSTALL_HINT and "pip install tensorrt" in str(caught.value)


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime build has CUDA")
def test_gpu_provider_on_cpu_build_fails_before_loading(tiny_exports: dict[str, Path]) -> None:
    for provider in ("cuda", "tensorrt"):
        with pytest.raises(ProviderUnavailableError, match="crossonnx-gpu"):
            CrossEncoder(tiny_exports["bert"], provider=provider)


def test_providers_command_reports_auto() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "crossonnx.cli", "providers"], capture_output=True, text=True, check=True
    ).stdout
    report = json.loads(out)
    assert report["auto"] == expected_auto("fp32")
    assert report["available"][-1] == "cpu" and report["reason"].startswith("auto:")
    assert ("openvino" in report["available"]) == (importlib.util.find_spec("openvino") is not None)


# ---- TensorRT options ----------------------------------------------------------------------------------------


def test_profile_covers_every_runtime_shape() -> None:
    shapes = Profile(max_batch=64, max_length=512).shapes(BERT_INPUTS)
    assert shapes["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1,token_type_ids:1x1"
    assert shapes["trt_profile_opt_shapes"] == "input_ids:32x128,attention_mask:32x128,token_type_ids:32x128"
    assert shapes["trt_profile_max_shapes"] == "input_ids:64x512,attention_mask:64x512,token_type_ids:64x512"
    small = Profile(max_batch=8, max_length=64).shapes(["input_ids", "attention_mask"])  # RoBERTa: two inputs
    assert small["trt_profile_opt_shapes"] == "input_ids:8x64,attention_mask:8x64"
    with pytest.raises(ValueError, match="max_batch"):
        Profile(max_batch=0, max_length=128)


def test_cache_key_changes_with_everything_that_invalidates_an_engine() -> None:
    profile = Profile(64, 512)
    base = cache_key("a" * 64, "NVIDIA H200", "10.8.0", True, profile)
    assert base == cache_key("a" * 64, "NVIDIA H200", "10.8.0", True, Profile(64, 512))
    variants = {
        cache_key("b" * 64, "NVIDIA H200", "10.8.0", True, profile),
        cache_key("a" * 64, "NVIDIA A100", "10.8.0", True, profile),
        cache_key("a" * 64, "NVIDIA H200", "10.9.0", True, profile),
        cache_key("a" * 64, "NVIDIA H200", "10.8.0", False, profile),
        cache_key("a" * 64, "NVIDIA H200", "10.8.0", True, Profile(128, 512)),
    }
    assert base not in variants and len(variants) == 5


def test_tensorrt_options_are_derived_from_model_and_limits(tmp_path: Path) -> None:
    options = tensorrt_options(
        model_sha256="c" * 64, input_names=BERT_INPUTS, profile=Profile(16, 256), cache_root=tmp_path,
        fp16=True, device_id=1, gpu="NVIDIA H200", trt_version="10.8.0",
    )
    key = cache_key("c" * 64, "NVIDIA H200", "10.8.0", True, Profile(16, 256))
    assert options["trt_engine_cache_path"] == str(tmp_path / "tensorrt" / key)
    assert options["trt_timing_cache_path"] == options["trt_engine_cache_path"]
    assert options["trt_engine_cache_enable"] and options["trt_timing_cache_enable"]
    assert options["trt_fp16_enable"] and options["trt_layer_norm_fp32_fallback"]
    assert options["device_id"] == 1
    assert options["trt_profile_max_shapes"].endswith("token_type_ids:16x256")
    fp32 = tensorrt_options(
        model_sha256="c" * 64, input_names=BERT_INPUTS, profile=Profile(16, 256), cache_root=tmp_path,
        fp16=False, gpu="NVIDIA H200", trt_version="10.8.0",
    )
    assert not fp32["trt_fp16_enable"] and fp32["trt_engine_cache_path"] != options["trt_engine_cache_path"]


def test_cuda_options_keep_fp32_exact() -> None:
    options = cuda_options(2)
    assert options["device_id"] == 2 and options["use_tf32"] == 0


# ---- the unfused graph TensorRT builds from ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tensorrt_ready_export(work_dir: Path, tiny_checkpoints: dict[str, Path]) -> Path:
    from crossonnx.exporter.pipeline import export_model

    return export_model(
        str(tiny_checkpoints["bert"]), out=work_dir / "onnx" / "bert-trt", precisions="fp32,fp16",
        gate_overrides=RANDOM_WEIGHT_GATES, tensorrt=True, log=None,
    )


def test_tensorrt_export_keeps_a_validated_unfused_graph(
    tensorrt_ready_export: Path, tiny_checkpoints: dict[str, Path], st_model_factory
) -> None:
    manifest = json.loads((tensorrt_ready_export / "crossonnx.json").read_text())
    entry = manifest["precisions"][UNFUSED_GRAPH]
    assert (tensorrt_ready_export / entry["file"]).is_file() and entry["parity"]["passed"]
    assert entry["parity"]["max_abs_diff"] <= 1e-5
    pairs = parity_pairs(24)
    expected = st_model_factory(tiny_checkpoints["bert"]).predict(pairs)
    got = CrossEncoder(tensorrt_ready_export, precision=UNFUSED_GRAPH, provider="cpu").predict(pairs)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_export_without_tensorrt_flag_has_no_unfused_graph(tiny_exports: dict[str, Path]) -> None:
    manifest = json.loads((tiny_exports["bert"] / "crossonnx.json").read_text())
    assert UNFUSED_GRAPH not in manifest["precisions"]


class _ShapeLog:
    """The real engine, recording the shape of every feed it runs."""

    def __init__(self, engine):
        self.engine, self.shapes = engine, []

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        self.shapes.append({name: array.shape for name, array in feed.items()})
        return self.engine.run(feed)

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


def test_warmup_runs_the_profile_corners(tiny_exports: dict[str, Path]) -> None:
    """Smallest (1 x 8), typical (capped at max_batch x max_length) and largest shapes, every input fed."""
    encoder = CrossEncoder(tiny_exports["bert"], provider="cpu", max_batch=4, max_length=32)
    log = encoder._engine = _ShapeLog(encoder._engine)
    assert encoder.warmup() >= 0
    assert log.shapes == [{name: shape for name in BERT_INPUTS} for shape in ((1, 8), (4, 32), (4, 32))]
    assert encoder.info()["max_batch"] == 4
    wide = CrossEncoder(tiny_exports["bert"], provider="cpu", max_batch=64, max_length=512)
    log = wide._engine = _ShapeLog(wide._engine)
    wide.warmup()
    assert [shapes["input_ids"] for shapes in log.shapes] == [(1, 8), (32, 128), (64, 512)]


def test_bad_max_batch_is_rejected(tiny_exports: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        CrossEncoder(tiny_exports["bert"], max_batch=0)


# ---- packaging: the CPU install never pulls the GPU wheel -------------------------------------------------------


def test_cpu_and_gpu_distributions_differ_only_in_the_onnxruntime_wheel() -> None:
    cpu = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu = tomllib.loads((ROOT / "packaging" / "gpu" / "pyproject.toml").read_text())["project"]
    assert not any("onnxruntime-gpu" in dep for dep in cpu["dependencies"])
    assert not any("onnxruntime-gpu" in dep for extra in cpu["optional-dependencies"].values() for dep in extra)
    swapped = sorted(dep.replace("onnxruntime-gpu", "onnxruntime") for dep in gpu["dependencies"])
    assert swapped == sorted(cpu["dependencies"])
    assert gpu["scripts"] == cpu["scripts"]


# ---- on a GPU ---------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_cuda_matches_cpu(tiny_exports: dict[str, Path]) -> None:
    pairs = parity_pairs(24)
    cpu = CrossEncoder(tiny_exports["bert"], provider="cpu").predict(pairs)
    cuda = CrossEncoder(tiny_exports["bert"], provider="cuda")
    assert cuda.provider == "cuda"
    np.testing.assert_allclose(cuda.predict(pairs), cpu, atol=1e-4, rtol=0)
    fp16 = CrossEncoder(tiny_exports["bert"], provider="cuda", precision="fp16").predict(pairs)
    assert np.isfinite(fp16).all()
    np.testing.assert_allclose(fp16, cpu, atol=5e-3, rtol=0)


def test_tensorrt_plan_uses_the_unfused_graph(tensorrt_ready_export: Path, tmp_path: Path, monkeypatch) -> None:
    from crossonnx.manifest import load_manifest

    monkeypatch.setenv("CROSSONNX_CACHE", str(tmp_path))
    manifest = load_manifest(tensorrt_ready_export)
    graph, options = graph_for(manifest, tensorrt_ready_export, "fp16", "tensorrt", 32, 128)
    assert graph == UNFUSED_GRAPH and options is not None and options["trt_fp16_enable"]
    assert options["trt_engine_cache_path"].startswith(str(tmp_path / "tensorrt"))
    assert options["trt_profile_max_shapes"] == "input_ids:32x128,attention_mask:32x128,token_type_ids:32x128"
    assert graph_for(manifest, tensorrt_ready_export, "fp16", "cuda", 32, 128)[0] == "fp16"
    with pytest.raises(PrecisionNotExportedError, match="static QDQ"):
        graph_for(manifest, tensorrt_ready_export, "int8", "tensorrt", 32, 128)


def test_tensorrt_plan_without_unfused_graph_names_the_fix(tiny_exports: dict[str, Path]) -> None:
    from crossonnx.manifest import load_manifest

    with pytest.raises(PrecisionNotExportedError, match="--tensorrt"):
        graph_for(load_manifest(tiny_exports["bert"]), tiny_exports["bert"], "fp16", "tensorrt", 32, 128)
