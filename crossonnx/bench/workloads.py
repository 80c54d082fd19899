"""Benchmark inputs, deterministic: query-passage pairs, STSb sentence pairs, and a 100-document rank."""

from __future__ import annotations

import random

from crossonnx.stsb import StsbRow, load_stsb

Pair = tuple[str, str]
PARTNER_SHARE = 0.5  # share of query-passage passages that hold the query's STSb partner
PARTNER_MIN_GOLD = 4.0  # queries come from STSb pairs at least this similar (gold 0..5)


def _rows() -> list[StsbRow]:
    return load_stsb("test") + load_stsb("dev")


def _sentences() -> list[str]:
    rows = _rows()
    return [r.sentence1 for r in rows] + [r.sentence2 for r in rows]


def _passage(rng: random.Random, sentences: list[str], words: int) -> str:
    out: list[str] = []
    while len(out) < words:
        out.extend(rng.choice(sentences).split())
    return " ".join(out[:words])


def _passage_with(rng: random.Random, sentences: list[str], words: int, partner: str) -> str:
    """A passage of about ``words`` words with ``partner`` inserted whole between two filler sentences."""
    budget = max(0, words - len(partner.split()))
    filler: list[str] = []
    count = 0
    while count < budget:
        sentence = rng.choice(sentences).split()[: budget - count]
        filler.append(" ".join(sentence))
        count += len(sentence)
    filler.insert(rng.randint(0, len(filler)), partner)
    return " ".join(filler)


def query_passage_pairs(n: int, seed: int = 0) -> list[Pair]:
    """Queries of 2-8 words against passages of 40-150 words (web-search shaped), with spread scores.

    Each query is the start of sentence 1 of an STSb pair whose gold similarity is high (>= 4 of 5); in about
    half of the passages (``PARTNER_SHARE``) that pair's sentence 2 stands whole at a random sentence position
    among the filler sentences, so an STSb model scores those passages well above the others, which it scores
    near 0. Without the partners nearly all scores are close to 0 and rank agreement measures ties.
    """
    rng = random.Random(seed)
    sentences = _sentences()
    similar = [r for r in _rows() if r.score >= PARTNER_MIN_GOLD]
    pairs = []
    for _ in range(n):
        row = rng.choice(similar)
        query = " ".join(row.sentence1.split()[: rng.randint(2, 8)]).rstrip(".,")
        words = rng.randint(40, 150)
        if rng.random() < PARTNER_SHARE:
            passage = _passage_with(rng, sentences, words, row.sentence2)
        else:
            passage = _passage(rng, sentences, words)
        pairs.append((query, passage))
    return pairs


def sentence_pairs(n: int, seed: int = 0) -> list[Pair]:
    """STSb test pairs: two short sentences."""
    rows = load_stsb("test")
    rng = random.Random(seed)
    picked = [rows[i % len(rows)] for i in rng.sample(range(len(rows)), min(n, len(rows)))]
    return [(r.sentence1, r.sentence2) for r in picked]


def rank_pairs(documents: int = 100, seed: int = 0) -> list[Pair]:
    """One query against ``documents`` passages: what rank(query, docs) scores."""
    rng = random.Random(seed)
    sentences = _sentences()
    query = " ".join(rng.choice(sentences).split()[:6]).rstrip(".,")
    return [(query, _passage(rng, sentences, rng.randint(40, 150))) for _ in range(documents)]


WORKLOADS = {
    "query-passage": query_passage_pairs,
    "sentence-pairs": sentence_pairs,
    "rank-100": lambda n, seed=0: rank_pairs(100, seed),
}
