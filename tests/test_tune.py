"""``crossonnx tune``: it measures every variant a folder holds and this machine runs (real sessions on the tiny
exports), stores the result under a key of the folder, CPU, threads and library versions, and CrossEncoder's levels,
``provider="auto"`` and ``token_budget="auto"`` follow a stored result for the workload asked for, and the static
rules where none matches. No timing is asserted: the choices tested here come from results written with chosen
speeds through the same ``store``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossonnx import tune as tuning
from crossonnx.cli import main
from crossonnx.encoder import CrossEncoder
from crossonnx.engines import openvino_installed
from crossonnx.levels import LEVELS, Machine, resolve_level
from crossonnx.manifest import MANIFEST_NAME, load_manifest
from crossonnx.tune import (
    TuneResult,
    VariantSpeed,
    ensure_tuned,
    load_tuned,
    runnable_variants,
    store,
    tune,
    tune_key,
    tuned_path,
)

needs_openvino = pytest.mark.skipif(not openvino_installed(), reason="the choice between engines needs OpenVINO")
PAIRS = [("a query", "a passage about it"), ("another query", "something else entirely")]


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own: a tuned result must never reach another test's encoders."""
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CROSSONNX_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def folder(tiny_exports) -> Path:
    return tiny_exports["bert"]


def speed(provider: str, precision: str, pairs_per_s: float, p50_ms: float, budget: int = 2048) -> VariantSpeed:
    return VariantSpeed(provider, precision, pairs_per_s, budget, {budget: pairs_per_s}, p50_ms, 20)


def stored(folder: Path, threads: int, *variants: VariantSpeed) -> TuneResult:
    """A result for ``folder`` on this machine, with the speeds given, written by ``store`` as ``tune`` writes it."""
    key, identity = tune_key(load_manifest(folder), threads)
    result = TuneResult(key, identity, variants, threads, 1.0, "2026-01-01 00:00:00 UTC", str(folder))
    return replace(result, path=store(result))


# --- measuring ---------------------------------------------------------------------------------------------------


def test_tune_measures_every_runnable_variant_and_stores_it_under_its_key(folder, own_cache):
    manifest = load_manifest(folder)
    messages: list[str] = []
    result = tune(folder, seconds=1, threads=1, log=messages.append)
    measured = [(v.provider, v.precision) for v in result.variants]
    assert measured == runnable_variants(manifest, Machine.probe()) and ("cpu", "fp32") in measured
    for v in result.variants:
        assert v.pairs_per_s > 0 and v.latency_ms_p50 > 0 and v.latency_calls >= tuning.MIN_LATENCY_CALLS
        assert v.pairs_per_s == v.pairs_per_s_by_budget[v.token_budget] and 1 <= len(v.pairs_per_s_by_budget) <= 3
    assert result.path == tuned_path(result.key) and result.path.parent == own_cache / "tuned"
    assert result.identity["threads"] == 1 and result.identity["cpu"] and result.identity["flags"]
    assert {"crossonnx", "onnxruntime", "openvino"} <= set(result.identity["versions"])
    assert load_tuned(manifest, 1) == result  # found again, whole
    assert load_tuned(manifest, 2) is None  # another thread count is another key
    assert any(m.startswith("loading cpu/fp32") for m in messages)
    assert not list(result.path.parent.glob(".*tmp"))  # no temporary file left beside it


def test_ensure_tuned_measures_only_where_nothing_matches(folder):
    fake = stored(folder, 1, speed("cpu", "fp32", 100.0, 2.0))
    assert ensure_tuned(folder, threads=1, seconds=1) == fake  # found: nothing measured
    measured = ensure_tuned(folder, threads=2, seconds=1)  # none for two threads: measured and stored
    assert measured.threads == 2 and measured.measured != fake.measured and len(measured.variants) > 1
    assert load_tuned(load_manifest(folder), 2) == measured


SIGNAL_AFTER_TUNE = """
import os, signal, sys, time
from crossonnx.tune import tune
tune(sys.argv[1], seconds=1, threads=1)
caught = []
signal.signal(signal.SIGTERM, lambda *_: caught.append(1))
for _ in range(20):  # a server's SIGTERM, taken by the thread that loaded the variants
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)
print(len(caught))
"""


@needs_openvino
def test_a_process_that_tuned_survives_a_signal(folder, own_cache):
    # OpenVINO's CPU plugin swaps the loading thread's alternate signal stack per compiled model and puts the one
    # before back when the model is freed: freed in loading order, the thread kept a freed stack and the next signal
    # (serve's SIGTERM after tuning) crashed the process
    done = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_TUNE, str(folder)], capture_output=True, text=True,
                          env={**os.environ, "CROSSONNX_CACHE": str(own_cache)}, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "20"), done.stderr[-2000:]


def test_budgets_that_batch_alike_are_measured_once():
    lengths = [np.full(32, 100)]  # 32 pairs of 100 tokens: past 3200 tokens the 32-row cap decides
    assert list(tuning._distinct({4096, 8192, 16384}, 8192, lengths)) == [8192]
    assert list(tuning._distinct({1024, 2048, 4096}, 2048, lengths)) == [1024, 2048, 4096]
    assert list(tuning._distinct({4096, 8192}, 2048, lengths)) == [4096]  # the engine's own not among them


@settings(max_examples=60, deadline=None, database=None)
@given(chunks=st.lists(st.lists(st.integers(3, 512), min_size=1, max_size=40), min_size=1, max_size=4),
       own=st.sampled_from([2048, 8192]))
def test_the_engines_own_budget_is_always_measured(chunks, own):
    budgets = {own // 2, own, own * 2}
    kept = tuning._distinct(budgets, own, [np.asarray(c) for c in chunks])
    assert own in kept and set(kept) <= budgets and all(totals == [0, 0.0] for totals in kept.values())


def test_tune_refuses_what_it_cannot_measure(folder, tmp_path):
    for seconds in (0, -1, float("nan"), float("inf"), True, "60"):
        with pytest.raises(ValueError, match="seconds must be a positive number"):
            tune(folder, seconds=seconds)
    manifest = load_manifest(folder)
    only_openvino = replace(manifest, precisions={k: v for k, v in manifest.precisions.items()
                                                  if k in ("int8-static", "int8-dynamic")})
    assert runnable_variants(only_openvino, Machine(openvino=False, bf16=False)) == []
    assert runnable_variants(manifest, Machine(openvino=False, bf16=False)) == [
        ("cpu", name) for name in manifest.precisions if name in ("fp32", "fp16", "int8")]


# --- using a stored result ---------------------------------------------------------------------------------------


@needs_openvino
def test_a_level_and_auto_follow_the_stored_speeds_for_the_workload(folder):
    # OpenVINO's fp32 is the faster engine for throughput, ONNX Runtime's for batch-1 latency
    result = stored(folder, 1, speed("cpu", "fp32", 100.0, 2.0), speed("openvino", "fp32", 200.0, 5.0, budget=4096))
    model = CrossEncoder(folder, precision="exact", threads=1)
    level = model.info()["level"]
    assert (model.provider, model.precision) == ("openvino", "fp32")
    assert level["basis"] == "tuned" and "200 pairs/s" in level["reason"]
    assert model.info()["tuned"] == {"workload": "throughput", "file": str(result.path), "measured": result.measured}
    assert model.token_budget == 4096  # the measured best budget, as token_budget="auto"
    assert CrossEncoder(folder, precision="exact", threads=1, token_budget=512).token_budget == 512  # asked for

    fast = CrossEncoder(folder, precision="exact", threads=1, workload="latency")
    assert (fast.provider, fast.token_budget) == ("cpu", 2048)
    assert fast.info()["level"]["basis"] == "tuned" and "500 batch-1 calls/s" in fast.info()["level"]["reason"]

    auto = CrossEncoder(folder, precision="fp32", threads=1)  # a precision with provider="auto"
    assert auto.provider == "openvino" and auto.provider_reason.startswith("tuned for throughput: fp32")
    assert CrossEncoder(folder, precision="fp32", threads=1, workload="latency").provider == "cpu"
    assert CrossEncoder(folder, precision="fp32", provider="cpu", threads=1).provider == "cpu"  # named: kept
    # the tuned pick scores as the same variant named by hand
    assert model.predict(PAIRS).tolist() == CrossEncoder(
        folder, precision="fp32", provider="openvino", threads=1, workload=None).predict(PAIRS).tolist()

    static = CrossEncoder(folder, precision="exact", threads=1, workload=None)  # ignoring it: the static rule
    assert (static.provider, static.info()["level"]["basis"], static.info()["tuned"]) == ("cpu", "static rule", None)
    assert CrossEncoder(folder, precision="exact", threads=2).info()["level"]["basis"] == "static rule"  # not tuned


def test_without_a_result_the_static_rules_decide(folder):
    model = CrossEncoder(folder, precision="exact", threads=1)
    assert model.info()["tuned"] is None and model.info()["level"]["basis"] == "static rule"
    assert model.provider == "cpu" and model.token_budget == 2048
    assert CrossEncoder(folder, precision="fp32", threads=1).provider_reason.startswith("auto:")


def test_a_variant_that_no_longer_runs_here_or_was_not_measured_is_left_to_the_static_rule(folder):
    stored(folder, 1, speed("cpu", "int8", 900.0, 1.0), speed("cuda", "fp32", 5000.0, 0.5))
    model = CrossEncoder(folder, precision="fp32", threads=1)  # fp32 measured only on a GPU this box lacks
    assert model.provider == "cpu" and model.provider_reason.startswith("auto:")
    assert model.token_budget == 2048  # no measurement of cpu/fp32: the engine's own
    assert CrossEncoder(folder, precision="int8", threads=1).provider_reason.startswith("tuned for throughput")


@needs_openvino
def test_a_stale_result_is_ignored(folder, tmp_path, monkeypatch, caplog):
    stored(folder, 1, speed("cpu", "fp32", 100.0, 2.0), speed("openvino", "fp32", 200.0, 1.0))
    assert CrossEncoder(folder, precision="exact", threads=1).provider == "openvino"

    # the folder changed (re-exported: another checksum in its manifest)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    assert load_tuned(load_manifest(copy), 1) is not None  # an unchanged copy shares the result
    data["precisions"]["int8"]["sha256"] = "0" * 64
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    changed = CrossEncoder(copy, precision="exact", threads=1)
    assert (changed.provider, changed.info()["tuned"], changed.info()["level"]["basis"]) == ("cpu", None,
                                                                                           "static rule")

    # another CPU, or another library version
    real = tuning.machine_identity()
    other_cpu = {**real, "flags": [*real["flags"], "amx_bf16"]}
    other_versions = {**real, "versions": {**real["versions"], "onnxruntime": "0.0.1"}}
    for identity in (other_cpu, {**real, "cpu": "another CPU"}, other_versions):
        with monkeypatch.context() as patch:  # what this machine reports, not the lookup under test
            patch.setattr(tuning, "machine_identity", lambda identity=identity: identity)
            assert load_tuned(load_manifest(folder), 1) is None
            assert CrossEncoder(folder, precision="exact", threads=1).provider == "cpu"
    assert CrossEncoder(folder, precision="exact", threads=1).provider == "openvino"  # this machine: found again

    # a file whose identity is not this one (copied under another key), and a file that cannot be read
    manifest = load_manifest(folder)
    key, _ = tune_key(manifest, 1)
    path = tuned_path(key)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "identity": {**data["identity"], "threads": 3}}))
    assert load_tuned(manifest, 1) is None
    path.write_text('{"key": "truncat')
    with caplog.at_level(logging.WARNING, logger="crossonnx"):
        assert CrossEncoder(folder, precision="exact", threads=1).provider == "cpu"
    assert "cannot be read" in caplog.text and str(path) in caplog.text


def test_workload_is_checked(folder):
    for workload in ("fast", "", 1, "Throughput"):
        with pytest.raises(ValueError, match="workload must be one of 'throughput', 'latency'"):
            CrossEncoder(folder, threads=1, workload=workload)


@settings(max_examples=40, deadline=None, database=None)
@given(rates=st.lists(st.tuples(st.floats(0.1, 1e5), st.floats(0.01, 1e4), st.sampled_from([512, 2048, 8192])),
                      min_size=1, max_size=3))
def test_a_result_survives_its_file(rates, tmp_path_factory):
    names = [("cpu", "fp32"), ("openvino", "fp32"), ("cpu", "int8")]
    variants = tuple(speed(p, n, rate, ms, budget) for (p, n), (rate, ms, budget) in zip(names, rates, strict=False))
    result = TuneResult("k" * 24, {"threads": 1, "flags": ["avx2"]}, variants, 1, 2.5, "now", "/m")
    again = TuneResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    assert again.speeds("latency") == {v.key: 1000.0 / v.latency_ms_p50 for v in variants}


# --- the command ----------------------------------------------------------------------------------------------------


def test_cli_prints_the_table_the_choice_and_where_it_stored_it(folder, capsys):
    assert main(["tune", str(folder), "--seconds", "1", "--threads", "1", "--workload", "latency"]) == 0
    out = capsys.readouterr().out
    manifest = load_manifest(folder)
    result = load_tuned(manifest, 1)
    assert result is not None and f"stored: {result.path}" in out
    lines = out.splitlines()
    for v in result.variants:
        row = next(line for line in lines if line[2:].startswith(v.key + " "))
        assert f"{v.pairs_per_s:.1f}" in row and f"{v.latency_ms_p50:.2f}" in row and str(v.token_budget) in row
    fastest = max(result.variants, key=lambda v: v.speed("latency"))
    assert [line[2:].split()[0] for line in lines if line.startswith("* ")] == [fastest.key]
    assert "choice for latency" in out
    for level in LEVELS:  # each level's printed choice is the resolver's with the latency speeds
        choice = resolve_level(manifest, level, machine=Machine.probe(), speeds=result.speeds("latency"))
        assert any(line.split()[:2] == [level, f"{choice.provider}/{choice.precision}"] for line in lines), level


def test_cli_errors(folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["tune", str(folder), "--seconds", "0"])
    assert "must be a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tune", str(folder), "--workload", "fast"])
    assert main(["tune", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
