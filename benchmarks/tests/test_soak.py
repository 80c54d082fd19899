"""The soak benchmark (benchmarks/soak.py) in short, and the bound it measures: OpenVINO engines compile with a
capped per-shape kernel cache."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs crossonnx[openvino]")


def test_requests_are_random_shapes_within_bounds() -> None:
    import soak

    work = soak.requests(200, seed=3)
    assert all(1 <= len(request) <= 16 for request in work)
    assert all(1 <= len(passage.split()) <= 300 for request in work for _, passage in request)
    shapes = {(len(request), max(len(p.split()) for _, p in request)) for request in work}
    assert len(shapes) > 150, "nearly every call has a shape of its own"
    assert soak.requests(200, seed=3) == work


def test_growth_is_measured_from_the_end_of_warm_up() -> None:
    import soak

    samples = [{"rss_mb": mb} for mb in (100, 200, 200, 200, 210, 220, 220, 220, 220, 230)]
    assert soak.growth(samples) == pytest.approx((230 - 200) / 200, abs=1e-4)


@needs_openvino
def test_openvino_engines_bound_the_kernel_cache(model_dir: Path) -> None:
    from crossonnx import CrossEncoder
    from crossonnx.engines.openvino import RUNTIME_CACHE_CAPACITY

    model = CrossEncoder(model_dir, precision="fp32", provider="openvino", threads=1)
    assert RUNTIME_CACHE_CAPACITY is not None and RUNTIME_CACHE_CAPACITY > 0
    assert model.info()["provider_options"]["CPU_RUNTIME_CACHE_CAPACITY"] == RUNTIME_CACHE_CAPACITY


@needs_openvino
def test_a_short_soak_writes_its_report(model_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--model-dir", str(model_dir), "--calls", "20",
         "--threads", "1", "--variants", "cpu:fp32,openvino:fp32", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "soak.json").read_text())
    rows = {(r["provider"], r["precision"], r["bounded"]): r for r in doc["rows"]}
    assert set(rows) == {("cpu", "fp32", True), ("openvino", "fp32", True), ("openvino", "fp32", False)}
    for row in rows.values():
        assert "error" not in row, row
        assert len(row["samples"]) == 20 and row["samples"][-1]["calls"] == 20
        assert all(s["rss_mb"] > 0 for s in row["samples"]) and row["pairs_per_second"] > 0
    report = (tmp_path / "soak.md").read_text()
    assert "| openvino | fp32 | crossonnx's bound |" in report and "OpenVINO default" in report
