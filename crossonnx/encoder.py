"""CrossEncoder: the torch-free runtime with sentence-transformers' ``predict`` / ``rank`` semantics."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.batching import plan_batches
from crossonnx.errors import InvalidInputError, PrecisionNotExportedError
from crossonnx.manifest import Manifest, check_file, load_manifest
from crossonnx.paths import cache_root
from crossonnx.providers import (
    DEFAULT_MAX_BATCH,
    OPT_BATCH,
    OPT_LENGTH,
    UNFUSED_GRAPH,
    Profile,
    cuda_options,
    tensorrt_options,
)
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


def provider_plan(
    manifest: Manifest,
    model_dir: Path,
    precision: str,
    provider: str,
    max_batch: int,
    max_length: int,
    device_id: int = 0,
) -> tuple[str, dict[str, Any] | None]:
    """The graph (precision entry) a provider runs for ``precision``, and the provider's options.

    CPU and CUDA run the precision's own graph; TensorRT builds fp32 or fp16 engines from the unfused graph.
    """
    if provider == "cuda":
        return precision, cuda_options(device_id)
    if provider != "tensorrt":
        return precision, None
    if precision not in ("fp32", "fp16"):
        raise PrecisionNotExportedError(
            f"precision {precision!r} is not supported on TensorRT (its int8 needs static QDQ calibration); "
            "use precision='fp16' (TensorRT builds fp16 from the unfused graph) or provider='cuda'"
        )
    if UNFUSED_GRAPH not in manifest.precisions:
        raise PrecisionNotExportedError(
            f"TensorRT builds its engine from the unfused graph, which this folder lacks (exported: "
            f"{', '.join(sorted(manifest.precisions))}). Re-export with: crossonnx export <model> "
            f"--out {model_dir} --tensorrt --overwrite"
        )
    options = tensorrt_options(
        model_sha256=manifest.entry(UNFUSED_GRAPH).sha256,
        input_names=list(manifest.inputs),
        profile=Profile(max_batch=max_batch, max_length=max_length),
        cache_root=cache_root(),
        fp16=precision == "fp16",
        device_id=device_id,
    )
    return UNFUSED_GRAPH, options


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
        if token_budget is not None and (not isinstance(token_budget, int) or token_budget < 1):
            raise ValueError(f"token_budget must be a positive int, got {token_budget!r}")
        self.token_budget = token_budget
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        self.max_batch = max_batch
        self.device_id = device_id

        choice = resolve_provider(provider)
        self.provider, self.provider_reason = choice.provider, choice.reason
        if provider == "auto":
            logger.info("crossonnx: provider 'auto' picked %s (%s)", self.provider, self.provider_reason)
        self.threads = threads if threads is not None else default_threads()
        self.graph, provider_options = provider_plan(
            self.manifest, self.model_dir, precision, self.provider, self.max_batch, self.max_length, device_id
        )
        model_path = check_file(self.model_dir, self.manifest.entry(self.graph))
        self.session, self.session_config = create_session(model_path, self.provider, self.threads, provider_options)
        self.provider_options = provider_options or {}

        declared = [node.name for node in self.session.get_inputs()]
        self._output = self.session.get_outputs()[0].name
        self.tokenizer = PairTokenizer(
            self.model_dir / self.manifest.tokenizer.file, self.manifest.tokenizer, self.max_length, declared
        )
        self.num_labels = int(self.manifest.num_labels)
        self.activation_fn = ACTIVATION_FNS[self.manifest.activation]

    def info(self) -> dict[str, Any]:
        """What this encoder runs: model, precision, provider (and why), threads, limits and provider options."""
        return {
            "model_dir": str(self.model_dir),
            "source": self.manifest.source,
            "precision": self.precision,
            "graph": self.manifest.entry(self.graph).file,
            "provider": self.provider,
            "provider_reason": self.provider_reason,
            "provider_options": dict(self.provider_options),
            "threads": self.threads,
            "max_length": self.max_length,
            "max_batch": self.max_batch,
            "token_budget": self.token_budget,
            "num_labels": self.num_labels,
            "activation": self.manifest.activation,
            "inputs": list(self.tokenizer.input_names),
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
                for name in self.tokenizer.input_names
            }
            self._run(feed)
        return time.perf_counter() - started

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """One model call. On a GPU the inputs are bound once to device memory (IO binding)."""
        if self.provider == "cpu":
            return self.session.run([self._output], feed)[0]
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(self._output, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def logits(
        self,
        pairs: Sequence[Pair],
        batch_size: int = 32,
        show_progress_bar: bool = False,
        stats: dict[str, int] | None = None,
    ) -> np.ndarray:
        """Raw model outputs, shape (n, num_labels) float32, in input order (pairs must be validated).

        ``stats``, when given, is filled with ``tokens`` (after truncation), ``padded_tokens`` and ``model_calls``.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        out = np.empty((len(pairs), self.num_labels), dtype=np.float32)
        progress = _Progress(len(pairs), bool(show_progress_bar))
        for start in range(0, len(pairs), CHUNK_PAIRS):
            encoded = self.tokenizer.encode(pairs[start : start + CHUNK_PAIRS])
            rows_cap = batch_size if self.provider == "cpu" else min(batch_size, self.max_batch)
            for rows in plan_batches(encoded.lengths, rows_cap, self.token_budget):
                feed = self.tokenizer.batch(encoded, rows)
                out[start + rows] = self._run(feed)
                progress.advance(len(rows))
                if stats is not None:
                    stats["padded_tokens"] = stats.get("padded_tokens", 0) + feed["attention_mask"].size
                    stats["model_calls"] = stats.get("model_calls", 0) + 1
            if stats is not None:
                stats["tokens"] = stats.get("tokens", 0) + int(encoded.lengths.sum())
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
