"""Agreement measures between two score vectors (numpy only, so `crossonnx verify` runs without torch)."""

from __future__ import annotations

from typing import Any

import numpy as np


def rankdata(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) with ties sharing their mean rank, like scipy.stats.rankdata."""
    values = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; 1.0 when both vectors are constant and equal, nan when one is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} vs {len(b)}")
    if len(a) < 2:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    if denom == 0:
        return 1.0 if np.array_equal(a, b) else float("nan")
    return float((ra * rb).sum() / denom)


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of the top-k items of ``a`` that are also in the top-k of ``b``."""
    k = min(k, len(a))
    if k == 0:
        return 1.0
    top_a = set(np.argsort(-np.asarray(a), kind="stable")[:k].tolist())
    top_b = set(np.argsort(-np.asarray(b), kind="stable")[:k].tolist())
    return len(top_a & top_b) / k


def logit_agreement(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How a quantized model's logits (n, labels) follow the fp32 graph's: worst Spearman over labels, and the mean
    absolute error relative to the spread of the fp32 logits (what the int8 searches target)."""
    scale = float(reference.std()) or 1.0
    rhos = [spearman(candidate[:, j], reference[:, j]) for j in range(reference.shape[1])]
    return {"spearman": min(rhos), "rel_error": float(np.abs(candidate - reference).mean() / scale)}


def compare(candidate: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Max/mean absolute difference, Spearman and finiteness of ``candidate`` against ``reference``."""
    cand = np.asarray(candidate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if cand.shape != ref.shape:
        raise ValueError(f"shape mismatch: {cand.shape} vs {ref.shape}")
    finite = bool(np.isfinite(cand).all())
    diff = np.abs(cand - ref)
    flat_c = cand.reshape(len(cand), -1)
    flat_r = ref.reshape(len(ref), -1)
    spear = min(spearman(flat_c[:, j], flat_r[:, j]) for j in range(flat_c.shape[1])) if len(cand) else 1.0
    return {
        "n": len(cand),
        "finite": finite,
        "max_abs_diff": float(diff.max()) if diff.size and finite else (0.0 if finite else float("inf")),
        "mean_abs_diff": float(diff.mean()) if diff.size and finite else (0.0 if finite else float("inf")),
        "spearman": spear,
    }
