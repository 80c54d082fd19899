"""Exact token counts of pairs before truncation, for requests that ask not to be truncated."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

from crossonnx.encoder import CrossEncoder

Pair = tuple[str, str]


class TokenCounter:
    """Counts the tokens a pair would have without truncation (special tokens included), with the encoder's
    own tokenizer file.

    ``encoder.tokenizer`` truncates to the model's max length, so it cannot tell a pair of exactly
    ``max_length`` tokens from a longer one; this keeps a second, non-truncating copy of the same tokenizer.
    """

    def __init__(self, encoder: CrossEncoder):
        self.max_length = encoder.max_length
        self._tokenizer = Tokenizer.from_file(str(encoder.model_dir / encoder.manifest.tokenizer.file))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._encode_batch = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)

    def count(self, pairs: Sequence[Pair]) -> list[int]:
        """Tokens per pair without truncation."""
        return [len(encoding.ids) for encoding in self._encode_batch(list(pairs))]

    def over_limit(self, pairs: Sequence[Pair]) -> list[tuple[int, int]]:
        """(index, tokens) of the pairs longer than the model's max length."""
        return [(i, n) for i, n in enumerate(self.count(pairs)) if n > self.max_length]
