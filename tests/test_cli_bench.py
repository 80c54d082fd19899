"""`crossonnx bench`: the accuracy table (torch-free without a checkpoint) and the speed run on a tiny model."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from crossonnx.cli import main
from crossonnx.engines import OPENVINO_ONLY
from crossonnx.manifest import load_manifest
from installed import expected_pending


def test_bench_accuracy_without_torch_compares_against_fp32(tiny_exports: dict[str, Path], tmp_path: Path,
                                                           capsys) -> None:
    out = tmp_path / "acc.json"
    assert main(["bench", str(tiny_exports["bert"]), "--accuracy", "--queries", "3", "--out", str(out)]) == 0
    said = capsys.readouterr()
    printed = said.out
    assert "agreement against crossonnx-fp32" in printed
    rows = {r["engine"]: r for r in json.loads(out.read_text())}
    # every precision of the folder this machine runs, named like the throughput engines (OpenVINO's own precisions
    # run there); one written pending validation that it cannot run (bf16 on a CPU without bf16) is named as skipped
    held = set(load_manifest(tiny_exports["bert"]).precisions)
    expected = {f"crossonnx-{p}" if p not in OPENVINO_ONLY else f"crossonnx-openvino-{p}"
                for p in held - expected_pending()}
    assert set(rows) == expected
    assert all(f"{p} skipped: " in said.err for p in expected_pending() & held)
    assert rows["crossonnx-fp32"]["max_abs_diff_vs_fp32"] == 0.0
    assert rows["crossonnx-fp32"]["top10_agreement"] == 1.0
    assert 0 < rows["crossonnx-int8"]["max_abs_diff_vs_fp32"] < 0.05


def test_bench_speed_writes_json_and_markdown(tiny_exports: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    assert main(["bench", str(tiny_exports["bert"]), "--pairs", "32", "--reps", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    engines = {r["engine"] for r in doc["throughput"]["results"]}
    assert engines == {"crossonnx-fp32", "crossonnx-int8"}
    for row in doc["throughput"]["results"]:  # --pairs and --reps reach the worker; the rate is their median
        assert row["pairs"] == 32 and len(row["pairs_per_s_all"]) == 1, row
        assert row["pairs_per_s"] == statistics.median(row["pairs_per_s_all"]) and math.isfinite(row["pairs_per_s"])
    assert out.with_suffix(".md").read_text().startswith("#")


def test_bench_on_a_missing_folder_fails_naming_it(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing"
    assert main(["bench", str(missing), "--pairs", "8", "--reps", "1"]) == 2
    assert str(missing) in capsys.readouterr().err
