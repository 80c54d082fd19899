"""CrossEncoder: the torch-free runtime with sentence-transformers' ``predict`` / ``rank`` semantics."""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar, overload

import numpy as np

from crossonnx import _pipeline, first_use
from crossonnx._inputs import check_documents, check_text, normalize_pairs, unicode_problem
from crossonnx._pipeline import RunStats
from crossonnx.batching import plan_batches
from crossonnx.engines import default_threads, open_engine, resolve_provider
from crossonnx.engines.onnxruntime import DEFAULT_MAX_BATCH, OPT_BATCH, OPT_LENGTH
from crossonnx.errors import ProviderUnavailableError
from crossonnx.levels import LEVELS, LevelChoice, Machine, resolve_level
from crossonnx.long_documents import LongDocuments, PairDetails, moved_arguments_error
from crossonnx.manifest import load_manifest
from crossonnx.precisions import DEFAULT_PRECISION
from crossonnx.scoring import ACTIVATION_FNS, Activation, ScoreFn, resolve_activation, softmax
from crossonnx.tokenization import PairTokenizer
from crossonnx.tune import DEFAULT_WORKLOAD, SPEED_UNITS, TuneResult, check_workload, load_tuned

logger = logging.getLogger("crossonnx")

Pair = tuple[str, str]
CHUNK_PAIRS = 2048  # pairs tokenized and length-sorted together; bounds memory for very large inputs
__all__ = ["CrossEncoder", "check_text", "normalize_pairs", "unicode_problem"]  # the last three: crossonnx._inputs

P = ParamSpec("P")
R = TypeVar("R")


def _moved_arguments(method: Callable[P, R]) -> Callable[P, R]:
    """Refuse the long-document keyword arguments that moved into ``LongDocuments`` with the call to write."""

    @functools.wraps(method)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        error = moved_arguments_error(method.__name__, kwargs)
        if error is not None:
            raise error
        return method(*args, **kwargs)

    return checked


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


@functools.cache
def _machine() -> Machine:
    """What this machine runs (probed once per process: the probe starts an OpenVINO core)."""
    return Machine.probe()


class CrossEncoder:
    """Scores text pairs with an exported crossonnx model folder, without PyTorch.

    ``CrossEncoder(model_dir).predict([(query, passage), ...])`` returns the scores sentence-transformers'
    ``CrossEncoder`` returns for the same checkpoint.

    Args:
        model_dir: a folder written by ``crossonnx export``.
        precision: a quality level, ``exact`` (within 1e-5 of PyTorch fp32), ``faithful`` (Spearman >= 0.9999,
            max abs <= 0.01) or ``fast`` (Spearman >= 0.999), which picks the variant that meets it here from what
            the folder holds and what the export measured (``info()["level"]`` says which and why); or a concrete
            precision: ``fp32``, ``fp16``, ``int8`` (ONNX Runtime), ``bf16``, ``int8-static`` or ``int8-dynamic``
            (OpenVINO), which must have been exported and validated into the folder. A precision the export wrote
            pending validation (bf16 exported on a CPU without bf16) is validated on its first load on a machine
            that runs it, against the folder's stored PyTorch scores and its export gate; the verdict is kept in
            the crossonnx cache, a failed one refuses to load (crossonnx/first_use.py, ``info()["validated_here"]``).
        provider: ``auto``, ``cpu`` (ONNX Runtime), ``openvino``, ``cuda`` or ``tensorrt``. ``auto``: TensorRT >
            CUDA > ONNX Runtime CPU, and OpenVINO for its own precisions; ``provider_reason`` says why.
        max_length: truncate pairs to this many tokens (default: the model's own limit).
        threads: CPU threads for the engine (default: every CPU this process may use).
        token_budget: padded tokens per model call; ``"auto"``: the engine's (2048 on ONNX Runtime, 8192 on
            OpenVINO, measured); ``None``: no budget, batches of ``batch_size`` rows.
        max_batch: most rows per model call on a GPU (the TensorRT profile's bound).
        device_id: the GPU, for ``cuda`` and ``tensorrt``.
        workload: where ``crossonnx tune`` measured this folder on this machine (same CPU, threads and library
            versions), the measurement a level, ``provider="auto"`` and ``token_budget="auto"`` follow:
            ``"throughput"`` (default: pairs/s) or ``"latency"`` (p50 of one-pair calls); ``None`` ignores it.
            Without one, the static rules decide (``info()["tuned"]`` is None).
    """

    def __init__(
        self,
        model_dir: str | Path,
        precision: str = DEFAULT_PRECISION,
        provider: str = "auto",
        max_length: int | None = None,
        threads: int | None = None,
        token_budget: int | Literal["auto"] | None = "auto",
        max_batch: int = DEFAULT_MAX_BATCH,
        device_id: int = 0,
        workload: Literal["throughput", "latency"] | None = DEFAULT_WORKLOAD,
    ):
        self.model_dir = Path(model_dir)
        self.manifest = load_manifest(self.model_dir)
        self.threads = threads if threads is not None else default_threads()
        self.workload = None if workload is None else check_workload(workload)
        self.tuned: TuneResult | None = None if workload is None else load_tuned(self.manifest, self.threads)
        tuned_for = self.workload or DEFAULT_WORKLOAD
        if self.tuned is not None:
            logger.info("crossonnx: tuned for %s on this machine (%s)", tuned_for, self.tuned.path)
        self.level: LevelChoice | None = None
        if precision in LEVELS:
            speeds = self.tuned.speeds(tuned_for) if self.tuned is not None else None
            self.level = resolve_level(self.manifest, precision, provider, _machine(), speeds=speeds,
                                       speed_unit=SPEED_UNITS[tuned_for],
                                       check_pending=first_use.checker(self.model_dir, self.threads))
            precision, provider = self.level.precision, self.level.provider
            logger.info("crossonnx: %s", self.level.reason)
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

        tuned = None
        if provider == "auto" and self.tuned is not None:
            tuned = self.tuned.provider_for(precision, tuned_for, _machine())
        if tuned is not None:
            self.provider, self.provider_reason = tuned
        else:
            choice = resolve_provider(provider, precision=precision)
            self.provider, self.provider_reason = choice.provider, choice.reason
        if provider == "auto":
            logger.info("crossonnx: provider 'auto' picked %s (%s)", self.provider, self.provider_reason)
        entry = self.manifest.precisions.get(precision)
        pending = entry.pending if entry is not None else None
        cannot = _machine().runs(self.provider, precision) if pending is not None else None
        if pending is not None and cannot is not None:
            raise ProviderUnavailableError(
                f"precision {precision!r} cannot run here ({cannot}), and {first_use.awaiting(precision, pending)}. "
                f"{first_use.instead(self.manifest, precision)}"
            )
        self._engine = open_engine(
            self.model_dir, self.manifest, precision, self.provider,
            threads=self.threads, max_batch=self.max_batch, max_length=self.max_length, device_id=device_id,
        )
        measured = self.tuned.variant(self.provider, self.precision) if self.tuned is not None else None
        if token_budget == "auto":
            token_budget = measured.token_budget if measured is not None else self._engine.token_budget
        self.token_budget: int | None = token_budget
        self._tokenizer = PairTokenizer(
            self.model_dir / self.manifest.tokenizer.file, self.manifest.tokenizer, self.max_length,
            self._engine.input_names,
        )
        self.num_labels = int(self.manifest.num_labels)
        self.activation_fn: ScoreFn = ACTIVATION_FNS[self.manifest.activation]
        # the first-use verdict of a precision the export left pending validation (None: validated at export)
        self.validated_here: first_use.Verdict | None = None
        if pending is not None:
            self.validated_here = self._validate_first_use()

    def _validate_first_use(self) -> first_use.Verdict:
        """Validate a precision the export left pending with this engine, at the folder's own max length as the
        export would have, unless a verdict is stored; refuse it if it missed its gate."""
        own = self._tokenizer
        if self.max_length != self.manifest.max_length:
            self._tokenizer = PairTokenizer(
                self.model_dir / self.manifest.tokenizer.file, self.manifest.tokenizer, self.manifest.max_length,
                self._engine.input_names,
            )
        try:
            verdict = first_use.ensure_validated(self, self.model_dir, self.manifest, self.precision, self.provider)
        finally:
            self._tokenizer = own
        if not verdict.passed:
            raise first_use.refusal(verdict, self.manifest)
        logger.info("crossonnx: %s on %s validated on this machine at first use: %s (%s)", self.precision,
                    self.provider, verdict.parity.summary(), verdict.path)
        return verdict

    def info(self) -> dict[str, Any]:
        """What this encoder runs: model, precision, engine and provider (and why), threads, limits."""
        return {
            "model_dir": str(self.model_dir),
            "source": self.manifest.source,
            "precision": self.precision,
            "level": self.level.to_dict() if self.level is not None else None,
            "validated_here": self.validated_here.describe() if self.validated_here is not None else None,
            "tuned": None if self.tuned is None else {
                "workload": self.workload, "file": str(self.tuned.path), "measured": self.tuned.measured},
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
        return self._logits(normalize_pairs(pairs)[0], batch_size, show_progress_bar)[0]

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
                feed = self._tokenizer.batch(encoded, rows, self._engine.width_multiple)
                out[start + rows] = self._engine.run(feed)
                progress.advance(len(rows))
                stats.padded_tokens += feed["attention_mask"].size
                stats.model_calls += 1
            stats.tokens += int(encoded.lengths.sum())
        return out, stats

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

    @_moved_arguments
    def predict_details(
        self,
        pairs: Sequence[Pair] | Pair,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Activation = None,
        apply_softmax: bool = False,
        *,
        long_documents: str | LongDocuments = "truncate",
    ) -> PairDetails:
        """``predict``'s scores (always an array, one row per pair) with where each came from.

        Returns a ``PairDetails``: ``scores``; ``spans`` (the characters of each second text behind the score:
        the best window, or in truncate mode the part that survived truncation); ``chunks`` (windows scored per
        pair); ``capped`` (second texts longer than the cap, with ``on_capped="flag"``); ``window_scores``;
        ``model_calls``.
        """
        options = LongDocuments.of(long_documents)
        items = normalize_pairs(pairs)[0]
        return _pipeline.run(self, items, options, batch_size=batch_size, show_progress_bar=bool(show_progress_bar),
                             activation_fn=activation_fn, apply_softmax=apply_softmax, spans=True)

    @overload
    def predict(
        self, pairs: Pair, batch_size: int = ..., show_progress_bar: bool | None = ...,
        activation_fn: Activation = ..., apply_softmax: bool = ..., convert_to_numpy: Literal[True] = ..., *,
        long_documents: str | LongDocuments = ...,
    ) -> np.floating | np.ndarray: ...

    @overload
    def predict(
        self, pairs: Sequence[Pair], batch_size: int = ..., show_progress_bar: bool | None = ...,
        activation_fn: Activation = ..., apply_softmax: bool = ..., convert_to_numpy: Literal[True] = ..., *,
        long_documents: str | LongDocuments = ...,
    ) -> np.ndarray: ...

    @overload
    def predict(
        self, pairs: Sequence[Pair] | Pair, batch_size: int = ..., show_progress_bar: bool | None = ...,
        activation_fn: Activation = ..., apply_softmax: bool = ..., convert_to_numpy: Literal[False] = ..., *,
        long_documents: str | LongDocuments = ...,
    ) -> list[Any]: ...

    @_moved_arguments
    def predict(
        self,
        pairs: Sequence[Pair] | Pair,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Activation = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
        *,
        long_documents: str | LongDocuments = "truncate",
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
            long_documents: ``"truncate"`` (default: what fits in the max length, as sentence-transformers),
                ``"chunk"`` (the second text is scored in windows of what fits beside the first text, overlapping
                by a quarter, the best window's score kept; a second text longer than 10 windows' tokens raises
                ``DocumentCappedError``) or a ``LongDocuments`` with the window size, overlap, aggregate, cap (and
                what a longer text does) and truncation direction. ``predict_details`` says where the best window is.

        Returns:
            A float32 scalar for one pair; an array of shape (n,) for one label or (n, num_labels) otherwise.
        """
        options = LongDocuments.of(long_documents)
        items, single = normalize_pairs(pairs)
        scores = _pipeline.run(self, items, options, batch_size=batch_size, show_progress_bar=bool(show_progress_bar),
                               activation_fn=activation_fn, apply_softmax=apply_softmax).scores
        if not convert_to_numpy:
            return list(scores)
        return scores[0] if single else scores

    @_moved_arguments
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
        long_documents: str | LongDocuments = "truncate",
        return_spans: bool = False,
    ) -> list[dict[str, Any]]:
        """Documents sorted by score for ``query``, as sentence-transformers' ``CrossEncoder.rank``.

        Args:
            query: the query text.
            documents: the texts to rank.
            top_k: keep only the best ``top_k`` (default: all).
            return_documents: add each document's ``text``.
            batch_size, show_progress_bar, activation_fn, long_documents: as in ``predict``; in chunk mode each
                result also has ``chunks`` (windows scored) and ``capped``.
            return_spans: add ``span``: ``(start, end)``, the characters of the document behind its score (the
                best window; in truncate mode the part that survived truncation).

        Returns:
            ``[{"corpus_id": i, "score": s, "text"?: doc, "span"?: (start, end), "chunks"?, "capped"?}, ...]``,
            highest score first.
        """
        _pipeline.check_rankable(self)
        query, documents = check_documents(query, documents)
        if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"top_k must be a non-negative int or None, got {top_k!r}")
        options = LongDocuments.of(long_documents)
        if not documents:
            return []
        details = _pipeline.run(
            self, [(query, doc) for doc in documents], options, batch_size=batch_size,
            show_progress_bar=bool(show_progress_bar), activation_fn=activation_fn, spans=bool(return_spans),
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
