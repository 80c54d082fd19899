"""The accuracy benchmark's scorers and agreement beyond ``crossonnx bench --accuracy``: engines of another
environment (sentence-transformers' OpenVINO backend) through the benchmark worker, and agreement with PyTorch fp32
on held-out query-passage pairs.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.bench.accuracy import Pair, Scorer
from crossonnx.bench.throughput import BenchConfig, BenchModel, run_engine
from crossonnx.bench.workloads import query_passage_pairs
from crossonnx.metrics import spearman


def worker_scorer(engine: str, model: BenchModel, config: BenchConfig) -> Scorer:
    """Scores from the benchmark worker (``run_engine``: a fresh process, in the engine's own environment), one
    untimed pass per call."""
    def score(pairs: list[Pair]) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            pairs_file, scores_file = Path(tmp) / "pairs.json", Path(tmp) / "scores.json"
            pairs_file.write_text(json.dumps(pairs), encoding="utf-8")
            result = run_engine(engine, model, pairs_file, config, scores_file)
            if "error" in result:
                raise RuntimeError(f"{engine} could not score: {result['error']}")
            return np.asarray(json.loads(scores_file.read_text(encoding="utf-8")), dtype=np.float64)

    return score


def heldout_agreement(scorers: dict[str, Scorer], sets: int, pairs: int, reference: str = "torch-fp32",
                      first_seed: int = 1, log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Agreement with ``reference`` on ``sets`` fresh sets of query-passage pairs (``query_passage_pairs`` with
    seeds ``first_seed``...; the throughput benchmark's own pairs are seed 0), each engine scoring all of them in
    one call: per set Spearman and max abs difference, and their worst and median over the sets."""
    seeds = list(range(first_seed, first_seed + sets))
    flat = [pair for seed in seeds for pair in query_passage_pairs(pairs, seed)]
    scores: dict[str, np.ndarray] = {}
    for name, score in scorers.items():
        log(f"  scoring {sets} held-out sets of {pairs} query-passage pairs with {name}")
        scores[name] = score(flat).reshape(sets, pairs)
    out: dict[str, dict[str, Any]] = {}
    for name, got in scores.items():
        per_set = [{"seed": seed, "spearman": spearman(a, b), "max_abs": float(np.abs(a - b).max())}
                   for seed, a, b in zip(seeds, got, scores[reference], strict=True)]
        rho = [item["spearman"] for item in per_set]
        out[name] = {"sets": per_set, "min_spearman": min(rho), "median_spearman": float(np.median(rho)),
                     "max_abs": max(item["max_abs"] for item in per_set)}
    return out
