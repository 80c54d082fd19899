"""The one scoring path, plan -> score -> aggregate, and what the server needs of an encoder (internal).

``CrossEncoder.predict`` / ``predict_details`` / ``rank`` (and through them ``score-file`` and Ray Data) call
``run``; the server calls the same three steps itself, because it scores through its batcher on another thread:

1. ``plan(encoder, pairs, options)``: the pairs the model scores under a ``LongDocuments``, the pairs themselves
   (truncate) or their windows (chunk), and in truncate mode the spans that survive truncation when asked. In chunk
   mode a document longer than the cap raises ``DocumentCappedError`` here, before anything is scored, unless
   ``options.on_capped`` is ``"flag"``;
2. the model over ``plan.pairs`` (``encoder._logits``, or the server's batcher) and ``scores_from_logits``;
3. ``plan.finish(scores)``: per-pair ``PairDetails``, the window scores aggregated by ``options.aggregate``.

Everything here takes the encoder as its first argument; nothing else outside ``crossonnx.encoder`` touches the
encoder's private parts. ``crossonnx.encoder`` imports this module, so this one names what it uses of an encoder
as a Protocol (``Encoder``) instead of importing it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from crossonnx._inputs import normalize_pairs
from crossonnx.errors import InvalidOptionError
from crossonnx.long_documents import (
    LongDocuments,
    PairDetails,
    WindowPlan,
    cap_tokens,
    plan_windows,
    trim_span,
)
from crossonnx.scoring import Activation
from crossonnx.tokenization import PairTokenizer

logger = logging.getLogger("crossonnx")

Pair = tuple[str, str]
Span = tuple[int, int]


@dataclass
class RunStats:
    """What one model pass over a list of pairs did: tokens after truncation, padded tokens fed, model calls."""

    tokens: int = 0
    padded_tokens: int = 0
    model_calls: int = 0


class Encoder(Protocol):
    """What this module uses of a ``crossonnx.CrossEncoder``."""

    num_labels: int
    _tokenizer: PairTokenizer

    def _logits(
        self, items: list[Pair], batch_size: int, show_progress_bar: bool, truncation_direction: str | None = None
    ) -> tuple[np.ndarray, RunStats]: ...

    def scores_from_logits(
        self, logits: np.ndarray, activation_fn: Activation = None, apply_softmax: bool = False
    ) -> np.ndarray: ...


@dataclass
class ScoringPlan:
    """What the model scores for ``count`` validated pairs under ``options``, and how their results come back."""

    options: LongDocuments
    count: int  # input pairs
    pairs: list[Pair]  # what the model scores: the input pairs (truncate) or their windows (chunk)
    windows: WindowPlan | None  # chunk mode
    spans: list[Span]  # truncate mode, when asked: the characters of each second text that survive truncation

    @property
    def query_truncated(self) -> np.ndarray:
        """(count,) whether truncation cuts the first text of a window pair (never in truncate mode)."""
        return self.windows.query_truncated if self.windows is not None else np.zeros(self.count, dtype=bool)

    def finish(self, scores: np.ndarray, model_calls: int = 0) -> PairDetails:
        """Per-pair results from the scores of ``pairs`` (as ``scores_from_logits`` returns them)."""
        if self.windows is not None:
            details = self.windows.details(scores, self.options.aggregate)
            details.model_calls = model_calls
            return details
        return PairDetails(
            scores=scores,
            spans=self.spans,
            chunks=np.ones(self.count, dtype=np.int64),
            capped=np.zeros(self.count, dtype=bool),
            window_scores=list(scores[:, None]),  # one window per pair: its own score, shape (1,) or (1, labels)
            window_spans=[[span] for span in self.spans],
            model_calls=model_calls,
        )


def check_rankable(encoder: Encoder) -> None:
    """Ranking needs a model with one label; raises ValueError naming predict() otherwise."""
    if encoder.num_labels != 1:
        raise ValueError(
            f"rank() needs a model with one label, this one has {encoder.num_labels}; use predict() with pairs"
        )


def plan(encoder: Encoder, items: list[Pair], options: LongDocuments, spans: bool = False) -> ScoringPlan:
    """Step 1 for validated pairs: chunk mode cuts windows (``DocumentCappedError`` for documents longer than the
    cap, unless ``options.on_capped == "flag"``), truncate mode scores the pairs as they are (and finds the spans
    that survive truncation when ``spans``)."""
    if options.mode == "truncate":
        kept = truncated_spans(encoder, items, options.truncation_direction) if spans and items else []
        return ScoringPlan(options, len(items), items, None, kept)
    if encoder.num_labels != 1:
        raise InvalidOptionError(
            "mode",
            "",
            "chunk",
            message=f"long_documents='chunk' needs a model with one label (the best window is the highest score), "
            f"this one has {encoder.num_labels}; use long_documents='truncate'",
        )
    windows = plan_windows(
        encoder._tokenizer, items, options.chunk_tokens, options.chunk_overlap, options.max_document_tokens
    )
    error = windows.capped_error() if options.on_capped == "raise" else None
    if error is not None:
        raise error
    return ScoringPlan(options, len(items), windows.pairs, windows, [])


def scores_from_logits(
    encoder: Encoder, logits: np.ndarray, activation_fn: Activation = None, apply_softmax: bool = False
) -> np.ndarray:
    """Step 2's second half: logits (n, num_labels) -> scores as ``predict`` returns them."""
    return encoder.scores_from_logits(logits, activation_fn, apply_softmax)


def run(
    encoder: Encoder,
    items: list[Pair],
    options: LongDocuments,
    *,
    batch_size: int = 32,
    show_progress_bar: bool = False,
    activation_fn: Activation = None,
    apply_softmax: bool = False,
    spans: bool = False,
    warn_capped: bool = True,
) -> PairDetails:
    """The three steps on this thread for validated pairs; logs the documents the cap cut short (flagged) unless
    ``warn_capped`` is False (a caller that scores a job in chunks and reports the total once: score-file, Ray)."""
    scoring = plan(encoder, items, options, spans)
    logits, stats = encoder._logits(scoring.pairs, batch_size, show_progress_bar, options.truncation_direction)
    details = scoring.finish(scores_from_logits(encoder, logits, activation_fn, apply_softmax), stats.model_calls)
    windows = scoring.windows
    if warn_capped and windows is not None and windows.capped.any():
        capped = np.flatnonzero(windows.capped)
        logger.warning(
            "crossonnx: %d of %d documents are longer than max_document_tokens; only their first tokens were scored "
            "(on_capped='flag'; pair %d: %d of %d tokens; predict_details and rank say which)",
            len(capped),
            len(items),
            capped[0],
            windows.covered[capped[0]],
            windows.document_tokens[capped[0]],
        )
    return details


# -- what the server needs beyond the three steps ---------------------------------------------------------------
def logits_and_stats(
    encoder: Encoder, pairs: Sequence[Pair], batch_size: int = 32, truncation_direction: str | None = None
) -> tuple[np.ndarray, RunStats]:
    """``encoder.logits`` of (unvalidated) pairs truncated from ``truncation_direction`` (None: the model's side),
    and what computing them took."""
    return encoder._logits(normalize_pairs(pairs)[0], batch_size, False, truncation_direction)


def cap_of_windows(encoder: Encoder, query: str, windows: int) -> int:
    """The document tokens ``windows`` default-size windows hold beside ``query``: the ``max_document_tokens`` that
    stands for Cohere's ``max_chunks_per_doc`` (whose chunks are full-size)."""
    tokenizer = encoder._tokenizer
    query_tokens = tokenizer.text_lengths([query])[0]
    return cap_tokens(tokenizer.max_length - tokenizer.pair_special_tokens, query_tokens, windows=windows)


def token_counts(encoder: Encoder, pairs: Sequence[Pair]) -> list[int]:
    """Tokens each pair has before truncation (special tokens included), e.g. to refuse over-long pairs."""
    return encoder._tokenizer.untruncated_lengths(normalize_pairs(pairs)[0])


def truncated_spans(encoder: Encoder, pairs: Sequence[Pair], truncation_direction: str | None = None) -> list[Span]:
    """The characters of each pair's second text the model sees in truncate mode, as (start, end)."""
    items = normalize_pairs(pairs)[0]
    kept = encoder._tokenizer.second_text_spans(items, truncation_direction)
    return [trim_span(doc, start, end) for (_, doc), (start, end) in zip(items, kept, strict=True)]
