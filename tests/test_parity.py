"""The runtime reproduces sentence-transformers' CrossEncoder scores for every architecture family."""

from __future__ import annotations

import numpy as np
import pytest

from crossonnx import CrossEncoder
from pairs import FAMILIES, parity_pairs

FP32_TOLERANCE = 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_matches_sentence_transformers(family, tiny_checkpoints, tiny_exports, st_model_factory):
    pairs = parity_pairs()
    expected = st_model_factory(tiny_checkpoints[family]).predict(pairs, batch_size=32)
    got = CrossEncoder(tiny_exports[family]).predict(pairs, batch_size=32)
    assert got.shape == expected.shape == (len(pairs),)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() <= FP32_TOLERANCE


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_scores_do_not_depend_on_batching(family, tiny_exports):
    pairs = parity_pairs()
    base = CrossEncoder(tiny_exports[family]).predict(pairs, batch_size=32)
    for batch_size, budget in [(1, None), (7, None), (64, 300), (32, 4096)]:
        got = CrossEncoder(tiny_exports[family], token_budget=budget).predict(pairs, batch_size=batch_size)
        assert np.abs(got - base).max() <= 1e-6, (batch_size, budget)


def test_rank_matches_sentence_transformers(tiny_checkpoints, tiny_exports, st_model_factory):
    pairs = parity_pairs()
    query = "A man is playing a guitar."
    documents = [b for _, b in pairs]
    expected = st_model_factory(tiny_checkpoints["bert"]).rank(query, documents, top_k=10, return_documents=True)
    got = CrossEncoder(tiny_exports["bert"]).rank(query, documents, top_k=10, return_documents=True)
    assert [r["corpus_id"] for r in got] == [r["corpus_id"] for r in expected]
    assert [r["text"] for r in got] == [r["text"] for r in expected]
    assert np.allclose([r["score"] for r in got], [r["score"] for r in expected], atol=FP32_TOLERANCE)
    assert set(got[0]) == {"corpus_id", "score", "text"}
    assert isinstance(got[0]["score"], float)


def test_rank_without_documents_or_top_k(tiny_exports):
    model = CrossEncoder(tiny_exports["roberta"])
    full = model.rank("q", ["a", "b", "c"])
    assert sorted(r["corpus_id"] for r in full) == [0, 1, 2]
    assert [r["score"] for r in full] == sorted((r["score"] for r in full), reverse=True)
    assert "text" not in full[0]
    assert model.rank("q", []) == []
    assert model.rank("q", ["a", "b"], top_k=0) == []


def test_single_pair_and_empty_input(tiny_checkpoints, tiny_exports, st_model_factory):
    model = CrossEncoder(tiny_exports["electra"])
    st = st_model_factory(tiny_checkpoints["electra"])
    single = model.predict(("a query", "a passage"))
    assert np.ndim(single) == 0
    assert abs(float(single) - float(st.predict(("a query", "a passage")))) <= FP32_TOLERANCE
    assert np.ndim(model.predict(["a query", "a passage"])) == 0  # a list of two strings is one pair, as in ST
    empty = model.predict([])
    assert isinstance(empty, np.ndarray) and empty.shape == (0,)


def test_activation_override_and_raw_logits(tiny_checkpoints, tiny_exports, st_model_factory):
    import torch

    pairs = parity_pairs(12)
    st = st_model_factory(tiny_checkpoints["bert"])
    model = CrossEncoder(tiny_exports["bert"])
    raw = st.predict(pairs, activation_fn=torch.nn.Identity())
    assert np.abs(model.predict(pairs, activation_fn="identity") - raw).max() <= FP32_TOLERANCE
    assert np.abs(model.predict(pairs, activation_fn=torch.nn.Identity()) - raw).max() <= FP32_TOLERANCE
    assert np.abs(model.predict(pairs, activation_fn=np.tanh) - np.tanh(raw)).max() <= FP32_TOLERANCE


def test_multi_label_model_and_softmax(work_dir, st_model_factory):
    from crossonnx.checkpoints.synthetic import build_tiny
    from crossonnx.exporter.pipeline import export_model

    checkpoint = build_tiny("bert", work_dir / "ckpt" / "bert-3labels", seed=3, num_labels=3)
    folder = export_model(str(checkpoint), out=work_dir / "onnx" / "bert-3labels", precisions="fp32", log=None)
    pairs = parity_pairs(10)
    st = st_model_factory(checkpoint)
    model = CrossEncoder(folder)
    assert model.manifest.activation == "identity"  # sentence-transformers' default for num_labels > 1
    got = model.predict(pairs)
    assert got.shape == (len(pairs), 3)
    assert np.abs(got - st.predict(pairs)).max() <= FP32_TOLERANCE
    soft = model.predict(pairs, apply_softmax=True)
    assert np.abs(soft - st.predict(pairs, apply_softmax=True)).max() <= FP32_TOLERANCE
    assert np.allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="one label"):
        model.rank("q", ["a"])


def test_max_length_override(tiny_checkpoints, tiny_exports, st_model_factory):
    pairs = parity_pairs()
    expected = st_model_factory(tiny_checkpoints["roberta"], max_length=48).predict(pairs)
    got = CrossEncoder(tiny_exports["roberta"], max_length=48).predict(pairs)
    assert np.abs(got - expected).max() <= FP32_TOLERANCE


def test_real_weights_match_sentence_transformers(reference_checkpoint, reference_export, st_model_factory):
    """Real MiniLM weights (fine-tuned on STSb): fp32 within 1e-5 on unseen pairs; fp16/int8 rank-faithful."""
    from crossonnx.metrics import spearman

    pairs = parity_pairs(96, seed=11)
    expected = st_model_factory(reference_checkpoint).predict(pairs)
    assert np.abs(CrossEncoder(reference_export).predict(pairs) - expected).max() <= FP32_TOLERANCE
    fp16 = CrossEncoder(reference_export, precision="fp16").predict(pairs)
    assert np.abs(fp16 - expected).max() <= 5e-3
    int8 = CrossEncoder(reference_export, precision="int8").predict(pairs)
    assert spearman(int8, expected) >= 0.98
    assert expected.std() > 0.1  # a trained model: scores spread over 0..1
