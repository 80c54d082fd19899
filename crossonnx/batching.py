"""Length-aware batching: sort pairs by exact token length and cut batches by rows and by a token budget."""

from __future__ import annotations

import numpy as np


def plan_batches(lengths: np.ndarray, max_rows: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Index arrays of batches, longest pairs first.

    Each batch holds at most ``max_rows`` pairs and, when ``max_tokens`` is set, at most ``max_tokens``
    padded tokens (rows x its longest pair); a single pair longer than the budget still gets its own batch.
    """
    if max_rows < 1:
        raise ValueError(f"batch_size must be a positive integer, got {max_rows}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"token_budget must be a positive integer, got {max_tokens}")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start, n = 0, len(order)
    while start < n:
        rows = max_rows
        if max_tokens is not None:
            rows = max(1, min(max_rows, max_tokens // int(lengths[order[start]])))
        batches.append(order[start : start + rows])
        start += rows
    return batches
