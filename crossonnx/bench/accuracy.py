"""Accuracy per precision on real data: STSb test Spearman, agreement with PyTorch fp32, rank top-10 agreement.

PyTorch engines go through sentence-transformers (what users run); crossonnx engines through the runtime, on any
(provider, precision). Scores for every engine are taken on the same pairs in the same order.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.metrics import spearman, topk_overlap
from crossonnx.stsb import load_stsb

Pair = tuple[str, str]
Scorer = Callable[[list[Pair]], np.ndarray]


def rank_lists(queries: int = 100, candidates: int = 100, seed: int = 0) -> list[list[Pair]]:
    """Each STSb test sentence1 against its own sentence2 and candidates-1 other test sentences."""
    rows = load_stsb("test")
    rng = random.Random(seed)
    pool = sorted({r.sentence2 for r in rows})
    lists = []
    for row in rng.sample(rows, queries):
        others = [s for s in rng.sample(pool, candidates + 5) if s != row.sentence2][: candidates - 1]
        docs = [row.sentence2, *others]
        rng.shuffle(docs)
        lists.append([(row.sentence1, doc) for doc in docs])
    return lists


def torch_scorer(checkpoint: Path, dtype: str, threads: int) -> Scorer:
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(threads)
    kwargs = {"model_kwargs": {"dtype": torch.bfloat16}} if dtype == "bf16" else {}
    model = CrossEncoder(str(checkpoint), device="cpu", local_files_only=True, **kwargs)
    return lambda pairs: np.asarray(model.predict(pairs, batch_size=32, show_progress_bar=False), dtype=np.float64)


def crossonnx_scorer(export_dir: Path, precision: str, threads: int, provider: str = "cpu") -> Scorer:
    from crossonnx import CrossEncoder

    model = CrossEncoder(export_dir, precision=precision, provider=provider, threads=threads)
    return lambda pairs: np.asarray(model.predict(pairs, batch_size=32), dtype=np.float64)


def evaluate(scorers: dict[str, Scorer], reference: str = "torch-fp32", queries: int = 100,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Metrics of every scorer; agreement is measured against ``reference``."""
    rows = load_stsb("test")
    pairs = [(r.sentence1, r.sentence2) for r in rows]
    gold = np.asarray([r.score for r in rows])
    lists = rank_lists(queries)
    flat = [pair for group in lists for pair in group]
    scores: dict[str, np.ndarray] = {}
    ranked: dict[str, np.ndarray] = {}
    for name, score in scorers.items():
        log(f"  scoring STSb test and {len(lists)} rank lists with {name}")
        scores[name] = score(pairs)
        ranked[name] = score(flat).reshape(len(lists), -1)
    ref, ref_ranked = scores[reference], ranked[reference]
    out = []
    for name in scorers:
        diff = np.abs(scores[name] - ref)
        out.append({
            "engine": name,
            "stsb_test_spearman_x100": 100 * spearman(scores[name], gold),
            "max_abs_diff_vs_fp32": float(diff.max()),
            "mean_abs_diff_vs_fp32": float(diff.mean()),
            "spearman_vs_fp32": spearman(scores[name], ref),
            "top10_agreement": float(np.mean([topk_overlap(a, b, 10) for a, b in zip(ranked[name], ref_ranked,
                                                                                    strict=True)])),
            "top1_agreement": float(np.mean([topk_overlap(a, b, 1) for a, b in zip(ranked[name], ref_ranked,
                                                                                  strict=True)])),
        })
    return out
