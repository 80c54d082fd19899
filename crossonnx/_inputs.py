"""Validation of the texts and pairs ``predict`` / ``rank`` and the server take (internal; no onnxruntime)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from crossonnx.errors import InvalidInputError

Pair = tuple[str, str]


def describe(value: object) -> str:
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
        raise InvalidInputError(f"{where} is {describe(text)}, expected str")
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
            raise InvalidInputError(f"pairs must be a list of (text_a, text_b) pairs, got {describe(inputs)}")
        inputs = list(inputs)
    single = len(inputs) > 0 and not isinstance(inputs[0], (list, tuple))
    items = [inputs] if single else inputs
    pairs: list[Pair] = []
    for index, item in enumerate(items):
        where = "the pair" if single else f"pairs[{index}]"
        if not isinstance(item, (list, tuple)):
            raise InvalidInputError(f"{where} is {describe(item)}, not a (text_a, text_b) pair")
        if len(item) != 2:
            raise InvalidInputError(f"{where} has {len(item)} items; a cross-encoder pair has exactly 2 texts")
        first, second = item
        pairs.append((check_text(first, f"{where}[0]"), check_text(second, f"{where}[1]")))
    return pairs, single


def check_documents(query: object, documents: object) -> tuple[str, list[str]]:
    """``rank``'s query and documents, validated: (query, documents as a list)."""
    check_text(query, "query")
    if isinstance(documents, (str, dict)) or not isinstance(documents, Iterable):
        raise InvalidInputError(f"documents must be a list of str, got {describe(documents)}")
    documents = list(documents)
    for index, doc in enumerate(documents):
        check_text(doc, f"documents[{index}]")
    return query, documents  # type: ignore[return-value]
