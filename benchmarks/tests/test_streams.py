"""OpenVINO streams (benchmarks/openvino_streams.py): the second compiled model has its streams, and batches run
with several in flight come back whole and in input order."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from crossonnx.bench.workloads import query_passage_pairs
from lab.engine_profile import open_openvino, workload_feeds
from lab.streams import compile_streams, median_ms, resident_mb, run_pipelined

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs crossonnx[openvino]")


@pytest.mark.parametrize("in_flight", [1, 2, 9])
def test_pipelined_outputs_match_the_engine_in_input_order(model_dir: Path, in_flight: int) -> None:
    engine = open_openvino(model_dir, "fp32", threads=2)
    feeds = workload_feeds(model_dir, engine, query_passage_pairs(10), batch_size=3)
    assert len({feed["input_ids"].shape for feed in feeds}) > 1, "batches of different shapes"
    compiled = compile_streams(model_dir, engine, streams=2)
    assert int(compiled.get_property("NUM_STREAMS")) == 2
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 2
    outputs = run_pipelined([compiled.create_infer_request() for _ in range(in_flight)], feeds)
    assert [out.shape for out in outputs] == [(len(feed["input_ids"]), 1) for feed in feeds]
    for out, feed in zip(outputs, feeds, strict=True):
        np.testing.assert_allclose(out, engine.run(feed), atol=1e-5)


def test_pipelined_runs_nothing_for_no_feeds(model_dir: Path) -> None:
    engine = open_openvino(model_dir, "fp32", threads=2)
    compiled = compile_streams(model_dir, engine, streams=2)
    assert run_pipelined([compiled.create_infer_request() for _ in range(2)], []) == []


def test_median_ms_and_resident_memory_are_measured() -> None:
    calls = []
    assert median_ms(lambda: calls.append(1), reps=4) >= 0
    assert len(calls) == 5, "one untimed call, then the timed ones"
    assert resident_mb() > 10
