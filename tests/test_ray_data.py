"""Ray Data integration on a local 2-CPU cluster: scores equal predict, in order, even when an actor is killed."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter

import numpy as np
import pytest

from crossonnx import CrossEncoder
from crossonnx.errors import ModelFolderError
from crossonnx.scale import ScaleError
from pairs import parity_pairs

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pytest.importorskip("ray.data")

from crossonnx.scale.ray_data import RayScorer, actor_cpus, score_dataset  # noqa: E402 - after the skips

# Ray Data reads its own deprecated settings when it copies a DataContext; nothing this project can change
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def cluster():
    """A private Ray instance on loopback with 2 CPUs, shut down after the module."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def make_rows(n: int, seed: int, long: bool = False) -> list[dict]:
    rng = random.Random(seed)
    odd = parity_pairs(48, seed=seed)
    rows = []
    for i in range(n):
        if i % 4 == 0:
            query, passage = odd[i % len(odd)]
        else:
            query = " ".join(f"q{rng.randint(0, 99)}" for _ in range(rng.randint(1, 6)))
            passage = " ".join(f"word{rng.randint(0, 999)}" for _ in range(rng.randint(5, 120 if long else 30)))
        rows.append({"id": i, "query": query, "passage": passage})
    return rows


def collect(ds) -> pa.Table:
    return pa.concat_tables(list(ds.iter_batches(batch_size=None, batch_format="pyarrow")))


def check_scores(table: pa.Table, rows: list[dict], encoder: CrossEncoder) -> None:
    """Every input row exactly once, in input order, with predict's score (fp32 rounding apart)."""
    assert table.column("id").to_pylist() == [r["id"] for r in rows]
    assert table.column("query").to_pylist() == [r["query"] for r in rows]
    assert table.schema.field("score").type == pa.float32()
    expected = encoder.predict([(r["query"], r["passage"]) for r in rows])
    # Ray batches pad differently from one predict() over all rows: differences are fp32 rounding only
    np.testing.assert_allclose(table.column("score").to_numpy(), expected, rtol=0, atol=1e-6)


def test_actor_pool_scores_match_predict_in_order(cluster, model_dir, encoder):
    rows = make_rows(600, seed=1)
    ds = ray.data.from_items(rows, override_num_blocks=12)
    scored = score_dataset(ds, model_dir, actors=2, cpus_per_actor=1, batch_size=40, pid_column="pid")
    table = collect(scored)
    check_scores(table, rows, encoder)
    assert table.column_names == ["id", "query", "passage", "score", "pid"]
    assert scored.context.execution_options.preserve_order


def test_threads_follow_the_cpus_ray_assigned(cluster, model_dir):
    actor = ray.remote(num_cpus=2)(RayScorer).remote(model_dir)
    try:
        info = ray.get(actor.info.remote(), timeout=120)
    finally:
        ray.kill(actor)
    assert info["threads"] == 2 and info["pid"] != os.getpid()
    assert ray.get(ray.remote(num_cpus=1)(actor_cpus).remote(), timeout=120) == 1
    assert actor_cpus() == 1  # the driver has nothing assigned


def test_killed_actor_is_replaced_and_every_row_comes_back_once(cluster, model_dir, encoder, tmp_path):
    """SIGKILL the only actor once it returned the first block; every row must still come back once, in order.

    The later blocks are held (in a zero-CPU task before the scorer) until the actor is dead, so exactly the first
    block is scored by the killed process and all the others by its replacement: no race decides the outcome.
    """
    import time

    rows_per_block, gate = 50, tmp_path / "actor-killed"
    rows = make_rows(8 * rows_per_block, seed=2)

    def hold_until_killed(batch: pa.Table) -> pa.Table:  # defined here: Ray ships it by value to its worker
        if min(batch.column("id").to_pylist()) >= rows_per_block:
            deadline = time.monotonic() + 120
            while not gate.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("the test never killed the actor")
                time.sleep(0.01)
        return batch

    held = ray.data.from_items(rows, override_num_blocks=8).map_batches(
        hold_until_killed, batch_size=None, batch_format="pyarrow", num_cpus=0, concurrency=1
    )
    scored = score_dataset(held, model_dir, actors=1, cpus_per_actor=2, batch_size=rows_per_block, pid_column="pid")
    batches, killed = [], None
    # no prefetching: the first block is handed over as soon as it is scored
    for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
        batches.append(batch)
        if killed is None:
            killed = batch.column("pid")[0].as_py()
            os.kill(killed, signal.SIGKILL)
            gate.touch()
    table = pa.concat_tables(batches)
    check_scores(table, rows, encoder)
    by_pid = Counter(table.column("pid").to_pylist())
    # every row is there once (check_scores), the killed process scored the first block only: its replacement
    # (another process) scored all the rest
    assert by_pid[killed] == rows_per_block and len(by_pid) >= 2, by_pid


def test_scorer_batch_formats_and_errors(model_dir, encoder):
    """The callable itself, outside Ray: pyarrow, pandas and numpy batches; clear errors for bad columns."""
    rows = make_rows(20, seed=3)
    expected = encoder.predict([(r["query"], r["passage"]) for r in rows])
    scorer = RayScorer(model_dir, threads=1, score_column="s")
    table = pa.Table.from_pylist(rows)
    np.testing.assert_allclose(scorer(table).column("s").to_numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(scorer(table.to_pandas())["s"].to_numpy(), expected, rtol=0, atol=1e-6)
    numpy_batch = {k: np.asarray([r[k] for r in rows]) for k in ("id", "query", "passage")}
    np.testing.assert_allclose(scorer(numpy_batch)["s"], expected, rtol=0, atol=1e-6)
    assert scorer(table.slice(0, 0)).num_rows == 0
    with pytest.raises(ScaleError, match=r"no column 'query'.*\['question', 'passage'\]"):
        scorer(pa.table({"question": ["a"], "passage": ["b"]}))
    with pytest.raises(ScaleError, match=r"column 'passage' row 1 of this batch is null"):
        scorer(pa.table({"query": ["a", "b"], "passage": ["b", None]}))
    with pytest.raises(ScaleError, match="already has a column 's'"):
        scorer(pa.table({"query": ["a"], "passage": ["b"], "s": [1.0]}))
    raw = RayScorer(model_dir, threads=1, raw_scores=True)(table).column("score").to_numpy()
    np.testing.assert_allclose(raw, encoder.predict([(r["query"], r["passage"]) for r in rows],
                                                  activation_fn="identity"), rtol=0, atol=1e-6)


def test_score_dataset_checks_the_model_folder_before_starting_actors(tmp_path, model_dir):
    with pytest.raises(ModelFolderError):
        score_dataset(None, tmp_path, actors=1)  # an empty folder: no manifest
    with pytest.raises(ScaleError, match="batch_size"):
        score_dataset(None, model_dir, batch_size=0)
