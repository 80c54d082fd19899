"""CrossEncoder: the torch-free runtime with sentence-transformers' ``predict`` / ``rank`` semantics."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from crossonnx.batching import plan_batches
from crossonnx.engines import default_threads, open_engine, resolve_provider
from crossonnx.engines.onnxruntime import DEFAULT_MAX_BATCH, OPT_BATCH, OPT_LENGTH
from crossonnx.errors import InvalidInputError
from crossonnx.long_documents import DEFAULT_MAX_CHUNKS, LongDocuments, PairDetails, WindowPlan, trim_span
from crossonnx.long_documents import plan_windows as _plan_windows
from crossonnx.manifest import load_manifest
from crossonnx.scoring import ACTIVATION_FNS, ScoreFn, resolve_activation, softmax
from crossonnx.tokenization import PairTokenizer

logger = logging.getLogger("crossonnx")

Pair = tuple[str, str]
CHUNK_PAIRS = 2048  # pairs tokenized and length-sorted together; bounds memory for very large inputs


def _describe(value: object) -> str:
    return "None" if value is None else type(value).__name__


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be tokenized as Unicode (an unpaired surrogate, e.g. from a JSON ``\\ud83d`` escape or
    ``surrogateescape`` decoding), or None when it is valid. ASCII text is answered without a scan."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"is not valid Unicode: it holds an unpaired surrogate ({text[exc.start]!a}) at character "
            f"{exc.start}; send well-formed text (decode bytes with errors='replace', or fix the source)"
        )
    return None


def check_text(text: object, where: str) -> str:
    """``text`` if it is a str of valid Unicode, else InvalidInputError naming ``where``."""
    if not isinstance(text, str):
        raise InvalidInputError(f"{where} is {_describe(text)}, expected str")
    problem = unicode_problem(text)
    if problem is not None:
        raise InvalidInputError(f"{where} {problem}")
    return text


def normalize_pairs(inputs: object) -> tuple[list[Pair], bool]:
    """Validate ``inputs`` as one pair or a sequence of pairs; returns (pairs, was_single_pair).

    Follows sentence-transformers: a list/tuple whose first item is not itself a list/tuple is one pair.
    """
    if isinstance(inputs, np.ndarray):
        if inputs.dtype.kind not in "UO":
            raise InvalidInputError(f"pairs must hold strings, got a numpy array of {inputs.dtype}")
        inputs = inputs.tolist()  # a 0-d array becomes a str: refused below like any single string
    if inputs is None:
        raise InvalidInputError("pairs is None; pass a (text_a, text_b) pair or a list of such pairs")
    if isinstance(inputs, str):
        raise InvalidInputError(
            "got a single string; a cross-encoder scores pairs: pass (text_a, text_b) or a list of such pairs"
        )
    if not isinstance(inputs, (list, tuple)):
        if isinstance(inputs, dict) or not isinstance(inputs, Iterable):
            raise InvalidInputError(f"pairs must be a list of (text_a, text_b) pairs, got {_describe(inputs)}")
        inputs = list(inputs)
    single = len(inputs) > 0 and not isinstance(inputs[0], (list, tuple))
    items = [inputs] if single else inputs
    pairs: list[Pair] = []
    for index, item in enumerate(items):
        where = "the pair" if single else f"pairs[{index}]"
        if not isinstance(item, (list, tuple)):
            raise InvalidInputError(f"{where} is {_describe(item)}, not a (text_a, text_b) pair")
        if len(item) != 2:
            raise InvalidInputError(f"{where} has {len(item)} items; a cross-encoder pair has exactly 2 texts")
        first, second = item
        pairs.append((check_text(first, f"{where}[0]"), check_text(second, f"{where}[1]")))
    return pairs, single


class _Progress:
    """A one-line progress report on stderr (no dependency)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled and total > 0

    def advance(self, count: int) -> None:
        if not self.enabled:
            return
        self.done += count
        sys.stderr.write(f"\rscoring pairs: {self.done}/{self.total}")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


@dataclass
class RunStats:
    """What one ``logits_and_stats`` call did: tokens after truncation, padded tokens fed, model calls."""

    tokens: int = 0
    padded_tokens: int = 0
    model_calls: int = 0


Activation = str | ScoreFn | None


class CrossEncoder:
    """Scores text pairs with an exported crossonnx model folder, without PyTorch.

    ``CrossEncoder(model_dir).predict([(query, passage), ...])`` returns the scores sentence-transformers'
    ``CrossEncoder`` returns for the same checkpoint.

    Args:
        model_dir: a folder written by ``crossonnx export``.
        precision: ``fp32`` (exact), ``fp16``, ``int8`` (ONNX Runtime), ``bf16``, ``int8-static`` or
            ``int8-dynamic`` (OpenVINO);
            each must have been exported and validated into the folder.
        provider: ``auto``, ``cpu`` (ONNX Runtime), ``openvino``, ``cuda`` or ``tensorrt``. ``auto``: TensorRT >
            CUDA > ONNX Runtime CPU, and OpenVINO for its own precisions; ``provider_reason`` says why.
        max_length: truncate pairs to this many tokens (default: the model's own limit).
        threads: CPU threads for the engine (default: every CPU this process may use).
        token_budget: padded tokens per model call; ``"auto"``: the engine's (2048 on ONNX Runtime, 8192 on
            OpenVINO, measured); ``None``: no budget, batches of ``batch_size`` rows.
        max_batch: most rows per model call on a GPU (the TensorRT profile's bound).
        device_id: the GPU, for ``cuda`` and ``tensorrt``.
    """

    def __init__(
        self,
        model_dir: str | Path,
        precision: str = "fp32",
        provider: str = "auto",
        max_length: int | None = None,
        threads: int | None = None,
        token_budget: int | Literal["auto"] | None = "auto",
        max_batch: int = DEFAULT_MAX_BATCH,
        device_id: int = 0,
    ):
        self.model_dir = Path(model_dir)
        self.manifest = load_manifest(self.model_dir)
        self.precision = precision

        usable = int(self.manifest.architecture.get("max_tokens", self.manifest.max_length))
        if max_length is None:
            max_length = self.manifest.max_length
        elif not isinstance(max_length, int) or isinstance(max_length, bool) or not 2 < max_length <= usable:
            raise ValueError(f"max_length must be an int between 3 and {usable} for this model, got {max_length!r}")
        self.max_length = max_length
        if token_budget not in (None, "auto") and (
            not isinstance(token_budget, int) or isinstance(token_budget, bool) or token_budget < 1
        ):
            raise ValueError(f"token_budget must be a positive int, None or 'auto', got {token_budget!r}")
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        self.max_batch = max_batch

        choice = resolve_provider(provider, precision=precision)
        self.provider, self.provider_reason = choice.provider, choice.reason
        if provider == "auto":
            logger.info("crossonnx: provider 'auto' picked %s (%s)", self.provider, self.provider_reason)
        self.threads = threads if threads is not None else default_threads()
        self._engine = open_engine(
            self.model_dir, self.manifest, precision, self.provider,
            threads=self.threads, max_batch=self.max_batch, max_length=self.max_length, device_id=device_id,
        )
        self.token_budget: int | None = self._engine.token_budget if token_budget == "auto" else token_budget
        self._tokenizer = PairTokenizer(
            self.model_dir / self.manifest.tokenizer.file, self.manifest.tokenizer, self.max_length,
            self._engine.input_names,
        )
        self.num_labels = int(self.manifest.num_labels)
        self.activation_fn: ScoreFn = ACTIVATION_FNS[self.manifest.activation]

    def info(self) -> dict[str, Any]:
        """What this encoder runs: model, precision, engine and provider (and why), threads, limits."""
        return {
            "model_dir": str(self.model_dir),
            "source": self.manifest.source,
            "precision": self.precision,
            "provider": self.provider,
            "provider_reason": self.provider_reason,
            **self._engine.info(),
            "threads": self.threads,
            "max_length": self.max_length,
            "max_batch": self.max_batch,
            "token_budget": self.token_budget,
            "num_labels": self.num_labels,
            "activation": self.manifest.activation,
            "inputs": list(self._tokenizer.input_names),
        }

    def warmup(self) -> float:
        """Run the smallest, typical and largest shapes once (on TensorRT this builds or loads the engine).

        Returns the seconds it took. Call it before traffic: the first TensorRT run builds the engine (minutes),
        later processes load it from the cache.
        """
        started = time.perf_counter()
        opt_batch, opt_length = min(OPT_BATCH, self.max_batch), min(OPT_LENGTH, self.max_length)
        for rows, length in ((1, 8), (opt_batch, opt_length), (self.max_batch, self.max_length)):
            feed = {
                name: np.ones((rows, length), dtype=np.int64) if name == "attention_mask"
                else np.zeros((rows, length), dtype=np.int64)
                for name in self._tokenizer.input_names
            }
            self._engine.run(feed)
        return time.perf_counter() - started

    def logits(self, pairs: Sequence[Pair], batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        """Raw model outputs of a list of pairs, shape (n, num_labels) float32, in input order."""
        return self.logits_and_stats(pairs, batch_size, show_progress_bar)[0]

    def logits_and_stats(
        self, pairs: Sequence[Pair], batch_size: int = 32, show_progress_bar: bool = False,
        truncation_direction: str | None = None,
    ) -> tuple[np.ndarray, RunStats]:
        """``logits`` and what computing them took (tokens, padded tokens, model calls).

        ``truncation_direction``: ``"left"`` or ``"right"`` cuts over-long pairs from that end (default: the
        model's own side, normally right).
        """
        return self._logits(normalize_pairs(pairs)[0], batch_size, show_progress_bar, truncation_direction)

    def _logits(
        self, items: list[Pair], batch_size: int, show_progress_bar: bool, truncation_direction: str | None = None
    ) -> tuple[np.ndarray, RunStats]:
        """The model over validated pairs: tokenize per chunk, length-sorted batches under the token budget."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        stats = RunStats()
        out = np.empty((len(items), self.num_labels), dtype=np.float32)
        progress = _Progress(len(items), bool(show_progress_bar))
        rows_cap = batch_size if self.provider in ("cpu", "openvino") else min(batch_size, self.max_batch)
        for start in range(0, len(items), CHUNK_PAIRS):
            encoded = self._tokenizer.encode(items[start : start + CHUNK_PAIRS], truncation_direction)
            for rows in plan_batches(encoded.lengths, rows_cap, self.token_budget):
                feed = self._tokenizer.batch(encoded, rows)
                out[start + rows] = self._engine.run(feed)
                progress.advance(len(rows))
                stats.padded_tokens += feed["attention_mask"].size
                stats.model_calls += 1
            stats.tokens += int(encoded.lengths.sum())
        return out, stats

    def token_counts(self, pairs: Sequence[Pair]) -> list[int]:
        """Tokens each pair has before truncation (special tokens included), e.g. to refuse over-long pairs."""
        return self._tokenizer.untruncated_lengths(normalize_pairs(pairs)[0])

    def plan_windows(
        self, pairs: Sequence[Pair], chunk_tokens: int | None = None, chunk_overlap: int | None = None,
        max_chunks: int = DEFAULT_MAX_CHUNKS,
    ) -> WindowPlan:
        """The windows ``long_documents="chunk"`` scores for ``pairs`` (see ``crossonnx.long_documents``).

        Score ``plan.pairs`` (``logits``, then ``scores_from_logits``) and call ``plan.details(scores, aggregate)``
        for per-pair results; ``predict_details`` does all three.
        """
        options = LongDocuments("chunk", chunk_tokens, chunk_overlap, max_chunks=max_chunks)
        return _plan_windows(self._tokenizer, normalize_pairs(pairs)[0], options.chunk_tokens,
                            options.chunk_overlap, options.max_chunks)

    def truncated_spans(self, pairs: Sequence[Pair], truncation_direction: str | None = None) -> list[tuple[int, int]]:
        """The characters of each pair's second text the model sees in truncate mode, as (start, end)."""
        items = normalize_pairs(pairs)[0]
        spans = self._tokenizer.second_text_spans(items, truncation_direction)
        return [trim_span(doc, start, end) for (_, doc), (start, end) in zip(items, spans, strict=True)]

    def _details(
        self, items: list[Pair], options: LongDocuments, batch_size: int, show_progress_bar: bool,
        activation_fn: Activation, apply_softmax: bool, spans: bool,
    ) -> PairDetails:
        """Scores of validated pairs under ``options``; spans in truncate mode only when ``spans``."""
        direction = options.truncation_direction
        if options.mode == "truncate":
            logits, stats = self._logits(items, batch_size, show_progress_bar, direction)
            scores = self.scores_from_logits(logits, activation_fn, apply_softmax)
            kept = self.truncated_spans(items, direction) if spans and items else []
            return PairDetails(
                scores=scores,
                spans=kept,
                chunks=np.ones(len(items), dtype=np.int64),
                capped=np.zeros(len(items), dtype=bool),
                window_scores=[scores[i : i + 1] for i in range(len(items))],
                window_spans=[[span] for span in kept],
                model_calls=stats.model_calls,
            )
        if self.num_labels != 1:
            raise ValueError(
                f"long_documents='chunk' needs a model with one label (the best window is the highest score), this "
                f"one has {self.num_labels}; use long_documents='truncate'"
            )
        plan = _plan_windows(self._tokenizer, items, options.chunk_tokens, options.chunk_overlap, options.max_chunks)
        logits, stats = self._logits(plan.pairs, batch_size, show_progress_bar, direction)
        details = plan.details(self.scores_from_logits(logits, activation_fn, apply_softmax), options.aggregate)
        details.model_calls = stats.model_calls
        capped = int(details.capped.sum())
        if capped:
            logger.warning(
                "crossonnx: %d of %d documents have more than max_chunks=%d windows; only their first %d were "
                "scored (predict_details and rank say which)", capped, len(items), options.max_chunks,
                options.max_chunks,
            )
        return details

    def predict_details(
        self,
        pairs: Sequence[Pair] | Pair,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Activation = None,
        apply_softmax: bool = False,
        *,
        long_documents: str = "truncate",
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        aggregate: str = "max",
        max_chunks: int = DEFAULT_MAX_CHUNKS,
        truncation_direction: str | None = None,
    ) -> PairDetails:
        """``predict``'s scores (always an array, one row per pair) with where each came from.

        Returns a ``PairDetails``: ``scores``; ``spans`` (the characters of each second text behind the score:
        the best window, or in truncate mode the part that survived truncation); ``chunks`` (windows scored per
        pair); ``capped`` (documents with more than ``max_chunks`` windows); ``window_scores``; ``model_calls``.
        """
        options = LongDocuments(long_documents, chunk_tokens, chunk_overlap, aggregate, max_chunks,
                                truncation_direction)
        items = normalize_pairs(pairs)[0]
        return self._details(items, options, batch_size, bool(show_progress_bar), activation_fn, apply_softmax, True)

    def scores_from_logits(
        self, logits: np.ndarray, activation_fn: Activation = None, apply_softmax: bool = False
    ) -> np.ndarray:
        """Logits (n, num_labels) -> scores as ``predict`` returns them: the activation, then (n,) for one label."""
        activation = self.activation_fn if activation_fn is None else resolve_activation(activation_fn)
        scores = activation(np.asarray(logits, dtype=np.float32))
        if self.num_labels == 1 and scores.ndim > 1:
            scores = scores.squeeze(-1)
        if apply_softmax and scores.ndim > 1:
            scores = softmax(scores, axis=1)
        return np.asarray(scores, dtype=np.float32)

    @overload
    def predict(
        self, pairs: Pair, batch_size: int = ..., show_progress_bar: bool | None = ...,
        activation_fn: Activation = ..., apply_softmax: bool = ..., convert_to_numpy: Literal[True] = ..., *,
        long_documents: str = ..., chunk_tokens: int | None = ..., chunk_overlap: int | None = ...,
        aggregate: str = ..., max_chunks: int = ..., truncation_direction: str | None = ...,
    ) -> np.floating | np.ndarray: ...

    @overload
    def predict(
        self, pairs: Sequence[Pair], batch_size: int = ..., show_progress_bar: bool | None = ...,
        activation_fn: Activation = ..., apply_softmax: bool = ..., convert_to_numpy: Literal[True] = ..., *,
        long_documents: str = ..., chunk_tokens: int | None = ..., chunk_overlap: int | None = ...,
        aggregate: str = ..., max_chunks: int = ..., truncation_direction: str | None = ...,
    ) -> np.ndarray: ...

    @overload
    def predict(
        self, pairs: Sequence[Pair] | Pair, batch_size: int = ..., show_progress_bar: bool | None = ...,
        activation_fn: Activation = ..., apply_softmax: bool = ..., convert_to_numpy: Literal[False] = ..., *,
        long_documents: str = ..., chunk_tokens: int | None = ..., chunk_overlap: int | None = ...,
        aggregate: str = ..., max_chunks: int = ..., truncation_direction: str | None = ...,
    ) -> list[Any]: ...

    def predict(
        self,
        pairs: Sequence[Pair] | Pair,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Activation = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
        *,
        long_documents: str = "truncate",
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        aggregate: str = "max",
        max_chunks: int = DEFAULT_MAX_CHUNKS,
        truncation_direction: str | None = None,
    ) -> np.ndarray | np.floating | list[Any]:
        """Scores of text pairs, as sentence-transformers' ``CrossEncoder.predict`` gives them.

        Args:
            pairs: one ``(text_a, text_b)`` pair, or a list of them.
            batch_size: most pairs per model call (the token budget may cut batches smaller).
            show_progress_bar: a one-line progress report on stderr.
            activation_fn: overrides the model's activation: a name (sigmoid, identity, tanh, softmax), a numpy
                callable or a ``torch.nn`` activation.
            apply_softmax: softmax over the labels of a multi-label model.
            convert_to_numpy: False returns a list of float32 scalars (or rows).
            long_documents: ``"truncate"`` (default: what fits in the max length, as sentence-transformers) or
                ``"chunk"``: the second text is scored in windows of ``chunk_tokens`` tokens (default: what fits
                beside the first text) overlapping by ``chunk_overlap`` (default a quarter of the window), at most
                ``max_chunks`` per pair, and the window scores aggregated by ``aggregate`` (``max``, ``first``,
                ``mean``). ``predict_details`` says which pairs were capped and where the best window is.
            truncation_direction: ``"left"`` or ``"right"``: which end truncation cuts (default: the model's side).

        Returns:
            A float32 scalar for one pair; an array of shape (n,) for one label or (n, num_labels) otherwise.
        """
        options = LongDocuments(long_documents, chunk_tokens, chunk_overlap, aggregate, max_chunks,
                                truncation_direction)
        items, single = normalize_pairs(pairs)
        if options.mode == "truncate" and truncation_direction is None:
            logits = self._logits(items, batch_size, bool(show_progress_bar))[0]
            scores = self.scores_from_logits(logits, activation_fn, apply_softmax)
        else:
            scores = self._details(
                items, options, batch_size, bool(show_progress_bar), activation_fn, apply_softmax, False
            ).scores
        if not convert_to_numpy:
            return list(scores)
        return scores[0] if single else scores

    def check_rankable(self) -> None:
        """rank() needs a model with one label; raises ValueError naming predict() otherwise."""
        if self.num_labels != 1:
            raise ValueError(
                f"rank() needs a model with one label, this one has {self.num_labels}; use predict() with pairs"
            )

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Activation = None,
        *,
        long_documents: str = "truncate",
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        aggregate: str = "max",
        max_chunks: int = DEFAULT_MAX_CHUNKS,
        truncation_direction: str | None = None,
        return_spans: bool = False,
    ) -> list[dict[str, Any]]:
        """Documents sorted by score for ``query``, as sentence-transformers' ``CrossEncoder.rank``.

        Args:
            query: the query text.
            documents: the texts to rank.
            top_k: keep only the best ``top_k`` (default: all).
            return_documents: add each document's ``text``.
            batch_size, show_progress_bar, activation_fn: as in ``predict``.
            long_documents, chunk_tokens, chunk_overlap, aggregate, max_chunks, truncation_direction: as in
                ``predict``; in chunk mode each result also has ``chunks`` (windows scored) and ``capped``.
            return_spans: add ``span``: ``(start, end)``, the characters of the document behind its score (the
                best window; in truncate mode the part that survived truncation).

        Returns:
            ``[{"corpus_id": i, "score": s, "text"?: doc, "span"?: (start, end), "chunks"?, "capped"?}, ...]``,
            highest score first.
        """
        self.check_rankable()
        check_text(query, "query")
        if isinstance(documents, (str, dict)) or not isinstance(documents, Iterable):
            raise InvalidInputError(f"documents must be a list of str, got {_describe(documents)}")
        documents = list(documents)
        for index, doc in enumerate(documents):
            check_text(doc, f"documents[{index}]")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"top_k must be a non-negative int or None, got {top_k!r}")
        options = LongDocuments(long_documents, chunk_tokens, chunk_overlap, aggregate, max_chunks,
                                truncation_direction)
        if not documents:
            return []
        details = self._details(
            [(query, doc) for doc in documents], options, batch_size, bool(show_progress_bar), activation_fn,
            False, bool(return_spans),
        )
        results: list[dict[str, Any]] = []
        for index, score in enumerate(details.scores.tolist()):
            item: dict[str, Any] = {"corpus_id": index, "score": score}
            if return_documents:
                item["text"] = documents[index]
            if return_spans:
                item["span"] = details.spans[index]
            if options.mode == "chunk":
                item["chunks"] = int(details.chunks[index])
                item["capped"] = bool(details.capped[index])
            results.append(item)
        results.sort(key=lambda item: item["score"], reverse=True)
        return results[:top_k]
