"""Test data shared by the test modules: the families and the pairs the runtime is checked on."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from crossonnx.architectures import TINY_CHECKPOINTS
from crossonnx.checkpoints.synthetic import RANDOM_WEIGHT_GATES
from crossonnx.stsb import load_stsb

FAMILIES = tuple(TINY_CHECKPOINTS)  # bert, electra, roberta, distilroberta: every tiny checkpoint the table lists
__all__ = ["FAMILIES", "RANDOM_WEIGHT_GATES", "parity_pairs", "write_rows"]


def parity_pairs(n: int = 48, seed: int = 7) -> list[tuple[str, str]]:
    """Pairs the exporter's validation set does not contain: STSb test pairs, query-passage pairs, odd text."""
    rng = random.Random(seed)
    test = load_stsb("test")
    sentences = [r.sentence1 for r in test] + [r.sentence2 for r in test]
    pairs = [(r.sentence1, r.sentence2) for r in rng.sample(test, n // 2)]
    for _ in range(n // 2 - 8):
        words: list[str] = []
        while len(words) < rng.randint(30, 160):
            words += rng.choice(sentences).split()
        pairs.append((" ".join(rng.choice(sentences).split()[:5]), " ".join(words)))
    pairs += [
        ("", "only a passage"),
        ("¿Dónde está la biblioteca?", "La biblioteca está en el centro, al lado del ayuntamiento."),
        ("naïve café", "NAÏVE CAFÉ"),
        ("日本語のテキスト", "中文文本和한국어"),
        ("tab\tand\nnewline", "  leading and trailing  "),
        ("x " * 400, "y " * 400),
        ("🙂", "🙃🙂"),
        ("Straße", "STRASSE"),
    ]
    return pairs


def write_rows(path: Path, fmt: str, rows: list[dict], row_group_size: int = 50) -> Path:
    """``rows`` as a score-file input: Parquet (row groups of ``row_group_size``), JSON lines or CSV."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path
