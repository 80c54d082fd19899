"""Long documents: windows by hand, window texts that tokenize as the document, aggregates, spans, the cap and
left truncation, on the real STSb reference model and on every tokenizer family."""

from __future__ import annotations

import itertools
import logging
import random
from pathlib import Path

import numpy as np
import pytest

from crossonnx import CrossEncoder, InvalidOptionError, LongDocuments, _pipeline
from crossonnx.long_documents import WindowPlan, token_windows, trim_span, window_tokens
from crossonnx.manifest import TokenizerSpec, load_manifest
from crossonnx.stsb import load_stsb
from crossonnx.tokenization import PairTokenizer
from pairs import FAMILIES

HAND_QUERY = "A woman is cutting an onion."
HAND_DOC = "A man is playing a guitar. A woman is slicing an onion. The cat sleeps on the sofa."
# chunk_tokens=8, chunk_overlap=2 on the 21 one-token words of HAND_DOC (the MiniLM uncased WordPiece vocabulary):
# [0, 8) "a man is playing a guitar . a", [6, 14) ". a woman is slicing an onion .", [12, 20) "onion . the cat
# sleeps on the sofa", [18, 21) "the sofa ." - each next window starts 2 tokens before the previous end
HAND_WINDOWS = [
    ("A man is playing a guitar. A", (0, 28)),
    (". A woman is slicing an onion.", (25, 55)),
    ("onion. The cat sleeps on the sofa", (49, 82)),
    ("the sofa.", (74, 83)),
]


@pytest.fixture(scope="module")
def model(reference_export: Path) -> CrossEncoder:
    return CrossEncoder(reference_export, threads=2)


def windows_of(model: CrossEncoder, pairs: list[tuple[str, str]], **options: object) -> WindowPlan:
    """The windows ``long_documents=LongDocuments("chunk", **options)`` scores for ``pairs``."""
    windows = _pipeline.plan(model, pairs, LongDocuments("chunk", **options)).windows  # type: ignore[arg-type]
    assert windows is not None
    return windows


def _sentences() -> list[str]:
    """Held-back STSb sentences (dev and test; the reference model was trained on train)."""
    rows = load_stsb("dev") + load_stsb("test")
    return list(dict.fromkeys([r.sentence1 for r in rows] + [r.sentence2 for r in rows]))


def _filler(rng: random.Random, sentences: list[str], words: int, avoid: set[str]) -> str:
    out: list[str] = []
    while sum(len(s.split()) for s in out) < words:
        sentence = rng.choice(sentences)
        if sentence not in avoid:
            out.append(sentence)
    return " ".join(out)


# -- windows from offsets, by hand ----------------------------------------------------------------------------
def test_token_windows_by_hand():
    # words: "snow ##board ##ers" | "ride" | "fast" | "." | "skate ##board ##er" | "grind ##s" | "rails"
    word_ids = [0, 0, 0, 1, 2, 3, 4, 4, 4, 5, 5, 6]
    offsets = [(0, 4), (4, 9), (9, 12), (13, 17), (18, 22), (22, 23), (24, 29), (29, 34), (34, 36), (37, 42),
               (42, 43), (44, 49)]
    # window 4, overlap 1: [0,4) ends before "fast"; the next starts 1 token back, at "ride"; [3,6) cannot end
    # inside "skate ##board ##er" (token 7), so it ends at 6; [5,9) would end inside "grind ##s": it ends at 9
    assert token_windows(offsets, word_ids, 4, 1, None) == ([(0, 4), (3, 6), (5, 9), (9, 12)], 4)
    assert token_windows(offsets, word_ids, 4, 0, None) == ([(0, 4), (4, 6), (6, 9), (9, 12)], 4)
    assert token_windows(offsets, word_ids, 4, 1, 2) == ([(0, 4), (3, 6)], 4)  # capped: 2 of 4
    assert token_windows(offsets, word_ids, 12, 3, 10) == ([(0, 12)], 1)  # fits
    assert token_windows([], [], 4, 1, 10) == ([(0, 0)], 1)
    # one word longer than a window is cut between tokens that do not share a character (byte-level pieces
    # 1-3 are one 3-byte character: [0, 3) would split it, so the first window is [0, 1)); a window that starts
    # inside the word keeps a token free (window 2 from token 1), and one shorter than a character's pieces ends
    # after the character ([1, 4))
    giant_ids, giant_offsets = [0] * 6, [(0, 1), (1, 2), (1, 2), (1, 2), (2, 3), (3, 4)]
    assert token_windows(giant_offsets, giant_ids, 3, 0, None) == ([(0, 1), (1, 4), (4, 6)], 3)


def test_window_size_rule():
    assert window_tokens(509, 10) == 499  # what fits beside the query
    assert window_tokens(509, 10, 100) == 100
    assert window_tokens(509, 10, 600) == 499  # never more than fits: the model sees the whole window
    assert window_tokens(509, 400) == 254  # a long query keeps half (longest-first cuts it), windows the rest
    assert trim_span(" a b  ", 0, 6) == (1, 4)


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"mode": "split"}, "mode", "mode must be \"truncate\" or \"chunk\", got 'split'"),
        ({"mode": "chunk", "aggregate": "median"}, "aggregate", "aggregate must be one of max, first, mean"),
        ({"mode": "chunk", "max_chunks": 0}, "max_chunks", "max_chunks must be a positive integer, got 0"),
        ({"mode": "chunk", "chunk_tokens": 0}, "chunk_tokens", "chunk_tokens must be a positive integer"),
        ({"mode": "chunk", "chunk_tokens": True}, "chunk_tokens", "chunk_tokens must be a positive integer"),
        ({"mode": "chunk", "chunk_overlap": -1}, "chunk_overlap", "chunk_overlap must be 0 or a positive integer"),
        ({"mode": "chunk", "chunk_tokens": 8, "chunk_overlap": 8}, "chunk_overlap",
         "chunk_overlap (8) must be smaller than chunk_tokens (8)"),
        ({"truncation_direction": "up"}, "truncation_direction", "truncation_direction must be \"left\" or \"right\""),
        ({"chunk_tokens": 64}, "chunk_tokens", "chunk_tokens applies to mode \"chunk\"; these options truncate"),
    ],
)
def test_options_are_validated(kwargs, field, message):
    with pytest.raises(InvalidOptionError) as info:
        LongDocuments(**kwargs)
    assert isinstance(info.value, ValueError) and info.value.field == field
    assert message in str(info.value)


# -- window texts tokenize to the document's own tokens, in every tokenizer family ------------------------------
def _xlm_roberta_tokenizer(folder: Path) -> tuple[Path, TokenizerSpec]:
    from tokenizers import SentencePieceUnigramTokenizer

    from crossonnx.checkpoints.synthetic import _texts

    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(_texts()[:4000], vocab_size=1500, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                unk_token="<unk>")
    from tokenizers.processors import TemplateProcessing

    unigram.post_processor = TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    path = folder / "tokenizer.json"
    unigram.save(str(path))
    return path, TokenizerSpec(file="tokenizer.json", sha256="", pad_id=1, pad_token="<pad>")


def _odd_documents(rng: random.Random) -> list[str]:
    sentences = _sentences()
    docs = []
    for _ in range(6):
        parts = [rng.choice(sentences) for _ in range(12)]
        glue = rng.choice([" ", "  ", "\n\n", " \t", ""])
        docs.append(glue.join(parts))
    docs += [
        "Snowboarders descend quickly.A skateboarder grinds handrails downtown; naïve café-owners don't mind!",
        "日本語のテキストと中文文本和한국어 mixed with English words and emoji 🙂🙃 and accents: Straße, STRASSE.",
        "supercalifragilisticexpialidocious" * 3 + " short words after a giant one",
    ]
    return docs


@pytest.fixture(scope="module")
def family_tokenizers(tiny_exports: dict[str, Path], tmp_path_factory) -> dict[str, PairTokenizer]:
    out = {}
    for family in FAMILIES:
        manifest = load_manifest(tiny_exports[family])
        out[family] = PairTokenizer(tiny_exports[family] / manifest.tokenizer.file, manifest.tokenizer, 64,
                                    manifest.inputs)
    path, spec = _xlm_roberta_tokenizer(tmp_path_factory.mktemp("xlmr"))
    out["xlm-roberta-unigram"] = PairTokenizer(path, spec, 64, ["input_ids", "attention_mask"])
    return out


@pytest.mark.parametrize("family", [*FAMILIES, "xlm-roberta-unigram"])
def test_window_texts_tokenize_to_the_documents_tokens(family_tokenizers, family):
    from crossonnx.long_documents import plan_windows, word_starts

    tokenizer = family_tokenizers[family]
    docs = _odd_documents(random.Random(3))
    pairs = [("a short query", doc) for doc in docs]
    plan = plan_windows(tokenizer, pairs, chunk_tokens=12, chunk_overlap=3, max_chunks=1000)
    pieces = tokenizer.pieces(docs)
    windowed = forced = 0
    for (query, window_text), owner, (a, b), span in zip(plan.pairs, plan.owners, plan.tokens, plan.spans,
                                                          strict=True):
        doc = pieces[owner]
        assert query == "a short query"
        assert docs[owner][span[0]:span[1]].strip() == window_text.strip()
        starts = word_starts(doc.word_ids)
        cuts = [cut for cut in (a, b) if cut < len(doc.ids) and not starts[cut]]
        for cut in cuts:  # never inside a word, unless the word is longer than a window
            word_start = max(i for i in range(cut + 1) if starts[i])
            word_end = next((i for i in range(cut + 1, len(doc.ids)) if starts[i]), len(doc.ids))
            assert word_end - word_start > 11, (family, window_text)
        window_ids = tokenizer.pieces([window_text])[0].ids
        if cuts:
            forced += 1
            assert len(window_ids) <= 12, (family, window_text)  # the model still sees the whole window
        else:
            assert window_ids == doc.ids[a:b], (family, window_text)  # the document's own tokens
        windowed += plan.chunks[owner] > 1
    assert forced < len(plan.pairs) // 4
    assert windowed > 0 and not plan.capped.any()
    # consecutive windows of a document overlap by at most chunk_overlap tokens and cover it
    for owner in range(len(docs)):
        ranges = [r for r, o in zip(plan.tokens, plan.owners, strict=True) if o == owner]
        assert ranges[0][0] == 0 and ranges[-1][1] == len(pieces[owner].ids)
        for (a0, b0), (a1, _) in itertools.pairwise(ranges):
            assert a0 < a1 <= b0 and b0 - a1 <= 3


# -- the real reference model --------------------------------------------------------------------------------
def test_aggregates_and_spans_by_hand(model):
    plan = windows_of(model, [(HAND_QUERY, HAND_DOC)], chunk_tokens=8, chunk_overlap=2)
    assert [HAND_DOC[s:e] for s, e in plan.spans] == [text for text, _ in HAND_WINDOWS]
    # the texts scored start right after the previous token (the space kept: a BPE word would tokenize as inside)
    assert [text for _, text in plan.pairs] == [
        "A man is playing a guitar. A", ". A woman is slicing an onion.", " onion. The cat sleeps on the sofa",
        " the sofa.",
    ]
    assert plan.spans == [span for _, span in HAND_WINDOWS]
    # each window scored as a pair of its own, in the same list: the same batches, the same bits
    window_scores = model.predict(plan.pairs)
    assert np.argmax(window_scores) == 1  # the onion window
    expected = {
        "max": window_scores.max(),
        "first": window_scores[0],
        "mean": np.float32(window_scores.astype(np.float64).mean()),
    }
    for aggregate, value in expected.items():
        options = LongDocuments("chunk", chunk_tokens=8, chunk_overlap=2, aggregate=aggregate)
        details = model.predict_details([(HAND_QUERY, HAND_DOC)], long_documents=options)
        assert details.scores[0] == value, aggregate
        assert details.spans == [HAND_WINDOWS[1][1]]  # the best window, whatever the aggregate
        assert details.chunks.tolist() == [4] and not details.capped.any()
        np.testing.assert_array_equal(details.window_scores[0], window_scores)
        score = model.predict((HAND_QUERY, HAND_DOC), long_documents=options)
        assert score == value
    ranked = model.rank(HAND_QUERY, [HAND_DOC, "A man is playing a guitar."],
                        long_documents=LongDocuments("chunk", chunk_tokens=8, chunk_overlap=2), return_spans=True,
                        return_documents=True)
    assert ranked[0]["corpus_id"] == 0 and ranked[0]["score"] == expected["max"]
    assert HAND_DOC[slice(*ranked[0]["span"])] == ". A woman is slicing an onion."
    assert ranked[1]["span"] == (0, 26) and ranked[1]["chunks"] == 1 and ranked[1]["capped"] is False


def test_a_document_that_fits_scores_as_in_truncate_mode(model):
    pairs = [(r.sentence1, r.sentence2) for r in load_stsb("test")[:64]]
    truncate = model.predict(pairs)
    np.testing.assert_array_equal(model.predict(pairs, long_documents="chunk"), truncate)
    for aggregate in ("max", "first", "mean"):
        options = LongDocuments("chunk", aggregate=aggregate)
        np.testing.assert_array_equal(model.predict(pairs, long_documents=options), truncate)
    # beside documents that need windows the fitting pairs are scored as the same ids (other batches: fp32 rounding)
    rng = random.Random(5)
    long_doc = _filler(rng, _sentences(), 900, set())
    plan = windows_of(model, [*pairs, (pairs[0][0], long_doc)])
    assert plan.pairs[:64] == pairs and plan.chunks[-1] > 1
    mixed = model.predict([*pairs, (pairs[0][0], long_doc)], long_documents="chunk")
    np.testing.assert_allclose(mixed[:64], truncate, rtol=0, atol=1e-6)


def test_the_cap_is_reported(model, caplog):
    rng = random.Random(7)
    long_doc = _filler(rng, _sentences(), 1200, set())
    pairs = [("A man is playing a guitar.", long_doc), ("A man is playing a guitar.", "A man plays the guitar.")]
    uncapped = windows_of(model, pairs, chunk_tokens=64, max_chunks=1000)
    assert uncapped.chunks[0] > 3 and not uncapped.capped.any()
    with caplog.at_level(logging.WARNING, logger="crossonnx"):
        details = model.predict_details(pairs, long_documents=LongDocuments("chunk", chunk_tokens=64, max_chunks=3))
    assert details.chunks.tolist() == [3, 1] and details.capped.tolist() == [True, False]
    assert "1 of 2 documents have more than max_chunks=3 windows" in caplog.text
    # the first 3 windows, as without the cap
    first3 = model.predict(uncapped.pairs[:3])
    assert details.scores[0] == first3.max()
    ranked = model.rank(pairs[0][0], [long_doc, pairs[1][1]],
                        long_documents=LongDocuments("chunk", chunk_tokens=64, max_chunks=3))
    by_id = {r["corpus_id"]: r for r in ranked}
    assert (by_id[0]["chunks"], by_id[0]["capped"]) == (3, True)
    assert (by_id[1]["chunks"], by_id[1]["capped"]) == (1, False)


def test_a_match_at_the_end_ranks_first_in_chunk_mode_only(model):
    """Held-back STSb sentences: the partner of the query (gold 5.0) after ~700 words of other sentences."""
    rows = [r for r in load_stsb("test") if r.score == 5.0]
    query, answer = rows[0].sentence1, rows[0].sentence2
    rng = random.Random(11)
    sentences = _sentences()
    fillers = [_filler(rng, sentences, 700, {query, answer}) for _ in range(5)]
    documents = [fillers[0] + " " + answer, *fillers[1:]]
    seen = _pipeline.truncated_spans(model, [(query, documents[0])])[0]
    assert seen[1] < len(fillers[0])  # truncation never reaches the answer
    # truncate mode cannot see the answer: the document scores as its filler alone, and is not first
    truncated = model.rank(query, documents)
    assert truncated[0]["corpus_id"] != 0
    assert {r["corpus_id"]: r["score"] for r in truncated}[0] == model.predict((query, fillers[0]))
    # sentence-sized windows: the STSb model compares whole texts, so a window should be about a sentence or two
    chunked = model.rank(query, documents, long_documents=LongDocuments("chunk", chunk_tokens=32, max_chunks=100),
                         return_spans=True)
    best = chunked[0]
    assert best["corpus_id"] == 0 and not best["capped"]
    start, end = best["span"]
    assert start > seen[1] and end == len(documents[0])
    assert answer in documents[0][start:end]


def test_left_truncation_keeps_the_end_as_transformers_does(model, reference_checkpoint):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(reference_checkpoint), truncation_side="left")
    rng = random.Random(13)
    pairs = [("A man is playing a guitar.", _filler(rng, _sentences(), 600, set())),
             ("a dog " * 300, "a cat " * 400), ("short", "pair")]
    tokenizer = PairTokenizer(model.model_dir / model.manifest.tokenizer.file, model.manifest.tokenizer,
                              model.max_length, model.manifest.inputs)
    encoded = tokenizer.encode(pairs, "left")
    for i, (a, b) in enumerate(pairs):
        start, length = int(encoded.starts[i]), int(encoded.lengths[i])
        expected = hf(a, b, truncation=True, max_length=model.max_length)["input_ids"]
        assert encoded.ids[start : start + length].tolist() == expected
    left = model.predict(pairs, long_documents=LongDocuments(truncation_direction="left"))
    right = model.predict(pairs)
    assert left[0] != right[0] and left[2] == right[2]
    np.testing.assert_array_equal(model.predict(pairs, long_documents=LongDocuments(truncation_direction="right")),
                                  right)
    spans = _pipeline.truncated_spans(model, pairs[:1], "left")
    assert spans[0][1] == len(pairs[0][1]) and spans[0][0] > 0
    ranked = model.rank(pairs[0][0], [pairs[0][1]], long_documents=LongDocuments(truncation_direction="left"),
                        return_spans=True)
    assert ranked[0]["score"] == left[0] and ranked[0]["span"] == spans[0]


def test_chunk_mode_needs_one_label(tmp_path):
    from crossonnx.checkpoints.synthetic import build_tiny
    from crossonnx.exporter.pipeline import export_model
    from pairs import RANDOM_WEIGHT_GATES

    folder = export_model(str(build_tiny("bert", tmp_path / "ckpt", seed=2, num_labels=3)), out=tmp_path / "onnx",
                          precisions=["fp32"], gate_overrides=RANDOM_WEIGHT_GATES, log=None)
    encoder = CrossEncoder(folder, threads=1)
    with pytest.raises(InvalidOptionError, match="long_documents='chunk' needs a model with one label"):
        encoder.predict([("a", "b")], long_documents="chunk")
    assert encoder.predict([("a", "b")], long_documents=LongDocuments(truncation_direction="left")).shape == (1, 3)


# -- everywhere the runtime is used: CLI, score-file, Ray Data -------------------------------------------------
def test_cli_rank_and_predict_chunk_flags(reference_export, model, capsys):
    from crossonnx.cli import main

    args = ["--threads", "1", "--long-documents", "chunk", "--chunk-tokens", "8", "--chunk-overlap", "2"]
    assert main(["rank", str(reference_export), HAND_QUERY, HAND_DOC, "A dog runs.", "--spans", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    score, corpus_id, span, text = lines[0].split("\t")
    assert (corpus_id, span, text) == ("0", "25:55", HAND_DOC)
    expected = model.predict((HAND_QUERY, HAND_DOC), long_documents=LongDocuments("chunk", chunk_tokens=8,
                                                                                   chunk_overlap=2))
    assert float(score) == pytest.approx(float(expected), abs=1e-6)

    assert main(["predict", str(reference_export), "--pair", HAND_QUERY, HAND_DOC, *args, "--max-chunks", "2"]) == 0
    import json

    row = json.loads(capsys.readouterr().out)
    assert (row["chunks"], row["capped"], row["span"]) == (2, True, [25, 55])  # the first 2 windows hold the best
    assert main(["predict", str(reference_export), "--pair", "a", "b", "--chunk-tokens", "8"]) == 2
    assert "--chunk-tokens applies to --long-documents chunk" in capsys.readouterr().err


def test_score_file_chunks_passages(tmp_path, model):
    import json

    from crossonnx.scale.files import score_file

    rng = random.Random(17)
    rows = [{"query": HAND_QUERY, "passage": HAND_DOC},
            {"query": HAND_QUERY, "passage": _filler(rng, _sentences(), 800, set())},
            {"query": "A man plays guitar.", "passage": "A man is playing a guitar."}]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    options = LongDocuments("chunk", chunk_tokens=64, max_chunks=4)
    result = score_file(model, src, tmp_path / "out.jsonl", long_documents=options, progress=False)
    got = [json.loads(line)["score"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = model.predict([(r["query"], r["passage"]) for r in rows], long_documents=options)
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), expected)
    assert result.details["capped_rows"] == 1 and result.details["long_documents"] == options.to_dict()
    assert result.details["long_documents"]["mode"] == "chunk"
    # a mode name stands for that mode's defaults, in score-file as in predict
    score_file(model, src, tmp_path / "default.jsonl", long_documents="chunk", progress=False)
    got = [json.loads(line)["score"] for line in (tmp_path / "default.jsonl").read_text().splitlines()]
    expected = model.predict([(r["query"], r["passage"]) for r in rows], long_documents=LongDocuments("chunk"))
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), expected)


def test_ray_scorer_chunks_passages(model):
    pytest.importorskip("pyarrow")
    from crossonnx.scale.ray_data import RayScorer, score_dataset

    options = LongDocuments("chunk", chunk_tokens=8, chunk_overlap=2)
    scorer = RayScorer(model.model_dir, threads=1, long_documents=options)
    batch = {"query": np.array([HAND_QUERY, HAND_QUERY]), "passage": np.array([HAND_DOC, "A dog."])}
    out = scorer(batch)
    expected = model.predict([(HAND_QUERY, HAND_DOC), (HAND_QUERY, "A dog.")], long_documents=options)
    np.testing.assert_allclose(out["score"], expected, rtol=0, atol=1e-6)  # 1 thread here, 2 there: fp32 rounding
    by_name = RayScorer(model.model_dir, threads=1, long_documents="chunk")(batch)
    pairs = [(HAND_QUERY, HAND_DOC), (HAND_QUERY, "A dog.")]
    np.testing.assert_allclose(by_name["score"], model.predict(pairs, long_documents="chunk"), rtol=0, atol=1e-6)
    with pytest.raises(InvalidOptionError) as info:
        RayScorer(model.model_dir, threads=1, long_documents="split")
    assert info.value.field == "long_documents"
    pytest.importorskip("ray")
    with pytest.raises(InvalidOptionError, match="long_documents must be") as info:
        score_dataset(None, model.model_dir, long_documents=5)  # type: ignore[arg-type]
    assert info.value.field == "long_documents"
