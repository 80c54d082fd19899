"""Hot paths under pytest-benchmark: tokenization of a batch, one model run, predict end to end.

In the normal test run (``--benchmark-disable``) each body runs once and its assertions check the behaviour. To
record timings for regression tracking, on a quiet machine:

    .venv/bin/python -m pytest tests/test_hot_paths.py --benchmark-enable \
        --benchmark-json benchmarks/results/hot_paths.json

and compare a later run with ``--benchmark-compare`` (pytest-benchmark saves runs under .benchmarks/).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossonnx import CrossEncoder
from crossonnx.batching import plan_batches
from crossonnx.bench.workloads import query_passage_pairs

PAIRS = query_passage_pairs(32, seed=3)


@pytest.fixture(scope="module", params=["fp32", "int8"])
def encoder(request: pytest.FixtureRequest, reference_export: Path) -> CrossEncoder:
    return CrossEncoder(reference_export, precision=request.param, provider="cpu")


def test_tokenize_batch(benchmark, encoder: CrossEncoder) -> None:
    encoded = benchmark(encoder._tokenizer.encode, PAIRS)
    assert len(encoded.lengths) == len(PAIRS)
    assert int(encoded.lengths.max()) <= encoder.max_length


def test_one_model_run(benchmark, encoder: CrossEncoder) -> None:
    encoded = encoder._tokenizer.encode(PAIRS)
    rows = plan_batches(encoded.lengths, len(PAIRS))[0]
    feed = encoder._tokenizer.batch(encoded, rows)
    logits = benchmark(encoder._engine.run, feed)
    assert logits.shape == (len(PAIRS), 1) and np.isfinite(logits).all()


def test_predict_end_to_end(benchmark, encoder: CrossEncoder) -> None:
    scores = benchmark(encoder.predict, PAIRS, 32)
    assert scores.shape == (len(PAIRS),)
    assert ((scores >= 0) & (scores <= 1)).all()
    single = np.array([encoder.predict(pair) for pair in PAIRS[:4]])
    # int8 quantizes activations per batch at run time, so a pair's score moves slightly with its batch
    # (measured on these pairs, whose passages hold the query's partner in about half: up to 0.011)
    np.testing.assert_allclose(scores[:4], single, atol=1e-5 if encoder.precision == "fp32" else 2e-2)
