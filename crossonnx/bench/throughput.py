"""Throughput, latency, cold start and memory of crossonnx against PyTorch and the ONNX / OpenVINO peers.

Each (engine, model, workload) runs in a fresh process (engines never share a process or thread pool), with the
same thread count, a warm-up that is not counted, and several timed passes whose median is reported. Ratios are
taken against sentence-transformers on PyTorch fp32 measured in the same run. Engine names: see
crossonnx/bench/worker.py (the peers by name, crossonnx variants as ``crossonnx[-PROVIDER]-PRECISION``).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.bench.machine import cpu_info, library_versions
from crossonnx.bench.report import speed_ratio
from crossonnx.bench.workloads import WORKLOADS
from crossonnx.metrics import spearman
from crossonnx.precisions import DEFAULT_PRECISION

WORKER = Path(__file__).with_name("worker.py")
TORCH_ENGINES = ("st-torch-fp32", "st-torch-bf16")
PEER_ENGINES = ("st-onnx", "st-onnx-qint8", "fastembed")  # run with the peers' Python (their own environment)
# sentence-transformers 6 + optimum-intel: run with the OpenVINO peers' Python (benchmarks/setup_peers_openvino.sh)
OPENVINO_PEER_ENGINES = ("st-openvino", "st-openvino-qint8")
CROSSONNX_ENGINES = ("crossonnx-fp32", "crossonnx-fp16", "crossonnx-int8")  # ONNX Runtime CPU
CROSSONNX_OPENVINO_ENGINES = ("crossonnx-openvino-fp32", "crossonnx-openvino-bf16", "crossonnx-openvino-int8-static",
                              "crossonnx-openvino-int8-dynamic")
ALL_ENGINES = (*TORCH_ENGINES, *PEER_ENGINES, *OPENVINO_PEER_ENGINES, "flashrank-style", *CROSSONNX_ENGINES,
               *CROSSONNX_OPENVINO_ENGINES)
CHECKPOINT_ENGINES = (*TORCH_ENGINES, *PEER_ENGINES, *OPENVINO_PEER_ENGINES)
REFERENCE_ENGINE = "st-torch-fp32"


@dataclass
class BenchModel:
    """One model under test: its checkpoint (PyTorch engines), export (crossonnx) and peer folder."""

    name: str
    checkpoint: Path | None
    export_dir: Path
    peer_dir: Path | None = None  # checkpoint files + our fp32 graph as model.onnx
    st_int8_dir: Path | None = None  # sentence-transformers' own export + its avx2 int8 file
    st_openvino_dir: Path | None = None  # sentence-transformers' own OpenVINO IR + its static int8 IR
    real_weights: bool = False


@dataclass
class BenchConfig:
    threads: int = 2
    reps: int = 5
    rounds: int = 1  # each engine's process runs once per round, engines taking turns (drift hits all alike)
    min_seconds: float = 1.0
    batch_size: int = 32
    pairs: dict[str, int] = field(default_factory=lambda: {"query-passage": 256, "sentence-pairs": 512})
    latency_calls: int = 0
    reps_for: dict[str, int] = field(default_factory=dict)  # per-engine override of reps
    peers_python: str | None = None
    peers_openvino_python: str | None = None
    timeout_s: int = 1800


def make_peer_dir(model: BenchModel, out: Path) -> Path:
    """A folder sentence-transformers' onnx backend and fastembed both load: checkpoint files + our fp32 graph."""
    manifest = json.loads((model.export_dir / "crossonnx.json").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    assert model.checkpoint is not None
    for path in model.checkpoint.iterdir():
        if path.suffix in {".json", ".txt"} and path.name != "crossonnx-build.json":
            shutil.copyfile(path, out / path.name)
    shutil.copyfile(model.export_dir / "tokenizer.json", out / "tokenizer.json")
    tok_config_path = out / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text()) if tok_config_path.is_file() else {}
    pad = manifest["tokenizer"]["pad_token"]
    # fastembed truncates at tokenizer_config's "max_length" when present (128 in some checkpoints)
    tok_config.update(model_max_length=manifest["max_length"], max_length=manifest["max_length"], pad_token=pad)
    tok_config_path.write_text(json.dumps(tok_config))
    if not (out / "special_tokens_map.json").is_file():
        (out / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad}))
    link = out / "model.onnx"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to((model.export_dir / manifest["precisions"][DEFAULT_PRECISION]["file"]).resolve())
    return out


def _python_for(engine: str, config: BenchConfig) -> str | None:
    if engine in PEER_ENGINES:
        return config.peers_python
    if engine in OPENVINO_PEER_ENGINES:
        return config.peers_openvino_python
    return sys.executable


def _peer_dir(engine: str, model: BenchModel) -> Path | None:
    if engine == "st-onnx-qint8":
        return model.st_int8_dir
    if engine in OPENVINO_PEER_ENGINES:
        return model.st_openvino_dir
    return model.peer_dir


def run_engine(engine: str, model: BenchModel, pairs_file: Path, config: BenchConfig, scores_out: Path,
               latency: int = 0) -> dict[str, Any]:
    """One measurement in a fresh process; {'error': ...} when the engine cannot run here."""
    python = _python_for(engine, config)
    if python is None:
        flag = "--peers-openvino-python" if engine in OPENVINO_PEER_ENGINES else "--peers-python"
        return {"engine": engine, "error": f"peers environment not given ({flag})"}
    if engine in CHECKPOINT_ENGINES and model.checkpoint is None:
        return {"engine": engine, "error": "needs the PyTorch checkpoint"}
    cmd = [python, str(WORKER), "--engine", engine, "--model-dir", str(model.export_dir), "--pairs",
           str(pairs_file), "--threads", str(config.threads), "--reps", str(config.reps_for.get(engine, config.reps)),
           "--min-seconds",
           str(config.min_seconds), "--batch-size", str(config.batch_size), "--scores-out", str(scores_out),
           "--latency", str(latency)]
    if model.checkpoint is not None:
        cmd += ["--checkpoint", str(model.checkpoint)]
    peer_dir = _peer_dir(engine, model)
    if peer_dir is not None:
        cmd += ["--peer-dir", str(peer_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": str(config.threads), "MKL_NUM_THREADS": str(config.threads),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=config.timeout_s, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"engine": engine, "error": tail[0][:300]}
    return json.loads(done.stdout)


def cold_start(engine: str, model: BenchModel, config: BenchConfig, runs: int = 5) -> dict[str, Any]:
    """Whole-process seconds for: start Python, import, load the model, score one pair, exit (median of runs).

    One untimed run first fills the file cache and OpenVINO's compiled-model cache, as any second start finds them.
    """
    with tempfile.TemporaryDirectory() as tmp:
        pairs_file = Path(tmp) / "one.json"
        pairs_file.write_text(json.dumps([["how many people live in berlin", "Berlin has 3.7 million people."]]))
        times = []
        cfg = BenchConfig(threads=config.threads, reps=1, min_seconds=0.0, batch_size=1,
                          peers_python=config.peers_python, peers_openvino_python=config.peers_openvino_python)
        result = run_engine(engine, model, pairs_file, cfg, Path(tmp) / "s.json")
        if "error" in result:
            return result
        for _ in range(runs):
            t0 = time.perf_counter()
            result = run_engine(engine, model, pairs_file, cfg, Path(tmp) / "s.json")
            times.append(time.perf_counter() - t0)
            if "error" in result:
                return result
    return {"engine": engine, "cold_start_s": float(np.median(times)), "cold_start_all": times,
            "peak_rss_mb": result.get("peak_rss_mb"), "executes": result.get("executes")}


def compare_scores(scores: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Spearman and max abs difference of every engine's scores against PyTorch fp32's."""
    reference = scores.get(REFERENCE_ENGINE)
    out = {}
    for engine, values in scores.items():
        if reference is None or len(values) != len(reference):
            continue
        a, b = np.asarray(values), np.asarray(reference)
        out[engine] = {
            "spearman_vs_torch_fp32": spearman(a, b),
            "max_abs_diff_vs_torch_fp32": float(np.abs(a - b).max()),
        }
    return out


def merge_rounds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's rounds as one row: the median round's rate, every round's rate and pass, the largest RSS.

    A round that failed makes the row that round's error: rates from the rounds before it would not be comparable
    with engines that ran every round."""
    failed = next((r for r in results if "error" in r), None)
    if failed is not None:
        return failed
    rates = [r["pairs_per_s"] for r in results]
    merged = dict(results[0])
    merged.update(
        pairs_per_s=statistics.median_low(rates),
        pairs_per_s_rounds=rates,
        pairs_per_s_all=[rate for r in results for rate in r["pairs_per_s_all"]],
        load_s=statistics.median_low(r["load_s"] for r in results),
        peak_rss_mb=max(r["peak_rss_mb"] for r in results),
        rounds=len(results),
    )
    return merged


def run_matrix(models: list[BenchModel], engines: list[str], workloads: list[str], config: BenchConfig,
               work: Path, log=print) -> dict[str, Any]:
    """Every engine on every model and workload; returns the JSON-ready result document."""
    results: list[dict[str, Any]] = []
    for model in models:
        for workload in workloads:
            n = config.pairs.get(workload, 100)
            pairs = WORKLOADS[workload](n, 0)
            pairs_file = work / f"pairs-{workload}-{n}.json"
            pairs_file.write_text(json.dumps(pairs), encoding="utf-8")
            scores: dict[str, list[float]] = {}
            runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in engines}
            for round_no in range(1, config.rounds + 1):
                for engine in engines:
                    if any("error" in r for r in runs[engine]):
                        continue
                    scores_file = work / f"scores-{model.name}-{workload}-{engine}.json"
                    log(f"  {model.name:26s} {workload:15s} {engine:31s} round {round_no}", end="", flush=True)
                    result = run_engine(engine, model, pairs_file, config, scores_file)
                    if "error" not in result:
                        scores[engine] = json.loads(scores_file.read_text())
                        log(f" {result['pairs_per_s']:9.1f} pairs/s  executes {result.get('executes')}")
                    else:
                        scores.pop(engine, None)
                        log(f" error: {result['error']}")
                    runs[engine].append(result)
            rows = []
            for engine in engines:
                result = merge_rounds(runs[engine])
                result.update(model=model.name, workload=workload, real_weights=model.real_weights)
                rows.append(result)
            agreement = compare_scores(scores)
            for row in rows:
                if "error" not in row:
                    row.update(agreement.get(row["engine"], {}))
            add_torch_ratios(rows)
            results.extend(rows)
    return {"kind": "throughput", "results": results}


def add_torch_ratios(rows: list[dict[str, Any]]) -> None:
    """Set ``x_torch_fp32`` / ``x_torch_bf16`` on every row, against PyTorch's rows of the same model and workload
    (``speed_ratio``)."""
    torch_rows = {(r["model"], r["workload"], r["engine"]): r for r in rows
                  if r["engine"] in (REFERENCE_ENGINE, "st-torch-bf16") and "error" not in r}
    for row in rows:
        if "error" in row:
            continue
        for key, engine in (("x_torch_fp32", REFERENCE_ENGINE), ("x_torch_bf16", "st-torch-bf16")):
            if (torch_row := torch_rows.get((row["model"], row["workload"], engine))) is not None:
                row[key] = speed_ratio(row, torch_row)


def run_latency(models: list[BenchModel], engines: list[str], config: BenchConfig, work: Path, calls: int = 200,
                log=print) -> list[dict[str, Any]]:
    """Batch-1 latency: one query-passage pair per call."""
    pairs = WORKLOADS["query-passage"](calls, 1)
    pairs_file = work / "pairs-latency.json"
    pairs_file.write_text(json.dumps(pairs), encoding="utf-8")
    cfg = BenchConfig(threads=config.threads, reps=1, min_seconds=0.0, batch_size=1,
                      peers_python=config.peers_python, peers_openvino_python=config.peers_openvino_python)
    out = []
    for model in models:
        for engine in engines:
            result = run_engine(engine, model, pairs_file, cfg, work / "latency-scores.json", latency=calls)
            result.update(model=model.name, workload="batch-1 latency")
            if "error" not in result:
                log(f"  {model.name:26s} latency   {engine:30s} p50 {result['latency_ms_p50']:7.2f} ms "
                    f"p99 {result['latency_ms_p99']:7.2f} ms")
            out.append(result)
    return out


def environment() -> dict[str, Any]:
    return {"cpu": cpu_info(), "versions": library_versions(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                    time.gmtime())}
