"""Property-based search for inputs we did not think of (hypothesis), against the runtime and a real server.

The property, everywhere: an input either scores, giving finite scores in input order equal to ``predict`` on the
same pairs, or it is refused with a crossonnx error (runtime) / a 4xx JSON body naming the problem (server). Never
a 5xx, a raw onnxruntime/tokenizers/json exception, a hang, or a server that stops answering ``/health``.
The example budget (``CROSSONNX_HYPOTHESIS_EXAMPLES``, default 120 per test) keeps the module at a few seconds;
raise it for a deeper local search. Shrunk failures become plain tests in test_hardening.py.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from crossonnx.encoder import CrossEncoder, normalize_pairs  # noqa: E402
from crossonnx.errors import InvalidInputError  # noqa: E402
from serving import WAIT_S, Running  # noqa: E402

EXAMPLES = int(os.environ.get("CROSSONNX_HYPOTHESIS_EXAMPLES", "120"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ATOL = 1e-5

# -- strategies -----------------------------------------------------------------------------------------------
# valid text of every kind (controls, format characters, private use, emoji) most of the time; then odd text:
# lone surrogates (Cs) anywhere, and a few texts chosen by hand
valid_texts = st.text(st.characters(categories=["L", "M", "N", "P", "S", "Z", "Cc", "Cf", "Co"]), max_size=30)
odd_texts = st.one_of(
    st.text(st.characters(categories=["L", "N", "Z", "Cs"]), min_size=1, max_size=10),
    st.sampled_from(["", " ", "\x00", "\ud83d", "\udfff", "\ud83d\ude42", "🙂", "naïve café", "a" * 3000,
                     "the cat " * 300, "\u202e\u200b", "\r\n\t"]),
)
texts = st.one_of(valid_texts, valid_texts, valid_texts, odd_texts)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts, st.binary(max_size=8))


def containers(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.lists(children, max_size=4), st.tuples(children, children), st.tuples(children),
                     st.dictionaries(texts, children, max_size=3), st.frozensets(scalars, max_size=3),
                     st.lists(children, max_size=3).map(iter))


python_objects = st.recursive(scalars, containers, max_leaves=10)
text_pairs = st.one_of(st.tuples(texts, texts), st.lists(texts, min_size=2, max_size=2))
pair_inputs = st.one_of(
    text_pairs,
    st.lists(text_pairs, max_size=6),
    st.lists(st.one_of(text_pairs, python_objects), max_size=4),
    st.lists(text_pairs, max_size=4).map(tuple),
    st.lists(st.lists(texts, min_size=2, max_size=2), max_size=3).map(lambda rows: np.array(rows, dtype=object)),
    texts.map(np.array),
    python_objects,
)


# -- runtime --------------------------------------------------------------------------------------------------
@SETTINGS
@given(inputs=pair_inputs)
def test_predict_scores_or_refuses(tiny_encoder: CrossEncoder, inputs: Any):
    kept = list(inputs) if isinstance(inputs, Iterator) else inputs  # an iterator can be read once
    try:
        scores = np.asarray(tiny_encoder.predict(iter(kept) if kept is not inputs else inputs))
    except InvalidInputError as exc:
        assert str(exc)
        event("refused")
        return
    event("scored")
    pairs, single = normalize_pairs(kept)
    if isinstance(kept, (list, tuple)) and not single:
        assert pairs == [tuple(item) for item in kept]
    assert scores.shape == (() if single else (len(pairs),))
    assert np.isfinite(scores).all()
    one_by_one = [float(tiny_encoder.predict(pair)) for pair in pairs]  # single-pair calls: order and batching
    np.testing.assert_allclose(np.atleast_1d(scores), one_by_one, atol=ATOL, rtol=0)


documents_inputs = st.one_of(st.lists(texts, max_size=6), st.lists(valid_texts, max_size=6),
                             st.lists(st.one_of(texts, scalars), max_size=4),
                             st.lists(texts, max_size=4).map(tuple), python_objects)


@SETTINGS
@given(query=st.one_of(texts, texts, scalars), documents=documents_inputs,
       top_k=st.one_of(st.none(), st.integers(0, 8)))
def test_rank_ranks_or_refuses(tiny_encoder: CrossEncoder, query: Any, documents: Any, top_k: int | None):
    kept = list(documents) if isinstance(documents, (list, tuple)) else None
    try:
        results = tiny_encoder.rank(query, documents, top_k=top_k, return_documents=True)
    except InvalidInputError as exc:
        assert str(exc)
        event("refused")
        return
    event("ranked")
    assert isinstance(query, str)
    if kept is None:  # some other iterable of str was accepted: nothing more to compare it with
        return
    expected = tiny_encoder.predict([(query, doc) for doc in kept]) if kept else np.zeros(0)
    assert len(results) == (len(kept) if top_k is None else min(top_k, len(kept)))
    scores = [item["score"] for item in results]
    assert scores == sorted(scores, reverse=True) and all(math.isfinite(s) for s in scores)
    assert len({item["corpus_id"] for item in results}) == len(results)
    for item in results:
        assert item["text"] == kept[item["corpus_id"]]
        assert abs(item["score"] - float(expected[item["corpus_id"]])) <= ATOL


# -- server ---------------------------------------------------------------------------------------------------
FIELDS = {"query", "texts", "documents", "pairs", "top_n", "raw_scores", "return_text", "truncate",
          "return_documents", "model"}
JSON_TYPES = {"application/json": True, "application/json; charset=utf-8": True, "application/problem+json": True,
              "text/plain": False, "application/x-www-form-urlencoded": False, None: False}

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(), texts)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(texts, c, max_size=3),
                           max_leaves=12)
flags = st.one_of(st.booleans(), st.booleans(), json_values)


def shaped(required: dict[str, st.SearchStrategy], optional: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """Request objects: well formed ones (every required field, well typed), or ones with any of the fields
    typed anyhow; either sometimes with an unknown extra field."""
    extra = {"extra": json_values}
    good = st.fixed_dictionaries(required, optional={**{k: st.booleans() for k in optional}, **extra})
    mangled = st.fixed_dictionaries({}, optional={**required, **optional, **extra})
    return st.one_of(good, mangled)


def junk(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(strategy, strategy, json_values)


text_lists = st.lists(texts, min_size=1, max_size=18)
rerank_bodies = st.one_of(
    shaped({"query": texts, "texts": text_lists}, {"raw_scores": flags, "return_text": flags, "truncate": flags}),
    st.fixed_dictionaries({}, optional={"query": junk(texts), "texts": junk(st.lists(junk(texts), max_size=18))}),
)
cohere_documents = st.one_of(texts, st.fixed_dictionaries({"text": texts}))
cohere_bodies = st.one_of(
    shaped({"query": texts, "documents": st.lists(cohere_documents, min_size=1, max_size=18)},
           {"return_documents": flags, "raw_scores": flags, "truncate": flags}),
    st.fixed_dictionaries({"query": texts, "documents": st.lists(cohere_documents, min_size=1, max_size=18)},
                          optional={"top_n": st.one_of(st.integers(-3, 20), json_values), "model": junk(texts)}),
    st.fixed_dictionaries({}, optional={
        "query": junk(texts),
        "documents": junk(st.lists(junk(st.one_of(cohere_documents, st.fixed_dictionaries(
            {}, optional={"text": junk(texts)}))), max_size=18)),
    }),
)
pair_items = st.one_of(st.lists(texts, min_size=2, max_size=2), st.lists(junk(texts), max_size=3), json_values)
predict_bodies = st.one_of(
    shaped({"pairs": st.lists(st.lists(texts, min_size=2, max_size=2), min_size=1, max_size=18)},
           {"raw_scores": flags, "truncate": flags}),
    st.fixed_dictionaries({}, optional={"pairs": junk(st.lists(pair_items, max_size=18))}),
)
BODIES = {"/rerank": rerank_bodies, "/v1/rerank": cohere_bodies, "/predict": predict_bodies}


@st.composite
def raw_bodies(draw: st.DrawFn, path: str) -> bytes:
    """Bytes: JSON of a (mostly shaped) request, or something that is not quite JSON."""
    kind = draw(st.sampled_from(["shaped"] * 6 + ["value", "bytes", "truncated", "nested", "digits", "utf8"]))
    if kind == "shaped":
        return json.dumps(draw(BODIES[path])).encode()
    if kind == "value":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "truncated":
        text = json.dumps(draw(BODIES[path])).encode()
        return text[: draw(st.integers(0, len(text)))]
    if kind == "nested":
        depth = draw(st.integers(1, 5000))
        return b'{"pairs": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "digits":
        digits = draw(st.integers(1, 6000))
        every_field = b'{"query": "q", "texts": ["a"], "documents": ["a"], "pairs": [["a", "b"]], "top_n": '
        return every_field + b"7" * digits + b"}"
    return json.dumps(draw(BODIES[path]), ensure_ascii=False).encode("utf-8", "surrogatepass")


def expected_pairs(path: str, data: dict[str, Any]) -> list[tuple[str, str]]:
    if path == "/rerank":
        return [(data["query"], text) for text in data["texts"]]
    if path == "/v1/rerank":
        return [(data["query"], doc if isinstance(doc, str) else doc["text"]) for doc in data["documents"]]
    return [(a, b) for a, b in data["pairs"]]


def check_scores(encoder: CrossEncoder, path: str, data: dict[str, Any], answer: Any) -> None:
    """A 200 answer: finite scores equal to ``predict`` on the request's pairs, in the endpoint's order."""
    pairs = expected_pairs(path, data)
    raw = data.get("raw_scores") is True
    expected = encoder.logits(pairs)[:, 0] if raw else encoder.predict(pairs)
    if path == "/predict":
        got = np.asarray(answer["scores"], dtype=np.float64)
        assert got.shape == (len(pairs),)
    else:
        items = answer if path == "/rerank" else answer["results"]
        key = "score" if path == "/rerank" else "relevance_score"
        scores = [item[key] for item in items]
        assert scores == sorted(scores, reverse=True)
        if path == "/v1/rerank" and data.get("top_n") is not None:
            assert len(items) == min(data["top_n"], len(pairs))
            left_out = set(range(len(pairs))) - {item["index"] for item in items}
            assert all(expected[i] <= min(scores) + ATOL for i in left_out)  # the best ones were kept
        else:
            assert sorted(item["index"] for item in items) == list(range(len(pairs)))
        for item in items:
            if data.get("return_text") is True or data.get("return_documents") is True:
                echoed = item["text"] if path == "/rerank" else item["document"]["text"]
                assert echoed == pairs[item["index"]][1]
        got = np.full(len(pairs), np.nan)
        for item in items:
            got[item["index"]] = item[key]
        keep = ~np.isnan(got)
        got, expected = got[keep], np.asarray(expected)[keep]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def client(tiny_server: Running):
    with httpx.Client(base_url=tiny_server.url, timeout=WAIT_S) as session:
        yield session


@SETTINGS
@given(data=st.data(), path=st.sampled_from(sorted(BODIES)), content_type=st.sampled_from(
    ["application/json"] * 8 + list(JSON_TYPES)))
def test_scoring_endpoints_score_or_answer_4xx(client: httpx.Client, tiny_encoder: CrossEncoder, data, path,
                                               content_type):
    body = data.draw(raw_bodies(path))
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post(path, content=body, headers=headers)
    event(f"{response.status_code}")
    assert response.status_code < 500, response.text
    answer = response.json()
    if response.status_code == 200:
        assert JSON_TYPES[content_type]
        check_scores(tiny_encoder, path, json.loads(body), answer)
    else:
        assert response.status_code in (400, 413, 415, 422), response.text
        assert (response.status_code == 415) == (not JSON_TYPES[content_type])
        assert set(answer) == {"error", "error_type", "field"}
        assert isinstance(answer["error"], str) and answer["error"]
        field = answer["field"]
        assert field is None or field.split("[")[0].split(".")[0] in FIELDS, field
    assert client.get("/health").status_code == 200
