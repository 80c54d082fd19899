"""Spark integration on a real local Spark (``local[2,4]``: two task slots, a task retried up to 4 times): scores
equal predict row for row, in order, every column kept; one model per Python worker; a Python worker killed mid-job
is replaced and every row comes back once; bad columns and null cells are clear errors.

One SparkSession serves the module (starting one costs seconds); the DataFrames are small.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossonnx.long_documents import LongDocuments
from crossonnx.scale import ScaleError
from crossonnx.scale.columns import ScoreOptions
from pairs import parity_pairs

pytest.importorskip("pyspark", reason="the Spark tests need pyspark (the spark extra)")
if shutil.which("java") is None:
    pytest.skip(
        "Spark needs a Java 17+ runtime and java is not on PATH (Debian: openjdk-17-jre-headless)",
        allow_module_level=True,
    )

from pyspark.errors import PythonException
from pyspark.sql import SparkSession

from crossonnx.scale.spark import LOAD_LOG_ENV, SparkScorer, score_dataframe

# pyspark 4.3 warns about pandas 3 wherever it checks for pandas; the Arrow path scored here never converts to pandas
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
SCHEMA = "id long, query string, passage string, lang string, weight double, tags array<string>"
BATCH_ROWS = 32  # Arrow batch size: a partition reaches the scorer in several batches


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory):
    """A local SparkSession with 2 task slots (a failed task is retried up to 3 more times), quiet, no UI; its
    Python workers run this interpreter and log each model load to the folder ``spark.loads``."""
    loads = tmp_path_factory.mktemp("spark-loads")
    saved = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers need this environment's packages
    session = (
        SparkSession.builder.master("local[2,4]")
        .appName("crossonnx-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.python.worker.reuse", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH_ROWS))
        .config(f"spark.executorEnv.{LOAD_LOG_ENV}", str(loads))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("FATAL")
    session.loads = loads
    yield session
    session.stop()
    if saved is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = saved


def make_rows(n: int, seed: int, long: bool = False) -> list[tuple]:
    rng = random.Random(seed)
    odd = parity_pairs(48, seed=seed)
    rows = []
    for i in range(n):
        if i % 3 == 0:
            query, passage = odd[i % len(odd)]
        else:
            query = " ".join(f"q{rng.randint(0, 99)}" for _ in range(rng.randint(1, 6)))
            passage = " ".join(f"word{rng.randint(0, 999)}" for _ in range(rng.randint(5, 200 if long else 30)))
        weight = None if i % 5 == 0 else rng.random()
        rows.append((i, query, passage, rng.choice(["en", "de", None]), weight, [f"t{i}", "x"][: i % 3]))
    return rows


def frame(spark: SparkSession, rows: list[tuple], partitions: int):
    """A DataFrame of ``rows`` in ``partitions`` contiguous slices (no shuffle: collect returns them in order)."""
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, partitions), SCHEMA)


def loads(spark: SparkSession, threads: int | None = None) -> list[dict]:
    """The model loads the Python workers logged so far (with ``threads``: of sessions with that many threads)."""
    lines = [json.loads(line) for path in sorted(spark.loads.glob("*.jsonl")) for line in path.read_text().splitlines()]
    return [line for line in lines if threads is None or line["threads"] == threads]


def check_rows(collected: list, rows: list[tuple]) -> None:
    """Every input row once, in order, every input column unchanged."""
    assert [tuple(r)[: len(rows[0])] for r in collected] == rows


def test_scores_match_predict_in_order_with_every_column(spark, model_dir, encoder):
    rows = make_rows(240, seed=1)
    pairs = [(r[1], r[2]) for r in rows]
    # two scorings chained in one job: raw logits under another name, then the default scores
    scored = score_dataframe(
        score_dataframe(frame(spark, rows, 6), model_dir, score_column="logit", raw_scores=True), model_dir
    )
    assert scored.columns == ["id", "query", "passage", "lang", "weight", "tags", "logit", "score"]
    assert scored.schema["score"].dataType.simpleString() == "float"
    collected = scored.collect()
    check_rows(collected, rows)
    # Arrow batches pad differently from one predict() over all rows: differences are fp32 rounding only
    np.testing.assert_allclose([r.score for r in collected], encoder.predict(pairs), rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        [r.logit for r in collected], encoder.predict(pairs, activation_fn="identity"), rtol=0, atol=1e-6
    )
    assert {line["threads"] for line in loads(spark)} == {1}  # spark.task.cpus: local mode gives a task one CPU


def test_chunk_mode_adds_the_windows_and_the_capped_flag(spark, model_dir, encoder):
    rows = make_rows(60, seed=2, long=True)
    options = LongDocuments("chunk", chunk_tokens=24, max_document_tokens=72, on_capped="flag")
    scored = score_dataframe(frame(spark, rows, 3), model_dir, long_documents=options, chunks_column="windows")
    assert scored.columns[-3:] == ["score", "windows", "capped"]
    collected = scored.collect()
    check_rows(collected, rows)
    expected = encoder.predict_details([(r[1], r[2]) for r in rows], long_documents=options)
    np.testing.assert_allclose([r.score for r in collected], expected.scores, rtol=0, atol=1e-6)
    assert [r.windows for r in collected] == expected.chunks.tolist()
    assert [r.capped for r in collected] == expected.capped.tolist()
    assert 1 in expected.chunks and 3 in expected.chunks and any(expected.capped)  # the data covers every case


def test_one_model_per_python_worker_reused_across_tasks(spark, model_dir):
    """Two jobs of 8 tasks each: every worker that scored loaded the model once (``threads=2`` marks this
    test's sessions in the load log), far fewer loads than tasks."""
    tasks = 0
    for seed in (3, 4):
        df = frame(spark, make_rows(80, seed=seed), 8)
        tasks += df.rdd.getNumPartitions()
        assert score_dataframe(df, model_dir, threads=2).count() == 80
    logged = loads(spark, threads=2)
    pids = [line["pid"] for line in logged]
    assert pids and len(pids) == len(set(pids)), logged  # no worker loaded it twice
    assert len(pids) < tasks == 16, logged  # workers were reused: a model per task would log 16 loads


def test_killed_python_worker_is_retried_and_every_row_comes_back_once(spark, model_dir, encoder, tmp_path):
    """The scorer's own worker SIGKILLs itself after handing over partition 1's first batch, on the first attempt
    only (a marker file decides); Spark retries the task in a new worker and drops the dead attempt's rows."""
    rows = make_rows(4 * 3 * BATCH_ROWS, seed=5)
    df = frame(spark, rows, 4)
    scorer = SparkScorer(str(model_dir), options=ScoreOptions(threads=1, provider="cpu"))
    marker = tmp_path / "killed"

    def kill_once(batches):  # defined here: Spark ships it by value to its worker
        from pyspark import TaskContext

        partition = TaskContext.get().partitionId()
        for index, batch in enumerate(scorer(batches)):
            yield batch
            if partition == 1 and index == 0 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

    collected = df.mapInArrow(kill_once, scorer.output_schema(df.schema)).collect()
    assert marker.exists(), "no worker was killed"
    check_rows(collected, rows)
    np.testing.assert_allclose(
        [r.score for r in collected], encoder.predict([(r[1], r[2]) for r in rows]), rtol=0, atol=1e-6
    )
    killed = int(marker.read_text())
    assert killed in {line["pid"] for line in loads(spark)}  # the process that died held a model


def test_model_folder_shipped_with_add_file(spark, model_dir, encoder, tmp_path):
    """A folder added with addFile is found by its name when the path passed is not on the executor."""
    shipped = tmp_path / "crossonnx-shipped-model"
    shutil.copytree(model_dir, shipped)
    spark.sparkContext.addFile(str(shipped), recursive=True)  # the executors fetch it from here when a task starts
    rows = make_rows(40, seed=6)
    collected = score_dataframe(frame(spark, rows, 2), f"/nowhere/{shipped.name}").collect()
    np.testing.assert_allclose(
        [r.score for r in collected], encoder.predict([(r[1], r[2]) for r in rows]), rtol=0, atol=1e-6
    )
    with pytest.raises(PythonException, match=r"model folder /nowhere/model is not on this Spark executor.*addFile"):
        score_dataframe(frame(spark, rows, 1), Path("/nowhere/model")).collect()


def test_bad_columns_are_clear_errors(spark, model_dir):
    rows = make_rows(10, seed=7)
    df = frame(spark, rows, 2)
    with pytest.raises(ScaleError, match=r"no column 'query'; the columns are: 'id', 'question'.*with query_column"):
        score_dataframe(df.withColumnRenamed("query", "question"), model_dir)
    with pytest.raises(ScaleError, match=r"column 'id' holds bigint, not strings.*passage_column"):
        score_dataframe(df, model_dir, passage_column="id")
    with pytest.raises(ScaleError, match=r"already has a column 'lang'; name the output column with score_column"):
        score_dataframe(df, model_dir, score_column="lang")
    with pytest.raises(ScaleError, match=r"takes a pyspark\.sql\.DataFrame"):
        score_dataframe(rows, model_dir)
    # a null text cell: the task fails (each retry too) with the column, the partition, the row and its values
    rows[7] = (7, rows[7][1], None, *rows[7][3:])  # partition 1 holds ids 5-9: its third row
    with pytest.raises(PythonException) as caught:
        score_dataframe(frame(spark, rows, 2), model_dir).collect()
    message = str(caught.value)
    assert f"ScaleError: the DataFrame's partition 1: row 3 (id=7, query={rows[7][1]!r:.40}" in message, message
    assert "column 'passage' is null" in message, message


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.tuples(st.text(max_size=40), st.text(max_size=80)), min_size=1, max_size=12),
    cuts=st.lists(st.integers(0, 12), max_size=4),
    null=st.one_of(st.none(), st.tuples(st.integers(0, 11), st.sampled_from(["query", "passage"]))),
)
def test_scorer_counts_rows_across_batches(model_dir, encoder, texts, cuts, null):
    """The scorer itself, outside Spark (partition 0): any split into batches, empty ones included, gives predict's
    scores; a null cell names its row counted over the partition's batches, and the row's id."""
    rows = {"id": list(range(len(texts))), "query": [q for q, _ in texts], "passage": [p for _, p in texts]}
    if null is not None and null[0] < len(texts):
        rows[null[1]][null[0]] = None
    else:
        null = None
    schema = pa.schema([("id", pa.int64()), ("query", pa.string()), ("passage", pa.string())])
    bounds = [0, *sorted(min(c, len(texts)) for c in cuts), len(texts)]  # equal neighbours: an empty batch
    batches = [
        pa.RecordBatch.from_pydict({k: v[a:b] for k, v in rows.items()}, schema=schema) for a, b in pairwise(bounds)
    ]
    scorer = SparkScorer(str(model_dir), options=ScoreOptions(threads=1, provider="cpu"))
    if null is not None:
        with pytest.raises(ScaleError, match=rf"the DataFrame's partition 0: row {null[0] + 1} \(id={null[0]}\b"):
            list(scorer(iter(batches)))
        return
    out = pa.Table.from_batches(list(scorer(iter(batches))))
    assert out.column_names == ["id", "query", "passage", "score"] and out.num_rows == len(texts)
    np.testing.assert_allclose(out.column("score").to_numpy(), encoder.predict(texts), rtol=0, atol=1e-6)
