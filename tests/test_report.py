"""The throughput report: speed ratios over rounds, and the markdown of a `crossonnx bench` result."""

from __future__ import annotations

from crossonnx.bench.report import speed_ratio, throughput_markdown


def _row(engine: str, rate: float, **extra: float) -> dict:
    return {"model": "stsb-minilm-l6", "workload": "query-passage", "engine": engine, "pairs_per_s": rate,
            "peak_rss_mb": extra.pop("rss", 300.0), **extra}


def test_a_ratio_over_rounds_is_the_median_round_s_ratio_not_a_ratio_of_medians() -> None:
    # round by round 1.24x, 1.299x, 1.33x: the median round is under 1.3 though the medians' ratio is 1.3
    ours = {"pairs_per_s": 120.0, "pairs_per_s_rounds": [111.6, 120.0, 133.0]}
    peer = {"pairs_per_s": 92.0, "pairs_per_s_rounds": [90.0, 92.4, 100.0]}
    assert abs(speed_ratio(ours, peer) - 120.0 / 92.4) < 1e-12 and speed_ratio(ours, peer) < 1.3
    assert abs(ours["pairs_per_s"] / peer["pairs_per_s"] - 1.3043) < 1e-4
    assert speed_ratio({"pairs_per_s": 50.0}, peer) == 50.0 / 92.0  # no rounds: the rates' ratio


def _doc() -> dict:
    return {"environment": {"date": "2026-01-01 00:00 UTC", "versions": {"crossonnx": "0.1.0"},
                            "cpu": {"model": "CPU", "machine": "x86_64", "cpus": 2, "simd": ["avx2"],
                                    "no_simd": ["avx512f"]}},
            "config": {"threads": 2, "reps": 3, "batch_size": 32},
            "throughput": {"results": [
                _row("st-torch-fp32", 30.0, x_torch_fp32=1.0),
                _row("crossonnx-int8", 57.0, x_torch_fp32=1.9, spearman_vs_torch_fp32=0.9991,
                     max_abs_diff_vs_torch_fp32=0.02, executes="int8"),
                {"model": "stsb-minilm-l6", "workload": "query-passage", "engine": "fastembed", "error": "no peers"},
            ]}}


def test_markdown_reports_the_measurements_and_no_targets() -> None:
    text = throughput_markdown(_doc(), "crossonnx bench", "crossonnx bench")
    assert "### stsb-minilm-l6 — query-passage (? pairs)" in text
    assert "| crossonnx-int8 | int8 | 57.0 | 1.90 | – | 0.99910 | 2.0e-02 | 300 |" in text
    assert "| fastembed | | not run: no peers |" in text
    assert not [line for line in text.splitlines() if line.startswith("## ")], "no targets in crossonnx bench"


def test_markdown_places_the_callers_sections_before_the_tables() -> None:
    text = throughput_markdown(_doc(), "Throughput", "cmd", sections=lambda doc: ["## Mine", ""])
    assert text.index("## Mine") < text.index("### stsb-minilm-l6")
