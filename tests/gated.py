"""A gate around ``CrossEncoder.logits`` that holds the serve worker busy deterministically (serve tests)."""

from __future__ import annotations

import threading

import numpy as np

from crossonnx.encoder import CrossEncoder

Pair = tuple[str, str]
WAIT_S = 30.0


class GatedRunner:
    """``encoder.logits`` behind a gate: each call records its size, signals ``entered`` and waits for ``open``."""

    def __init__(self, encoder: CrossEncoder, fail_on: str | None = None):
        self.encoder = encoder
        self.fail_on = fail_on
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, pairs: list[Pair]) -> np.ndarray:
        self.calls.append(len(pairs))
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        if self.fail_on is not None and any(self.fail_on in a for a, _ in pairs):
            raise ValueError("this batch holds a poisoned pair")
        return self.encoder.logits(pairs)
