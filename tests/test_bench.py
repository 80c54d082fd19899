"""The benchmark's inputs and engines: query-passage pairs with spread, engine names, the worker's record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossonnx.bench import worker
from crossonnx.bench.workloads import PARTNER_MIN_GOLD, query_passage_pairs
from crossonnx.engines import PROVIDERS
from crossonnx.manifest import PRECISIONS
from crossonnx.stsb import load_stsb


def _partner_of(query: str, passage: str) -> str | None:
    """The sentence 2 of a similar STSb pair whose sentence 1 starts with the query, if the passage holds it."""
    for row in load_stsb("test") + load_stsb("dev"):
        if row.score >= PARTNER_MIN_GOLD and row.sentence1.startswith(query) and row.sentence2 in passage:
            return row.sentence2
    return None


def test_about_half_the_passages_hold_the_querys_stsb_partner() -> None:
    pairs = query_passage_pairs(300, seed=0)
    assert pairs == query_passage_pairs(300, seed=0) and pairs != query_passage_pairs(300, seed=1)
    with_partner = [_partner_of(q, p) is not None for q, p in pairs]
    assert 0.4 <= np.mean(with_partner) <= 0.6
    words = [len(p.split()) for _, p in pairs]
    assert min(words) >= 40 and max(words) <= 150 + 40  # a partner sentence may run past the filler's count
    assert all(2 <= len(q.split()) <= 8 for q, _ in pairs)
    # the partner stands at a random place, not always first or last
    positions = [p.index(partner) / len(p) for q, p in pairs if (partner := _partner_of(q, p))]
    assert min(positions) < 0.2 and max(positions) > 0.6


def test_the_reference_model_scores_partner_passages_apart(reference_export: Path) -> None:
    from crossonnx import CrossEncoder

    pairs = query_passage_pairs(64, seed=0)
    scores = CrossEncoder(reference_export, provider="cpu").predict(pairs)
    holds = np.array([_partner_of(q, p) is not None for q, p in pairs])
    # measured: 0.04 apart, std 0.083 (passages of STSb sentences glued together alone: std 0.035)
    assert scores[holds].mean() - scores[~holds].mean() > 0.02
    assert np.std(scores) > 0.06


def test_crossonnx_engine_names_parse_to_provider_and_precision() -> None:
    assert worker.crossonnx_variant("crossonnx-int8") == ("cpu", "int8")
    assert worker.crossonnx_variant("crossonnx-openvino-int8-static") == ("openvino", "int8-static")
    assert worker.crossonnx_variant("crossonnx-openvino-bf16") == ("openvino", "bf16")
    assert worker.crossonnx_variant("st-openvino") is None
    for provider in PROVIDERS:
        for precision in PRECISIONS:
            assert worker.crossonnx_variant(worker.engine_name(provider, precision)) == (provider, precision)
    for bad in ("crossonnx-openvino", "crossonnx-int8-plain", "crossonnx-openvino-fp64"):
        with pytest.raises(ValueError, match=r"crossonnx\[-PROVIDER\]-PRECISION"):
            worker.check_engine(bad)
    with pytest.raises(ValueError, match="unknown engine 'st-openvin'"):
        worker.check_engine("st-openvin")
    # the worker imports nothing from crossonnx, so it keeps its own copies of these names
    assert {"cpu", *worker.NAMED_PROVIDERS} == set(PROVIDERS)
    assert set(worker.CROSSONNX_PRECISIONS) == set(PRECISIONS)


def _run_worker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(Path(worker.__file__)), *args], capture_output=True, text=True,
                          check=False)


@pytest.mark.parametrize("engine,executes", [("crossonnx-openvino-fp32", "float32"),
                                             ("crossonnx-int8", "int8 (as stored in the graph)")])
def test_worker_records_what_the_engine_executed(engine: str, executes: str, tiny_exports: dict[str, Path],
                                                 tmp_path: Path) -> None:
    if engine.startswith("crossonnx-openvino"):
        pytest.importorskip("openvino")
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(query_passage_pairs(32, seed=0)))
    done = _run_worker("--engine", engine, "--model-dir", str(tiny_exports["bert"]), "--pairs", str(pairs),
                       "--threads", "1", "--reps", "1", "--scores-out", str(tmp_path / "scores.json"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["engine"] == engine and result["executes"] == executes
    assert result["pairs"] == 32 and result["pairs_per_s"] > 0 and result["peak_rss_mb"] > 0
    assert len(json.loads((tmp_path / "scores.json").read_text())) == 32


def test_worker_refuses_an_unknown_engine_naming_the_forms(tmp_path: Path) -> None:
    done = _run_worker("--engine", "crossonnx-int8-plain", "--pairs", str(tmp_path / "none.json"), "--threads", "1")
    assert done.returncode == 2
    assert "precision 'int8-plain' is not one of" in done.stderr and "st-openvino" in done.stderr


def test_rounds_merge_to_the_median_round_with_every_pass_kept() -> None:
    from crossonnx.bench.throughput import merge_rounds

    def run(rate: float, rss: float) -> dict:
        return {"engine": "e", "pairs_per_s": rate, "pairs_per_s_all": [rate - 1, rate], "load_s": rate / 100,
                "peak_rss_mb": rss}

    merged = merge_rounds([run(100.0, 300.0), run(140.0, 350.0), run(90.0, 320.0)])
    assert merged["pairs_per_s"] == 100.0 and merged["pairs_per_s_rounds"] == [100.0, 140.0, 90.0]
    assert merged["pairs_per_s_all"] == [99.0, 100.0, 139.0, 140.0, 89.0, 90.0]
    assert (merged["rounds"], merged["peak_rss_mb"], merged["load_s"]) == (3, 350.0, 1.0)
    assert merge_rounds([{"engine": "e", "error": "no peers"}]) == {"engine": "e", "error": "no peers"}
    # a later round that failed makes the row that error, not a median of the rounds that ran
    assert merge_rounds([run(100.0, 300.0), {"engine": "e", "error": "killed"}]) == {"engine": "e", "error": "killed"}
    assert merge_rounds([run(100.0, 300.0), run(140.0, 350.0)])["pairs_per_s"] == 100.0  # a round's rate, not a mean


def test_cpu_record_names_family_and_model_numbers() -> None:
    from crossonnx.bench.machine import cpu_info, describe_cpu

    info = cpu_info()  # this machine's /proc/cpuinfo
    assert isinstance(info["family"], int) and f"family {info['family']} model" in describe_cpu(info)
    assert describe_cpu({**info, "core": "Core X"}).startswith(f"{info['model']} Core X (")  # a name the caller added
