"""Long documents: windows by hand, window texts that tokenize as the document, aggregates, spans, the cap (in
document tokens, whatever the window size; raised or flagged) and left truncation, on the real STSb reference model,
a tiny model and every tokenizer family."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossonnx import CrossEncoder, InvalidOptionError, LongDocuments, MovedArgumentError, _pipeline
from crossonnx.long_documents import (
    DocumentCappedError,
    WindowPlan,
    cap_tokens,
    plan_windows,
    token_windows,
    trim_span,
    window_tokens,
    word_starts,
)
from crossonnx.manifest import TokenizerSpec, load_manifest
from crossonnx.stsb import load_stsb
from crossonnx.tokenization import PairTokenizer
from pairs import FAMILIES

EXAMPLES = int(os.environ.get("CROSSONNX_HYPOTHESIS_EXAMPLES", "40"))
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
    offsets = [
        (0, 4),
        (4, 9),
        (9, 12),
        (13, 17),
        (18, 22),
        (22, 23),
        (24, 29),
        (29, 34),
        (34, 36),
        (37, 42),
        (42, 43),
        (44, 49),
    ]
    # window 4, overlap 1: [0,4) ends before "fast"; the next starts 1 token back, at "ride"; [3,6) cannot end
    # inside "skate ##board ##er" (token 7), so it ends at 6; [5,9) would end inside "grind ##s": it ends at 9
    assert token_windows(offsets, word_ids, 4, 1, None) == ([(0, 4), (3, 6), (5, 9), (9, 12)], 12)
    assert token_windows(offsets, word_ids, 4, 0, None) == ([(0, 4), (4, 6), (6, 9), (9, 12)], 12)
    # capped at 6, 7 or 8 tokens: cut back to the last word start ("skate", token 6); the windows read [0, 6)
    for cap in (6, 7, 8):
        assert token_windows(offsets, word_ids, 4, 1, cap) == ([(0, 4), (3, 6)], 6)
    assert token_windows(offsets, word_ids, 12, 3, None) == ([(0, 12)], 12)  # fits
    assert token_windows(offsets, word_ids, 12, 3, 12) == ([(0, 12)], 12)  # fits the cap too
    assert token_windows(offsets, word_ids, 12, 3, 10) == ([(0, 9)], 9)  # capped inside "grind ##s": one window
    assert token_windows([], [], 4, 1, 10) == ([(0, 0)], 0)
    # one word longer than a window is cut between tokens that do not share a character (byte-level pieces
    # 1-3 are one 3-byte character: [0, 3) would split it, so the first window is [0, 1)); a window that starts
    # inside the word keeps a token free (window 2 from token 1), and one shorter than a character's pieces ends
    # after the character ([1, 4))
    giant_ids, giant_offsets = [0] * 6, [(0, 1), (1, 2), (1, 2), (1, 2), (2, 3), (3, 4)]
    assert token_windows(giant_offsets, giant_ids, 3, 0, None) == ([(0, 1), (1, 4), (4, 6)], 6)
    assert token_windows(giant_offsets, giant_ids, 3, 0, 3) == ([(0, 1)], 1)  # a cap inside the character: before it


def test_window_size_rule():
    assert window_tokens(509, 10) == 499  # what fits beside the query
    assert window_tokens(509, 10, 100) == 100
    assert window_tokens(509, 10, 600) == 499  # never more than fits: the model sees the whole window
    assert window_tokens(509, 400) == 254  # a long query keeps half (longest-first cuts it), windows the rest
    assert trim_span(" a b  ", 0, 6) == (1, 4)
    # the cap: max_document_tokens, else 10 default windows beside the query, whatever chunk_tokens is
    assert cap_tokens(509, 10) == 4990 and cap_tokens(509, 400) == 2540 and cap_tokens(509, 10, 300) == 300
    assert cap_tokens(509, 10, windows=3) == 1497


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"mode": "split"}, "mode", 'mode must be "truncate" or "chunk", got \'split\''),
        ({"mode": "chunk", "aggregate": "median"}, "aggregate", "aggregate must be one of max, first, mean"),
        (
            {"mode": "chunk", "max_document_tokens": 0},
            "max_document_tokens",
            "max_document_tokens must be a positive integer, got 0",
        ),
        ({"mode": "chunk", "max_document_tokens": 2.0}, "max_document_tokens", "must be a positive integer"),
        ({"max_document_tokens": 4096}, "max_document_tokens", 'applies to mode "chunk"'),
        ({"mode": "chunk", "on_capped": "truncate"}, "on_capped", 'on_capped must be "raise" or "flag"'),
        ({"mode": "chunk", "on_capped": None}, "on_capped", "on_capped must be"),
        ({"mode": "chunk", "chunk_tokens": 0}, "chunk_tokens", "chunk_tokens must be a positive integer"),
        ({"mode": "chunk", "chunk_tokens": True}, "chunk_tokens", "chunk_tokens must be a positive integer"),
        ({"mode": "chunk", "chunk_overlap": -1}, "chunk_overlap", "chunk_overlap must be 0 or a positive integer"),
        (
            {"mode": "chunk", "chunk_tokens": 8, "chunk_overlap": 8},
            "chunk_overlap",
            "chunk_overlap (8) must be smaller than chunk_tokens (8)",
        ),
        ({"truncation_direction": "up"}, "truncation_direction", 'truncation_direction must be "left" or "right"'),
        ({"chunk_tokens": 64}, "chunk_tokens", 'chunk_tokens applies to mode "chunk"; these options truncate'),
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
    unigram.train_from_iterator(
        _texts()[:4000], vocab_size=1500, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
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
        out[family] = PairTokenizer(
            tiny_exports[family] / manifest.tokenizer.file, manifest.tokenizer, 64, manifest.inputs
        )
    path, spec = _xlm_roberta_tokenizer(tmp_path_factory.mktemp("xlmr"))
    out["xlm-roberta-unigram"] = PairTokenizer(path, spec, 64, ["input_ids", "attention_mask"])
    return out


@pytest.mark.parametrize("family", [*FAMILIES, "xlm-roberta-unigram"])
def test_window_texts_tokenize_to_the_documents_tokens(family_tokenizers, family):
    tokenizer = family_tokenizers[family]
    docs = _odd_documents(random.Random(3))
    pairs = [("a short query", doc) for doc in docs]
    plan = plan_windows(tokenizer, pairs, chunk_tokens=12, chunk_overlap=3, max_document_tokens=10**6)
    pieces = tokenizer.pieces(docs)
    windowed = forced = 0
    for (query, window_text), owner, (a, b), span in zip(plan.pairs, plan.owners, plan.tokens, plan.spans, strict=True):
        doc = pieces[owner]
        assert query == "a short query"
        assert docs[owner][span[0] : span[1]].strip() == window_text.strip()
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


# -- the cap: document tokens, whatever the window size; raised or flagged ----------------------------------------
SENTENCES = _sentences()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_small_windows_read_as_far_as_large_ones(family_tokenizers, data):
    """Any tokenizer family, query, documents, window sizes and cap: the windows read the same first tokens of
    each document whatever their size (the cap cut back to a word start), with no gap, and exactly the documents
    longer than that are capped, which the error names."""
    family = data.draw(st.sampled_from([*FAMILIES, "xlm-roberta-unigram"]), label="family")
    tokenizer = family_tokenizers[family]
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    query = " ".join(rng.choice(SENTENCES).split()[: data.draw(st.integers(0, 60), label="query words")])
    words = data.draw(st.lists(st.integers(1, 900), min_size=1, max_size=5), label="document words")
    docs = [_filler(rng, SENTENCES, n, set()) for n in words]
    max_document_tokens = data.draw(st.none() | st.integers(1, 700), label="max_document_tokens")
    sizes = data.draw(st.lists(st.integers(1, 80), min_size=1, max_size=3, unique=True), label="chunk_tokens")
    pairs = [(query, doc) for doc in docs]
    room = tokenizer.max_length - tokenizer.pair_special_tokens
    default_window = window_tokens(room, tokenizer.text_lengths([query])[0])
    cap = max_document_tokens or 10 * default_window  # the documented default: 10 default windows' tokens
    pieces = tokenizer.pieces(docs)
    lengths = np.array([len(piece.ids) for piece in pieces])
    plans = {size: plan_windows(tokenizer, pairs, size, None, max_document_tokens) for size in [None, *sizes]}
    covered = plans[None].covered
    for i, piece in enumerate(pieces):
        starts = word_starts(piece.word_ids)
        if lengths[i] <= cap:
            assert covered[i] == lengths[i]
        elif starts[1 : cap + 1].any():  # cut back to the last word start within the cap
            assert covered[i] <= cap and starts[covered[i]] and not starts[covered[i] + 1 : cap + 1].any()
    for size, plan in plans.items():
        np.testing.assert_array_equal(plan.covered, covered, err_msg=f"chunk_tokens={size}")
        np.testing.assert_array_equal(plan.document_tokens, lengths)
        np.testing.assert_array_equal(plan.capped, covered < lengths)
        for owner in range(len(docs)):
            ranges = [r for r, o in zip(plan.tokens, plan.owners, strict=True) if o == owner]
            assert ranges[0][0] == 0 and ranges[-1][1] == covered[owner]  # from the start to the cap, no gap
            assert all(a0 < a1 <= b0 for (a0, b0), (a1, _) in itertools.pairwise(ranges))
    error = plans[None].capped_error()
    capped = np.flatnonzero(covered < lengths).tolist()
    if not capped:
        assert error is None
        return
    assert isinstance(error, InvalidOptionError) and error.field == "max_document_tokens"
    assert (error.indexes, error.covered, error.tokens) == (capped, covered[capped].tolist(), lengths[capped].tolist())
    message = str(error)
    assert f"max_document_tokens={lengths[capped].max()}" in message and "on_capped='flag'" in message
    if len(capped) == 1:
        assert f"the first {covered[capped[0]]} of the {lengths[capped[0]]} tokens of pair {capped[0]}'s" in message
    else:
        assert f"of {len(capped)} of {len(docs)} pairs (pair {capped[0]}: {covered[capped[0]]} of its" in message
        assert all(f"pair {i}:" in message for i in capped[:3])
        assert ("and 2 more" in message) == (len(capped) == 5)
    assert str(pickle.loads(pickle.dumps(error))) == message  # Ray carries errors between processes


def test_capped_documents_raise_before_scoring_or_are_flagged(tiny_encoder, caplog):
    """The tiny model: the default raises, naming the pairs and the fix; the fix works; "flag" scores their first
    tokens and flags them."""
    rng = random.Random(19)
    query = "A man is playing a guitar."
    pairs = [
        (query, "A man plays the guitar."),
        (query, _filler(rng, SENTENCES, 200, set())),
        (query, "A dog runs."),
        (query, _filler(rng, SENTENCES, 300, set())),
    ]
    options = LongDocuments("chunk", chunk_tokens=16, max_document_tokens=100)
    flagged = dataclasses.replace(options, on_capped="flag")
    plan = _pipeline.plan(tiny_encoder, pairs, flagged).windows
    assert plan is not None and plan.capped.tolist() == [False, True, False, True]
    tokens = plan.document_tokens[[1, 3]].tolist()
    calls = {
        "predict": lambda o: tiny_encoder.predict(pairs, long_documents=o),
        "predict_details": lambda o: tiny_encoder.predict_details(pairs, long_documents=o),
        "rank": lambda o: tiny_encoder.rank(query, [doc for _, doc in pairs], long_documents=o),
        "plan": lambda o: _pipeline.plan(tiny_encoder, pairs, o),  # step 1: nothing is scored yet
    }
    for name, call in calls.items():
        with pytest.raises(DocumentCappedError) as info:
            call(options)
        error = info.value
        assert error.indexes == [1, 3] and error.tokens == tokens, name
        assert str(error).startswith(
            f"chunk mode would read only the first tokens of the second texts of 2 of 4 pairs (pair 1: "
            f"{plan.covered[1]} of its {tokens[0]} tokens; pair 3: {plan.covered[3]} of its {tokens[1]} tokens)"
        )
        assert f"LongDocuments('chunk', max_document_tokens={max(tokens)}, ...) to read them whole" in str(error)
        assert "or on_capped='flag'" in str(error)
    # the fix it names: every document read whole
    whole = tiny_encoder.predict_details(
        pairs, long_documents=dataclasses.replace(options, max_document_tokens=max(tokens))
    )
    assert not whole.capped.any() and (whole.chunks[[1, 3]] > plan.chunks[[1, 3]]).all()
    # flag: scored on their first tokens, flagged everywhere, logged by predict
    with caplog.at_level(logging.WARNING, logger="crossonnx"):
        scores = tiny_encoder.predict(pairs, long_documents=flagged)
    assert "2 of 4 documents are longer than max_document_tokens" in caplog.text
    details = tiny_encoder.predict_details(pairs, long_documents=flagged)
    np.testing.assert_array_equal(details.scores, scores)
    assert details.capped.tolist() == [False, True, False, True] and details.chunks.tolist() == plan.chunks.tolist()
    ranked = tiny_encoder.rank(query, [doc for _, doc in pairs], long_documents=flagged)
    assert {r["corpus_id"]: r["capped"] for r in ranked} == {0: False, 1: True, 2: False, 3: True}
    # one capped pair is named alone
    with pytest.raises(DocumentCappedError, match=r"the first \d+ of the \d+ tokens of pair 0's second text"):
        tiny_encoder.predict(pairs[3:], long_documents=options)


def test_the_default_cap_is_ten_default_windows_whatever_the_window(tiny_encoder):
    rng = random.Random(23)
    query = "A woman is slicing an onion."
    doc = _filler(rng, SENTENCES, 6000, set())
    pairs = [(query, doc)]
    cap = _pipeline.cap_of_windows(tiny_encoder, query, 10)  # what Cohere's max_chunks_per_doc=10 stands for

    def covered(**options: object) -> int:
        windows = _pipeline.plan(tiny_encoder, pairs, LongDocuments("chunk", on_capped="flag", **options)).windows
        assert windows is not None
        return int(windows.covered[0])

    read = {size: covered(chunk_tokens=size) for size in (None, 24, 128)}
    assert len(set(read.values())) == 1 and cap - 20 < read[None] <= cap
    assert covered(max_document_tokens=cap) == read[None]
    with pytest.raises(DocumentCappedError):
        tiny_encoder.predict(pairs, long_documents="chunk")


def test_max_chunks_names_the_cap_that_replaced_it(tiny_encoder):
    with pytest.raises(
        MovedArgumentError,
        match=r"no longer takes max_chunks=\. The cap is in document tokens now "
        r".*pass max_document_tokens=192 \(3 windows of 64 tokens\)",
    ):
        LongDocuments("chunk", chunk_tokens=64, max_chunks=3)
    with pytest.raises(MovedArgumentError, match=r"max_document_tokens=<tokens>, or leave it out"):
        LongDocuments("chunk", max_chunks=10)
    with pytest.raises(MovedArgumentError) as info:
        tiny_encoder.predict([("a", "b")], chunk_tokens=8, max_chunks=2)  # type: ignore[call-arg]
    message = str(info.value)
    assert "long_documents=LongDocuments(mode='chunk', chunk_tokens=8)" in message
    assert "max_document_tokens=16 (2 windows of 8 tokens)" in message
    with pytest.raises(TypeError, match="positional"):
        LongDocuments("chunk", 64)  # type: ignore[misc]  # only mode is positional


# -- the real reference model --------------------------------------------------------------------------------
def test_aggregates_and_spans_by_hand(model):
    plan = windows_of(model, [(HAND_QUERY, HAND_DOC)], chunk_tokens=8, chunk_overlap=2)
    assert [HAND_DOC[s:e] for s, e in plan.spans] == [text for text, _ in HAND_WINDOWS]
    # the texts scored start right after the previous token (the space kept: a BPE word would tokenize as inside)
    assert [text for _, text in plan.pairs] == [
        "A man is playing a guitar. A",
        ". A woman is slicing an onion.",
        " onion. The cat sleeps on the sofa",
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
    ranked = model.rank(
        HAND_QUERY,
        [HAND_DOC, "A man is playing a guitar."],
        long_documents=LongDocuments("chunk", chunk_tokens=8, chunk_overlap=2),
        return_spans=True,
        return_documents=True,
    )
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


def test_a_flagged_document_scores_as_its_first_tokens(model, caplog):
    rng = random.Random(7)
    long_doc = _filler(rng, _sentences(), 1200, set())
    pairs = [("A man is playing a guitar.", long_doc), ("A man is playing a guitar.", "A man plays the guitar.")]
    options = LongDocuments("chunk", chunk_tokens=64, max_document_tokens=200, on_capped="flag")
    plan = windows_of(model, pairs, chunk_tokens=64, max_document_tokens=200, on_capped="flag")
    covered = int(plan.covered[0])
    assert 190 <= covered <= 200 and plan.capped.tolist() == [True, False]
    with caplog.at_level(logging.WARNING, logger="crossonnx"):
        details = model.predict_details(pairs, long_documents=options)
    assert details.capped.tolist() == [True, False] and details.chunks[0] == plan.chunks[0] > 3
    assert "1 of 2 documents are longer than max_document_tokens" in caplog.text
    assert f"pair 0: {covered} of {plan.document_tokens[0]} tokens" in caplog.text
    # the same windows, the same list: the scores of the document cut where the cap cut it
    prefix = long_doc[: plan.spans[int(plan.chunks[0]) - 1][1]]
    whole = model.predict_details(
        [(pairs[0][0], prefix), pairs[1]], long_documents=dataclasses.replace(options, on_capped="raise")
    )
    assert not whole.capped.any() and whole.chunks.tolist() == details.chunks.tolist()
    np.testing.assert_array_equal(whole.scores, details.scores)
    ranked = model.rank(pairs[0][0], [long_doc, pairs[1][1]], long_documents=options)
    by_id = {r["corpus_id"]: r for r in ranked}
    assert (by_id[0]["chunks"], by_id[0]["capped"]) == (int(plan.chunks[0]), True)
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
    # default options: the cap (10 default windows' tokens) reads the whole document, whatever the window size
    chunked = model.rank(query, documents, long_documents=LongDocuments("chunk", chunk_tokens=32), return_spans=True)
    best = chunked[0]
    assert best["corpus_id"] == 0 and not best["capped"]
    start, end = best["span"]
    assert start > seen[1] and end == len(documents[0])
    assert answer in documents[0][start:end]


def test_left_truncation_keeps_the_end_as_transformers_does(model, reference_checkpoint):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(reference_checkpoint), truncation_side="left")
    rng = random.Random(13)
    pairs = [
        ("A man is playing a guitar.", _filler(rng, _sentences(), 600, set())),
        ("a dog " * 300, "a cat " * 400),
        ("short", "pair"),
    ]
    tokenizer = PairTokenizer(
        model.model_dir / model.manifest.tokenizer.file,
        model.manifest.tokenizer,
        model.max_length,
        model.manifest.inputs,
    )
    encoded = tokenizer.encode(pairs, "left")
    for i, (a, b) in enumerate(pairs):
        start, length = int(encoded.starts[i]), int(encoded.lengths[i])
        expected = hf(a, b, truncation=True, max_length=model.max_length)["input_ids"]
        assert encoded.ids[start : start + length].tolist() == expected
    left = model.predict(pairs, long_documents=LongDocuments(truncation_direction="left"))
    right = model.predict(pairs)
    assert left[0] != right[0] and left[2] == right[2]
    np.testing.assert_array_equal(
        model.predict(pairs, long_documents=LongDocuments(truncation_direction="right")), right
    )
    spans = _pipeline.truncated_spans(model, pairs[:1], "left")
    assert spans[0][1] == len(pairs[0][1]) and spans[0][0] > 0
    ranked = model.rank(
        pairs[0][0], [pairs[0][1]], long_documents=LongDocuments(truncation_direction="left"), return_spans=True
    )
    assert ranked[0]["score"] == left[0] and ranked[0]["span"] == spans[0]


def test_chunk_mode_needs_one_label(tmp_path):
    from crossonnx.checkpoints.synthetic import build_tiny
    from crossonnx.exporter.pipeline import export_model
    from pairs import RANDOM_WEIGHT_GATES

    folder = export_model(
        str(build_tiny("bert", tmp_path / "ckpt", seed=2, num_labels=3)),
        out=tmp_path / "onnx",
        precisions=["fp32"],
        gate_overrides=RANDOM_WEIGHT_GATES,
        log=None,
    )
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
    expected = model.predict(
        (HAND_QUERY, HAND_DOC), long_documents=LongDocuments("chunk", chunk_tokens=8, chunk_overlap=2)
    )
    assert float(score) == pytest.approx(float(expected), abs=1e-6)

    # 14 tokens: the first 2 windows, which hold the best
    capped = ["--max-document-tokens", "14"]
    assert (
        main(["predict", str(reference_export), "--pair", HAND_QUERY, HAND_DOC, *args, *capped, "--on-capped", "flag"])
        == 0
    )
    import json

    row = json.loads(capsys.readouterr().out)
    assert (row["chunks"], row["capped"], row["span"]) == (2, True, [25, 55])
    assert main(["predict", str(reference_export), "--pair", HAND_QUERY, HAND_DOC, *args, *capped]) == 2
    assert "the first 14 of the 21 tokens of pair 0's second text" in capsys.readouterr().err
    assert main(["predict", str(reference_export), "--pair", "a", "b", "--chunk-tokens", "8"]) == 2
    assert "--chunk-tokens applies to --long-documents chunk" in capsys.readouterr().err


def test_score_file_chunks_passages(tmp_path, model):
    import json

    from crossonnx.scale.files import score_file

    rng = random.Random(17)
    rows = [
        {"query": HAND_QUERY, "passage": HAND_DOC},
        {"query": HAND_QUERY, "passage": _filler(rng, _sentences(), 800, set())},
        {"query": "A man plays guitar.", "passage": "A man is playing a guitar."},
    ]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    options = LongDocuments("chunk", chunk_tokens=64, max_document_tokens=200, on_capped="flag")
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
