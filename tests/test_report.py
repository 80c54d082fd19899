"""The throughput report's target table: each target measured, compared and reported with its margin."""

from __future__ import annotations

from crossonnx.bench.report import target_checks, targets_markdown


def _row(engine: str, rate: float, **extra: float) -> dict:
    return {"model": "stsb-minilm-l6", "workload": "query-passage", "engine": engine, "pairs_per_s": rate,
            "peak_rss_mb": extra.pop("rss", 300.0), **extra}


def test_targets_met_and_missed_are_reported_with_margin() -> None:
    doc = {
        "throughput": {"results": [
            _row("st-torch-fp32", 30.0, x_torch_fp32=1.0, rss=800.0),
            _row("crossonnx-fp32", 45.0, x_torch_fp32=1.5, max_abs_diff_vs_torch_fp32=4e-7),
            _row("crossonnx-int8", 57.0, x_torch_fp32=1.9, x_torch_bf16=12.0, spearman_vs_torch_fp32=0.9991,
                 rss=270.0),
            _row("fastembed", 60.0),
            {"model": "stsb-minilm-l6", "workload": "rank-100", "engine": "crossonnx-int8", "error": "timeout"},
        ]},
        "cold_start": [{"model": "stsb-minilm-l6", "engine": "st-torch-fp32", "cold_start_s": 6.0},
                       {"model": "stsb-minilm-l6", "engine": "crossonnx-fp32", "cold_start_s": 1.5}],
    }
    checks = {c["target"]: c for c in target_checks(doc)}
    assert checks["crossonnx fp32 / torch fp32"]["met"]
    assert checks["crossonnx fp32 max abs score diff"]["met"]
    assert not checks["fastest crossonnx (crossonnx-int8) / torch fp32"]["met"]
    assert checks["fastest crossonnx (crossonnx-int8) Spearman vs torch fp32"]["met"]
    peer = checks["fastest crossonnx / fastest peer (fastembed), query-passage"]
    assert not peer["met"] and abs(peer["measured"] - 0.95) < 1e-9
    assert checks["cold start crossonnx fp32 / torch fp32"]["met"]
    assert checks["peak RSS crossonnx-int8 / torch fp32 (query-passage run)"]["met"]
    text = "\n".join(targets_markdown(list(checks.values())))
    assert "**no** (by 5.0%)" in text.split("fastest peer")[0] and "**no** (by 5.0%)" in text.split("fastest peer")[1]
