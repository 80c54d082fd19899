"""GPU check: parity and throughput of crossonnx on CUDA / TensorRT against PyTorch fp32 and fp16 on the GPU.

    python benchmarks/gpu_check.py [--shapes a,b] [--out-dir DIR] [--quick]

Run by benchmarks/gpu_check.sh on a GPU machine (it installs onnxruntime-gpu first). For each seed shape
(random weights, exact architecture): export fp32 + fp16 + the unfused graph for TensorRT, then score the same
query-passage pairs with sentence-transformers on the GPU (fp32 = the reference, fp16) and with crossonnx on
CUDA fp32, CUDA fp16 and TensorRT fp16 (when TensorRT's libraries load). Parity: max abs score difference and
Spearman against PyTorch fp32 on the GPU. Throughput: pairs/s at batch 32 and 128, p50 latency at batch 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.bench.machine import LIBRARIES
from crossonnx.bench.workloads import query_passage_pairs
from crossonnx.metrics import compare
from crossonnx.versions import library_versions

SHAPES = ("ms-marco-TinyBERT-L-6", "ms-marco-electra-base", "stsb-roberta-large")
BATCHES = (32, 128)


def _timed(score, pairs: list, batch: int, reps: int) -> float:
    """Median pairs/s over ``reps`` passes (after one warm-up pass)."""
    score(pairs, batch)
    rates = []
    for _ in range(reps):
        started = time.perf_counter()
        score(pairs, batch)
        rates.append(len(pairs) / (time.perf_counter() - started))
    return statistics.median(rates)


def _latency_ms(score, pairs: list, calls: int) -> dict[str, float]:
    for pair in pairs[:5]:
        score([pair], 1)
    times = []
    for pair in pairs[:calls]:
        started = time.perf_counter()
        score([pair], 1)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}


def engines(checkpoint: Path, folder: Path, trt: bool) -> dict[str, Any]:
    """name -> score(pairs, batch) callables; PyTorch first (torch.cuda.synchronize is implicit in .cpu())."""
    import torch
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from crossonnx import CrossEncoder

    out: dict[str, Any] = {}
    st32 = STCrossEncoder(str(checkpoint), device="cuda", local_files_only=True)
    st16 = STCrossEncoder(str(checkpoint), device="cuda", local_files_only=True,
                          model_kwargs={"dtype": torch.float16})
    out["torch-fp32"] = lambda pairs, batch: st32.predict(pairs, batch_size=batch)
    out["torch-fp16"] = lambda pairs, batch: st16.predict(pairs, batch_size=batch)
    for name, kwargs in (("crossonnx-cuda-fp32", {"provider": "cuda", "precision": "fp32"}),
                         ("crossonnx-cuda-fp16", {"provider": "cuda", "precision": "fp16"}),
                         ("crossonnx-trt-fp16", {"provider": "tensorrt", "precision": "fp16"})):
        if name.startswith("crossonnx-trt") and not trt:
            continue
        encoder = CrossEncoder(folder, max_batch=max(BATCHES), **kwargs)
        started = time.perf_counter()
        encoder.warmup()
        print(f"  {name}: warm-up {time.perf_counter() - started:.1f}s", flush=True)
        out[name] = lambda pairs, batch, e=encoder: e.predict(pairs, batch_size=batch)
    return out


def check_shape(name: str, work: Path, pairs: list, reps: int, calls: int, trt: bool) -> dict[str, Any]:
    from crossonnx.checkpoints.synthetic import RANDOM_WEIGHT_GATES, build_seed_shape
    from crossonnx.exporter.pipeline import export_model

    checkpoint = build_seed_shape(name, work / "ckpt" / name)
    folder = export_model(str(checkpoint), out=work / "onnx" / name, precisions="fp32,fp16", tensorrt=True,
                          gate_overrides=RANDOM_WEIGHT_GATES, overwrite=True, log=None)
    result: dict[str, Any] = {"parity": {}, "throughput": {}, "latency_ms": {}}
    scorers = engines(checkpoint, folder, trt)
    reference = np.asarray(scorers["torch-fp32"](pairs, 32), dtype=np.float64)
    for engine, score in scorers.items():
        print(f"  {name} / {engine}", flush=True)
        if engine != "torch-fp32":
            result["parity"][engine] = compare(np.asarray(score(pairs, 32)), reference)
        result["throughput"][engine] = {str(b): _timed(score, pairs, b, reps) for b in BATCHES}
        result["latency_ms"][engine] = _latency_ms(score, pairs, calls)
    return result


def markdown(doc: dict[str, Any]) -> str:
    lines = ["# GPU check", "", f"GPU: {doc['gpu']}; {doc['pairs']} query-passage pairs; "
             f"versions: {', '.join(f'{k} {v}' for k, v in doc['versions'].items())}", ""]
    for shape, result in doc["shapes"].items():
        lines += [f"## {shape}", "", "| engine | max abs diff vs torch fp32 | Spearman | "
                  + " | ".join(f"pairs/s b{b} | x torch fp16 b{b}" for b in BATCHES) + " | p50 ms b1 |",
                  "|---|---|---|" + "---|---|" * len(BATCHES) + "---|"]
        fp16 = result["throughput"]["torch-fp16"]
        for engine, rates in result["throughput"].items():
            parity = result["parity"].get(engine)
            cells = [f"{parity['max_abs_diff']:.2e}" if parity else "reference",
                     f"{parity['spearman']:.5f}" if parity else "–"]
            for b in BATCHES:
                cells += [f"{rates[str(b)]:.0f}", f"{rates[str(b)] / fp16[str(b)]:.2f}x"]
            cells.append(f"{result['latency_ms'][engine]['p50']:.2f}")
            lines.append(f"| {engine} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--work", default=".cache/gpu-check")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="fewer pairs and repetitions")
    args = parser.parse_args()

    import onnxruntime as ort

    from crossonnx.engines.onnxruntime import gpu_name, tensorrt_loadable, tensorrt_version

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise SystemExit("onnxruntime has no CUDA provider here: install onnxruntime-gpu (gpu_check.sh does)")
    trt = "TensorrtExecutionProvider" in ort.get_available_providers() and tensorrt_loadable()
    pairs = query_passage_pairs(256 if args.quick else 1024)
    doc: dict[str, Any] = {
        "gpu": gpu_name(), "pairs": len(pairs), "tensorrt": tensorrt_version() if trt else None,
        "versions": library_versions(LIBRARIES), "shapes": {},
    }
    for shape in args.shapes.split(","):
        print(f"== {shape}", flush=True)
        doc["shapes"][shape] = check_shape(shape, Path(args.work), pairs, 2 if args.quick else 3,
                                           50 if args.quick else 200, trt)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
