"""One OpenVINO stream with every thread (the runtime engine) against several streams with a share each.

OpenVINO's CPU plugin can split its threads into streams, each running its own infer request. With two streams of
one thread each and two batches in flight, no layer waits for the other thread, which can raise throughput; but a
lone batch then runs on one thread, and a second compiled model for it costs memory. This module measures both
sides on the runtime's own graph and compile options, for benchmarks/openvino_streams.py (why the runtime keeps one
stream: docs/design/openvino-streams.md).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.engines.openvino import OpenVinoEngine

Feed = dict[str, np.ndarray]


def compile_streams(model_dir: Path, engine: OpenVinoEngine, streams: int) -> Any:
    """``engine``'s graph compiled with its own options, but its threads split over ``streams`` streams."""
    import openvino as ov

    config = {key: value for key, value in engine.config.items() if key != "PERFORMANCE_HINT"}
    config["NUM_STREAMS"] = int(streams)
    return ov.Core().compile_model(str(model_dir / engine.graph_file), "CPU", config)


def run_pipelined(requests: list[Any], feeds: list[Feed]) -> list[np.ndarray]:
    """Each feed's output, in order, with up to ``len(requests)`` feeds running at once: the infer requests (of one
    compiled model, made once by the caller) are taken in turn, so the streams stay busy while outputs are read back
    in input order."""
    results: list[np.ndarray] = []

    def collect(request: Any) -> None:
        request.wait()
        results.append(np.array(request.get_output_tensor(0).data, dtype=np.float32))

    for index, feed in enumerate(feeds):
        request = requests[index % len(requests)]
        if index >= len(requests):  # this request still holds feed index - len(requests)
            collect(request)
        request.start_async(feed)
    for index in range(max(0, len(feeds) - len(requests)), len(feeds)):
        collect(requests[index % len(requests)])
    return results


def median_ms(run: Callable[[], object], reps: int) -> float:
    """Median wall time of ``run()`` over ``reps`` calls, after one untimed call."""
    run()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def resident_mb() -> float:
    """This process's resident memory now, in MiB (Linux ``/proc/self/status``; NaN elsewhere)."""
    from crossonnx.bench.machine import process_memory_mb

    rss = process_memory_mb("VmRSS")
    return float("nan") if rss is None else rss
