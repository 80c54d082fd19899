"""Pairs -> padded int64 arrays for exactly the inputs the graph declares, with the Rust tokenizer.

Tokenization runs once per chunk without padding (Rust, parallel), so the exact token length of every pair is
known before batching; each batch is then padded only to its own longest pair, in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from crossonnx.architectures import TOKEN_INPUTS
from crossonnx.manifest import TokenizerSpec

TRUNCATION_DIRECTIONS = ("left", "right")  # which end of an over-long pair truncation cuts


@dataclass
class EncodedPairs:
    """Unpadded token ids of a chunk of pairs, stored flat with per-pair offsets."""

    lengths: np.ndarray  # (n,) int64 tokens per pair, special tokens included
    starts: np.ndarray  # (n,) offset of each pair in the flat arrays
    ids: np.ndarray  # flat int64
    type_ids: np.ndarray | None  # flat int64, only when the graph takes token_type_ids

    def __len__(self) -> int:
        return len(self.lengths)


def _encode_batch_fast(tokenizer: Tokenizer, inputs: Sequence, add_special_tokens: bool = True) -> list[Encoding]:
    # encode_batch_fast (tokenizers >= 0.21) skips character offsets, which scoring never reads
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return encode(inputs, add_special_tokens=add_special_tokens)


class PairTokenizer:
    """Wraps tokenizer.json with the truncation and padding rules sentence-transformers applies."""

    def __init__(self, path: str | Path, spec: TokenizerSpec, max_length: int, input_names: Sequence[str]):
        unknown = [name for name in input_names if name not in TOKEN_INPUTS]
        if unknown:
            raise ValueError(f"the graph declares inputs crossonnx cannot build: {unknown}")
        self.spec = spec
        self.max_length = int(max_length)
        self.input_names = tuple(input_names)
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(
            self.max_length, strategy="longest_first", direction=spec.truncation_side
        )
        self._want_types = "token_type_ids" in self.input_names
        self._untruncated: Tokenizer | None = None  # built on first use of untruncated_lengths
        self._by_direction: dict[str, Tokenizer] = {spec.truncation_side: self._tokenizer}  # others on first use
        # tokens the pair template adds ([CLS] a [SEP] b [SEP]: 3; <s> a </s></s> b </s>: 4)
        self.pair_special_tokens = int(self._tokenizer.num_special_tokens_to_add(True))

    def _truncating(self, direction: str | None) -> Tokenizer:
        """The scoring tokenizer truncating from ``direction`` (None: the model's own side)."""
        if direction is None:
            return self._tokenizer
        if direction not in TRUNCATION_DIRECTIONS:
            raise ValueError(f"truncation_direction must be 'left' or 'right', got {direction!r}")
        if direction not in self._by_direction:
            tokenizer = Tokenizer.from_str(self._tokenizer.to_str())
            tokenizer.enable_truncation(self.max_length, strategy="longest_first", direction=direction)
            self._by_direction[direction] = tokenizer
        return self._by_direction[direction]

    def _plain(self) -> Tokenizer:
        """A non-truncating copy of the tokenizer (for lengths before truncation and for document windows)."""
        if self._untruncated is None:
            self._untruncated = Tokenizer.from_str(self._tokenizer.to_str())
            self._untruncated.no_truncation()
        return self._untruncated

    def untruncated_lengths(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Tokens each pair would have without truncation (special tokens included).

        The scoring tokenizer truncates to ``max_length``, so it cannot tell a pair of exactly ``max_length``
        tokens from a longer one; this uses a non-truncating copy of the same tokenizer.
        """
        return [len(encoding.ids) for encoding in _encode_batch_fast(self._plain(), list(pairs))]

    def text_lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text alone, without special tokens and without truncation."""
        return [len(e.ids) for e in _encode_batch_fast(self._plain(), list(texts), add_special_tokens=False)]

    def pieces(self, texts: Sequence[str]) -> list[Encoding]:
        """Each text alone, untruncated and without special tokens, with character offsets and word ids."""
        return self._plain().encode_batch(list(texts), add_special_tokens=False)

    def second_text_spans(
        self, pairs: Sequence[tuple[str, str]], direction: str | None = None
    ) -> list[tuple[int, int]]:
        """The characters of each pair's second text that survive truncation: (start, end), (0, 0) if none."""
        spans = []
        for encoding in self._truncating(direction).encode_batch(list(pairs)):
            kept = [offset for offset, seq in zip(encoding.offsets, encoding.sequence_ids, strict=True) if seq == 1]
            spans.append((kept[0][0], kept[-1][1]) if kept else (0, 0))
        return spans

    def encode(self, pairs: Sequence[tuple[str, str]], direction: str | None = None) -> EncodedPairs:
        """Tokenize pairs (already validated) without padding, truncating from ``direction`` (None: the model's)."""
        encodings = _encode_batch_fast(self._truncating(direction), pairs)
        n = len(encodings)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=n)
        total = int(lengths.sum())
        ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=total)
        type_ids = None
        if self._want_types:
            type_ids = np.fromiter(chain.from_iterable(e.type_ids for e in encodings), dtype=np.int64, count=total)
        starts = np.zeros(n, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return EncodedPairs(lengths=lengths, starts=starts, ids=ids, type_ids=type_ids)

    def batch(self, encoded: EncodedPairs, rows: np.ndarray, width_multiple: int = 1) -> dict[str, np.ndarray]:
        """Padded feed dict for the pairs at ``rows`` (indices into ``encoded``), padded to the longest pair's
        length rounded up to ``width_multiple`` (never past ``max_length``): fewer distinct shapes per engine."""
        lengths = encoded.lengths[rows]
        width = int(lengths.max())
        if width_multiple > 1:
            width = max(width, min(-(-width // width_multiple) * width_multiple, self.max_length))
        positions = np.arange(width)
        if self.spec.padding_side == "left":
            mask = positions >= (width - lengths)[:, None]
        else:
            mask = positions < lengths[:, None]
        # flat positions of the selected pairs' tokens, in row-major order of the padded batch
        before = np.zeros(len(rows), dtype=np.int64)
        np.cumsum(lengths[:-1], out=before[1:])
        gather = np.repeat(encoded.starts[rows] - before, lengths) + np.arange(int(lengths.sum()))
        feed: dict[str, np.ndarray] = {}
        for name in self.input_names:
            if name == "input_ids":
                arr = np.full((len(rows), width), self.spec.pad_id, dtype=np.int64)
                arr[mask] = encoded.ids[gather]
            elif name == "token_type_ids":
                assert encoded.type_ids is not None
                arr = np.full((len(rows), width), self.spec.pad_type_id, dtype=np.int64)
                arr[mask] = encoded.type_ids[gather]
            else:  # attention_mask
                arr = mask.astype(np.int64)
            feed[name] = arr
        return feed
