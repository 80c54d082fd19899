"""Length-aware batching: every pair once, longest first, within the row and token budgets."""

from __future__ import annotations

import numpy as np
import pytest

from crossonnx.batching import plan_batches


@pytest.mark.parametrize(("max_rows", "max_tokens"), [(1, None), (7, None), (32, None), (32, 300), (64, 2048)])
def test_batches_cover_every_pair_once_within_budgets(max_rows, max_tokens):
    lengths = np.random.default_rng(0).integers(3, 400, size=500)
    batches = plan_batches(lengths, max_rows, max_tokens)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert list(lengths[flat]) == sorted(lengths, reverse=True)  # longest first, so padding stays small
    for batch in batches:
        assert 1 <= len(batch) <= max_rows
        if max_tokens is not None and len(batch) > 1:
            assert len(batch) * lengths[batch].max() <= max_tokens


def test_a_pair_longer_than_the_budget_gets_its_own_batch():
    batches = plan_batches(np.array([600, 10, 10]), max_rows=32, max_tokens=512)
    assert [b.tolist() for b in batches] == [[0], [1, 2]]


def test_padding_waste_is_small_for_sorted_batches():
    lengths = np.random.default_rng(1).integers(20, 200, size=2000)
    batches = plan_batches(lengths, 32, 2048)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded / lengths.sum() < 1.05


def test_bad_budgets():
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches(np.array([3]), 0)
    with pytest.raises(ValueError, match="token_budget"):
        plan_batches(np.array([3]), 1, 0)


def test_progress_and_stats_cover_every_pair(tiny_exports, capsys):
    from crossonnx import CrossEncoder, _pipeline
    from pairs import parity_pairs

    encoder = CrossEncoder(tiny_exports["bert"], token_budget=256)
    pairs = parity_pairs(40)
    encoder.predict(pairs, batch_size=8, show_progress_bar=True)
    assert capsys.readouterr().err.rstrip().endswith(f"scoring pairs: {len(pairs)}/{len(pairs)}")
    logits, stats = _pipeline.logits_and_stats(encoder, pairs, batch_size=8)
    np.testing.assert_array_equal(logits, encoder.logits(pairs, batch_size=8))
    lengths = _pipeline.token_counts(encoder, pairs)
    assert stats.tokens == sum(min(n, encoder.max_length) for n in lengths)
    assert stats.tokens <= stats.padded_tokens <= stats.model_calls * 256 + max(lengths)
    assert stats.model_calls >= len(pairs) // 8
