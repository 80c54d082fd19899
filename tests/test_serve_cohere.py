"""Cohere's rerank APIs through the official ``cohere`` SDK: ``cohere.Client`` (v1) and ``cohere.ClientV2`` (v2)
against a real ``crossonnx serve`` process on a loopback port, scores compared with in-process ``predict`` on the
same tiny exported model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
cohere = pytest.importorskip("cohere")

from cohere.errors import UnauthorizedError, UnprocessableEntityError  # noqa: E402

from crossonnx import _pipeline  # noqa: E402
from crossonnx.serve.security import API_KEY_ENV  # noqa: E402
from pairs import parity_pairs  # noqa: E402
from serving import WAIT_S, cli_server  # noqa: E402

KEY = "cohere-test-key"
MODEL = "any-name"  # the server serves one model, whatever the request names
# single-token words of the tiny BERT vocabulary: a prefix of n words is n tokens
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "a", "man", "is", "playing", "a", "guitar", "while", "the",
         "dog", "runs"]


def _serve_args(model_dir: Path) -> list[str]:
    return [str(model_dir), "--provider", "cpu", "--threads", "1", "--log-level", "warning"]


@pytest.fixture(scope="module")
def keyed_url(model_dir: Path) -> Iterator[str]:
    """`crossonnx serve` with an API key (from the environment, as in production)."""
    with cli_server(_serve_args(model_dir), env={API_KEY_ENV: KEY}) as (url, _):
        yield url


@pytest.fixture(scope="module")
def open_url(model_dir: Path) -> Iterator[str]:
    """`crossonnx serve` without an API key."""
    with cli_server(_serve_args(model_dir)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def query_documents() -> tuple[str, list[str]]:
    pairs = parity_pairs(48)
    return pairs[30][0], [passage for _, passage in pairs[24:34]] + ["naïve café 🙂"]


def _by_index(results) -> np.ndarray:
    return np.array([r.relevance_score for r in sorted(results, key=lambda r: r.index)])


def test_v1_client_reranks_like_predict(keyed_url, encoder, query_documents):
    query, documents = query_documents
    expected = encoder.predict([(query, d) for d in documents])
    co = cohere.Client(base_url=keyed_url, api_key=KEY, timeout=WAIT_S)

    response = co.rerank(model=MODEL, query=query, documents=documents)
    assert [r.index for r in response.results] == np.argsort(-expected, kind="stable").tolist()
    np.testing.assert_allclose(_by_index(response.results), expected, atol=1e-5, rtol=0)
    assert response.id and response.meta.api_version.version == "1"
    assert response.meta.billed_units.search_units == 1

    top = co.rerank(model=MODEL, query=query, documents=documents, top_n=3, return_documents=True).results
    assert [r.index for r in top] == np.argsort(-expected, kind="stable")[:3].tolist()
    assert [r.document.text for r in top] == [documents[r.index] for r in top]


def test_v2_client_reranks_like_predict(keyed_url, encoder, query_documents):
    query, documents = query_documents
    expected = encoder.predict([(query, d) for d in documents])
    co = cohere.ClientV2(base_url=keyed_url, api_key=KEY, timeout=WAIT_S)

    response = co.rerank(model=MODEL, query=query, documents=documents)
    assert [r.index for r in response.results] == np.argsort(-expected, kind="stable").tolist()
    np.testing.assert_allclose(_by_index(response.results), expected, atol=1e-5, rtol=0)
    assert response.id and response.meta.api_version.version == "2"
    assert response.meta.billed_units.search_units == 1

    top = co.rerank(model=MODEL, query=query, documents=documents, top_n=2).results
    assert [r.index for r in top] == np.argsort(-expected, kind="stable")[:2].tolist()
    np.testing.assert_allclose([r.relevance_score for r in top], np.sort(expected)[::-1][:2], atol=1e-5, rtol=0)


def test_v2_max_tokens_per_doc_scores_the_first_tokens(keyed_url, encoder):
    query = "a man playing a guitar"
    words = WORDS * 3
    documents = [" ".join(words), "a guitar", " ".join(words[:20])]
    bare = _pipeline.token_counts(encoder, [("", "")])[0]
    assert _pipeline.token_counts(encoder, [("", w) for w in WORDS]) == [bare + 1] * len(WORDS)  # a token a word
    co = cohere.ClientV2(base_url=keyed_url, api_key=KEY, timeout=WAIT_S)
    for cap in (1, 7, 20):
        response = co.rerank(model=MODEL, query=query, documents=documents, max_tokens_per_doc=cap)
        # each document as its first `cap` words: what Cohere's truncation to `cap` tokens scores
        expected = encoder.predict([(query, " ".join(d.split()[:cap])) for d in documents])
        np.testing.assert_allclose(_by_index(response.results), expected, atol=1e-5, rtol=0)
    # the comparison can tell: the capped score is further from the whole document's than the tolerance
    whole = encoder.predict([(query, d) for d in documents])
    assert abs(whole[0] - encoder.predict([(query, " ".join(words[:7]))])[0]) > 3e-5


def test_v2_max_tokens_per_doc_the_model_cannot_honour_is_422(keyed_url, encoder):
    query = "a man playing a guitar"
    room = encoder.max_length - _pipeline.token_counts(encoder, [(query, "")])[0]  # document tokens that fit
    co = cohere.ClientV2(base_url=keyed_url, api_key=KEY, timeout=WAIT_S)
    assert len(co.rerank(model=MODEL, query=query, documents=["a cat"], max_tokens_per_doc=room).results) == 1
    for value in (room + 1, 4096, 0, -5):
        with pytest.raises(UnprocessableEntityError) as info:
            co.rerank(model=MODEL, query=query, documents=["a cat"], max_tokens_per_doc=value)
        assert info.value.status_code == 422
        assert info.value.body["field"] == "max_tokens_per_doc"
    with pytest.raises(UnprocessableEntityError) as info:
        co.rerank(model=MODEL, query=query, documents=["a cat"], max_tokens_per_doc=room + 1)
    assert f"at most {room} document tokens" in info.value.body["error"]


def test_wrong_key_is_the_sdks_auth_error(keyed_url, query_documents):
    query, documents = query_documents
    for client in (cohere.Client, cohere.ClientV2):
        with pytest.raises(UnauthorizedError) as info:
            client(base_url=keyed_url, api_key="wrong", timeout=WAIT_S).rerank(
                model=MODEL, query=query, documents=documents
            )
        assert info.value.status_code == 401 and info.value.body["error_type"] == "Unauthorized"
    assert httpx.post(keyed_url + "/v2/rerank", json={"model": MODEL, "query": query, "documents": documents},
                      timeout=WAIT_S).status_code == 401  # no key at all


def test_server_without_a_key_takes_any(open_url, encoder, query_documents):
    query, documents = query_documents
    expected = encoder.predict([(query, d) for d in documents])
    for client in (cohere.Client, cohere.ClientV2):
        results = client(base_url=open_url, api_key="anything", timeout=WAIT_S).rerank(
            model=MODEL, query=query, documents=documents
        ).results
        np.testing.assert_allclose(_by_index(results), expected, atol=1e-5, rtol=0)


def test_v2_refuses_what_v1_takes(open_url):
    """v2 takes documents as strings and requires a model; the errors name the field."""
    base = {"model": MODEL, "query": "q", "documents": ["a", "b"]}
    cases = [
        ({**base, "documents": ["a", {"text": "b"}]}, "documents[1]"),
        ({**base, "documents": ["a", 3]}, "documents[1]"),
        ({"query": "q", "documents": ["a"]}, "model"),
        ({**base, "model": 5}, "model"),
        ({**base, "top_n": 0}, "top_n"),
        ({**base, "max_tokens_per_doc": "12"}, "max_tokens_per_doc"),
        ({**base, "max_tokens_per_doc": 2.5}, "max_tokens_per_doc"),
        ({**base, "relevant_spans": {"mode": "enabled"}}, "relevant_spans"),
    ]
    for body, field in cases:
        response = httpx.post(open_url + "/v2/rerank", json=body, timeout=WAIT_S)
        assert (response.status_code, response.json()["field"]) == (422, field), response.text
    assert httpx.post(open_url + "/v2/rerank", json={**base, "relevant_spans": {"mode": "disabled"}},
                      timeout=WAIT_S).status_code == 200
