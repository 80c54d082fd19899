"""Streaming scoring of Parquet, JSON-lines and CSV files with bounded memory (`crossonnx score-file`).

A file is read ``chunk_rows`` rows at a time, each chunk is scored with ``CrossEncoder.predict`` and written
out with every input column kept and a score column added, in input order. Memory depends on the chunk size
(and, for Parquet, on the input's row-group size), not on the file's length. The output is written in a folder
beside the target, with a journal of the scored chunks (``crossonnx.scale.resume``: what ``resume`` continues
from), and renamed over the target only when every row was scored.

Parquet needs pyarrow (the `scale` extra); JSON lines and CSV use the standard library.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from crossonnx.errors import CrossOnnxError
from crossonnx.long_documents import LongDocuments
from crossonnx.scale import DEFAULT_CHUNK_ROWS, FORMATS, ScaleError, require
from crossonnx.scale.columns import (
    Columns,
    Pair,
    ScoreOptions,
    arrow_pairs,
    check_arrow_schema,
    check_names,
    column_exists,
    missing_column,
    not_text,
    score_array,
    score_type,
)
from crossonnx.scale.resume import Journal, fingerprint

if TYPE_CHECKING:
    from crossonnx.encoder import CrossEncoder

EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


@dataclass
class ScoreFileResult:
    """What `score_file` did."""

    source: Path
    out: Path
    format: str
    rows: int
    seconds: float
    resumed_rows: int = 0  # rows an interrupted run had scored, written from its journal
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def pairs_per_second(self) -> float:
        """Rows scored by this run per second."""
        return (self.rows - self.resumed_rows) / self.seconds if self.seconds > 0 else 0.0


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    """'parquet', 'jsonl' or 'csv': ``fmt`` if given, else from the file name's extension."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise ScaleError(f"unknown format {fmt!r}; use auto or one of: {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        known = ", ".join(EXTENSIONS)
        raise ScaleError(f"cannot tell the format of {path} from its extension (known: {known}); pass --format")
    return EXTENSIONS[suffix]


def default_output(path: str | Path) -> Path:
    """``data.parquet`` -> ``data.scored.parquet`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.scored{path.suffix}")


# --------------------------------------------------------------------------------------------- progress


class Progress:
    """A progress bar on stderr, by rows when the total is known (Parquet), else by bytes read."""

    def __init__(
        self,
        label: str,
        total_rows: int | None = None,
        total_bytes: int | None = None,
        enabled: bool = True,
        stream: IO[str] | None = None,
        interval: float = 0.5,
    ):
        self.label, self.total_rows, self.total_bytes = label, total_rows, total_bytes
        self.enabled, self.stream, self.interval = enabled, stream or sys.stderr, interval
        self.start = time.perf_counter()
        self._last = 0.0
        self._shown = False

    def _line(self, rows: int, position: int | None) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = rows / elapsed
        fraction = None
        if self.total_rows:
            fraction = rows / self.total_rows
        elif self.total_bytes and position is not None:
            fraction = position / self.total_bytes
        count = f"{rows:,}/{self.total_rows:,} rows" if self.total_rows else f"{rows:,} rows"
        if fraction is None:
            return f"{self.label}: {count}  {rate:,.0f} rows/s"
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(fraction * 24)
        eta = (elapsed / fraction - elapsed) if fraction > 0 else 0.0
        return (f"{self.label}: {fraction * 100:3.0f}% |{'#' * filled}{'.' * (24 - filled)}| {count}  "
                f"{rate:,.0f} rows/s  ETA {int(eta) // 60}:{int(eta) % 60:02d}")

    def update(self, rows: int, position: int | None = None) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self._last < self.interval:
            return
        self._last = now
        self.stream.write("\r" + self._line(rows, position) + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def close(self, rows: int, position: int | None = None) -> None:
        if self.enabled:
            if self.total_bytes and position is None:
                position = self.total_bytes
            self.stream.write("\r" + self._line(rows, position) + "\x1b[K\n")
            self.stream.flush()


# ----------------------------------------------------------------------------------------------- readers


@dataclass
class Chunk:
    """Rows read together: their pairs, what the writer needs to write them back, and the bytes consumed."""

    pairs: list[Pair]
    payload: Any
    position: int | None = None


class ParquetSource:
    """Record batches of ``chunk_rows`` rows from a Parquet file (one row group's data in memory at a time)."""

    def __init__(self, path: Path, columns: Columns, chunk_rows: int):
        self.pa = require("pyarrow", "pyarrow", "reading Parquet")
        self.pq = require("pyarrow.parquet", "pyarrow", "reading Parquet")
        self.path, self.columns, self.chunk_rows = path, columns, chunk_rows
        try:
            self.file = self.pq.ParquetFile(str(path))
        except (OSError, self.pa.ArrowException) as exc:
            raise ScaleError(f"{path} is not a readable Parquet file: {exc}") from None
        self.schema = self.file.schema_arrow
        self.total_rows = self.file.metadata.num_rows
        self.total_bytes = None
        check_arrow_schema(self.pa, path, columns, self.schema)

    def chunks(self) -> Iterator[Chunk]:
        first = 1
        for batch in self.file.iter_batches(batch_size=self.chunk_rows, use_threads=False):
            yield Chunk(arrow_pairs(batch, self.columns, self.path, first), batch)
            first += batch.num_rows

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.file.close()


class _TextSource:
    """Shared by JSONL and CSV: a binary handle (so that the byte position can drive the progress bar)."""

    def __init__(self, path: Path, columns: Columns, chunk_rows: int):
        self.path, self.columns, self.chunk_rows = path, columns, chunk_rows
        self.total_rows = None
        self.total_bytes = path.stat().st_size
        self.handle = open(path, "rb")  # noqa: SIM115 - closed by close()

    def close(self) -> None:
        self.handle.close()


class JsonlSource(_TextSource):
    """JSON objects, one per line; blank lines are skipped. Rows keep all their keys."""

    def chunks(self) -> Iterator[Chunk]:
        q, p = self.columns.query, self.columns.passage
        rows: list[dict[str, Any]] = []
        pairs: list[Pair] = []
        count = 0
        for line_no, raw in enumerate(self.handle, 1):
            if not raw.strip():
                continue
            if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                row = json.loads(raw)
            except ValueError as exc:
                raise ScaleError(f"{self.path}: line {line_no} is not valid JSON ({exc})") from None
            count += 1
            where = f" (line {line_no})"
            if not isinstance(row, dict):
                raise ScaleError(
                    f"{self.path}: line {line_no} is a JSON {type(row).__name__}, expected an object with "
                    f"{q!r} and {p!r} keys"
                )
            for name in (q, p):
                if name not in row:
                    raise missing_column(self.path, self.columns, name, list(row), f" line {line_no}")
                if not isinstance(row[name], str):
                    raise not_text(self.path, count, name, row[name], where)
            if self.columns.score in row:
                raise column_exists(self.path, self.columns)
            rows.append(row)
            pairs.append((row[q], row[p]))
            if len(rows) >= self.chunk_rows:
                yield Chunk(pairs, rows, self.handle.tell())
                rows, pairs = [], []
        if rows:
            yield Chunk(pairs, rows, self.handle.tell())


class CsvSource(_TextSource):
    """CSV with a header row (Excel dialect, UTF-8 with or without a byte-order mark)."""

    def __init__(self, path: Path, columns: Columns, chunk_rows: int):
        super().__init__(path, columns, chunk_rows)
        self.reader = csv.reader(self._lines())
        try:
            self.header = next(self.reader)
        except StopIteration:
            raise ScaleError(f"{path} is empty: a CSV input needs a header row") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ScaleError(f"{path}: cannot read the CSV header ({exc})") from None
        check_names(path, columns, self.header)
        self.q_index = self.header.index(columns.query)
        self.p_index = self.header.index(columns.passage)

    def _lines(self) -> Iterator[str]:
        for index, raw in enumerate(self.handle):
            yield raw.decode("utf-8-sig" if index == 0 else "utf-8")

    def chunks(self) -> Iterator[Chunk]:
        rows: list[list[str]] = []
        pairs: list[Pair] = []
        count = 0
        width = len(self.header)
        while True:
            try:
                row = next(self.reader)
            except StopIteration:
                break
            except (UnicodeDecodeError, csv.Error) as exc:
                raise ScaleError(f"{self.path}: row {count + 1} (line {self.reader.line_num}): {exc}") from None
            if not row:
                continue  # a blank line
            count += 1
            if len(row) != width:
                where = f" (line {self.reader.line_num})"
                if len(row) < width and len(row) <= max(self.q_index, self.p_index):
                    missing = self.header[self.q_index if len(row) <= self.q_index else self.p_index]
                    raise not_text(self.path, count, missing, None, where)
                raise ScaleError(
                    f"{self.path}: row {count}{where} has {len(row)} fields, the header has {width}"
                )
            rows.append(row)
            pairs.append((row[self.q_index], row[self.p_index]))
            if len(rows) >= self.chunk_rows:
                yield Chunk(pairs, rows, self.handle.tell())
                rows, pairs = [], []
        if rows:
            yield Chunk(pairs, rows, self.handle.tell())


def open_source(path: Path, fmt: str, columns: Columns, chunk_rows: int) -> ParquetSource | JsonlSource | CsvSource:
    """A reader of ``path`` in format ``fmt``; checks the columns before any row is scored."""
    if fmt == "parquet":
        return ParquetSource(path, columns, chunk_rows)
    if fmt == "jsonl":
        return JsonlSource(path, columns, chunk_rows)
    return CsvSource(path, columns, chunk_rows)


# ----------------------------------------------------------------------------------------------- writers


def _score_values(scores: np.ndarray) -> list[Any]:
    """Python floats (float32 values written exactly) or lists of them for multi-label models."""
    return scores.astype(np.float64).tolist()


class ParquetSink:
    """Writes each chunk as a row group: the input's columns and schema metadata, plus the score column."""

    def __init__(self, path: Path, source: ParquetSource, columns: Columns, labels: int):
        pa, pq = source.pa, source.pq
        self.pa = pa
        self.labels = labels
        self.schema = source.schema.append(pa.field(columns.score, score_type(pa, labels)))
        self.writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, chunk: Chunk, scores: np.ndarray) -> None:
        column = score_array(self.pa, scores, self.labels)
        batch = chunk.payload
        self.writer.write_batch(self.pa.RecordBatch.from_arrays([*batch.columns, column], schema=self.schema))

    def close(self) -> None:
        self.writer.close()


class JsonlSink:
    def __init__(self, path: Path, columns: Columns):
        self.handle = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed by close()
        self.score = columns.score

    def write(self, chunk: Chunk, scores: np.ndarray) -> None:
        dumps, key = json.dumps, self.score
        lines = [
            dumps({**row, key: value}, ensure_ascii=False)
            for row, value in zip(chunk.payload, _score_values(scores), strict=True)
        ]
        self.handle.write("\n".join(lines) + "\n")

    def close(self) -> None:
        self.handle.close()


class CsvSink:
    def __init__(self, path: Path, source: CsvSource, columns: Columns):
        self.handle = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed by close()
        self.writer = csv.writer(self.handle)
        self.writer.writerow([*source.header, columns.score])

    def write(self, chunk: Chunk, scores: np.ndarray) -> None:
        values = _score_values(scores)
        if scores.ndim > 1:
            values = [json.dumps(v) for v in values]
        self.writer.writerows([*row, value] for row, value in zip(chunk.payload, values, strict=True))

    def close(self) -> None:
        self.handle.close()


def _open_sink(path: Path, fmt: str, source: Any, columns: Columns, labels: int) -> ParquetSink | JsonlSink | CsvSink:
    if fmt == "parquet":
        return ParquetSink(path, source, columns, labels)
    if fmt == "jsonl":
        return JsonlSink(path, columns)
    return CsvSink(path, source, columns)


# ------------------------------------------------------------------------------------------------- entry


def score_file(
    encoder: CrossEncoder,
    source: str | Path,
    out: str | Path | None = None,
    *,
    fmt: str = "auto",
    columns: Columns | None = None,
    batch_size: int = 32,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    raw_scores: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    long_documents: str | LongDocuments = "truncate",
    resume: bool = False,
) -> ScoreFileResult:
    """Score every (query, passage) row of ``source`` with ``encoder`` and write it to ``out`` with a score column.

    The output has the input's format, columns and row order. ``raw_scores`` writes logits (no activation; chunk
    mode then aggregates logits). ``progress`` None shows the bar when stderr is a terminal. ``long_documents``:
    ``"truncate"`` (default), ``"chunk"`` or a ``LongDocuments``, as in ``CrossEncoder.predict``;
    ``details["long_documents"]`` holds its fields and ``details["capped_rows"]`` counts the passages longer than
    the cap (``on_capped="flag"``).

    The output is written to a folder beside ``out`` (``.<name>.partial/``) with a journal of the scored chunks and
    renamed over ``out`` when every row is scored. A run that was killed or interrupted leaves them there:
    ``resume`` continues it from its last completed chunk (the output is byte for byte what an uninterrupted run
    writes) after checking that the input, the model and every option that changes the output are the same; without
    ``resume`` such leftovers are an error that says so. ``resume`` with nothing left over scores from the first row.
    """
    columns = columns or Columns()
    source = Path(source)
    out = Path(out) if out is not None else default_output(source)
    fmt = detect_format(source, fmt)
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ScaleError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    scoring = ScoreOptions(batch_size=batch_size, raw_scores=raw_scores, long_documents=long_documents)
    options = scoring.long_documents
    columns.check()
    out_suffix = out.suffix.lower()
    if out_suffix in EXTENSIONS and EXTENSIONS[out_suffix] != fmt:
        raise ScaleError(f"score-file writes the input's format ({fmt}); name the output {out.stem}.{fmt}")
    if not source.is_file():
        raise ScaleError(f"{source} does not exist or is not a file")
    if out.exists() and not overwrite:
        raise ScaleError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    if out.is_dir():
        raise ScaleError(f"{out} is a folder; --out names the output file")

    started = time.perf_counter()
    reader = open_source(source, fmt, columns, chunk_rows)
    try:
        journal = Journal(out, encoder.num_labels)
        settings = {"format": fmt, "query_column": columns.query, "passage_column": columns.passage,
                    "score_column": columns.score, "batch_size": batch_size, "chunk_rows": chunk_rows,
                    "raw_scores": raw_scores, "long_documents": options.to_dict()}
        out.parent.mkdir(parents=True, exist_ok=True)
        journal.open(fingerprint(source, encoder, settings), resume)
        resumed = journal.rows
        try:
            rows, capped = _run(encoder, scoring, reader, journal, fmt, columns, source.name, progress)
            journal.finish()
        except CrossOnnxError:
            journal.discard()  # the input or an option is at fault: a resume would stop at the same row
            raise
        except BaseException:
            journal.close()
            if journal.rows:
                print(f"crossonnx: score-file stopped after {journal.rows:,} rows, kept in {journal.folder}; run "
                      "the same command with --resume to continue from there", file=sys.stderr)
            raise
    finally:
        reader.close()
    seconds = time.perf_counter() - started
    return ScoreFileResult(source=source, out=out, format=fmt, rows=rows, seconds=seconds, resumed_rows=resumed,
                           details={"chunk_rows": chunk_rows, "batch_size": batch_size, "raw_scores": raw_scores,
                                    "long_documents": options.to_dict(), "capped_rows": capped})


def _run(encoder: CrossEncoder, scoring: ScoreOptions, reader: Any, journal: Journal, fmt: str, columns: Columns,
         name: str, progress: bool | None) -> tuple[int, int]:
    """Write every chunk to the journal's partial output: the journal's saved scores for the chunks it holds, the
    model's for the rest (each recorded in the journal). Returns the rows and the capped rows."""
    sink = _open_sink(journal.partial, fmt, reader, columns, encoder.num_labels)
    show = sys.stderr.isatty() if progress is None else progress
    bar = Progress(f"scoring {name}", reader.total_rows, reader.total_bytes, enabled=show)
    saved = journal.saved()
    rows = capped = 0
    position = None
    try:
        for chunk in reader.chunks():
            record = next(saved, None)
            if record is not None:
                done, scores = record
                if done.rows != len(chunk.pairs):
                    raise ScaleError(f"{journal.folder} does not match its input; delete it and run again")
                capped += done.capped
            else:
                scored = scoring.score(encoder, chunk.pairs, rows + 1, reader.path)
                scores = scored.scores
                capped += scored.capped_count
                journal.append(scores, scored.capped_count)
            sink.write(chunk, scores)
            rows += len(chunk.pairs)
            position = chunk.position
            bar.update(rows, position)
    finally:
        sink.close()
    bar.close(rows, position)
    return rows, capped
