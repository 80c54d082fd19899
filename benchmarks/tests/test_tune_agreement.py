"""The tune agreement benchmark (benchmarks/tune_agreement.py) in short, on a tiny folder: a real `crossonnx tune`
and real benchmark workers, then the report's structure and its agreement computed from the two measurements."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                reason="needs crossonnx[openvino]: two fp32 engines make a choice to agree on")
FP32 = {"cpu/fp32", "openvino/fp32"}  # both exact: the level exact and provider 'auto' for fp32 choose between them


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT exported in fp32 and int8 only: cpu/fp32, openvino/fp32 and cpu/int8, quick to tune."""
    from crossonnx.checkpoints.synthetic import RANDOM_WEIGHT_GATES, build_tiny
    from crossonnx.exporter.pipeline import export_model

    work = tmp_path_factory.mktemp("tune-agreement")
    checkpoint = build_tiny("bert", work / "ckpt", seed=1)
    return export_model(str(checkpoint), out=work / "onnx", precisions=("fp32", "int8"),
                        gate_overrides=RANDOM_WEIGHT_GATES, log=None)


def test_disagreement_costs_the_benchmarks_ratio(folder: Path) -> None:
    import tune_agreement

    from crossonnx.levels import Machine
    from crossonnx.manifest import load_manifest

    tune_speeds = {"cpu/fp32": 200.0, "openvino/fp32": 100.0, "cpu/int8": 300.0}
    bench_speeds = {"cpu/fp32": 50.0, "openvino/fp32": 200.0, "cpu/int8": 300.0}
    rows = tune_agreement.compare(load_manifest(folder), Machine.probe(), tune_speeds, bench_speeds, "throughput")
    by_choice = {(r["kind"], r["choice"]): r for r in rows}
    for choice in (("level", "exact"), ("provider auto", "fp32")):
        row = by_choice[choice]
        assert (row["tune_pick"], row["bench_fastest"], row["agree"]) == ("cpu/fp32", "openvino/fp32", False)
        assert row["pick_over_fastest"] == pytest.approx(0.25)
    # int8 is faster on both sides but fails exact's 1e-5: it never is exact's pick
    agreed = tune_agreement.compare(load_manifest(folder), Machine.probe(), bench_speeds, bench_speeds, "throughput")
    assert all(r["agree"] and r["pick_over_fastest"] == 1.0 for r in agreed)


def test_one_run_reports_tune_time_and_agreement(folder: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tune_agreement.py"), "--model-dir", str(folder), "--runs", "1",
         "--tune-seconds", "2", "--threads", "1", "--pairs", "32", "--reps", "1", "--min-seconds", "0.05",
         "--latency", "--latency-calls", "10", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads((tmp_path / "tune_agreement.json").read_text())
    assert set(doc["variants"]) == FP32 | {"cpu/int8"}
    assert doc["run_count"] == 1 and len(doc["runs"]) == 1
    run = doc["runs"][0]
    assert run["tune"]["returncode"] == 0 and run["tune"]["wall_s"] > 0
    assert doc["summary"]["tune_wall_s"] == [run["tune"]["wall_s"]]
    tuned = {f"{v['provider']}/{v['precision']}": v for v in run["tune"]["result"]["variants"]}
    assert set(tuned) == set(doc["variants"]) and not run["bench"]["errors"]
    measured = {"throughput": ({k: v["pairs_per_s"] for k, v in tuned.items()}, run["bench"]["throughput"]),
                "latency": ({k: 1000.0 / v["latency_ms_p50"] for k, v in tuned.items()}, run["bench"]["latency"])}
    assert all(set(bench) == set(tuned) for _, bench in measured.values())

    choices = {(c["workload"], c["kind"], c["choice"]): c for c in run["choices"]}
    for workload, (tune_speeds, bench_speeds) in measured.items():
        for choice in ((workload, "level", "exact"), (workload, "provider auto", "fp32")):
            row = choices[choice]
            assert row["tune_pick"] == max(FP32, key=tune_speeds.__getitem__), row
            assert row["bench_fastest"] == max(FP32, key=bench_speeds.__getitem__), row
    for row in run["choices"]:  # every choice: agreement and cost from the two measurements
        _, bench_speeds = measured[row["workload"]]
        assert row["agree"] == (row["tune_pick"] == row["bench_fastest"])
        assert row["pick_over_fastest"] == pytest.approx(
            bench_speeds[row["tune_pick"]] / bench_speeds[row["bench_fastest"]], abs=1e-4)
    summary = {(c["workload"], c["kind"], c["choice"]): c for c in doc["summary"]["choices"]}
    assert set(summary) == set(choices)
    for key, c in summary.items():
        assert (c["agreements"], c["compared"], c["runs"]) == (int(choices[key]["agree"]), 1, 1)

    report = (tmp_path / "tune_agreement.md").read_text()
    assert report.startswith("# ") and "Command: `python benchmarks/tune_agreement.py" in report
    assert "CPU: " in report and "SIMD" in report and "onnxruntime" in report
    assert "| throughput | level exact |" in report and "| latency | provider auto fp32 |" in report
