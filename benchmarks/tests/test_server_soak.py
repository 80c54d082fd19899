"""The server soak (benchmarks/server_soak.py) in short: the real ``crossonnx serve`` under mixed requests from
concurrent clients, SIGKILLed and restarted midway, every answer checked against in-process ``predict``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import server_soak
from server_soak import Case, check


def test_the_pool_mixes_sizes_endpoints_and_options() -> None:
    pool = server_soak.build_pool(90, seed=4)
    assert all(1 <= len(c.documents) <= server_soak.MAX_DOCS for c in pool)
    assert all(1 <= len(d.split()) <= server_soak.MAX_WORDS for c in pool for d in c.documents)
    assert {c.endpoint for c in pool} == set(server_soak.ENDPOINTS)
    assert len({len(c.documents) for c in pool}) > 30
    assert any(c.top_n is not None for c in pool) and any(c.return_texts for c in pool)
    assert all(c.top_n is None for c in pool if c.endpoint == "/rerank")
    v2 = json.loads(next(c for c in pool if c.endpoint == "/v2/rerank").body)
    assert v2["model"] and all(isinstance(d, str) for d in v2["documents"])
    assert [c.body for c in server_soak.build_pool(90, seed=4)] == [c.body for c in pool]


def test_check_tells_a_right_answer_from_wrong_ones() -> None:
    case = Case("/rerank", "q", ["a", "b", "c"], return_texts=True, expected=np.array([0.9, 0.1, 0.5]))

    def answer(*rows: tuple[int, float]) -> list[dict]:
        return [{"index": i, "score": s, "text": case.documents[i]} for i, s in rows]

    assert check(case, answer((0, 0.9), (2, 0.52), (1, 0.1)), 0.05) == (None, pytest.approx(0.02))
    assert check(case, answer((0, 0.9), (1, 0.5), (2, 0.1)), 0.05)[0]  # another document's score
    assert check(case, answer((0, 0.9), (2, 0.5)), 0.05)[0]  # a document missing
    assert check(case, answer((1, 0.1), (0, 0.9), (2, 0.5)), 0.05)[0]  # not sorted
    assert check(case, answer((0, 0.9), (2, float("nan")), (1, 0.1)), 0.05)[0]
    swapped = answer((0, 0.9), (2, 0.5), (1, 0.1))
    swapped[1]["text"] = "a"
    assert check(case, swapped, 0.05)[0] == "result 2 returned another document's text"

    cohere = Case("/v1/rerank", "q", ["a", "b", "c"], top_n=2, expected=np.array([0.9, 0.1, 0.5]))
    best = {"results": [{"index": 0, "relevance_score": 0.9}, {"index": 2, "relevance_score": 0.5}]}
    assert check(cohere, best, 0.05)[0] is None
    not_best = {"results": [{"index": 0, "relevance_score": 0.9}, {"index": 1, "relevance_score": 0.1}]}
    assert check(cohere, not_best, 0.05)[0] == "top_n left out a better document"


def test_variants_default_to_what_this_cpu_and_folder_run(model_dir: Path) -> None:
    from crossonnx.engines import openvino_installed
    from crossonnx.manifest import load_manifest
    from crossonnx.precisions import PRECISIONS

    held = set(load_manifest(model_dir).precisions)
    variants, why = server_soak.default_variants(model_dir)
    assert variants[0] == ("cpu", "int8")
    if openvino_installed():
        from crossonnx.engines.openvino import has_bf16

        assert variants[1][0] == "openvino" and "bf16" in why
        expected = "bf16" if has_bf16() and "bf16" in held else "int8-dynamic" if "int8-dynamic" in held else "fp32"
        assert variants[1][1] == expected
    missing = next((p for p in ("bf16", "fp16", "int8-static") if p not in held), None)
    if missing is not None:
        with pytest.raises(ValueError, match=f"has no {missing}"):
            server_soak.parse_variants(f"{PRECISIONS[missing].providers[0]}:{missing}", model_dir)
    with pytest.raises(ValueError, match="not a provider:precision"):
        server_soak.parse_variants("openvino:int8", model_dir)


def test_a_short_soak_survives_a_sigkill_without_a_wrong_score(model_dir: Path, tmp_path: Path) -> None:
    variants, _ = server_soak.default_variants(model_dir)
    arg = ",".join(f"{p}:{q}" for p, q in variants)
    code = server_soak.main(["--model-dir", str(model_dir), "--variants", arg, "--minutes", "0.15",
                             "--clients", "2", "--sample-s", "3", "--pool", "12", "--max-docs", "16",
                             "--threads", "1", "--out", str(tmp_path)])
    assert code == 0
    doc = json.loads((tmp_path / "server_soak.json").read_text())
    assert doc["summary"]["wrong_scores"] == 0 and doc["summary"]["recovered"]
    assert [(r["provider"], r["precision"]) for r in doc["rows"]] == variants
    for row in doc["rows"]:
        assert row["wrong_scores"] == 0 and row["responses_checked"] > 0, row["wrong_examples"]
        restart = row["restart"]
        assert restart["new_pid"] != restart["old_pid"] and restart["ready_at_s"] > restart["killed_at_s"]
        assert restart["answers_after"] >= 1 and restart["first_answer_at_s"] > restart["killed_at_s"]
        assert sum(restart["errors"].values()) >= 1, "the clients saw the server down"
        assert row["exit_status"] == 0
        windows = row["windows"]
        assert len(windows) == 3 and sum(w["restart"] for w in windows) == 1
        assert all(w["rss_mb"] > 0 for w in windows)
        assert sum(w["ok"] for w in windows) + sum(w["wrong"] for w in windows) == row["responses_checked"]
        assert {"overall", "before_kill", "after_restart"} <= set(row["rss_growth"])
    report = (tmp_path / "server_soak.md").read_text()
    assert "## Totals" in report and "SIGKILL at" in report and "ONNX Runtime int8" in report
    assert doc["cpu"]["model"] in report and "onnxruntime" in report
