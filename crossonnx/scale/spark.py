"""Spark integration: score the (query, passage) rows of a ``pyspark.sql.DataFrame`` (the `spark` extra).

    from crossonnx.scale.spark import score_dataframe

    pairs = spark.read.parquet("s3://bucket/pairs/")
    scored = score_dataframe(pairs, "/Volumes/main/default/models/ms-marco-MiniLM-L-6", precision="int8")
    scored.write.parquet("s3://bucket/scored/")

How it runs: ``score_dataframe`` checks the columns and the model folder on the driver and returns
``df.mapInArrow(SparkScorer(...), schema)`` (lazy, like any transformation). Each task streams its partition's
Arrow record batches through ``SparkScorer`` in a Python worker, which scores them and appends the score column,
so every input column is kept, in the input's order.

One model per Python worker: the scorer gets its ``CrossEncoder`` from a cache at module level in
``crossonnx.scale.spark`` (keyed by the model folder, precision, provider and threads). The scorer is pickled by
reference to this module, so a worker imports the module once and the cache lives as long as the worker process;
with ``spark.python.worker.reuse`` (Spark's default) a worker runs task after task, so the model is loaded on the
worker's first task and reused by every later one. ``pyspark.ml.functions.predict_batch_udf`` caches its model
the same way; a scalar-iterator ``pandas_udf`` or a plain ``mapInPandas`` function would load the model once per
task. An executor with N task slots runs N Python workers, so it holds N models: each session gets the CPUs Spark
gives one task (``spark.task.cpus``, i.e. the executor's cores divided by its task slots) unless ``threads=`` says
otherwise. At most ``MODELS_PER_WORKER`` models stay loaded in one worker (the least recently used goes first).

A null text cell fails its task with a ``ScaleError`` naming the column and the row. Spark has no stable row
index, so the row is named by what locates it: the partition (as numbered in the scoring stage, i.e.
``spark_partition_id()`` of the DataFrame passed in), the row's number within that partition (from 1), and the
row's other values (first few columns, shortened).

Diagnostics: with ``CROSSONNX_SPARK_LOAD_LOG`` set to a folder in the executors' environment
(``spark.executorEnv.CROSSONNX_SPARK_LOAD_LOG``), each model load appends a JSON line (process id, model,
precision, provider, threads) to ``<folder>/<pid>.jsonl``: one line per worker and model when workers are reused.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crossonnx.errors import ModelFolderError, require_module
from crossonnx.long_documents import LongDocuments
from crossonnx.precisions import DEFAULT_PRECISION
from crossonnx.scale import ScaleError
from crossonnx.scale.columns import (
    Columns,
    ScoreOptions,
    arrow_pairs,
    check_names,
    not_strings,
    not_text,
    score_array,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

    from crossonnx.encoder import CrossEncoder

logger = logging.getLogger("crossonnx")
WHERE = "the DataFrame"
MODELS_PER_WORKER = 2  # e.g. two rerankers in one job; more would only grow the worker's memory
LOAD_LOG_ENV = "CROSSONNX_SPARK_LOAD_LOG"
_SHOWN_VALUES = 4  # other columns named in a null-cell error
_ENCODERS: OrderedDict[tuple[str, str, str, int], CrossEncoder] = OrderedDict()  # this Python worker's models


def require_spark() -> None:
    """pyspark, plus pyarrow and pandas (Spark's Arrow path checks for both on the driver), or MissingExtraError."""
    for module in ("pyspark", "pyarrow", "pandas"):
        require_module(module, "spark", module, "the Spark integration (crossonnx.scale.spark)")


# --------------------------------------------------------------------------------------------- the workers


def resolve_model_dir(model_dir: str) -> Path:
    """``model_dir`` if it is a folder here, else the folder of that name added with ``SparkContext.addFile``."""
    path = Path(model_dir)
    if path.is_dir():
        return path
    added = None
    try:
        from pyspark import SparkFiles

        added = Path(SparkFiles.get(path.name))
    except Exception:  # no SparkContext or worker root directory: nothing was added
        pass
    if added is not None and added.is_dir():
        return added
    raise ModelFolderError(
        f"model folder {model_dir} is not on this Spark executor (process {os.getpid()}) and no folder "
        f"{path.name!r} was added with SparkContext.addFile. Put the folder on storage every executor mounts at the "
        f"same path, or call spark.sparkContext.addFile({model_dir!r}, recursive=True) before scoring"
    )


def _log_load(key: tuple[str, str, str, int]) -> None:
    folder = os.environ.get(LOAD_LOG_ENV)
    if not folder:
        return
    model, precision, provider, threads = key
    line = {"pid": os.getpid(), "model": model, "precision": precision, "provider": provider, "threads": threads}
    with open(Path(folder) / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def worker_encoder(model_dir: str, options: ScoreOptions) -> CrossEncoder:
    """This process's ``CrossEncoder`` for ``model_dir`` and ``options``, loaded on first use and then reused."""
    key = (model_dir, options.precision, options.provider, int(options.threads or 0))
    encoder = _ENCODERS.get(key)
    if encoder is not None:
        _ENCODERS.move_to_end(key)
        return encoder
    encoder = options.encoder(resolve_model_dir(model_dir))
    _ENCODERS[key] = encoder
    while len(_ENCODERS) > MODELS_PER_WORKER:
        _ENCODERS.popitem(last=False)
    _log_load(key)
    logger.info(
        "crossonnx: Spark worker %d loaded %s (%s, %s, %d threads)",
        os.getpid(),
        model_dir,
        encoder.precision,
        options.provider,
        encoder.threads,
    )
    return encoder


class SparkScorer:
    """The function ``DataFrame.mapInArrow`` runs (see the module docstring): record batches in, the same batches
    with the score column (in chunk mode also the windows scored and the capped flag) out.

    ``score_dataframe`` builds it after checking the DataFrame; use it directly to run it inside your own
    ``mapInArrow`` function, with ``output_schema`` for the schema. ``labels`` is the model's number of labels
    (the score column holds a list of floats per row for more than one).
    """

    def __init__(
        self,
        model_dir: str | Path,
        columns: Columns | None = None,
        options: ScoreOptions | None = None,
        labels: int = 1,
    ):
        self.model_dir = str(model_dir)
        self.columns = columns or Columns()
        self.options = options or ScoreOptions()
        self.labels = labels

    @property
    def details(self) -> bool:
        """Whether the output has chunk mode's windows-scored and capped columns."""
        return self.options.long_documents.mode == "chunk"

    def output_schema(self, schema: StructType) -> StructType:
        """``schema`` with the columns this scorer appends."""
        from pyspark.sql.types import ArrayType, BooleanType, FloatType, IntegerType, StructField, StructType

        score = FloatType() if self.labels == 1 else ArrayType(FloatType(), containsNull=False)
        fields = [*schema.fields, StructField(self.columns.score, score, nullable=False)]
        if self.details:
            fields += [
                StructField(self.columns.chunks, IntegerType(), nullable=False),
                StructField(self.columns.capped, BooleanType(), nullable=False),
            ]
        return StructType(fields)

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa
        from pyspark import TaskContext

        context = TaskContext.get()
        options = self.options
        if options.threads is None:  # the CPUs Spark gives a task: the executor's cores over its task slots
            options = replace(options, threads=max(1, int(context.cpus())) if context is not None else 1)
        where = f"{WHERE}'s partition {context.partitionId() if context is not None else 0}"
        encoder = None
        first = 1
        for batch in batches:
            if encoder is None:
                encoder = worker_encoder(self.model_dir, options)
                if encoder.num_labels != self.labels:
                    raise ScaleError(
                        f"{self.model_dir} has {encoder.num_labels} labels here but the driver planned "
                        f"{self.labels}: make the model folder readable on the driver too, at the same path"
                    )
            yield self._score(pa, encoder, options, batch, where, first)
            first += batch.num_rows

    def _score(
        self, pa: Any, encoder: CrossEncoder, options: ScoreOptions, batch: pa.RecordBatch, where: str, first: int
    ) -> pa.RecordBatch:
        columns = self.columns
        for name in (columns.query, columns.passage):
            cells = batch.column(name)
            if cells.null_count:
                index = cells.to_pylist().index(None)
                row = batch.slice(index, 1).to_pylist()[0]
                shown = [f"{key}={value!r:.40}" for key, value in row.items() if key != name][:_SHOWN_VALUES]
                raise not_text(where, first + index, name, None, at=f" ({', '.join(shown)})" if shown else "")
        if batch.num_rows:
            scored = options.score(encoder, arrow_pairs(batch, columns, where, first))
            scores = scored.scores
        else:
            scored, scores = None, np.empty((0,) if self.labels == 1 else (0, self.labels), np.float32)
        values = score_array(pa, scores, self.labels)
        if self.labels > 1:  # Spark's Arrow reader takes variable-size lists only
            values = values.cast(pa.list_(pa.field("element", pa.float32(), nullable=False)))
        arrays, names = [*batch.columns, values], [*batch.schema.names, columns.score]
        if self.details:
            chunks, capped = (
                scored.detail_arrays() if scored is not None else (np.empty(0, np.int32), np.empty(0, bool))
            )
            arrays += [pa.array(chunks, pa.int32()), pa.array(capped, pa.bool_())]
            names += [columns.chunks, columns.capped]
        return pa.RecordBatch.from_arrays(arrays, names=names)


# ---------------------------------------------------------------------------------------------- the driver


def _driver_model(model_dir: str | Path, precision: str) -> tuple[str, int]:
    """The path the executors get and the model's number of labels, read here when the driver sees the folder.

    A folder the driver cannot see is passed on as given (the executors may mount it, or get it from
    ``addFile``) and planned as a one-label model; the executors check that."""
    from crossonnx.levels import LEVELS
    from crossonnx.manifest import load_manifest

    path = Path(os.path.expanduser(str(model_dir)))
    folder = str(path.resolve()) if path.is_dir() else str(path)
    try:
        local = resolve_model_dir(folder)
    except ModelFolderError:
        return folder, 1
    manifest = load_manifest(local)
    if precision not in LEVELS:
        manifest.entry(precision)  # fail here rather than in every task
    return folder, int(manifest.num_labels)


def _warn_without_worker_reuse(df: DataFrame) -> None:
    try:
        reuse = df.sparkSession.conf.get("spark.python.worker.reuse", "true")
    except Exception:  # a client that cannot read the setting: assume Spark's default
        return
    if str(reuse).lower() == "false":
        logger.warning(
            "crossonnx: spark.python.worker.reuse is false, so every task starts a Python worker and loads "
            "the model again; leave it at its default (true)"
        )


def score_dataframe(
    df: DataFrame,
    model_dir: str | Path,
    query_column: str = "query",
    passage_column: str = "passage",
    score_column: str = "score",
    *,
    precision: str = DEFAULT_PRECISION,
    provider: str = "auto",
    threads: int | None = None,
    batch_size: int = 32,
    raw_scores: bool = False,
    long_documents: str | LongDocuments = "truncate",
    chunks_column: str = "chunks",
    capped_column: str = "capped",
) -> DataFrame:
    """``df`` with a float32 score column added (lazy): every input column kept, in order.

    ``precision``, ``provider``, ``batch_size``, ``raw_scores`` (logits) and ``long_documents`` mean what they mean
    for ``CrossEncoder`` and ``predict`` (and ``crossonnx score-file``). With ``long_documents="chunk"`` (or a
    chunk-mode ``LongDocuments``) the output also has ``chunks_column`` (windows scored, int) and
    ``capped_column`` (bool; with ``on_capped="flag"``: the passage was longer than the cap and scored on its
    first tokens). ``threads`` per model session defaults to ``spark.task.cpus``. A multi-label model's score
    column holds a list of floats per row.

    ``model_dir`` must be readable by every executor: at the same path (shared storage, a Databricks Volume) or
    added with ``spark.sparkContext.addFile(model_dir, recursive=True)`` (found by its folder name); the driver
    reads it too when it can, to check the precision and the number of labels. Missing or non-string columns
    raise ``ScaleError`` here; a null text cell fails its task with a ``ScaleError`` naming the column, the
    partition, the row within it and the row's other values.
    """
    require_spark()
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StringType

    if not isinstance(df, DataFrame):
        raise ScaleError(f"score_dataframe takes a pyspark.sql.DataFrame, got {type(df).__name__}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ScaleError(f"threads must be a positive integer or None (spark.task.cpus), got {threads!r}")
    options = ScoreOptions(
        precision=precision,
        provider=provider,
        threads=threads,
        batch_size=batch_size,
        raw_scores=raw_scores,
        long_documents=long_documents,
    )
    columns = Columns(query_column, passage_column, score_column, chunks_column, capped_column)
    details = options.long_documents.mode == "chunk"
    columns.check(details, cli=False)
    schema = df.schema
    check_names(WHERE, columns, schema.names, details, cli=False)
    for name in (columns.query, columns.passage):
        kind = schema[name].dataType
        if not isinstance(kind, StringType):
            raise not_strings(WHERE, columns, name, kind.simpleString(), cli=False)
    folder, labels = _driver_model(model_dir, precision)
    _warn_without_worker_reuse(df)
    scorer = SparkScorer(folder, columns, options, labels)
    with warnings.catch_warnings():  # the Arrow path never converts to pandas, whatever its version
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        return df.mapInArrow(scorer, scorer.output_schema(schema))


__all__ = ["MODELS_PER_WORKER", "SparkScorer", "resolve_model_dir", "score_dataframe"]
