"""`crossonnx serve` end to end: a real uvicorn server on a loopback port, exercised over HTTP with httpx.

Overload and drain are made deterministic by holding the inference worker inside a gated ``encoder.logits`` call:
what is queued behind it, and what is in flight when the drain starts, is then known exactly. Non-finite scores come
from a copy of the tiny export whose graphs really overflow fp16 (or give NaN) on inputs with given words.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from crossonnx.encoder import CrossEncoder  # noqa: E402
from crossonnx.serve.limits import ServeLimits  # noqa: E402
from gated import GatedRunner  # noqa: E402
from pairs import parity_pairs  # noqa: E402
from serving import (  # noqa: E402
    WAIT_S,
    Running,
    cli_server,
)
from serving import serving as shared_serving  # noqa: E402
from serving import until as _until  # noqa: E402

Pair = tuple[str, str]
ROOT = Path(__file__).resolve().parents[1]
LIMITS = ServeLimits(max_texts_per_request=16, max_text_chars=4000, max_queue_pairs=256, max_body_bytes=60_000)
LONG_TEXT = "the cat sat on the mat " * 150  # ~900 tokens: over the model's 512, under 4000 characters


@contextmanager
def serving(encoder: CrossEncoder, limits: ServeLimits = LIMITS, runner=None) -> Iterator[Running]:
    with shared_serving(encoder, limits, runner) as running:
        yield running


@pytest.fixture(scope="module")
def server(encoder: CrossEncoder) -> Iterator[Running]:
    with serving(encoder) as running:
        yield running


@pytest.fixture(scope="module")
def query_texts() -> tuple[str, list[str]]:
    pairs = parity_pairs(48)
    return pairs[30][0], [passage for _, passage in pairs[26:36]] + ["", "naïve café 🙂"]


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# -- scoring endpoints ----------------------------------------------------------------------------------------
def test_rerank_matches_predict_sorted(server, encoder, query_texts):
    query, texts = query_texts
    expected = encoder.predict([(query, t) for t in texts])
    response = server.post("/rerank", {"query": query, "texts": texts})
    assert response.status_code == 200, response.text
    items = response.json()
    assert sorted(item["index"] for item in items) == list(range(len(texts)))
    assert all(set(item) == {"index", "score"} for item in items)
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True)
    got = np.array([item["score"] for item in sorted(items, key=lambda item: item["index"])])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)

    with_text = server.post("/rerank", {"query": query, "texts": texts, "return_text": True}).json()
    assert all(item["text"] == texts[item["index"]] for item in with_text)


def test_rerank_raw_scores_are_logits(server, encoder, query_texts):
    query, texts = query_texts
    logits = encoder.logits([(query, t) for t in texts])[:, 0]
    items = server.post("/rerank", {"query": query, "texts": texts, "raw_scores": True}).json()
    got = np.array([item["score"] for item in sorted(items, key=lambda item: item["index"])])
    np.testing.assert_allclose(got, logits, atol=1e-5, rtol=0)
    assert not np.allclose(got, encoder.predict([(query, t) for t in texts]), atol=1e-3)  # no sigmoid applied


def test_cohere_rerank_top_n_and_documents(server, encoder, query_texts):
    query, texts = query_texts
    documents: list[object] = [t if i % 2 else {"text": t} for i, t in enumerate(texts)]
    expected = encoder.predict([(query, t) for t in texts])
    order = np.argsort(-expected, kind="stable")

    body = server.post("/v1/rerank", {"query": query, "documents": documents, "model": "any"}).json()
    assert isinstance(body["id"], str) and body["id"]
    assert "api_version" in body["meta"]
    results = body["results"]
    assert len(results) == len(texts) and all(set(r) == {"index", "relevance_score"} for r in results)
    got = np.array([r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)

    top = server.post(
        "/v1/rerank", {"query": query, "documents": documents, "top_n": 3, "return_documents": True}
    ).json()["results"]
    assert [r["index"] for r in top] == order[:3].tolist()
    assert all(r["document"] == {"text": texts[r["index"]]} for r in top)


def test_cohere_v2_rerank(server, encoder, query_texts):
    query, texts = query_texts
    expected = encoder.predict([(query, t) for t in texts])
    response = server.post("/v2/rerank", {"model": "any", "query": query, "documents": texts, "top_n": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "results", "meta"} and isinstance(body["id"], str) and body["id"]
    assert body["meta"] == {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    assert all(set(r) == {"index", "relevance_score"} for r in body["results"])
    assert [r["index"] for r in body["results"]] == np.argsort(-expected, kind="stable")[:4].tolist()
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], np.sort(expected)[::-1][:4],
                               atol=1e-5, rtol=0)
    raw = server.post("/v2/rerank", {"model": "any", "query": query, "documents": texts, "raw_scores": True}).json()
    logits = encoder.logits([(query, t) for t in texts])[:, 0]
    np.testing.assert_allclose([r["relevance_score"] for r in sorted(raw["results"], key=lambda r: r["index"])],
                               logits, atol=1e-5, rtol=0)
    assert _metric(server.get("/metrics").text, "crossonnx_requests_total", endpoint="/v2/rerank", status="200") >= 2


def test_predict_scores_in_order(server, encoder):
    pairs = parity_pairs(48)[:12]
    response = server.post("/predict", {"pairs": [list(p) for p in pairs]})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["scores"], encoder.predict(pairs), atol=1e-5, rtol=0)
    raw = server.post("/predict", {"pairs": [list(p) for p in pairs], "raw_scores": True}).json()["scores"]
    np.testing.assert_allclose(raw, encoder.logits(pairs)[:, 0], atol=1e-5, rtol=0)


def test_concurrent_requests_each_get_their_own_scores(server, encoder):
    pairs = parity_pairs(48)
    jobs = [pairs[i : i + 1 + i % 5] for i in range(0, 40, 2)]

    def call(job: list[Pair]) -> list[float]:
        response = server.post("/predict", {"pairs": [list(p) for p in job]})
        assert response.status_code == 200, response.text
        return response.json()["scores"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, jobs))
    for job, scores in zip(jobs, results, strict=True):
        np.testing.assert_allclose(scores, encoder.predict(job), atol=1e-5, rtol=0)


def test_truncation_by_default_and_413_when_refused(server, encoder):
    texts = ["a short passage", LONG_TEXT]
    expected = encoder.predict([("cats", t) for t in texts])  # the runtime truncates to max_length
    for body in ({"query": "cats", "texts": texts}, {"query": "cats", "texts": texts, "truncate": True}):
        items = server.post("/rerank", body).json()
        got = np.array([item["score"] for item in sorted(items, key=lambda item: item["index"])])
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)

    refused = server.post("/rerank", {"query": "cats", "texts": texts, "truncate": False})
    assert refused.status_code == 413
    assert refused.json()["field"] == "texts[1]" and "512" in refused.json()["error"]
    assert server.post("/rerank", {"query": "cats", "texts": texts[:1], "truncate": False}).status_code == 200
    cohere = server.post("/v1/rerank", {"query": "cats", "documents": texts, "truncate": False})
    assert (cohere.status_code, cohere.json()["field"]) == (413, "documents[1]")
    v2_body = {"model": "m", "query": "cats", "documents": texts, "truncate": False}
    v2 = server.post("/v2/rerank", v2_body)
    assert (v2.status_code, v2.json()["field"]) == (413, "documents[1]")
    capped = server.post("/v2/rerank", {**v2_body, "max_tokens_per_doc": 100})  # asks for what fits: no 413
    assert capped.status_code == 200, capped.text
    pairs = server.post("/predict", {"pairs": [["a", "b"], ["cats", LONG_TEXT]], "truncate": False})
    assert (pairs.status_code, pairs.json()["field"]) == (413, "pairs[1]")


# -- errors ---------------------------------------------------------------------------------------------------
ERRORS = [
    # (path, JSON body or raw bytes, status, error_type, field)
    ("/rerank", b'{"query": "q", "texts": [', 400, "Malformed", None),
    ("/rerank", b"", 400, "Malformed", None),
    ("/rerank", b"\xff\xfe", 400, "Malformed", None),
    ("/rerank", b"[1, 2]", 422, "Validation", None),
    ("/rerank", {"texts": ["a"]}, 422, "Validation", "query"),
    ("/rerank", {"query": 7, "texts": ["a"]}, 422, "Validation", "query"),
    ("/rerank", {"query": "q", "texts": "abc"}, 422, "Validation", "texts"),
    ("/rerank", {"query": "q", "texts": ["a", "b", 3]}, 422, "Validation", "texts[2]"),
    ("/rerank", {"query": "q", "texts": ["a", None]}, 422, "Validation", "texts[1]"),
    ("/rerank", {"query": "q", "texts": []}, 422, "Validation", "texts"),
    ("/rerank", {"query": "q", "texts": ["a"], "raw_scores": "yes"}, 422, "Validation", "raw_scores"),
    ("/rerank", {"query": "q", "texts": ["a"], "truncate": 1}, 422, "Validation", "truncate"),
    ("/rerank", {"query": "q", "texts": ["a"] * 17}, 413, "TooLarge", "texts"),
    ("/rerank", {"query": "q", "texts": ["a", "x" * 4001]}, 413, "TooLarge", "texts[1]"),
    ("/rerank", {"query": "q" * 4001, "texts": ["a"]}, 413, "TooLarge", "query"),
    ("/rerank", {"query": "q", "texts": ["y" * 3999] * 16}, 413, "TooLarge", None),  # body over 60 000 bytes
    ("/v1/rerank", {"query": "q", "documents": ["a", 5]}, 422, "Validation", "documents[1]"),
    ("/v1/rerank", {"query": "q", "documents": [{"body": "a"}]}, 422, "Validation", "documents[0].text"),
    ("/v1/rerank", {"query": "q", "documents": [{"text": 1}]}, 422, "Validation", "documents[0].text"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "Validation", "top_n"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": True}, 422, "Validation", "top_n"),
    ("/v1/rerank", {"query": "q", "documents": []}, 422, "Validation", "documents"),
    ("/v1/rerank", {"query": "q", "documents": ["a"] * 17}, 413, "TooLarge", "documents"),
    ("/v2/rerank", {"query": "q", "documents": ["a"]}, 422, "Validation", "model"),
    ("/v2/rerank", {"model": "m", "documents": ["a"]}, 422, "Validation", "query"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": []}, 422, "Validation", "documents"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a", None]}, 422, "Validation", "documents[1]"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": [{"text": "a"}]}, 422, "Validation", "documents[0]"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a"], "top_n": -1}, 422, "Validation", "top_n"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a"], "max_tokens_per_doc": 0}, 422, "Validation",
     "max_tokens_per_doc"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a"], "max_tokens_per_doc": True}, 422, "Validation",
     "max_tokens_per_doc"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a"], "max_tokens_per_doc": 513}, 422, "Validation",
     "max_tokens_per_doc"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a"] * 17}, 413, "TooLarge", "documents"),
    ("/v2/rerank", {"model": "m", "query": "q", "documents": ["a", "x" * 4001]}, 413, "TooLarge", "documents[1]"),
    ("/predict", {"pairs": [["a", "b"], ["a", "b", "c"]]}, 422, "Validation", "pairs[1]"),
    ("/predict", {"pairs": [["a", 2]]}, 422, "Validation", "pairs[0][1]"),
    ("/predict", {"pairs": ["ab"]}, 422, "Validation", "pairs[0]"),
    ("/predict", {"pairs": []}, 422, "Validation", "pairs"),
    ("/predict", {"pairs": [["a", "b"]] * 17}, 413, "TooLarge", "pairs"),
]


@pytest.mark.parametrize(("path", "body", "status", "error_type", "field"), ERRORS)
def test_errors(server, path, body, status, error_type, field):
    response = server.post(path, content=body) if isinstance(body, bytes) else server.post(path, body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"error", "error_type", "field"}
    assert (payload["error_type"], payload["field"]) == (error_type, field)
    assert isinstance(payload["error"], str) and payload["error"]


def test_unknown_path_and_method_are_json_errors(server):
    missing = server.get("/nope")
    assert (missing.status_code, missing.json()["error_type"]) == (404, "NotFound")
    wrong = server.get("/rerank")
    assert (wrong.status_code, wrong.json()["error_type"]) == (405, "MethodNotAllowed")


# -- health, info, metrics ------------------------------------------------------------------------------------
def test_health_and_info(server, encoder):
    assert server.get("/health").json() == {"status": "ok"}
    info = server.get("/info").json()
    assert info["model"] == encoder.model_dir.name
    expected = ("fp32", "cpu", encoder.max_length)  # the serve tests' encoder runs ONNX Runtime's CPU provider
    assert (info["precision"], info["provider"], info["max_length"]) == expected
    assert info["limits"]["max_texts_per_request"] == 16
    assert info["limits"]["max_queue_pairs"] == 256


def test_metrics_count_requests_batches_and_queue(server):
    server.post("/rerank", {"query": "q", "texts": ["a", "b"]})
    server.post("/rerank", {"query": "q", "texts": []})
    response = server.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert _metric(text, "crossonnx_requests_total", endpoint="/rerank", status="200") >= 1
    assert _metric(text, "crossonnx_requests_total", endpoint="/rerank", status="422") >= 1
    assert _metric(text, "crossonnx_request_latency_seconds_count", endpoint="/rerank") >= 2
    assert _metric(text, "crossonnx_batch_pairs_count") >= 1
    assert _metric(text, "crossonnx_batch_pairs_sum") >= 2
    assert _metric(text, "crossonnx_batch_tokens_sum") > 0
    assert _metric(text, "crossonnx_queue_wait_seconds_count") >= 1
    assert "crossonnx_queue_pairs 0.0" in text
    assert "crossonnx_draining 0.0" in text


# -- batching, backpressure and drain through the server ------------------------------------------------------
def test_queued_requests_merge_into_one_model_call(encoder):
    runner = GatedRunner(encoder)
    pairs = parity_pairs(48)
    jobs = [pairs[i : i + 3] for i in range(0, 30, 3)]
    with serving(encoder, runner=runner) as running, ThreadPoolExecutor(len(jobs)) as pool:
        first = pool.submit(running.post, "/predict", {"pairs": [list(p) for p in jobs[0]]})
        assert runner.entered.wait(WAIT_S)
        rest = [pool.submit(running.post, "/predict", {"pairs": [list(p) for p in job]}) for job in jobs[1:]]
        _until(lambda: running.state.batcher.queued_requests == len(jobs) - 1)
        runner.gate.set()
        responses = [first.result(WAIT_S)] + [future.result(WAIT_S) for future in rest]
        metrics = running.get("/metrics").text
    assert runner.calls == [3, 3 * (len(jobs) - 1)]
    for job, response in zip(jobs, responses, strict=True):
        assert response.status_code == 200
        np.testing.assert_allclose(response.json()["scores"], encoder.predict(job), atol=1e-5, rtol=0)
    assert _metric(metrics, "crossonnx_batch_requests_sum") == len(jobs)
    assert _metric(metrics, "crossonnx_batch_pairs_count") == 2


def test_full_queue_is_429_and_larger_than_queue_is_413(encoder):
    runner = GatedRunner(encoder)
    limits = ServeLimits(max_queue_pairs=4, max_texts_per_request=8)
    with serving(encoder, limits, runner) as running, ThreadPoolExecutor(3) as pool:
        busy = pool.submit(running.post, "/rerank", {"query": "q", "texts": ["a", "b", "c"]})
        assert runner.entered.wait(WAIT_S)  # the worker holds these 3: the queue is empty again
        queued = pool.submit(running.post, "/rerank", {"query": "q", "texts": ["d", "e", "f"]})
        _until(lambda: running.state.batcher.queued_pairs == 3)

        full = running.post("/rerank", {"query": "q", "texts": ["g", "h"]})  # 3 + 2 > 4
        assert full.status_code == 429
        assert full.json()["error_type"] == "Overloaded"
        too_big = running.post("/rerank", {"query": "q", "texts": list("abcde")})  # > 4: can never fit
        assert (too_big.status_code, too_big.json()["field"]) == (413, "texts")
        last = pool.submit(running.post, "/rerank", {"query": "q", "texts": ["i"]})  # 3 + 1: the queue is full
        _until(lambda: running.state.batcher.queued_pairs == 4)
        assert running.post("/rerank", {"query": "q", "texts": ["j"]}).status_code == 429

        runner.gate.set()
        for future in (busy, queued, last):
            assert future.result(WAIT_S).status_code == 200
        metrics = running.get("/metrics").text
    assert _metric(metrics, "crossonnx_rejected_total", reason="queue_full") == 2
    assert _metric(metrics, "crossonnx_rejected_total", reason="too_large") == 1
    assert _metric(metrics, "crossonnx_requests_total", endpoint="/rerank", status="429") == 2


def test_drain_refuses_new_requests_and_finishes_those_in_flight(encoder):
    runner = GatedRunner(encoder)
    texts = [p for _, p in parity_pairs(48)[26:30]]
    with serving(encoder, runner=runner) as running, ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(running.post, "/rerank", {"query": "cats", "texts": texts})
        assert runner.entered.wait(WAIT_S)

        running.server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
        refused = running.post("/rerank", {"query": "q", "texts": ["a"]})
        assert refused.status_code == 503
        assert refused.json()["error_type"] == "Unhealthy"
        assert running.get("/health").status_code == 503
        assert "crossonnx_draining 1.0" in running.get("/metrics").text
        assert running.thread.is_alive()  # still draining: the request in flight holds it open

        runner.gate.set()
        response = in_flight.result(WAIT_S)
        running.thread.join(WAIT_S)
        assert not running.thread.is_alive()  # the drained server shut down by itself
    assert response.status_code == 200
    got = np.array([item["score"] for item in sorted(response.json(), key=lambda item: item["index"])])
    np.testing.assert_allclose(got, encoder.predict([("cats", t) for t in texts]), atol=1e-5, rtol=0)
    assert not running.state.batcher.accepting  # the lifespan shutdown closed the batcher


def test_a_failing_model_call_is_a_json_500_and_the_server_goes_on(encoder):
    def runner(pairs: list[Pair]) -> np.ndarray:
        if any(query == "fail" for query, _ in pairs):
            raise RuntimeError("the model failed")
        return encoder.logits(pairs)

    with serving(encoder, runner=runner) as running:
        failed = running.post("/predict", {"pairs": [["fail", "x"]]})
        assert (failed.status_code, failed.json()["error_type"]) == (500, "Backend")
        assert running.post("/predict", {"pairs": [["fine", "x"]]}).status_code == 200
        assert _metric(running.get("/metrics").text, "crossonnx_batch_errors_total") == 1


# -- non-finite model output ----------------------------------------------------------------------------------
OVERFLOW_WORD = "guitar"  # inputs with it overflow fp16: their logit gets OVERFLOW_BOOST, past fp16's 65504
NAN_WORD = "violin"  # inputs with it give NaN at any precision
OVERFLOW_BOOST = 1e5


def _append_non_finite_head(graph: Path, overflow_id: int, nan_id: int, fp16: bool) -> None:
    """Rewire ``graph``'s output: ``logits + OVERFLOW_BOOST * has(overflow_id)``, rounded through fp16 when
    ``fp16`` (where it overflows to inf, as fp16 activations do), plus ``sqrt(-has(nan_id))`` (NaN when present)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(graph)
    g = model.graph
    out = g.output[0].name
    for node in g.node:
        node.output[:] = ["base_logits" if name == out else name for name in node.output]
    g.initializer.extend([
        numpy_helper.from_array(np.array(overflow_id, dtype=np.int64), "overflow_id"),
        numpy_helper.from_array(np.array(nan_id, dtype=np.int64), "nan_id"),
        numpy_helper.from_array(np.array(OVERFLOW_BOOST, dtype=np.float32), "overflow_boost"),
    ])
    nodes = []
    for word in ("overflow", "nan"):  # has(word): 1.0 for rows whose input_ids hold its id, else 0.0
        nodes += [
            helper.make_node("Equal", ["input_ids", f"{word}_id"], [f"{word}_eq"]),
            helper.make_node("Cast", [f"{word}_eq"], [f"{word}_eqf"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMax", [f"{word}_eqf"], [f"has_{word}"], axes=[1], keepdims=1),
        ]
    nodes += [
        helper.make_node("Mul", ["has_overflow", "overflow_boost"], ["boost"]),
        helper.make_node("Add", ["base_logits", "boost"], ["boosted"]),
        helper.make_node("Neg", ["has_nan"], ["minus_nan"]),
        helper.make_node("Sqrt", ["minus_nan"], ["nan_or_zero"]),
    ]
    if fp16:
        nodes += [helper.make_node("Cast", ["boosted"], ["boosted_fp16"], to=TensorProto.FLOAT16),
                  helper.make_node("Cast", ["boosted_fp16"], ["rounded"], to=TensorProto.FLOAT)]
    nodes.append(helper.make_node("Add", ["rounded" if fp16 else "boosted", "nan_or_zero"], [out]))
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, graph)


@pytest.fixture(scope="module")
def non_finite_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny export (fp32 and fp16 only) whose graphs give inf for OVERFLOW_WORD in fp16 and NaN for
    NAN_WORD; the manifest records the new files."""
    pytest.importorskip("onnx")
    import shutil

    from tokenizers import Tokenizer

    from crossonnx.manifest import Manifest, file_record, load_manifest

    target = tmp_path_factory.mktemp("non-finite") / "bert"
    manifest = load_manifest(model_dir)
    kept = {name: manifest.precisions[name] for name in ("fp32", "fp16")}
    target.mkdir()
    for name in [manifest.tokenizer.file, *(entry.file for entry in kept.values())]:
        shutil.copy(model_dir / name, target / name)
    vocab = Tokenizer.from_file(str(target / manifest.tokenizer.file))
    data = manifest.to_dict()
    data["precisions"] = {name: entry.to_dict() for name, entry in kept.items()}
    for name, entry in kept.items():
        _append_non_finite_head(target / entry.file, vocab.token_to_id(OVERFLOW_WORD), vocab.token_to_id(NAN_WORD),
                                fp16=name == "fp16")
        data["precisions"][name].update(file_record(target / entry.file))
    Manifest.from_dict(data).write(target)
    return target


@pytest.fixture(scope="module")
def fp16_server(non_finite_dir: Path) -> Iterator[Running]:
    with serving(CrossEncoder(non_finite_dir, precision="fp16", provider="cpu", threads=1)) as running:
        yield running


def _bodies(query: str, texts: list[str]) -> list[tuple[str, dict, str]]:
    """(path, body, the field naming text i) for every scoring endpoint."""
    return [
        ("/rerank", {"query": query, "texts": texts}, "texts"),
        ("/v1/rerank", {"query": query, "documents": texts}, "documents"),
        ("/v2/rerank", {"model": "m", "query": query, "documents": texts}, "documents"),
        ("/predict", {"pairs": [[query, t] for t in texts]}, "pairs"),
    ]


def test_non_finite_output_is_a_json_error_naming_precision_and_fix(fp16_server, non_finite_dir):
    encoder16 = CrossEncoder(non_finite_dir, precision="fp16", provider="cpu", threads=1)
    texts = ["a cat on a mat", f"a man plays the {OVERFLOW_WORD}", "a dog"]
    logits = encoder16.logits([("music", t) for t in texts])[:, 0]
    assert np.isposinf(logits[1]) and np.isfinite(logits[[0, 2]]).all()  # a real fp16 overflow, on one input
    assert encoder16.predict([("music", texts[1])])[0] == 1.0  # which the sigmoid alone would hide
    for path, body, field in _bodies("music", texts):
        for raw in (False, True):
            response = fp16_server.post(path, {**body, "raw_scores": raw})
            assert response.status_code == 500, response.text
            payload = response.json()
            assert (payload["error_type"], payload["field"]) == ("NonFinite", f"{field}[1]")
            assert "fp16" in payload["error"] and "--precision fp32" in payload["error"]
    fine = fp16_server.post("/predict", {"pairs": [["music", texts[0]], ["music", texts[2]]]})
    assert fine.status_code == 200  # the same server goes on
    np.testing.assert_allclose(fine.json()["scores"], encoder16.predict([("music", texts[0]), ("music", texts[2])]),
                               atol=1e-5, rtol=0)
    assert _metric(fp16_server.get("/metrics").text, "crossonnx_non_finite_total") == 8


def test_non_finite_window_names_its_document(fp16_server):
    """Chunk mode scores windows: the error names the document the overflowing window belongs to."""
    texts = ["a dog", "the cat sat on the mat " * 20 + OVERFLOW_WORD]
    for path, body, field in _bodies("music", texts):
        if path == "/v2/rerank":  # no chunk mode in v2
            continue
        extra = {"max_chunks_per_doc": 5} if path == "/v1/rerank" else {
            "long_documents": {"mode": "chunk", "chunk_tokens": 16}}
        response = fp16_server.post(path, {**body, **extra})
        assert (response.status_code, response.json()["field"]) == (500, f"{field}[1]"), response.text
    capped = fp16_server.post("/rerank", {"query": "music", "texts": texts, "long_documents": {
        "mode": "chunk", "chunk_tokens": 16, "max_document_tokens": 40, "on_capped": "flag"}})
    assert capped.status_code == 200, capped.text  # the overflowing word was not read
    assert [item["capped"] for item in sorted(capped.json(), key=lambda item: item["index"])] == [False, True]


def test_fp32_is_the_fix_and_nan_at_fp32_says_so(non_finite_dir):
    encoder32 = CrossEncoder(non_finite_dir, precision="fp32", provider="cpu", threads=1)
    pairs = [("music", "a cat on a mat"), ("music", f"a man plays the {OVERFLOW_WORD}")]
    with serving(encoder32) as running:
        response = running.post("/predict", {"pairs": [list(p) for p in pairs], "raw_scores": True})
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["scores"], encoder32.logits(pairs)[:, 0], rtol=1e-6,
                                   atol=1e-5)
        assert response.json()["scores"][1] > OVERFLOW_BOOST / 2  # large, and finite in fp32

        nan = running.post("/v2/rerank", {"model": "m", "query": "music", "documents": ["a", f"a {NAN_WORD}"]})
        assert np.isnan(encoder32.logits([("music", f"a {NAN_WORD}")])).all()
        assert (nan.status_code, nan.json()["field"]) == (500, "documents[1]")
        assert "fp32" in nan.json()["error"] and "crossonnx verify" in nan.json()["error"]


def test_cli_serves_and_exits_cleanly_on_sigterm(model_dir, encoder):
    # --no-tune: fp32 with provider auto is an open choice where OpenVINO is installed (test_serve_tune.py tunes)
    args = [str(model_dir), "--threads", "1", "--max-texts-per-request", "4", "--log-level", "warning", "--no-tune"]
    with cli_server(args) as (url, process):
        response = httpx.post(url + "/rerank", json={"query": "cats", "texts": ["a cat", "a dog"]}, timeout=WAIT_S)
        assert response.status_code == 200
        np.testing.assert_allclose(
            [item["score"] for item in sorted(response.json(), key=lambda item: item["index"])],
            encoder.predict([("cats", "a cat"), ("cats", "a dog")]), atol=1e-5, rtol=0,
        )
        assert httpx.get(url + "/info", timeout=WAIT_S).json()["limits"]["max_texts_per_request"] == 4
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 0


def test_missing_serve_extra_names_the_install_command(model_dir, monkeypatch, capsys):
    from crossonnx.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # what an install without the extra looks like to import
    assert main(["serve", str(model_dir)]) == 2
    assert 'pip install "crossonnx[serve]"' in capsys.readouterr().err
