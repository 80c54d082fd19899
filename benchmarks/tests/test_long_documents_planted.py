"""The long-documents benchmark's planted-answer check (benchmarks/long_documents.py, part 3), in short: its cases
are what it says (held-back answers at the end of documents of the asked length) and its report comes out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from crossonnx.stsb import load_stsb

ROOT = Path(__file__).resolve().parents[2]


def test_cases_plant_a_held_back_answer_at_the_end() -> None:
    import long_documents

    cases = long_documents.planted_cases(6, words=120, distractors=3, seed=5)
    assert cases == long_documents.planted_cases(6, words=120, distractors=3, seed=5)
    gold = {(r.sentence1, r.sentence2): r.score for r in load_stsb("test")}
    for case in cases:
        assert gold[(case["query"], case["answer"])] >= 4.5
        documents, slot = case["documents"], case["slot"]
        assert len(documents) == 4 and 0 <= slot < 4
        needle = documents[slot]
        start, end = case["answer_span"]
        assert needle[start:end] == case["answer"] and end == len(needle)
        assert all(len(doc.split()) >= 120 for doc in documents)
        for i, doc in enumerate(documents):  # the answer and the query nowhere else
            body = doc[:start].rstrip() if i == slot else doc
            assert case["answer"] not in body and case["query"] not in body
    assert long_documents.old_cap_tokens(24) == 24 + 9 * 18  # 10 windows of 24 tokens, a quarter shared


def test_a_short_planted_run_writes_its_report(model_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "long_documents.py"),
            "--planted-only",
            "--model-dir",
            str(model_dir),
            "--cases",
            "2",
            "--words",
            "150",
            "--chunk-tokens",
            "16",
            "--threads",
            "1",
            "--provider",
            "cpu",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "long_documents_planted.json").read_text())
    methods = result["methods"]
    assert [m["cases"] for m in methods] == [2, 2, 2] and result["chunk_tokens"] == 16
    default, old = methods[1], methods[2]
    assert default["options"]["max_document_tokens"] is None and default["capped_documents"] == 0
    assert old["options"] == {**default["options"], "max_document_tokens": 16 + 9 * 12, "on_capped": "flag"}
    assert old["capped_documents"] > 0 and old["span_covers_answer"] == 0  # the 0.x cap never reaches the end
    assert "| chunk, 16-token windows, default options | " in (tmp_path / "long_documents_planted.md").read_text()
