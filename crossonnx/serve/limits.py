"""The server's limits: batch and queue sizes, request sizes, drain time."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts and how it batches.

    ``max_queue_pairs`` bounds memory: pairs waiting for the model beyond it are refused with 429, and a request
    with more pairs than that can never be served (413). ``max_batch_pairs`` caps the pairs merged into one
    ``CrossEncoder.logits`` call (which cuts its model batches by the token budget).
    """

    max_batch_pairs: int = 256
    max_queue_pairs: int = 4096
    max_texts_per_request: int = 1000
    max_text_chars: int = 20_000
    max_body_bytes: int = 64 << 20
    drain_timeout: float = 30.0  # seconds a graceful shutdown waits for requests in flight

    def __post_init__(self) -> None:
        for name in ("max_batch_pairs", "max_queue_pairs", "max_texts_per_request", "max_text_chars",
                     "max_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.drain_timeout, (int, float)) or self.drain_timeout < 0:
            raise ValueError(f"drain_timeout must be a non-negative number of seconds, got {self.drain_timeout!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
