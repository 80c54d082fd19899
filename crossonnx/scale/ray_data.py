"""Ray Data integration: score (query, passage) rows of a ``ray.data.Dataset`` on an actor pool.

    import ray
    from crossonnx.scale.ray_data import score_dataset

    ds = ray.data.read_parquet("s3://bucket/pairs/")
    scored = score_dataset(ds, "/shared/models/ms-marco-MiniLM-L-6", precision="int8", actors=8, cpus_per_actor=4)
    scored.write_parquet("s3://bucket/scored/")

Each actor loads the model folder once (one ONNX Runtime session with as many intra-op threads as CPUs Ray
assigned to the actor) and adds a score column to every batch it is given. Actors restart and their tasks are
retried when a worker dies (``max_restarts=-1``, ``max_task_retries=-1``), and the dataset keeps its row order
(``preserve_order``), so the output holds every input row once, scored as ``CrossEncoder.predict`` scores it.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crossonnx.long_documents import LongDocuments
from crossonnx.precisions import DEFAULT_PRECISION
from crossonnx.scale import ScaleError, require

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger("crossonnx")
DEFAULT_ROWS_PER_BATCH = 1024  # rows per map_batches call: large enough to amortize Ray's per-call cost


def actor_cpus() -> int:
    """CPUs Ray assigned to the calling actor or task (at least 1); 1 when none were reserved or outside Ray."""
    try:
        import ray
    except ImportError:
        return 1
    if not ray.is_initialized():
        return 1
    try:
        cpus = float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
    except Exception:  # not in a worker (the driver): nothing is assigned
        cpus = 0.0
    return max(1, int(cpus))


def _texts(values: list[Any], column: str) -> list[str]:
    for index, value in enumerate(values):
        if not isinstance(value, str):
            kind = "null" if value is None else type(value).__name__
            raise ScaleError(
                f"column {column!r} row {index} of this batch is {kind} ({value!r:.60}), expected a string; "
                "every row needs a query and a passage text"
            )
    return values


class RayScorer:
    """A callable class for ``Dataset.map_batches``: one ``CrossEncoder`` per actor, loaded once.

    ``__call__`` takes a batch (pyarrow Table, pandas DataFrame or dict of numpy arrays) with the query and
    passage columns and returns it with ``score_column`` added (float32; a fixed-size list per row for
    multi-label models). ``threads`` defaults to the CPUs Ray assigned to the actor. ``long_documents``:
    ``"truncate"`` (default), ``"chunk"`` or a ``LongDocuments``, as in ``CrossEncoder.predict`` (a capped
    passage is logged by each actor). ``pid_column``, if set,
    also adds the id of the process that scored each row (to see how work was spread, or which actor to kill
    in a fault-tolerance test).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        precision: str = DEFAULT_PRECISION,
        provider: str = "cpu",
        threads: int | None = None,
        query_column: str = "query",
        passage_column: str = "passage",
        score_column: str = "score",
        batch_size: int = 32,
        raw_scores: bool = False,
        pid_column: str | None = None,
        long_documents: str | LongDocuments = "truncate",
    ):
        from crossonnx.encoder import CrossEncoder

        self.long_documents = LongDocuments.of(long_documents)
        self.threads = threads if threads is not None else actor_cpus()
        self.encoder = CrossEncoder(model_dir, precision=precision, provider=provider, threads=self.threads)
        self.query_column, self.passage_column, self.score_column = query_column, passage_column, score_column
        self.batch_size = batch_size
        self.activation = "identity" if raw_scores else None
        self.pid_column = pid_column
        self.pid = os.getpid()

    def info(self) -> dict[str, Any]:
        """The encoder's settings (threads, precision, ...) and this process's id."""
        return {**self.encoder.info(), "pid": self.pid}

    def score(self, queries: list[Any], passages: list[Any]) -> np.ndarray:
        """Scores of the pairs (query[i], passage[i]), as ``CrossEncoder.predict`` returns them."""
        pairs = list(zip(_texts(queries, self.query_column), _texts(passages, self.passage_column), strict=True))
        if not pairs:
            shape = (0,) if self.encoder.num_labels == 1 else (0, self.encoder.num_labels)
            return np.empty(shape, dtype=np.float32)
        scores = self.encoder.predict(pairs, batch_size=self.batch_size, activation_fn=self.activation,
                                      long_documents=self.long_documents)
        return np.asarray(scores, dtype=np.float32)

    def _column(self, names: list[str], name: str) -> None:
        if name not in names:
            flag = "query_column" if name == self.query_column else "passage_column"
            raise ScaleError(f"no column {name!r} in the batch; its columns are: {names}. Pass {flag}=")
        if self.score_column in names:
            raise ScaleError(f"the batch already has a column {self.score_column!r}; pass score_column=")

    def __call__(self, batch: Any) -> Any:
        pa = require("pyarrow", "pyarrow", "the Ray Data integration")
        if isinstance(batch, pa.Table):
            for name in (self.query_column, self.passage_column):
                self._column(batch.column_names, name)
            scores = self.score(batch.column(self.query_column).to_pylist(),
                                batch.column(self.passage_column).to_pylist())
            values = pa.array(scores.reshape(-1), type=pa.float32())
            if scores.ndim > 1:
                values = pa.FixedSizeListArray.from_arrays(values, scores.shape[1])
            batch = batch.append_column(self.score_column, values)
            if self.pid_column:
                batch = batch.append_column(self.pid_column, pa.array([self.pid] * batch.num_rows, pa.int64()))
            return batch
        if isinstance(batch, dict):  # batch_format="numpy"
            for name in (self.query_column, self.passage_column):
                self._column(list(batch), name)
            out = dict(batch)
            out[self.score_column] = self.score(list(batch[self.query_column]), list(batch[self.passage_column]))
            if self.pid_column:
                out[self.pid_column] = np.full(len(out[self.score_column]), self.pid, dtype=np.int64)
            return out
        if hasattr(batch, "assign") and hasattr(batch, "columns"):  # batch_format="pandas"
            for name in (self.query_column, self.passage_column):
                self._column(list(batch.columns), name)
            scores = self.score(batch[self.query_column].tolist(), batch[self.passage_column].tolist())
            out = batch.assign(**{self.score_column: list(scores) if scores.ndim > 1 else scores})
            if self.pid_column:
                out[self.pid_column] = self.pid
            return out
        raise ScaleError(f"RayScorer takes pyarrow, pandas or numpy batches, got {type(batch).__name__}")


def score_dataset(
    ds: ray.data.Dataset,
    model_dir: str | Path,
    *,
    precision: str = DEFAULT_PRECISION,
    provider: str = "cpu",
    actors: int | tuple[int, int] = 1,
    cpus_per_actor: float = 1,
    batch_size: int = DEFAULT_ROWS_PER_BATCH,
    model_batch_size: int = 32,
    query_column: str = "query",
    passage_column: str = "passage",
    score_column: str = "score",
    raw_scores: bool = False,
    threads: int | None = None,
    pid_column: str | None = None,
    preserve_order: bool = True,
    long_documents: str | LongDocuments = "truncate",
    **ray_remote_args: Any,
) -> ray.data.Dataset:
    """``ds`` with a score column, computed by ``actors`` actors of ``cpus_per_actor`` CPUs each (lazy).

    ``batch_size`` is rows per ``map_batches`` call, ``model_batch_size`` pairs per model run (windows, with
    ``long_documents="chunk"`` or ``LongDocuments("chunk", ...)``, which score long passages in windows).
    ``model_dir`` must exist at the same path on every node that runs an actor (shared storage, or copied to each
    node); a relative path is made absolute here. ``actors`` may be ``(min, max)`` for an autoscaling pool. Actors
    restart and tasks are retried when a worker dies, and ``preserve_order`` (set on the ``DataContext``
    that ``ds`` and the result share) keeps the input's row order. Extra keyword arguments go to ``map_batches``
    as Ray remote arguments (e.g. ``memory=``, ``num_gpus=`` with ``provider="cuda"``).

    A fixed pool takes ``actors * cpus_per_actor`` CPUs for the whole job: leave CPUs free for the dataset's
    read and write tasks, and give the dataset at least as many blocks as actors (a block goes to one actor).
    """
    require("ray", "ray[data]", "the Ray Data integration")
    options = LongDocuments.of(long_documents)  # here, not in every actor
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ScaleError(f"batch_size must be a positive integer, got {batch_size!r}")
    if cpus_per_actor <= 0:
        raise ScaleError(f"cpus_per_actor must be positive, got {cpus_per_actor!r}")
    folder = Path(os.path.abspath(os.path.expanduser(str(model_dir))))
    if folder.exists():  # fail here rather than in every actor (on a cluster it may exist only on the workers)
        from crossonnx.manifest import load_manifest

        load_manifest(folder).entry(precision)
    import ray.data

    fixed = actors[1] if isinstance(actors, tuple) else actors
    total = float(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else 0.0
    if total and fixed * cpus_per_actor >= total:
        logger.warning(
            "crossonnx: %s actor(s) x %s CPU take all %g CPUs of the cluster; leave some for the dataset's read and "
            "write tasks, or the job can stall waiting for a free CPU", fixed, cpus_per_actor, total,
        )
    compute = (
        ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1])
        if isinstance(actors, tuple)
        else ray.data.ActorPoolStrategy(size=actors)
    )
    # Restart dead actors and retry their tasks without limit (Ray Data's default for actor pools too; explicit
    # here because correctness under worker loss depends on it). Ray 2.5x deprecates passing remote arguments
    # as keywords (they still work); its warning is silenced here.
    remote_args = {"max_restarts": -1, "max_task_retries": -1, **ray_remote_args}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        scored = ds.map_batches(
            RayScorer,
            fn_constructor_kwargs={
                "model_dir": str(folder),
                "precision": precision,
                "provider": provider,
                "threads": threads,
                "query_column": query_column,
                "passage_column": passage_column,
                "score_column": score_column,
                "batch_size": model_batch_size,
                "raw_scores": raw_scores,
                "pid_column": pid_column,
                "long_documents": options,
            },
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=compute,
            num_cpus=cpus_per_actor,
            **remote_args,
        )
    if preserve_order:
        scored.context.execution_options.preserve_order = True
    return scored
