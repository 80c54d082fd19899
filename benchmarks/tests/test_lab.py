"""The benchmarks' own helpers: the int8 baseline folder, agreement on held-out pairs, the CPU generation's name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossonnx.bench.workloads import query_passage_pairs


def test_int8_baseline_is_a_model_folder_of_its_own(tiny_checkpoints: dict[str, Path], tiny_exports: dict[str, Path],
                                                    tmp_path: Path) -> None:
    from crossonnx import CrossEncoder
    from crossonnx.errors import ModelFolderError
    from crossonnx.exporter.pipeline import export_model
    from crossonnx.manifest import load_manifest
    from crossonnx.verify import verify_folder
    from lab.int8_baseline import KIND, plain_int8_folder

    with pytest.raises(ModelFolderError, match="--tensorrt"):
        plain_int8_folder(tiny_exports["bert"], tmp_path / "nope")
    export = export_model(str(tiny_checkpoints["bert"]), out=tmp_path / "export", precisions="fp32",
                          tensorrt=True, log=None)
    folder = plain_int8_folder(export, tmp_path / "baseline")
    manifest = load_manifest(folder)
    entry = manifest.entry("int8")
    assert set(manifest.precisions) == {"int8"} and entry.details["baseline"] == KIND
    assert entry.details["first_position_fp32"] is False and entry.details["fp32_matmuls"] == []
    assert entry.parity is not None and entry.parity.gate is None  # measured on the reference pairs, not gated
    assert 0 < entry.parity.max_abs_diff < 0.05
    assert verify_folder(folder)["int8"]["passed"]
    pairs = query_passage_pairs(8, seed=0)
    baseline = CrossEncoder(folder, precision="int8", provider="cpu").predict(pairs)
    fp32 = CrossEncoder(export, precision="fp32", provider="cpu").predict(pairs)
    assert 0 < np.abs(baseline - fp32).max() < 0.05
    assert plain_int8_folder(export, folder) == folder  # built once


def test_reports_tell_cpu_generations_apart_that_share_their_flags() -> None:
    from crossonnx.bench.machine import describe_cpu
    from lab.machine import core_generation, cpu_info

    assert core_generation("AuthenticAMD", 26, {"avx512f"}) == "Zen 5"
    assert core_generation("AuthenticAMD", 25, {"avx512f", "avx512_bf16"}) == "Zen 4"
    assert core_generation("AuthenticAMD", 25, {"avx2"}) == "Zen 3"
    assert core_generation("GenuineIntel", 6, {"avx512f"}) is None
    info = cpu_info()  # this machine's /proc/cpuinfo, with the generation where known
    assert "core" in info and f"family {info['family']} model" in describe_cpu(info)
    assert describe_cpu({**info, "core": "Zen 4"}).startswith(f"{info['model']} Zen 4 (")


def test_heldout_agreement_scores_fresh_seeds_per_set(tiny_exports: dict[str, Path]) -> None:
    from crossonnx.bench.accuracy import crossonnx_scorer
    from lab.accuracy import heldout_agreement

    export = tiny_exports["bert"]
    scorers = {"torch-fp32": crossonnx_scorer(export, "fp32", 1), "int8": crossonnx_scorer(export, "int8", 1)}
    out = heldout_agreement(scorers, sets=3, pairs=16, log=lambda _: None)
    assert [s["seed"] for s in out["int8"]["sets"]] == [1, 2, 3]
    assert out["torch-fp32"]["min_spearman"] == pytest.approx(1.0) and out["torch-fp32"]["max_abs"] == 0.0
    assert out["int8"]["max_abs"] > 0.0
    assert out["int8"]["min_spearman"] == min(s["spearman"] for s in out["int8"]["sets"])
