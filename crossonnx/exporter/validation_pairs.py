"""The text pairs every export is validated on: real sentences, query-passage pairs, truncation, edge cases."""

from __future__ import annotations

import random

from crossonnx.stsb import load_stsb

EDGE_CASES: list[tuple[str, str]] = [
    ("", ""),
    ("", "A passage with no query in front of it."),
    ("a query with an empty passage", ""),
    ("   ", "\t\n"),
    ("Café au lait, naïve résumé — déjà vu?", "Crème brûlée à la française, s'il vous plaît."),
    ("Wie viele Einwohner hat München?", "München hat rund 1,5 Millionen Einwohner, Straßenbahn inklusive."),
    ("東京の人口は何人ですか", "東京都の人口は約1400万人です。"),
    ("Сколько людей живёт в Москве?", "В Москве живёт более 13 миллионов человек."),
    ("ما هي عاصمة مصر؟", "القاهرة هي عاصمة مصر وأكبر مدنها."),
    ("emoji 😀🚀 in a query", "and 👍🏽 family 👨‍👩‍👧 emoji in the passage 🎉"),
    ("zero\u200bwidth and\u00a0no-break spaces", "combining e\u0301 accents and ﬁ ligatures"),
    ("UPPER CASE QUERY", "lower case passage"),
    ("1234567890 3.14159 2^10=1024", "$99.99 + 15% VAT = €115, 100°C, 50 km/h"),
    ("<html><b>tags</b></html>", "{\"json\": [1, 2, 3], \"key\": null}"),
    ("a", "b"),
]


def _passage(rng: random.Random, sentences: list[str], words: int) -> str:
    out: list[str] = []
    while len(out) < words:
        out.extend(rng.choice(sentences).split())
    return " ".join(out[:words])


def validation_pairs(seed: int = 0) -> list[tuple[str, str]]:
    """About 80 deterministic pairs: STSb dev pairs, query-passage pairs, over-long pairs and edge cases."""
    rng = random.Random(seed)
    dev = load_stsb("dev")
    sentences = [row.sentence1 for row in dev] + [row.sentence2 for row in dev]
    pairs = [(row.sentence1, row.sentence2) for row in rng.sample(dev, 40)]
    for _ in range(16):  # a few-word query against a 40-150 word passage
        query_words = rng.choice(sentences).split()[: rng.randint(2, 8)]
        pairs.append((" ".join(query_words), _passage(rng, sentences, rng.randint(40, 150))))
    # longer than any model's 512 tokens: exercises longest_first truncation of one and of both sides
    pairs.append((rng.choice(sentences), _passage(rng, sentences, 700)))
    pairs.append((_passage(rng, sentences, 700), rng.choice(sentences)))
    pairs.append((_passage(rng, sentences, 450), _passage(rng, sentences, 500)))
    pairs.append((_passage(rng, sentences, 260), _passage(rng, sentences, 260)))
    pairs.extend(EDGE_CASES)
    return pairs


def calibration_pairs(seed: int = 1) -> list[tuple[str, str]]:
    """128 pairs from STSb *train* (disjoint from validation): 96 sentence pairs and 32 query-passage pairs."""
    rng = random.Random(seed)
    train = load_stsb("train")
    sentences = [row.sentence1 for row in train] + [row.sentence2 for row in train]
    pairs = [(row.sentence1, row.sentence2) for row in rng.sample(train, 96)]
    for _ in range(32):
        query_words = rng.choice(sentences).split()[: rng.randint(2, 8)]
        pairs.append((" ".join(query_words), _passage(rng, sentences, rng.randint(40, 150))))
    return pairs
