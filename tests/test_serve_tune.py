"""`crossonnx serve` tunes for its own load by default: a real server process on a loopback port, over the tiny
BERT export, measuring with a real ``crossonnx tune`` (a short one: ``--tune-seconds``) into a cache of the test's
own. Where the choice is open (a level, or provider auto with more than one engine for the precision) it measures
once and stores the result, the next start reuses it; ``--no-tune`` and a fixed precision and provider never
measure. No timing is asserted."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from crossonnx.cli import build_parser  # noqa: E402
from crossonnx.engines import openvino_installed  # noqa: E402
from crossonnx.levels import Machine  # noqa: E402
from crossonnx.manifest import load_manifest  # noqa: E402
from crossonnx.tune import load_tuned, open_choice  # noqa: E402
from serving import WAIT_S, cli_server  # noqa: E402

needs_openvino = pytest.mark.skipif(not openvino_installed(), reason="fp32's second engine is OpenVINO")
MEASURING = "tuning for throughput before serving"
CPU_ONLY = Machine(openvino=False, bf16=False)
WITH_OPENVINO = Machine(openvino=True, bf16=False)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own (here and in the server's environment): no result reaches another test."""
    monkeypatch.setenv("CROSSONNX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def serve_once(folder: Path, cache: Path, *args: str) -> tuple[dict, str]:
    """Start ``crossonnx serve FOLDER ARGS`` with ``cache``, score one request, stop it: (/info, its log)."""
    argv = [str(folder), "--threads", "1", "--tune-seconds", "1", "--log-level", "info", *args]
    with cli_server(argv, env={"CROSSONNX_CACHE": str(cache)}) as (url, process):
        response = httpx.post(url + "/rerank", json={"query": "cats", "texts": ["a cat", "a dog"]}, timeout=WAIT_S)
        assert response.status_code == 200
        info = httpx.get(url + "/info", timeout=WAIT_S).json()
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT_S) == 0
        return info, process.stdout.read().decode()  # type: ignore[union-attr]


@needs_openvino
def test_a_level_tunes_once_and_the_next_start_reuses_it(tiny_exports, cache):
    folder = tiny_exports["bert"]
    info, log = serve_once(folder, cache, "--precision", "exact")
    stored = load_tuned(load_manifest(folder), 1)
    assert stored is not None and stored.path is not None and stored.path.parent == cache / "tuned"
    assert MEASURING in log and "level 'exact' can run as" in log and f"stored in {stored.path}" in log
    assert info["tuned"] == {"workload": "throughput", "file": str(stored.path), "measured": stored.measured}
    assert info["level"]["basis"] == "tuned"
    assert (info["provider"], info["precision"]) in {(v.provider, v.precision) for v in stored.variants}

    written = stored.path.stat().st_mtime_ns
    again, log = serve_once(folder, cache, "--precision", "exact", "--workload", "latency")
    assert MEASURING.split(" for ")[0] not in log and stored.path.stat().st_mtime_ns == written  # reused, not measured
    assert again["tuned"]["workload"] == "latency" and again["tuned"]["file"] == str(stored.path)


@needs_openvino
def test_provider_auto_with_two_engines_tunes(tiny_exports, cache):
    info, log = serve_once(tiny_exports["bert"], cache)  # the defaults: fp32, provider auto (cpu or openvino)
    assert MEASURING in log and "provider 'auto' for fp32 can run as cpu/fp32, openvino/fp32" in log
    assert info["tuned"] is not None and info["provider_reason"].startswith("tuned for throughput: fp32")


def test_no_tune_and_a_fixed_variant_never_measure(tiny_exports, cache):
    folder = tiny_exports["bert"]
    for args in (["--precision", "exact", "--no-tune"], ["--precision", "fp32", "--provider", "cpu"]):
        info, log = serve_once(folder, cache, *args)
        assert "tuning for" not in log and info["tuned"] is None, args
        assert info["level"] is None or info["level"]["basis"] == "static rule"
    assert not (cache / "tuned").exists()


def test_tune_forces_a_measurement_where_the_variant_is_fixed(tiny_exports, cache):
    info, log = serve_once(tiny_exports["bert"], cache, "--precision", "fp32", "--provider", "cpu", "--tune")
    assert f"{MEASURING}, about 1 s: --tune" in log
    assert info["tuned"] is not None and info["token_budget"] == load_tuned(
        load_manifest(tiny_exports["bert"]), 1).variant("cpu", "fp32").token_budget


def test_which_choices_are_open(tiny_exports):
    manifest = load_manifest(tiny_exports["bert"])
    assert open_choice(manifest, "fp32", "cpu", WITH_OPENVINO) is None  # both fixed
    assert open_choice(manifest, "fp32", "auto", CPU_ONLY) is None  # one engine runs fp32 here
    assert open_choice(manifest, "int8", "auto", WITH_OPENVINO) is None  # only ONNX Runtime runs int8
    assert open_choice(manifest, "fp32", "auto", WITH_OPENVINO) == (
        "provider 'auto' for fp32 can run as cpu/fp32, openvino/fp32")
    # of the tiny random-weight export only fp32 meets a level (its scores are nearly tied: no rank agreement to
    # vouch for the others), so a level chooses between fp32's engines, and has nothing to choose without OpenVINO
    for level in ("exact", "faithful", "fast"):
        assert open_choice(manifest, level, "auto", WITH_OPENVINO) == (
            f"level {level!r} can run as cpu/fp32, openvino/fp32")
        assert open_choice(manifest, level, "auto", CPU_ONLY) is None
        assert open_choice(manifest, level, "openvino", WITH_OPENVINO) is None
    only_fp32 = replace(manifest, precisions={"fp32": manifest.precisions["fp32"]})
    assert open_choice(only_fp32, "exact", "auto", CPU_ONLY) is None  # a level with one variant to take
    assert open_choice(only_fp32, "exact", "cpu", WITH_OPENVINO) is None


def test_cli_options():
    parse = build_parser().parse_args
    defaults = parse(["serve", "m"])
    assert (defaults.tune, defaults.workload, defaults.tune_seconds) == (None, "throughput", 60.0)
    assert parse(["serve", "m", "--tune"]).tune is True and parse(["serve", "m", "--no-tune"]).tune is False
    assert parse(["serve", "m", "--workload", "latency", "--tune-seconds", "5"]).workload == "latency"
    for bad in (["--tune-seconds", "0"], ["--tune-seconds", "nan"], ["--workload", "fast"]):
        with pytest.raises(SystemExit):
            parse(["serve", "m", *bad])
