"""The throughput report's target tables (benchmarks/lab/targets.py): each target measured, compared and reported
with its margin."""

from __future__ import annotations

from lab.targets import level_checks, levels_markdown, target_checks, targets_markdown


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
    text = "\n".join(targets_markdown(list(checks.values()), doc))
    assert "**no** (by 5.0%)" in text.split("fastest peer")[0] and "**no** (by 5.0%)" in text.split("fastest peer")[1]


def test_level_tiers_pick_the_fastest_qualifying_variant_and_say_by_how_much() -> None:
    doc = {"throughput": {"results": [
        _row("st-torch-fp32", 30.0, executes="fp32"),
        _row("st-torch-bf16", 80.0, executes="bf16", spearman_vs_torch_fp32=0.99995, max_abs_diff_vs_torch_fp32=6e-3),
        _row("st-openvino", 110.0, executes="bfloat16"),
        _row("st-openvino-qint8", 150.0, executes="bfloat16"),
        _row("crossonnx-int8", 160.0, spearman_vs_torch_fp32=0.9986, max_abs_diff_vs_torch_fp32=0.026),
        _row("crossonnx-openvino-fp32", 95.0, executes="float32", spearman_vs_torch_fp32=1.0,
             max_abs_diff_vs_torch_fp32=4e-7),
        _row("crossonnx-openvino-bf16", 150.0, executes="bfloat16", spearman_vs_torch_fp32=0.99993,
             max_abs_diff_vs_torch_fp32=0.004),
        _row("crossonnx-openvino-int8-static", 210.0, executes="float32", spearman_vs_torch_fp32=0.9993,
             max_abs_diff_vs_torch_fp32=0.03),
    ]}}
    checks = {c["target"]: c for c in level_checks(doc)}
    faithful = checks["faithful tier / st-openvino"]
    assert faithful["engine"] == "crossonnx-openvino-bf16" and faithful["met"]  # 150/110 = 1.36
    bf16 = checks["faithful tier / torch bf16"]
    assert not bf16["met"] and abs(bf16["measured"] - 1.875) < 1e-9
    fast = checks["fast tier / st-openvino-qint8"]  # int8 (0.9986) does not qualify; int8-static does
    assert fast["engine"] == "crossonnx-openvino-int8-static" and fast["met"]
    assert checks["crossonnx-openvino-fp32 max abs diff vs torch fp32"]["met"]
    text = "\n".join(levels_markdown(list(checks.values()), doc))
    assert "crossonnx-openvino-bf16 (bfloat16) | 1.875x | >= 2x | **no** (by 6.2%)" in text


def test_levels_say_when_no_variant_qualifies_or_a_peer_is_missing() -> None:
    doc = {"throughput": {"results": [
        _row("st-openvino", 110.0),
        _row("crossonnx-int8", 160.0, spearman_vs_torch_fp32=0.9986, max_abs_diff_vs_torch_fp32=0.026),
    ]}}
    checks = {c["target"]: c for c in level_checks(doc)}
    assert checks["faithful tier / st-openvino"]["met"] is False
    assert "no crossonnx variant has Spearman >= 0.9999" in checks["faithful tier / st-openvino"]["why"]
    assert checks["crossonnx-openvino-fp32 max abs diff vs torch fp32"]["met"] is None


def test_a_tier_over_rounds_is_judged_by_the_median_round_s_ratio() -> None:
    # round by round 1.24x, 1.299x, 1.33x: the median round is under 1.3 though the medians' ratio is 1.3
    doc = {"config": {"rounds": 3}, "throughput": {"results": [
        _row("st-openvino", 92.0, pairs_per_s_rounds=[90.0, 92.4, 100.0]),
        _row("crossonnx-openvino-bf16", 120.0, pairs_per_s_rounds=[111.6, 120.0, 133.0],
             spearman_vs_torch_fp32=0.99995, max_abs_diff_vs_torch_fp32=0.004),
    ]}}
    faithful = next(c for c in level_checks(doc) if c["target"] == "faithful tier / st-openvino")
    assert not faithful["met"] and "median of 3 rounds" in levels_markdown([faithful], doc)[0]


def test_both_tables_come_before_the_measurements() -> None:
    from crossonnx.bench.report import throughput_markdown
    from lab.targets import markdown_sections

    doc = {"environment": {"date": "2026-01-01 00:00 UTC", "versions": {"crossonnx": "0.1.0"},
                           "cpu": {"model": "CPU", "machine": "x86_64", "cpus": 2, "simd": [], "no_simd": []}},
           "config": {"threads": 2, "reps": 3, "batch_size": 32},
           "throughput": {"results": [_row("st-torch-fp32", 30.0, x_torch_fp32=1.0),
                                      _row("crossonnx-fp32", 45.0, x_torch_fp32=1.5)]}}
    text = throughput_markdown(doc, "Throughput", "python benchmarks/throughput.py", sections=markdown_sections)
    levels, targets = text.index("## Quality levels: faithful and fast tiers"), text.index("## Targets against")
    assert levels < targets < text.index("### stsb-minilm-l6 — query-passage")
