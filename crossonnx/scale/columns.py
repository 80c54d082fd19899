"""Column handling shared by `crossonnx score-file` (``crossonnx.scale.files``) and the Spark integration
(``crossonnx.scale.spark``): the column names and their defaults, the checks on columns and cells with the errors
they raise, the Arrow types of the text and score columns, and the options passed through to ``predict``.

Nothing here imports pyarrow: the Arrow helpers take the ``pyarrow`` module from their caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from crossonnx import _pipeline
from crossonnx._inputs import normalize_pairs
from crossonnx.long_documents import DocumentCappedError, LongDocuments
from crossonnx.precisions import DEFAULT_PRECISION
from crossonnx.scale import ScaleError
from crossonnx.tune import DEFAULT_WORKLOAD

if TYPE_CHECKING:
    from crossonnx.encoder import CrossEncoder

Pair = tuple[str, str]
Where = str | Path  # what an error names: a file, or a description such as "the DataFrame"


@dataclass(frozen=True)
class Columns:
    """The input's text columns and the output's columns.

    ``score`` is always written. ``chunks`` (windows scored per row) and ``capped`` (more windows than
    ``max_chunks``) are chunk mode's per-row details, written only where a caller asks for them (score-file writes
    the score only).
    """

    query: str = "query"
    passage: str = "passage"
    score: str = "score"
    chunks: str = "chunks"
    capped: str = "capped"

    def flag(self, name: str, cli: bool = True) -> str:
        """The option that names column ``name``: ``--query-column`` (``cli``) or ``query_column`` (Python)."""
        role = {self.query: "query", self.passage: "passage", self.chunks: "chunks", self.capped: "capped"}.get(
            name, "score"
        )
        return f"--{role}-column" if cli else f"{role}_column"

    def check(self, details: bool = False, cli: bool = True) -> None:
        """Every name is a non-empty string and no output column (the score; ``details``: also chunks and capped)
        overwrites a text column or another output column."""
        roles = {"query": self.query, "passage": self.passage, "score": self.score}
        if details:
            roles.update(chunks=self.chunks, capped=self.capped)
        for role, name in roles.items():
            if not isinstance(name, str) or not name:
                option = f"--{role}-column" if cli else f"{role}_column"
                raise ScaleError(f"{option} must be a non-empty column name, got {name!r}")
        if self.score in (self.query, self.passage):
            raise ScaleError(f"the score column {self.score!r} would overwrite a text column; pick another name")
        if details:
            outputs = [self.score, self.chunks, self.capped]
            for name in outputs[1:]:
                if name in (self.query, self.passage) or outputs.count(name) > 1:
                    raise ScaleError(
                        f"the {self.flag(name, cli)} {name!r} would overwrite another column; pick another name"
                    )

    def outputs(self, details: bool = False) -> list[str]:
        """The columns the output adds, in order."""
        return [self.score, self.chunks, self.capped] if details else [self.score]


# ------------------------------------------------------------------------------------------------- errors


def capped_error(where: Where, exc: DocumentCappedError, first_row: int = 1) -> ScaleError:
    """``DocumentCappedError`` in the input's terms: the rows (1-based, from ``first_row``) whose passages are
    longer than chunk mode's cap, and the fix."""
    rows = [
        f"row {first_row + index} ({covered} of its {tokens} tokens)"
        for index, covered, tokens in zip(exc.indexes[:3], exc.covered[:3], exc.tokens[:3], strict=True)
    ]
    more = f" and {len(exc.indexes) - 3} more" if len(exc.indexes) > 3 else ""
    return ScaleError(
        f"{where}: chunk mode would read only the first tokens of the passage of {'; '.join(rows)}{more}: the "
        f"windows stop at max_document_tokens. Raise it to {max(exc.tokens)} to read them whole, or set "
        "on_capped to flag to score their first tokens and count them"
    )


def missing_column(
    where: Where, columns: Columns, name: str, present: list[str], at: str = "", cli: bool = True
) -> ScaleError:
    """Column ``name`` is not in the input: the columns present and the option to name another."""
    shown = ", ".join(repr(c) for c in present) or "none"
    return ScaleError(
        f"{where}{at}: no column {name!r}; the columns are: {shown}. Name the column to use with "
        f"{columns.flag(name, cli)}"
    )


def column_exists(where: Where, columns: Columns, name: str | None = None, cli: bool = True) -> ScaleError:
    """The input already has output column ``name`` (default: the score column)."""
    name = columns.score if name is None else name
    return ScaleError(f"{where} already has a column {name!r}; name the output column with {columns.flag(name, cli)}")


def not_text(where: Where, row: int, column: str, value: object, at: str = "") -> ScaleError:
    """Row ``row`` (1-based) of ``column`` is not a string."""
    kind = "null" if value is None else type(value).__name__
    return ScaleError(
        f"{where}: row {row}{at}: column {column!r} is {kind} ({value!r:.60}), expected a string; "
        "every row needs a query and a passage text"
    )


def not_strings(where: Where, columns: Columns, name: str, kind: object, cli: bool = True) -> ScaleError:
    """A whole column has a non-text type."""
    return ScaleError(
        f"{where}: column {name!r} holds {kind}, not strings; only text columns are scored "
        f"(name others with {columns.flag(name, cli)})"
    )


def check_names(where: Where, columns: Columns, names: list[str], details: bool = False, cli: bool = True) -> None:
    """The text columns are among ``names`` and the output columns are not."""
    for name in (columns.query, columns.passage):
        if name not in names:
            raise missing_column(where, columns, name, names, cli=cli)
    for name in columns.outputs(details):
        if name in names:
            raise column_exists(where, columns, name, cli=cli)


# -------------------------------------------------------------------------------------------------- arrow


def is_arrow_text(pa: ModuleType, kind: Any) -> bool:
    """An Arrow string type (plain, large, view, or a dictionary of them)."""
    types = pa.types
    if types.is_dictionary(kind):
        kind = kind.value_type
    return bool(
        types.is_string(kind)
        or types.is_large_string(kind)
        or (hasattr(types, "is_string_view") and types.is_string_view(kind))
    )


def check_arrow_schema(
    pa: ModuleType, where: Where, columns: Columns, schema: Any, details: bool = False, cli: bool = True
) -> None:
    """``check_names`` plus: both text columns hold strings."""
    names = list(schema.names)
    for name in (columns.query, columns.passage):
        if name not in names:
            raise missing_column(where, columns, name, names, cli=cli)
        kind = schema.field(name).type
        if not is_arrow_text(pa, kind):
            raise not_strings(where, columns, name, kind, cli)
    check_names(where, columns, names, details, cli)


def arrow_pairs(batch: Any, columns: Columns, where: Where, first_row: int = 1) -> list[Pair]:
    """The (query, passage) pairs of an Arrow record batch or table; a null names its row (``first_row`` is the
    1-based number of the batch's first row)."""
    queries = batch.column(columns.query).to_pylist()
    passages = batch.column(columns.passage).to_pylist()
    for name, texts in ((columns.query, queries), (columns.passage, passages)):
        if None in texts:
            raise not_text(where, first_row + texts.index(None), name, None)
    return list(zip(queries, passages, strict=True))


def score_type(pa: ModuleType, labels: int) -> Any:
    """The Arrow type of the score column: float32, or a fixed-size list of float32 per row for several labels."""
    return pa.float32() if labels == 1 else pa.list_(pa.float32(), labels)


def score_array(pa: ModuleType, scores: np.ndarray, labels: int) -> Any:
    """Scores as an Arrow array of ``score_type``."""
    values = pa.array(np.ascontiguousarray(scores, dtype=np.float32).reshape(-1), type=pa.float32())
    return values if labels == 1 else pa.FixedSizeListArray.from_arrays(values, labels)


# ------------------------------------------------------------------------------------------------ scoring


@dataclass
class Scored:
    """One chunk's scores (float32, (n,) or (n, labels)); in chunk mode also windows per row and capped rows."""

    scores: np.ndarray
    chunks: np.ndarray | None = None
    capped: np.ndarray | None = None

    @property
    def capped_count(self) -> int:
        return int(self.capped.sum()) if self.capped is not None else 0

    def detail_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``chunks`` (int32) and ``capped`` (bool) per row; in truncate mode one window and never capped."""
        rows = len(self.scores)
        chunks = np.ones(rows, np.int32) if self.chunks is None else np.asarray(self.chunks, np.int32)
        capped = np.zeros(rows, bool) if self.capped is None else np.asarray(self.capped, bool)
        return chunks, capped


@dataclass(frozen=True)
class ScoreOptions:
    """What is passed through to ``CrossEncoder`` (precision, provider, threads, workload) and to ``predict`` (batch
    size, activation, long-documents options) for every chunk of rows."""

    precision: str = DEFAULT_PRECISION
    provider: str = "auto"
    threads: int | None = None
    workload: str | None = DEFAULT_WORKLOAD
    batch_size: int = 32
    raw_scores: bool = False
    long_documents: LongDocuments = field(default_factory=LongDocuments)

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ScaleError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        object.__setattr__(self, "long_documents", LongDocuments.of(self.long_documents))

    @property
    def activation(self) -> str | None:
        """``predict``'s ``activation_fn``: identity for raw scores (logits), else the model's own."""
        return "identity" if self.raw_scores else None

    def encoder(self, model_dir: str | Path) -> CrossEncoder:
        """The ``CrossEncoder`` these options describe."""
        from crossonnx.encoder import CrossEncoder

        return CrossEncoder(
            model_dir, precision=self.precision, provider=self.provider, threads=self.threads, workload=self.workload
        )

    def score(self, encoder: CrossEncoder, pairs: list[Pair], first_row: int = 1, where: Where = "input") -> Scored:
        """``predict`` over ``pairs`` with these options (``predict_details`` in chunk mode, for the capped rows).

        ``first_row`` (1-based) and ``where`` place the pairs in their input for the error that a passage longer
        than chunk mode's cap raises (``on_capped="raise"``)."""
        try:
            return self._score(encoder, pairs)
        except DocumentCappedError as exc:
            raise capped_error(where, exc, first_row) from None

    def _score(self, encoder: CrossEncoder, pairs: list[Pair]) -> Scored:
        options = self.long_documents
        if options.mode == "chunk":
            # the job reports its capped rows once, at its end (and per row in the capped column): no warning per
            # chunk of the job
            details = _pipeline.run(encoder, normalize_pairs(pairs)[0], options, batch_size=self.batch_size,
                                    activation_fn=self.activation, spans=True, warn_capped=False)
            return Scored(np.asarray(details.scores, dtype=np.float32), details.chunks, details.capped)
        scores = encoder.predict(
            pairs, batch_size=self.batch_size, activation_fn=self.activation, long_documents=options
        )
        return Scored(np.asarray(scores, dtype=np.float32))
