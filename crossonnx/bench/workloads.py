"""Benchmark inputs, deterministic: query-passage pairs, STSb sentence pairs, and a 100-document rank."""

from __future__ import annotations

import random

from crossonnx.stsb import load_stsb

Pair = tuple[str, str]


def _sentences() -> list[str]:
    rows = load_stsb("test") + load_stsb("dev")
    return [r.sentence1 for r in rows] + [r.sentence2 for r in rows]


def _passage(rng: random.Random, sentences: list[str], words: int) -> str:
    out: list[str] = []
    while len(out) < words:
        out.extend(rng.choice(sentences).split())
    return " ".join(out[:words])


def query_passage_pairs(n: int, seed: int = 0) -> list[Pair]:
    """Queries of 2-8 words against passages of 40-150 words (web-search shaped)."""
    rng = random.Random(seed)
    sentences = _sentences()
    return [
        (" ".join(rng.choice(sentences).split()[: rng.randint(2, 8)]).rstrip(".,"),
         _passage(rng, sentences, rng.randint(40, 150)))
        for _ in range(n)
    ]


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
