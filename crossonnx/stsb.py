"""The STS benchmark (English) shipped with crossonnx: see crossonnx/data/stsb/PROVENANCE.md for its licence."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

DATA_DIR = Path(__file__).with_name("data") / "stsb"
SPLITS = ("train", "dev", "test")


class StsbRow(NamedTuple):
    sentence1: str
    sentence2: str
    score: float  # gold similarity, 0..5


def load_stsb(split: str) -> list[StsbRow]:
    """Rows of one split, in file order."""
    if split not in SPLITS:
        raise ValueError(f"unknown STSb split {split!r}; use one of {SPLITS}")
    with open(DATA_DIR / f"stsb-en-{split}.csv", newline="", encoding="utf-8") as handle:
        return [StsbRow(a, b, float(s)) for a, b, s in csv.reader(handle)]
