"""Long documents: score a pair's second text in token windows and aggregate the window scores.

``truncate`` (the default) scores what fits in the model's max length, as sentence-transformers does. ``chunk``
splits the second text (the document) into windows of ``chunk_tokens`` tokens that overlap by ``chunk_overlap``
tokens, scores every window beside the first text (the query) and aggregates per document:

- the default window is what fits beside the query: ``max_length`` minus the pair's special tokens minus the
  query's tokens. A query longer than half of that room keeps half (longest-first truncation cuts it) and the
  windows get the other half. A larger ``chunk_tokens`` is cut to what fits, so the model always sees the whole
  window and its span is exact.
- the default overlap is a quarter of the window (``window // 4``); an overlap is at most ``window - 1``.
- windows start and end on word boundaries (a word: consecutive tokens with the same word id, i.e. "##"
  continuation pieces or the BPE / SentencePiece pieces of one pre-tokenized word), so the overlap is at most
  ``chunk_overlap`` tokens. Only a single word longer than a window (a long URL; CJK text, which byte-level BPE and
  SentencePiece see as one word until the next space) is cut inside, between two tokens that do not share a
  character; a text slice cut there can tokenize a little differently at the cut (SentencePiece adds its
  word-start marker, for which such a window keeps one token free).
- a window's text is a slice of the document by the tokenizer's character offsets, starting right after the
  previous window token (so that a byte-level BPE word keeps its leading space and tokenizes as in the document).
  A document that fits in one window is scored as the original pair: the same ids, the same score as truncate.
- the cap is in document tokens, so small windows read as far as large ones: the windows read at most the first
  ``max_document_tokens`` tokens of a document (cut back to a word boundary). The default is what 10 full-size
  windows hold, 10 x the default window beside that pair's query (Cohere's ``max_chunks_per_doc`` default, its
  chunks being full-size). A longer document raises ``DocumentCappedError`` before anything is scored
  (``on_capped="raise"``, the default: no document is scored in part unasked), or is scored on its first tokens and
  flagged ``capped`` (``on_capped="flag"``).
- aggregation is on the scores after the activation (what ``predict`` returns): ``max`` (the best window,
  BERT-MaxP), ``first`` (the first window) or ``mean`` (of the window scores, in float64, returned as float32).
  For a monotonic activation ``max`` of scores is the activation of ``max`` of logits. The span of a document is
  the highest-scoring window's, whatever the aggregate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, InitVar, asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from crossonnx.errors import DocumentCappedError, InvalidOptionError, MovedArgumentError
from crossonnx.tokenization import TRUNCATION_DIRECTIONS

if TYPE_CHECKING:
    from tokenizers import Encoding

    from crossonnx.tokenization import PairTokenizer

Pair = tuple[str, str]
Span = tuple[int, int]
MODES = ("truncate", "chunk")
AGGREGATES = ("max", "first", "mean")
ON_CAPPED = ("raise", "flag")
DEFAULT_CAP_WINDOWS = 10  # the default cap: this many default windows' tokens (Cohere's max_chunks_per_doc default)
OVERLAP_DIVISOR = 4  # default overlap: a quarter of the window
# fields that only chunk mode takes, and the least value of each
CHUNK_ONLY = {"chunk_tokens": 1, "chunk_overlap": 0, "max_document_tokens": 1}


def _is_int(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@dataclass(frozen=True)
class LongDocuments:
    """How ``predict`` / ``rank`` (and the server, ``score-file``, Ray Data) treat a second text longer than the
    model's window. Every rule on these fields is checked here, once: a bad value raises ``InvalidOptionError``
    whose ``field`` names the field. Only ``mode`` may be given by position.

    Args:
        mode: ``"truncate"`` (default: what fits in the max length, as sentence-transformers) or ``"chunk"``: the
            second text is scored in token windows whose scores are aggregated per pair.
        chunk_tokens: chunk mode: document tokens per window (default: what fits beside the first text).
        chunk_overlap: chunk mode: tokens consecutive windows share (default: a quarter of the window).
        aggregate: chunk mode: a pair's score from its window scores: ``max``, ``first`` or ``mean``.
        max_document_tokens: chunk mode: the most tokens of a second text its windows read, the first ones
            (default: 10 x the default window beside that pair's first text, whatever ``chunk_tokens`` is).
        on_capped: chunk mode, for a second text longer than that: ``"raise"`` (default) ``DocumentCappedError``
            naming the pairs, before anything is scored, or ``"flag"``: score its first tokens, flag it ``capped``.
        truncation_direction: ``"left"`` or ``"right"``: which end truncation cuts (default: the model's side).
    """

    mode: str = "truncate"
    _: KW_ONLY
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None
    aggregate: str = "max"
    max_document_tokens: int | None = None
    on_capped: str = "raise"
    truncation_direction: str | None = None
    max_chunks: InitVar[int | None] = None  # the window count cap of 0.x: refused, naming what replaced it

    def __post_init__(self, max_chunks: int | None) -> None:
        if max_chunks is not None:
            raise MovedArgumentError(f"LongDocuments() no longer takes max_chunks=. {_cap_moved(max_chunks, self)}")
        if self.mode not in MODES:
            raise InvalidOptionError("mode", 'must be "truncate" or "chunk"', self.mode)
        if self.aggregate not in AGGREGATES:
            raise InvalidOptionError("aggregate", f"must be one of {', '.join(AGGREGATES)}", self.aggregate)
        if self.on_capped not in ON_CAPPED:
            raise InvalidOptionError("on_capped", 'must be "raise" or "flag"', self.on_capped)
        for name, minimum in CHUNK_ONLY.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_int(value, minimum):
                kind = "a positive integer" if minimum else "0 or a positive integer"
                raise InvalidOptionError(name, f"must be {kind}", value)
            if self.mode != "chunk":
                raise InvalidOptionError(
                    name, 'applies to mode "chunk"', message=f'{name} applies to mode "chunk"; these options truncate'
                )
        if self.chunk_tokens is not None and self.chunk_overlap is not None and self.chunk_overlap >= self.chunk_tokens:
            raise InvalidOptionError(
                "chunk_overlap", f"({self.chunk_overlap}) must be smaller than chunk_tokens ({self.chunk_tokens})"
            )
        if self.truncation_direction is not None and self.truncation_direction not in TRUNCATION_DIRECTIONS:
            raise InvalidOptionError("truncation_direction", 'must be "left" or "right"', self.truncation_direction)

    @classmethod
    def of(cls, value: str | LongDocuments | None) -> LongDocuments:
        """What a ``long_documents=`` argument stands for: a mode name (``"truncate"``, ``"chunk"``: that mode
        with default options), a ``LongDocuments``, or None (the default, truncate)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        rule = 'must be "truncate", "chunk" or a LongDocuments (from crossonnx import LongDocuments)'
        if isinstance(value, str):
            try:
                return cls(value)
            except InvalidOptionError:
                raise InvalidOptionError("long_documents", rule, value) from None
        raise InvalidOptionError("long_documents", rule, value)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict."""
        return asdict(self)


def _cap_moved(max_chunks: object, given: Any) -> str:
    """What to write instead of ``max_chunks=N`` (``given``: the other arguments, as attributes or a dict)."""
    chunk_tokens = given.get("chunk_tokens") if isinstance(given, dict) else given.chunk_tokens
    if _is_int(max_chunks, 1) and _is_int(chunk_tokens, 1):
        instead = f"max_document_tokens={max_chunks * chunk_tokens} ({max_chunks} windows of {chunk_tokens} tokens)"
    else:
        instead = "max_document_tokens=<tokens>"
    return (
        "The cap is in document tokens now (max_chunks= counted windows, so small windows read less of a document): "
        f"pass {instead}, or leave it out for the default ({DEFAULT_CAP_WINDOWS} full-size windows' tokens)"
    )


# the keyword arguments predict / predict_details / rank took before LongDocuments (crossonnx 0.x)
MOVED_ARGUMENTS = ("chunk_tokens", "chunk_overlap", "aggregate", "max_chunks", "truncation_direction")


def moved_arguments_error(method: str, kwargs: dict[str, Any]) -> MovedArgumentError | None:
    """The error for a call that passes one of ``MOVED_ARGUMENTS`` (None when it passes none): it names the
    ``LongDocuments`` to pass instead, with the values given (``max_chunks``: and the cap that replaced it)."""
    moved = [name for name in MOVED_ARGUMENTS if name in kwargs]
    if not moved:
        return None
    fields: dict[str, Any] = {}
    mode = kwargs.get("long_documents")
    if isinstance(mode, LongDocuments):
        mode = mode.mode
    if isinstance(mode, str):
        fields["mode"] = mode
    elif mode is None and any(name != "truncation_direction" for name in moved):
        fields["mode"] = "chunk"
    fields.update((name, kwargs[name]) for name in moved if name != "max_chunks")
    call = ", ".join(f"{name}={value!r}" for name, value in fields.items())
    names = ", ".join(f"{name}=" for name in moved)
    cap = f". {_cap_moved(kwargs['max_chunks'], kwargs)}" if "max_chunks" in kwargs else ""
    return MovedArgumentError(
        f"{method}() no longer takes {names}: the long-document options are one argument now. Pass "
        f"long_documents=LongDocuments({call}) (from crossonnx import LongDocuments){cap}"
    )


# ----------------------------------------------------------------------------------------------- windowing


def window_tokens(room: int, query_tokens: int, chunk_tokens: int | None = None) -> int:
    """Document tokens per window beside a query of ``query_tokens`` tokens, ``room`` = max length - specials.

    What fits beside the query, or half the room when the query is longer than the other half (longest-first
    truncation then cuts the query, never the window); ``chunk_tokens`` may ask for less, never for more.
    """
    fits = max(room - query_tokens, room // 2, 1)
    return fits if chunk_tokens is None else min(chunk_tokens, fits)


def cap_tokens(room: int, query_tokens: int, max_document_tokens: int | None = None, windows: int | None = None) -> int:
    """The most document tokens chunk mode reads beside a query of ``query_tokens`` tokens: ``max_document_tokens``,
    else ``windows`` (default 10) x the default window, whatever size the windows are."""
    if max_document_tokens is not None:
        return max_document_tokens
    return (DEFAULT_CAP_WINDOWS if windows is None else windows) * window_tokens(room, query_tokens)


def overlap_tokens(window: int, chunk_overlap: int | None = None) -> int:
    """The overlap between consecutive windows: ``chunk_overlap`` (default ``window // 4``), below ``window``."""
    overlap = window // OVERLAP_DIVISOR if chunk_overlap is None else chunk_overlap
    return max(0, min(overlap, window - 1))


def word_starts(word_ids: Sequence[int | None]) -> np.ndarray:
    """Whether each token starts a word (a token without a word id is a word of its own)."""
    ids = np.fromiter((-1 if w is None else w for w in word_ids), dtype=np.int64, count=len(word_ids))
    starts = np.ones(len(ids), dtype=bool)
    starts[1:] = (ids[1:] != ids[:-1]) | (ids[1:] < 0)
    return starts


def token_windows(
    offsets: Sequence[Span], word_ids: Sequence[int | None], window: int, overlap: int, max_tokens: int | None
) -> tuple[list[tuple[int, int]], int]:
    """Token ranges ``[a, b)`` of the windows over the first ``max_tokens`` tokens of one document (None: all), and
    how many tokens they cover: ``max_tokens`` cut back to a word boundary, or the whole document when it fits.

    Each window holds at most ``window`` tokens and ends at a word boundary; the next starts at the first word
    start at most ``overlap`` tokens before the previous end (always after the previous start).
    """
    n = len(offsets)
    starts = word_starts(word_ids)
    if max_tokens is not None and n > max_tokens:
        n = _cut(starts, offsets, 0, max_tokens)
    if n <= window:
        return [(0, n)], n
    windows: list[tuple[int, int]] = []
    a = 0
    while True:
        # a slice that starts inside a word may tokenize with a word-start marker more (SentencePiece's "▁")
        limit = max(a + 1, a + window - (0 if starts[a] else 1))
        b = n if limit >= n else _cut(starts, offsets, a, limit)
        windows.append((a, b))
        if b >= n:
            return windows, b
        nxt = max(b - overlap, a + 1)
        while nxt < b and not starts[nxt]:
            nxt += 1
        a = nxt


def _cut(starts: np.ndarray, offsets: Sequence[Span], a: int, limit: int) -> int:
    """The window end in ``(a, limit]``: the last word start, else (one giant word) the last character boundary,
    else (a window shorter than one character's byte pieces) the first character boundary after ``limit``."""
    for b in range(limit, a, -1):
        if starts[b]:
            return b
    for b in range(limit, a, -1):
        if offsets[b][0] >= offsets[b - 1][1]:
            return b
    for b in range(limit + 1, len(offsets)):
        if offsets[b][0] >= offsets[b - 1][1]:
            return b
    return len(offsets)


def trim_span(text: str, start: int, end: int) -> Span:
    """``(start, end)`` without leading or trailing whitespace (some tokenizers' offsets include a space)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


# ------------------------------------------------------------------------------------------------ planning


@dataclass
class WindowPlan:
    """The window pairs of a list of pairs, in order (each pair's windows consecutive), and where they came from."""

    pairs: list[Pair]  # (query, window text) to score; the original pair where the document fits in one window
    owners: np.ndarray  # (windows,) index of the input pair each window belongs to
    spans: list[Span]  # (windows,) each window's characters in its document
    tokens: list[tuple[int, int]]  # (windows,) each window's tokens [a, b) among its document's own tokens
    chunks: np.ndarray  # (n,) windows scored per input pair
    document_tokens: np.ndarray  # (n,) tokens of each document
    covered: np.ndarray  # (n,) tokens of each document its windows read (all of them unless capped)
    query_truncated: np.ndarray  # (n,) whether longest-first truncation cuts the query of a window pair

    @property
    def capped(self) -> np.ndarray:
        """(n,) whether a document was longer than its cap (its windows read only its first tokens)."""
        return self.covered < self.document_tokens

    def capped_error(self) -> DocumentCappedError | None:
        """The error for the capped documents, None when there are none."""
        indexes = np.flatnonzero(self.capped).tolist()
        if not indexes:
            return None
        return DocumentCappedError(
            indexes, self.covered[indexes].tolist(), self.document_tokens[indexes].tolist(), len(self.chunks)
        )

    def details(self, window_scores: np.ndarray, aggregate: str = "max") -> PairDetails:
        """Per-pair results from the scores of ``pairs`` (one label: shape (windows,)); ``aggregate``: a
        ``LongDocuments.aggregate`` (validated there)."""
        scores = np.asarray(window_scores, dtype=np.float32).reshape(-1)
        if len(scores) != len(self.pairs):
            raise ValueError(f"got {len(scores)} window scores for {len(self.pairs)} windows")
        firsts = np.zeros(len(self.chunks), dtype=np.int64)
        np.cumsum(self.chunks[:-1], out=firsts[1:])
        if not len(scores):
            doc_scores = np.empty(0, dtype=np.float32)
        elif aggregate == "max":
            doc_scores = np.maximum.reduceat(scores, firsts)
        elif aggregate == "first":
            doc_scores = scores[firsts]
        else:  # mean
            doc_scores = (np.add.reduceat(scores.astype(np.float64), firsts) / self.chunks).astype(np.float32)
        per_doc = [scores[first : first + count] for first, count in zip(firsts, self.chunks, strict=True)]
        best = [int(first + np.argmax(window)) for first, window in zip(firsts, per_doc, strict=True)]
        return PairDetails(
            scores=np.asarray(doc_scores, dtype=np.float32),
            spans=[self.spans[i] for i in best],
            chunks=self.chunks.copy(),
            capped=self.capped,
            window_scores=per_doc,
            window_spans=[self.spans[first : first + count] for first, count in zip(firsts, self.chunks, strict=True)],
        )


def plan_windows(
    tokenizer: PairTokenizer,
    pairs: Sequence[Pair],
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
    max_document_tokens: int | None = None,
) -> WindowPlan:
    """Split the second text of each (validated) pair into windows beside its first text, over its first
    ``cap_tokens`` tokens."""
    room = tokenizer.max_length - tokenizer.pair_special_tokens
    queries = list(dict.fromkeys(query for query, _ in pairs))
    query_tokens = dict(zip(queries, tokenizer.text_lengths(queries), strict=True))
    out_pairs: list[Pair] = []
    owners: list[int] = []
    spans: list[Span] = []
    tokens: list[tuple[int, int]] = []
    chunks = np.zeros(len(pairs), dtype=np.int64)
    document_tokens = np.zeros(len(pairs), dtype=np.int64)
    covered = np.zeros(len(pairs), dtype=np.int64)
    truncated = np.zeros(len(pairs), dtype=bool)
    encodings: list[Encoding] = tokenizer.pieces([doc for _, doc in pairs])
    for index, ((query, doc), encoding) in enumerate(zip(pairs, encodings, strict=True)):
        offsets = encoding.offsets
        q = query_tokens[query]
        window = window_tokens(room, q, chunk_tokens)
        ranges, covered[index] = token_windows(
            offsets,
            encoding.word_ids,
            window,
            overlap_tokens(window, chunk_overlap),
            cap_tokens(room, q, max_document_tokens),
        )
        document_tokens[index] = len(offsets)
        chunks[index] = len(ranges)
        if len(ranges) == 1 and ranges[0] == (0, len(offsets)):  # fits: the original pair, ids as in truncate mode
            out_pairs.append((query, doc))
            spans.append(trim_span(doc, offsets[0][0], offsets[-1][1]) if offsets else (0, 0))
            truncated[index] = q + len(offsets) > room
        else:
            for a, b in ranges:
                text_start = 0 if a == 0 else offsets[a - 1][1]
                out_pairs.append((query, doc[text_start : offsets[b - 1][1]]))
                spans.append(trim_span(doc, offsets[a][0], offsets[b - 1][1]))
            truncated[index] = q + window > room
        owners.extend([index] * len(ranges))
        tokens.extend(ranges)
    return WindowPlan(
        pairs=out_pairs,
        owners=np.asarray(owners, dtype=np.int64),
        spans=spans,
        tokens=tokens,
        chunks=chunks,
        document_tokens=document_tokens,
        covered=covered,
        query_truncated=truncated,
    )


# ------------------------------------------------------------------------------------------------- results


@dataclass
class PairDetails:
    """What ``CrossEncoder.predict_details`` returns: per-pair scores and where they came from.

    ``scores`` are what ``predict`` returns for the same arguments. ``spans``: the characters of each pair's
    second text behind its score (chunk: the best window; truncate: what survived truncation). ``chunks``: windows
    scored per pair (1 in truncate mode); ``capped``: second texts longer than the cap, scored on their first
    tokens (only with ``on_capped="flag"``; the default raises instead).
    """

    scores: np.ndarray
    spans: list[Span]
    chunks: np.ndarray
    capped: np.ndarray
    window_scores: list[np.ndarray]
    window_spans: list[list[Span]]
    model_calls: int = 0

    def row(self, index: int) -> dict[str, Any]:
        """The details of pair ``index`` as a JSON-able dict: span, chunks, capped."""
        return {"span": self.spans[index], "chunks": int(self.chunks[index]), "capped": bool(self.capped[index])}
