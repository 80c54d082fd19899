"""The dynamic batcher with a real encoder: own results per request, merged model calls, a bounded queue.

The worker is held busy deterministically by a gate around ``encoder.logits`` (it blocks inside the call until the
test releases it), so what is queued behind it is known exactly; no sleeps decide an outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import pytest

from crossonnx.serve.batcher import BatchReport, Draining, DynamicBatcher, QueueFull, RequestTooLarge
from gated import GatedRunner
from pairs import parity_pairs

Pair = tuple[str, str]
WAIT_S = 30.0


@pytest.fixture(scope="module")
def requests_pairs() -> list[list[Pair]]:
    """Seven requests of 1-6 pairs each, from varied text."""
    pairs = parity_pairs(48)
    sizes = [3, 5, 1, 6, 2, 4, 3]
    out, start = [], 0
    for size in sizes:
        out.append(pairs[start : start + size])
        start += size
    return out


async def _until(predicate: Callable[[], bool]) -> None:
    """Wait (polling) until ``predicate`` holds; fails the test after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.002)


async def _hold_worker(batcher: DynamicBatcher, runner: GatedRunner, pairs: list[Pair]) -> asyncio.Task:
    """Submit ``pairs`` and wait until the worker is inside the (gated) runner with them."""
    task = asyncio.create_task(batcher.submit(pairs))
    assert await asyncio.to_thread(runner.entered.wait, WAIT_S)
    return task


def test_concurrent_submissions_get_their_own_results_in_fewer_calls(encoder, requests_pairs):
    runner = GatedRunner(encoder)
    reports: list[BatchReport] = []
    batcher = DynamicBatcher(runner, max_batch_pairs=256, max_queue_pairs=256, on_batch=reports.append)

    async def scenario() -> list[np.ndarray]:
        first = await _hold_worker(batcher, runner, requests_pairs[0])
        rest = [asyncio.create_task(batcher.submit(p)) for p in requests_pairs[1:]]
        await _until(lambda: batcher.queued_requests == len(rest))
        assert batcher.queued_pairs == sum(len(p) for p in requests_pairs[1:])
        runner.gate.set()
        return await asyncio.gather(first, *rest)

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.close(WAIT_S)
    # the blocker ran alone, the six queued requests were merged into one call
    assert runner.calls == [len(requests_pairs[0]), sum(len(p) for p in requests_pairs[1:])]
    for pairs, rows in zip(requests_pairs, results, strict=True):
        assert rows.shape == (len(pairs), 1)
        np.testing.assert_allclose(rows, encoder.logits(pairs), atol=1e-5, rtol=0)
    assert [r.requests for r in reports] == [1, len(requests_pairs) - 1]
    assert [r.pairs for r in reports] == runner.calls
    assert batcher.queued_pairs == 0 and batcher.running_pairs == 0


def test_merging_stops_at_max_batch_pairs_in_arrival_order(encoder):
    runner = GatedRunner(encoder)
    batcher = DynamicBatcher(runner, max_batch_pairs=4, max_queue_pairs=64)
    pairs = parity_pairs(16)
    jobs = [pairs[0:2], pairs[2:5], pairs[5:8], pairs[8:9]]

    async def scenario() -> list[np.ndarray]:
        first = await _hold_worker(batcher, runner, jobs[0])
        rest = [asyncio.create_task(batcher.submit(p)) for p in jobs[1:]]
        await _until(lambda: batcher.queued_requests == 3)
        runner.gate.set()
        return await asyncio.gather(first, *rest)

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.close(WAIT_S)
    assert runner.calls == [2, 3, 4]  # 3 + 3 > 4: the second queued job waits for the next call, then takes the 1
    for job, rows in zip(jobs, results, strict=True):
        np.testing.assert_allclose(rows, encoder.logits(job), atol=1e-5, rtol=0)


def test_full_queue_refuses_at_once_and_too_large_never_fits(encoder):
    runner = GatedRunner(encoder)
    batcher = DynamicBatcher(runner, max_batch_pairs=64, max_queue_pairs=4)
    pairs = parity_pairs(16)

    async def scenario() -> list[np.ndarray]:
        first = await _hold_worker(batcher, runner, pairs[0:3])  # taken by the worker: not queued any more
        queued = asyncio.create_task(batcher.submit(pairs[3:6]))
        await _until(lambda: batcher.queued_pairs == 3)
        with pytest.raises(QueueFull):
            await batcher.submit(pairs[6:8])  # 3 + 2 > 4
        with pytest.raises(RequestTooLarge):
            await batcher.submit(pairs[0:5])  # more than the whole queue
        fits = asyncio.create_task(batcher.submit(pairs[8:9]))  # 3 + 1 = 4
        await _until(lambda: batcher.queued_pairs == 4)
        runner.gate.set()
        return await asyncio.gather(first, queued, fits)

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.close(WAIT_S)
    for job, rows in zip([pairs[0:3], pairs[3:6], pairs[8:9]], results, strict=True):
        np.testing.assert_allclose(rows, encoder.logits(job), atol=1e-5, rtol=0)


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on(encoder):
    runner = GatedRunner(encoder, fail_on="POISON")
    runner.gate.set()
    batcher = DynamicBatcher(runner, max_batch_pairs=64, max_queue_pairs=64)
    good = parity_pairs(8)[:2]

    async def scenario() -> np.ndarray:
        with pytest.raises(ValueError, match="poisoned"):
            await batcher.submit([("POISON", "text")])
        return await batcher.submit(good)

    try:
        rows = asyncio.run(scenario())
    finally:
        batcher.close(WAIT_S)
    np.testing.assert_allclose(rows, encoder.logits(good), atol=1e-5, rtol=0)


def test_cancelled_request_frees_its_room(encoder):
    runner = GatedRunner(encoder)
    batcher = DynamicBatcher(runner, max_batch_pairs=64, max_queue_pairs=4)
    pairs = parity_pairs(16)

    async def scenario() -> np.ndarray:
        first = await _hold_worker(batcher, runner, pairs[0:1])
        doomed = asyncio.create_task(batcher.submit(pairs[1:4]))
        await _until(lambda: batcher.queued_pairs == 3)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert batcher.queued_pairs == 0
        later = asyncio.create_task(batcher.submit(pairs[4:8]))  # 4 pairs: fits only because the 3 were freed
        await _until(lambda: batcher.queued_pairs == 4)
        runner.gate.set()
        await first
        return await later

    try:
        rows = asyncio.run(scenario())
    finally:
        batcher.close(WAIT_S)
    assert runner.calls == [1, 4]
    np.testing.assert_allclose(rows, encoder.logits(pairs[4:8]), atol=1e-5, rtol=0)


def test_close_finishes_queued_work_then_refuses(encoder):
    runner = GatedRunner(encoder)
    batcher = DynamicBatcher(runner, max_batch_pairs=2, max_queue_pairs=64)
    pairs = parity_pairs(16)

    async def scenario() -> list[np.ndarray]:
        first = await _hold_worker(batcher, runner, pairs[0:2])
        queued = asyncio.create_task(batcher.submit(pairs[2:4]))
        await _until(lambda: batcher.queued_requests == 1)
        closing = asyncio.create_task(asyncio.to_thread(batcher.close, WAIT_S))
        await _until(lambda: not batcher.accepting)
        with pytest.raises(Draining):
            await batcher.submit(pairs[4:5])
        runner.gate.set()
        assert await closing  # the worker finished the queue and stopped
        return await asyncio.gather(first, queued)

    results = asyncio.run(scenario())
    assert runner.calls == [2, 2]
    np.testing.assert_allclose(results[1], encoder.logits(pairs[2:4]), atol=1e-5, rtol=0)
