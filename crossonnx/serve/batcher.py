"""Dynamic batching across requests: a bounded queue of pairs and one inference worker thread.

Requests submit their pairs from the event loop; the worker thread takes queued requests in arrival order, merges
them into one call of ``runner`` (``CrossEncoder.logits``, which sorts by length and cuts model batches by the
token budget) up to ``max_batch_pairs`` pairs, splits the result rows back and resolves each request's future on
its own loop with ``call_soon_threadsafe``. Nothing waits for a batch to fill: while the worker runs a batch, new
requests queue up and form the next one, so a lone request runs at once and a busy server runs large batches.

A submission may name its own runner (e.g. one that truncates from the left): it merges only with the queued
requests that name the same one, in arrival order.

The queue is bounded in pairs. A submission that does not fit fails at once (``QueueFull``; one larger than the
whole queue: ``RequestTooLarge``) instead of growing memory; after ``close`` submissions fail with ``Draining``.
Pure asyncio and threading: no web framework here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger("crossonnx.serve")

Pair = tuple[str, str]
Runner = Callable[[list[Pair]], np.ndarray]


class BatcherError(Exception):
    """A submission the batcher refused; nothing was queued."""


class QueueFull(BatcherError):
    """The queue has no room for these pairs now (HTTP 429)."""


class RequestTooLarge(BatcherError):
    """More pairs than the whole queue holds: this request can never be accepted (HTTP 413)."""


class Draining(BatcherError):
    """The batcher is closed or closing (HTTP 503)."""


@dataclass
class BatchReport:
    """What one merged model call did, for metrics."""

    pairs: int
    requests: int
    seconds: float  # time in the runner
    queue_waits: list[float]  # seconds each merged request waited in the queue
    failed: bool = False


@dataclass(eq=False)
class _Job:
    pairs: Sequence[Pair]
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)
    runner: Runner | None = None  # None: the batcher's own


def _settle(future: asyncio.Future[np.ndarray], result: np.ndarray | None, error: BaseException | None) -> None:
    """Runs on the job's loop: the request may have been cancelled meanwhile."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class DynamicBatcher:
    """Merges concurrent requests into few ``runner`` calls on one worker thread, with a bounded pair queue."""

    def __init__(
        self,
        runner: Runner,
        max_batch_pairs: int = 256,
        max_queue_pairs: int = 4096,
        on_batch: Callable[[BatchReport], None] | None = None,
        name: str = "crossonnx-batcher",
    ):
        if max_batch_pairs < 1 or max_queue_pairs < 1:
            raise ValueError("max_batch_pairs and max_queue_pairs must be positive")
        self.runner = runner
        self.max_batch_pairs = max_batch_pairs
        self.max_queue_pairs = max_queue_pairs
        self.on_batch = on_batch
        self.name = name
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._queued_pairs = 0
        self._running_pairs = 0
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- state, read by metrics and health checks ------------------------------------------------------------
    @property
    def queued_pairs(self) -> int:
        """Pairs waiting for the worker."""
        return self._queued_pairs

    @property
    def queued_requests(self) -> int:
        """Requests waiting for the worker."""
        return len(self._queue)

    @property
    def running_pairs(self) -> int:
        """Pairs in the model call now running (0 when idle)."""
        return self._running_pairs

    @property
    def accepting(self) -> bool:
        return self._accepting

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new submissions, let the worker finish what is queued, and stop it.

        Returns False when the worker was still busy after ``timeout`` seconds; requests still queued then are
        failed with ``Draining``.
        """
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._fail_queued(Draining("the server stopped before this request was scored"))
        return thread is None or not thread.is_alive()

    def _fail_queued(self, error: BaseException) -> None:
        with self._cond:
            jobs = list(self._queue)
            self._queue.clear()
            self._queued_pairs = 0
        for job in jobs:
            self._resolve(job, None, error)

    # -- submission (event loop side) ------------------------------------------------------------------------
    async def submit(self, pairs: Sequence[Pair], runner: Runner | None = None) -> np.ndarray:
        """Queue ``pairs`` and wait for their runner output rows (in order); refuses at once when full.

        ``runner`` (default: the batcher's) scores them; only requests with the same runner are merged.
        """
        loop = asyncio.get_running_loop()
        job = _Job(pairs, loop.create_future(), loop, runner=runner)
        count = len(pairs)
        if self._thread is None and self._accepting:  # normally started by the app's lifespan
            self.start()
        with self._cond:
            if not self._accepting:
                raise Draining("the server is shutting down")
            if count > self.max_queue_pairs:
                raise RequestTooLarge(
                    f"{count} pairs is more than the whole queue holds ({self.max_queue_pairs} pairs)"
                )
            if self._queued_pairs + count > self.max_queue_pairs:
                raise QueueFull(
                    f"the queue is full ({self._queued_pairs} of {self.max_queue_pairs} pairs waiting); retry later"
                )
            self._queue.append(job)
            self._queued_pairs += count
            self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            with self._cond:
                if job in self._queue:  # not taken yet: free its room
                    self._queue.remove(job)
                    self._queued_pairs -= count
            raise

    # -- the worker thread -----------------------------------------------------------------------------------
    def _take(self) -> list[_Job] | None:
        """The next batch: queued jobs in order while they fit ``max_batch_pairs`` and share the first one's runner
        (at least one job); None to stop."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            total = len(batch[0].pairs)
            while (self._queue and total + len(self._queue[0].pairs) <= self.max_batch_pairs
                   and self._queue[0].runner is batch[0].runner):
                job = self._queue.popleft()
                batch.append(job)
                total += len(job.pairs)
            self._queued_pairs -= total
            self._running_pairs = total
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            started = time.perf_counter()
            pairs = [pair for job in batch for pair in job.pairs]
            output: np.ndarray | None = None
            error: BaseException | None = None
            try:
                output = (batch[0].runner or self.runner)(pairs)
                if len(output) != len(pairs):
                    raise RuntimeError(f"the runner returned {len(output)} rows for {len(pairs)} pairs")
            except Exception as exc:  # the requests of this batch get the error; the worker goes on
                logger.exception("scoring a batch of %d pairs failed", len(pairs))
                error = exc
            seconds = time.perf_counter() - started
            with self._cond:
                self._running_pairs = 0
            if self.on_batch is not None:  # before the answers, so that a client that got its scores sees the batch
                try:
                    self.on_batch(
                        BatchReport(len(pairs), len(batch), seconds, [started - job.enqueued for job in batch],
                                    failed=error is not None)
                    )
                except Exception:
                    logger.exception("the on_batch callback failed")
            offset = 0
            for job in batch:
                rows = None if output is None else output[offset : offset + len(job.pairs)]
                offset += len(job.pairs)
                self._resolve(job, rows, error)

    @staticmethod
    def _resolve(job: _Job, rows: np.ndarray | None, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # RuntimeError: the loop is closed, nobody is waiting any more
            job.loop.call_soon_threadsafe(_settle, job.future, rows, error)
