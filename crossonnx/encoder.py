"""CrossEncoder: the torch-free runtime with sentence-transformers' ``predict`` / ``rank`` semantics."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.batching import plan_batches
from crossonnx.errors import InvalidInputError
from crossonnx.manifest import check_file, load_manifest
from crossonnx.scoring import ACTIVATION_FNS, resolve_activation, softmax
from crossonnx.session import create_session, default_threads, resolve_provider
from crossonnx.tokenization import PairTokenizer

logger = logging.getLogger("crossonnx")

Pair = tuple[str, str]
CHUNK_PAIRS = 2048  # pairs tokenized and length-sorted together; bounds memory for very large inputs
# Padded tokens per model call. On CPU, batches beyond a few thousand tokens are no faster (measured: 1024-2048
# tokens match or beat unbounded batches of 32 query-passage pairs) but activation memory grows with them.
DEFAULT_TOKEN_BUDGET = 2048


def _describe(value: object) -> str:
    return "None" if value is None else type(value).__name__


def normalize_pairs(inputs: object) -> tuple[list[Pair], bool]:
    """Validate ``inputs`` as one pair or a sequence of pairs; returns (pairs, was_single_pair).

    Follows sentence-transformers: a list/tuple whose first item is not itself a list/tuple is one pair.
    """
    if inputs is None:
        raise InvalidInputError("pairs is None; pass a (text_a, text_b) pair or a list of such pairs")
    if isinstance(inputs, str):
        raise InvalidInputError(
            "got a single string; a cross-encoder scores pairs: pass (text_a, text_b) or a list of such pairs"
        )
    if isinstance(inputs, np.ndarray):
        if inputs.dtype.kind not in "UO":
            raise InvalidInputError(f"pairs must hold strings, got a numpy array of {inputs.dtype}")
        inputs = inputs.tolist()
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
        for position, text in ((0, first), (1, second)):
            if not isinstance(text, str):
                raise InvalidInputError(f"{where}[{position}] is {_describe(text)}, expected str")
        pairs.append((first, second))
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


class CrossEncoder:
    """Scores text pairs with an exported crossonnx model folder, without PyTorch.

    ``CrossEncoder(model_dir).predict([(query, passage), ...])`` returns the scores sentence-transformers'
    ``CrossEncoder`` returns for the same checkpoint.
    """

    def __init__(
        self,
        model_dir: str | Path,
        precision: str = "fp32",
        provider: str = "auto",
        max_length: int | None = None,
        threads: int | None = None,
        token_budget: int | None = DEFAULT_TOKEN_BUDGET,
    ):
        self.model_dir = Path(model_dir)
        self.manifest = load_manifest(self.model_dir)
        self.precision = precision
        entry = self.manifest.entry(precision)
        model_path = check_file(self.model_dir, entry)

        usable = int(self.manifest.architecture.get("max_tokens", self.manifest.max_length))
        if max_length is None:
            max_length = self.manifest.max_length
        elif not isinstance(max_length, int) or isinstance(max_length, bool) or not 2 < max_length <= usable:
            raise ValueError(f"max_length must be an int between 3 and {usable} for this model, got {max_length!r}")
        self.max_length = max_length
        if token_budget is not None and (not isinstance(token_budget, int) or token_budget < 1):
            raise ValueError(f"token_budget must be a positive int, got {token_budget!r}")
        self.token_budget = token_budget

        self.provider = resolve_provider(provider)
        if provider == "auto":
            logger.info("crossonnx: provider 'auto' picked %s", self.provider)
        self.threads = threads if threads is not None else default_threads()
        self.session, self.session_config = create_session(model_path, self.provider, self.threads)

        declared = [node.name for node in self.session.get_inputs()]
        self._output = self.session.get_outputs()[0].name
        self.tokenizer = PairTokenizer(
            self.model_dir / self.manifest.tokenizer.file, self.manifest.tokenizer, self.max_length, declared
        )
        self.num_labels = int(self.manifest.num_labels)
        self.activation_fn = ACTIVATION_FNS[self.manifest.activation]

    def info(self) -> dict[str, Any]:
        """What this encoder runs: model, precision, provider, threads and limits."""
        return {
            "model_dir": str(self.model_dir),
            "source": self.manifest.source,
            "precision": self.precision,
            "provider": self.provider,
            "threads": self.threads,
            "max_length": self.max_length,
            "token_budget": self.token_budget,
            "num_labels": self.num_labels,
            "activation": self.manifest.activation,
            "inputs": list(self.tokenizer.input_names),
        }

    def logits(self, pairs: Sequence[Pair], batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        """Raw model outputs, shape (n, num_labels) float32, in input order (pairs must be validated)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        out = np.empty((len(pairs), self.num_labels), dtype=np.float32)
        progress = _Progress(len(pairs), bool(show_progress_bar))
        for start in range(0, len(pairs), CHUNK_PAIRS):
            encoded = self.tokenizer.encode(pairs[start : start + CHUNK_PAIRS])
            for rows in plan_batches(encoded.lengths, batch_size, self.token_budget):
                feed = self.tokenizer.batch(encoded, rows)
                out[start + rows] = self.session.run([self._output], feed)[0]
                progress.advance(len(rows))
        return out

    def predict(
        self,
        pairs: Sequence[Pair] | Pair,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: str | Callable[[np.ndarray], np.ndarray] | None = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
    ) -> np.ndarray | np.floating | list[Any]:
        """Scores of text pairs: a float for one pair, an array for a list (shape (n,) or (n, num_labels))."""
        items, single = normalize_pairs(pairs)
        activation = self.activation_fn if activation_fn is None else resolve_activation(activation_fn)
        scores = activation(self.logits(items, batch_size, bool(show_progress_bar)))
        if self.num_labels == 1 and scores.ndim > 1:
            scores = scores.squeeze(-1)
        if apply_softmax and scores.ndim > 1:
            scores = softmax(scores, axis=1)
        scores = np.asarray(scores, dtype=np.float32)
        if not convert_to_numpy:
            return list(scores)
        return scores[0] if single else scores

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: str | Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> list[dict[str, Any]]:
        """Documents sorted by score for ``query``: ``[{"corpus_id", "score", "text"?}, ...]``."""
        if self.num_labels != 1:
            raise ValueError(
                f"rank() needs a model with one label, this one has {self.num_labels}; use predict() with pairs"
            )
        if not isinstance(query, str):
            raise InvalidInputError(f"query is {_describe(query)}, expected str")
        if isinstance(documents, str) or documents is None:
            raise InvalidInputError(f"documents must be a list of str, got {_describe(documents)}")
        documents = list(documents)
        for index, doc in enumerate(documents):
            if not isinstance(doc, str):
                raise InvalidInputError(f"documents[{index}] is {_describe(doc)}, expected str")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"top_k must be a non-negative int or None, got {top_k!r}")
        if not documents:
            return []
        scores = self.predict(
            [(query, doc) for doc in documents],
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            activation_fn=activation_fn,
        )
        results: list[dict[str, Any]] = []
        for index, score in enumerate(np.asarray(scores).tolist()):
            item: dict[str, Any] = {"corpus_id": index, "score": score}
            if return_documents:
                item["text"] = documents[index]
            results.append(item)
        results.sort(key=lambda item: item["score"], reverse=True)
        return results[:top_k]
