"""Long documents over HTTP: the `long_documents` extension on /rerank and /predict, Cohere's max_chunks_per_doc,
TEI's truncation_direction; a real server on loopback with the real reference model, and the batcher's per-runner
merging."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("httpx")

from test_serve import Running, serving

from crossonnx import LongDocuments, _pipeline
from crossonnx.encoder import CrossEncoder
from crossonnx.serve.batcher import DynamicBatcher
from crossonnx.serve.limits import ServeLimits
from crossonnx.stsb import load_stsb
from gated import GatedRunner

LIMITS = ServeLimits(max_texts_per_request=16, max_text_chars=8000, max_queue_pairs=200)
QUERY = "A woman is cutting an onion."
DOC = "A man is playing a guitar. A woman is slicing an onion. The cat sleeps on the sofa."
CHUNK = {"mode": "chunk", "chunk_tokens": 8, "chunk_overlap": 2, "return_spans": True}


@pytest.fixture(scope="module")
def encoder(reference_export: Path) -> CrossEncoder:
    return CrossEncoder(reference_export, threads=2)


@pytest.fixture(scope="module")
def server(encoder: CrossEncoder) -> Iterator[Running]:
    with serving(encoder, LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def long_text() -> str:
    rows = load_stsb("dev")
    rng = random.Random(3)
    return " ".join(rng.choice(rows).sentence1 for _ in range(70))  # ~ 800 tokens, under 8000 characters


def test_rerank_chunks_like_rank_with_spans(server, encoder, long_text):
    texts = [long_text, DOC, "A man plays the guitar."]
    response = server.post("/rerank", {"query": QUERY, "texts": texts, "long_documents": CHUNK})
    assert response.status_code == 200, response.text
    expected = encoder.rank(QUERY, texts, long_documents=LongDocuments("chunk", chunk_tokens=8, chunk_overlap=2),
                            return_spans=True)
    got = response.json()
    assert [item["index"] for item in got] == [item["corpus_id"] for item in expected]
    for item, want in zip(got, expected, strict=True):
        assert item["score"] == pytest.approx(want["score"], abs=1e-6)  # other batches: fp32 rounding
        assert (item["span"], item["chunks"], item["capped"]) == (list(want["span"]), want["chunks"], want["capped"])
    assert got[0]["index"] == 1 and DOC[slice(*got[0]["span"])] == ". A woman is slicing an onion."
    assert not any(item["capped"] for item in got)  # the default cap reads ~800 tokens whole
    # without the extension nothing changes: TEI's own fields only
    plain = server.post("/rerank", {"query": QUERY, "texts": texts}).json()
    assert all(set(item) == {"index", "score"} for item in plain)


def test_capped_documents_are_refused_or_flagged(server, encoder, long_text):
    texts = [DOC, long_text]
    spec = {"mode": "chunk", "chunk_tokens": 32, "max_document_tokens": 100}
    refused = server.post("/rerank", {"query": QUERY, "texts": texts, "long_documents": spec})  # on_capped "raise"
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "long_documents.max_document_tokens"
    assert "texts[1] has" in refused.json()["error"] and '"flag"' in refused.json()["error"]
    flagged = server.post("/rerank", {"query": QUERY, "texts": texts,
                                      "long_documents": {**spec, "on_capped": "flag"}})
    assert flagged.status_code == 200, flagged.text
    options = LongDocuments("chunk", chunk_tokens=32, max_document_tokens=100, on_capped="flag")
    expected = {r["corpus_id"]: r for r in encoder.rank(QUERY, texts, long_documents=options)}
    for item in flagged.json():
        want = expected[item["index"]]
        assert (item["chunks"], item["capped"]) == (want["chunks"], want["capped"])
        assert item["score"] == pytest.approx(want["score"], abs=1e-6)
    assert {item["index"]: item["capped"] for item in flagged.json()} == {0: False, 1: True}


def test_predict_chunks_and_spans(server, encoder, long_text):
    pairs = [[QUERY, DOC], [QUERY, long_text]]
    body = {"pairs": pairs, "long_documents": {"mode": "chunk", "chunk_tokens": 64, "max_document_tokens": 200,
                                               "on_capped": "flag", "aggregate": "mean", "return_spans": True}}
    response = server.post("/predict", body)
    assert response.status_code == 200, response.text
    got = response.json()
    options = LongDocuments("chunk", chunk_tokens=64, max_document_tokens=200, on_capped="flag", aggregate="mean")
    details = encoder.predict_details([tuple(p) for p in pairs], long_documents=options)
    np.testing.assert_allclose(got["scores"], details.scores, rtol=0, atol=1e-6)
    assert got["chunks"] == details.chunks.tolist() and got["chunks"][0] == 1 and got["chunks"][1] > 1
    assert got["capped"] == [False, True]
    assert got["spans"] == [list(span) for span in details.spans]
    # truncate mode spans: what survived truncation
    spans = server.post("/predict", {"pairs": pairs, "long_documents": {"return_spans": True}}).json()["spans"]
    assert spans == [list(span) for span in _pipeline.truncated_spans(encoder, [tuple(p) for p in pairs])]
    assert spans[1][1] < len(long_text)


def test_cohere_max_chunks_per_doc(server, encoder, long_text):
    documents = [long_text, DOC]
    assert encoder.predict_details([(QUERY, long_text)], long_documents="chunk").chunks[0] > 1  # the default window
    response = server.post("/v1/rerank", {"query": QUERY, "documents": documents, "max_chunks_per_doc": 1})
    assert response.status_code == 200, response.text
    got = response.json()
    # one chunk: the tokens of one default window beside the query; Cohere never refuses a longer document
    cap = _pipeline.cap_of_windows(encoder, QUERY, 1)
    expected = encoder.predict([(QUERY, d) for d in documents],
                               long_documents=LongDocuments("chunk", max_document_tokens=cap, on_capped="flag"))
    for result in got["results"]:
        assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), abs=1e-6)
    assert f"documents [0] are longer than max_chunks_per_doc=1 chunks hold ({cap} tokens)" in \
        got["meta"]["warnings"][0]
    # each result says what chunk mode did to it, as /rerank's and /predict's do
    assert {r["index"]: (r["chunks"], r["capped"]) for r in got["results"]} == {0: (1, True), 1: (1, False)}
    plain = server.post("/v1/rerank", {"query": QUERY, "documents": documents}).json()
    assert "warnings" not in plain["meta"] and all(set(r) == {"index", "relevance_score"} for r in plain["results"])


def test_truncation_direction(server, encoder, long_text):
    texts = [long_text, DOC]
    left = encoder.predict([(QUERY, t) for t in texts], long_documents=LongDocuments(truncation_direction="left"))
    right = encoder.predict([(QUERY, t) for t in texts])
    assert left[0] != right[0]
    for value in ("left", "Left"):
        got = server.post("/rerank", {"query": QUERY, "texts": texts, "truncation_direction": value}).json()
        by_index = {item["index"]: item["score"] for item in got}
        np.testing.assert_allclose([by_index[0], by_index[1]], left, rtol=0, atol=1e-6)
    got = server.post("/rerank", {"query": QUERY, "texts": texts, "truncation_direction": "right"}).json()
    np.testing.assert_allclose([{i["index"]: i["score"] for i in got}[k] for k in (0, 1)], right, rtol=0, atol=1e-6)


def test_chunk_mode_needs_no_truncation(server, long_text):
    body = {"query": QUERY, "texts": [long_text], "truncate": False}
    assert server.post("/rerank", body).status_code == 413  # truncate mode would have to cut it
    chunked = server.post("/rerank", {**body, "long_documents": {"mode": "chunk"}})
    assert chunked.status_code == 200, chunked.text
    assert chunked.json()[0]["chunks"] > 1


def test_too_many_windows_is_413_naming_the_cap(server, long_text):
    body = {"query": QUERY, "texts": [long_text] * 16, "long_documents": {"mode": "chunk", "chunk_tokens": 16}}
    response = server.post("/rerank", body)
    assert response.status_code == 413
    assert response.json()["field"] == "long_documents.max_document_tokens" and "windows" in response.json()["error"]


BASE = {"query": QUERY, "texts": [DOC]}


@pytest.mark.parametrize(
    ("path", "extra", "field"),
    [
        ("/rerank", {"long_documents": "chunk"}, "long_documents"),
        ("/rerank", {"long_documents": {"mode": "split"}}, "long_documents.mode"),
        ("/rerank", {"long_documents": {"mode": "chunk", "chunk_tokens": 0}}, "long_documents.chunk_tokens"),
        ("/rerank", {"long_documents": {"mode": "chunk", "chunk_tokens": "64"}}, "long_documents.chunk_tokens"),
        ("/rerank", {"long_documents": {"mode": "chunk", "chunk_overlap": -1}}, "long_documents.chunk_overlap"),
        ("/rerank", {"long_documents": {"mode": "chunk", "chunk_tokens": 8, "chunk_overlap": 8}},
         "long_documents.chunk_overlap"),
        ("/rerank", {"long_documents": {"chunk_tokens": 8}}, "long_documents.chunk_tokens"),
        ("/rerank", {"long_documents": {"mode": "chunk", "aggregate": "median"}}, "long_documents.aggregate"),
        ("/rerank", {"long_documents": {"mode": "chunk", "max_document_tokens": 0}},
         "long_documents.max_document_tokens"),
        ("/rerank", {"long_documents": {"mode": "chunk", "max_document_tokens": True}},
         "long_documents.max_document_tokens"),
        ("/rerank", {"long_documents": {"max_document_tokens": 100}}, "long_documents.max_document_tokens"),
        ("/rerank", {"long_documents": {"mode": "chunk", "on_capped": "drop"}}, "long_documents.on_capped"),
        ("/rerank", {"long_documents": {"mode": "chunk", "max_chunks": 3}}, "long_documents.max_chunks"),
        ("/rerank", {"long_documents": {"return_spans": "yes"}}, "long_documents.return_spans"),
        ("/rerank", {"long_documents": {"mode": "chunk", "chunk_size": 8}}, "long_documents.chunk_size"),
        ("/rerank", {"truncation_direction": "up"}, "truncation_direction"),
        ("/rerank", {"truncation_direction": 1}, "truncation_direction"),
        ("/predict", {"long_documents": {"mode": "chunk", "aggregate": 3}}, "long_documents.aggregate"),
        ("/predict", {"truncation_direction": "middle"}, "truncation_direction"),
        ("/v1/rerank", {"max_chunks_per_doc": 0}, "max_chunks_per_doc"),
        ("/v1/rerank", {"max_chunks_per_doc": "10"}, "max_chunks_per_doc"),
        ("/v1/rerank", {"max_chunks_per_doc": 2.5}, "max_chunks_per_doc"),
    ],
)
def test_bad_long_document_fields_are_422_naming_the_field(server, path, extra, field):
    body = {"/rerank": BASE, "/predict": {"pairs": [[QUERY, DOC]]}, "/v1/rerank": {"query": QUERY,
                                                                                   "documents": [DOC]}}[path]
    response = server.post(path, {**body, **extra})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and response.json()["error_type"] == "Validation"


def test_requests_with_different_runners_are_not_merged(encoder):
    """A left-truncating request queued between two default ones runs on its own runner, in arrival order."""
    gated = GatedRunner(encoder)
    left_calls: list[int] = []

    def left(pairs):
        left_calls.append(len(pairs))
        return _pipeline.logits_and_stats(encoder, pairs, truncation_direction="left")[0]

    batcher = DynamicBatcher(gated, max_batch_pairs=64, max_queue_pairs=64)
    pairs = [(QUERY, DOC), (QUERY, " ".join(str(i) for i in range(600)))]

    async def scenario():
        first = asyncio.create_task(batcher.submit(pairs[:1]))
        assert await asyncio.to_thread(gated.entered.wait, 30)
        queued = [asyncio.create_task(batcher.submit(pairs)), asyncio.create_task(batcher.submit(pairs, left)),
                  asyncio.create_task(batcher.submit(pairs))]
        while batcher.queued_requests < 3:
            await asyncio.sleep(0.002)
        gated.gate.set()
        return await asyncio.gather(first, *queued)

    try:
        _, default_rows, left_rows, _ = asyncio.run(scenario())
    finally:
        batcher.close(30)
    assert gated.calls == [1, 2, 2] and left_calls == [2]  # default, default, (left alone), default
    expected = _pipeline.logits_and_stats(encoder, pairs, truncation_direction="left")[0]
    np.testing.assert_allclose(left_rows, expected, atol=1e-6)
    assert not np.allclose(left_rows[1], default_rows[1])
