"""The OpenVINO engine profile (benchmarks/engine_profile.py): its operation counts and its time split, on the real
reference model's export."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from crossonnx.bench.workloads import query_passage_pairs
from crossonnx.manifest import load_manifest
from lab.engine_profile import (
    KINDS,
    float_matmul_names,
    forward_work,
    kind_of,
    kind_rates,
    open_openvino,
    profile_engine,
    workload_feeds,
)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs crossonnx[openvino]")


def test_operation_counts_match_the_architecture_with_a_cls_only_last_layer(reference_export: Path) -> None:
    manifest = load_manifest(reference_export)
    arch = manifest.architecture
    hidden, inner, layers = int(arch["hidden_size"]), int(arch["intermediate_size"]), int(arch["num_hidden_layers"])
    labels = int(manifest.num_labels)
    rows, length = 3, 17
    work = forward_work(reference_export / manifest.entry("fp32").file, {(rows, length)})[(rows, length)]
    tokens = rows * length
    full_layer = 4 * hidden * hidden + 2 * hidden * inner
    # the last layer keeps key and value for every token, and the rest for the [CLS] rows only; then the head
    expected = 2 * (tokens * (layers - 1) * full_layer + tokens * 2 * hidden * hidden
                    + rows * (2 * hidden * hidden + 2 * hidden * inner) + rows * (hidden * hidden + hidden * labels))
    assert sum(work.matmuls.values()) == pytest.approx(expected, rel=1e-9)
    attention = 2 * 2 * rows * hidden * length * (length * (layers - 1) + 1)
    assert work.attention == pytest.approx(attention, rel=1e-9)
    assert max(work.matmul_shapes, key=lambda s: s[0] * s[1]) in ((hidden, inner), (inner, hidden))


def test_int8_static_profile_splits_matmuls_as_its_plan_says(reference_export: Path) -> None:
    manifest = load_manifest(reference_export)
    plan = manifest.entry("int8-static").details
    engine = open_openvino(reference_export, "int8-static", threads=1)
    feeds = workload_feeds(reference_export, engine, query_passage_pairs(12), batch_size=4)
    assert [len(feed["input_ids"]) for feed in feeds] == [4, 4, 4]
    profile = profile_engine(reference_export, engine, feeds, reps=1)
    assert set(profile["ms"]) == set(KINDS) and all(ms > 0 for ms in profile["ms"].values())
    assert profile["wall_ms"] > 0 and profile["settled_wall_ms"] > 0
    shapes = [tuple(feed["input_ids"].shape) for feed in feeds]
    per_shape = forward_work(reference_export / manifest.entry("fp32").file, set(shapes))
    work = [per_shape[shape] for shape in shapes]
    float_names = float_matmul_names(plan)
    assert profile["matmul_layers"] == {"int8 matmul": plan["quantized_matmuls"],
                                        "float matmul": len(plan["float_matmuls"])}
    assert float_names <= set(work[0].matmuls), "the plan's float MatMuls are weight MatMuls of the fp32 graph"
    rates = kind_rates(profile, work, float_names)
    assert set(rates) == {"int8 matmul", "float matmul", "attention"}
    assert sum(rate["gops"] for rate in rates.values()) * 1e9 == pytest.approx(
        sum(sum(w.matmuls.values()) + w.attention for w in work), rel=1e-9)
    assert rates["float matmul"]["gops"] * 1e9 == pytest.approx(
        sum(count for w in work for name, count in w.matmuls.items() if name in float_names), rel=1e-9)


def test_int8_dynamic_runs_every_encoder_matmul_in_int8(reference_export: Path) -> None:
    plan = load_manifest(reference_export).entry("int8-dynamic").details
    engine = open_openvino(reference_export, "int8-dynamic", threads=1)
    profile = profile_engine(reference_export, engine, workload_feeds(
        reference_export, engine, query_passage_pairs(4), batch_size=4), reps=1)
    assert profile["matmul_layers"] == {"int8 matmul": plan["int8_matmuls"], "float matmul": 2}  # the head


def test_layer_kinds() -> None:
    assert kind_of("FullyConnected", "u8", "MatMul_188,Add_189") == "int8 matmul"
    assert kind_of("FullyConnectedQuantizedLegacy", "i8", "") == "int8 matmul"
    assert kind_of("FullyConnected", "bf16", "") == "float matmul"
    assert kind_of("Subgraph", "bf16", "MatMul_1,Softmax_2,MatMul_3") == "attention"
    assert kind_of("Subgraph", "bf16", "Add_1,Multiply_2") == "other"
    assert kind_of("MVN", "bf16", "") == "other"
