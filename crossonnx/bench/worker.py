"""One benchmark measurement in a fresh process: load one engine, warm up, time repeated passes, print JSON.

Runs under the main environment or a peers' environment (sentence-transformers 5 + optimum, fastembed), so it
imports nothing from crossonnx at module level: engines import their own libraries when they are built.

    python worker.py --engine crossonnx-int8 --model-dir M --checkpoint C --pairs pairs.json --threads 2 --reps 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

Pair = tuple[str, str]
Scorer = Callable[[list[Pair], int], np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(1)


def st_torch(args: argparse.Namespace, dtype: str) -> Scorer:
    """sentence-transformers CrossEncoder on PyTorch (the reference), fp32 or bf16 weights."""
    import torch
    from sentence_transformers import CrossEncoder

    _torch_threads(args.threads)
    kwargs = {"model_kwargs": {"dtype": torch.bfloat16}} if dtype == "bf16" else {}
    model = CrossEncoder(args.checkpoint, device="cpu", local_files_only=True, **kwargs)
    return lambda pairs, batch: np.asarray(model.predict(pairs, batch_size=batch, show_progress_bar=False))


def st_onnx(args: argparse.Namespace, file_name: str) -> Scorer:
    """sentence-transformers backend="onnx" (optimum) on a folder holding the ONNX file and the checkpoint files."""
    import onnxruntime as ort
    from sentence_transformers import CrossEncoder

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    model = CrossEncoder(
        args.peer_dir,
        device="cpu",
        backend="onnx",
        local_files_only=True,
        model_kwargs={"file_name": file_name, "provider": "CPUExecutionProvider", "session_options": options},
    )
    return lambda pairs, batch: np.asarray(model.predict(pairs, batch_size=batch, show_progress_bar=False))


def st_int8_file(folder: str) -> str:
    """The file sentence-transformers' export_dynamic_quantized_onnx_model(model, "avx2") wrote."""
    found = sorted(Path(folder).glob("onnx/model_*int8_avx2.onnx"))
    if not found:
        raise FileNotFoundError(f"no sentence-transformers avx2 int8 file in {folder}/onnx")
    return str(found[0].relative_to(folder))


def crossonnx_runtime(args: argparse.Namespace, precision: str) -> Scorer:
    from crossonnx import CrossEncoder

    model = CrossEncoder(args.model_dir, precision=precision, provider="cpu", threads=args.threads)
    return lambda pairs, batch: model.predict(pairs, batch_size=batch)


def fastembed_engine(args: argparse.Namespace) -> Scorer:
    """fastembed TextCrossEncoder on the same ONNX file (raw logits; sigmoid applied here, like the others)."""
    from fastembed.common.model_description import ModelSource
    from fastembed.rerank.cross_encoder import TextCrossEncoder

    name = "crossonnx/benchmark-model"
    with contextlib.suppress(ValueError):  # registered already
        TextCrossEncoder.add_custom_model(model=name, sources=ModelSource(hf=name), model_file="model.onnx")
    model = TextCrossEncoder(name, specific_model_path=args.peer_dir, threads=args.threads, local_files_only=True)

    def score(pairs: list[Pair], batch: int) -> np.ndarray:
        return _sigmoid(list(model.rerank_pairs(pairs, batch_size=batch)))

    return score


def flashrank_style(args: argparse.Namespace) -> Scorer:
    """What FlashRank's Ranker.rerank does: tokenize all pairs, pad to the longest, one session.run, sigmoid."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    manifest = json.loads(Path(args.model_dir, "crossonnx.json").read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
    tokenizer.enable_truncation(manifest["max_length"])
    tokenizer.enable_padding(pad_id=manifest["tokenizer"]["pad_id"], pad_token=manifest["tokenizer"]["pad_token"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(
        os.path.join(args.model_dir, "model_fp32.onnx"), options, providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]

    def score(pairs: list[Pair], batch: int) -> np.ndarray:
        encoded = tokenizer.encode_batch(pairs)
        feed = {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.array([e.type_ids for e in encoded], dtype=np.int64)
        return _sigmoid(session.run(None, feed)[0][:, 0])

    return score


ENGINES: dict[str, Callable[[argparse.Namespace], Scorer]] = {
    "st-torch-fp32": lambda a: st_torch(a, "fp32"),
    "st-torch-bf16": lambda a: st_torch(a, "bf16"),
    "st-onnx": lambda a: st_onnx(a, "model.onnx"),
    "st-onnx-qint8": lambda a: st_onnx(a, st_int8_file(a.peer_dir)),
    "fastembed": fastembed_engine,
    "flashrank-style": flashrank_style,
    "crossonnx-fp32": lambda a: crossonnx_runtime(a, "fp32"),
    "crossonnx-fp16": lambda a: crossonnx_runtime(a, "fp16"),
    "crossonnx-int8": lambda a: crossonnx_runtime(a, "int8"),
    "crossonnx-int8-plain": lambda a: crossonnx_runtime(a, "int8-plain"),  # accuracy report's baseline
}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would include the parent's peak from before exec)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", required=True, choices=sorted(ENGINES))
    parser.add_argument("--model-dir", help="crossonnx export folder")
    parser.add_argument("--checkpoint", help="Hugging Face checkpoint folder (PyTorch engines)")
    parser.add_argument("--peer-dir", help="folder laid out for sentence-transformers onnx / fastembed")
    parser.add_argument("--pairs", required=True, help="JSON file: list of [a, b]")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.0, help="repeat a pass until it took this long")
    parser.add_argument("--latency", type=int, default=0, help="also time N single-pair calls")
    parser.add_argument("--scores-out", help="write the last pass's scores here (JSON)")
    args = parser.parse_args()

    pairs = [tuple(p) for p in json.loads(Path(args.pairs).read_text(encoding="utf-8"))]
    started = time.perf_counter()
    score = ENGINES[args.engine](args)
    load_s = time.perf_counter() - started
    score(pairs[: min(len(pairs), 2 * args.batch_size)], args.batch_size)  # warm-up, not counted
    rates, scores = [], None
    for _ in range(args.reps):
        count, t0 = 0, time.perf_counter()
        while True:
            scores = score(pairs, args.batch_size)
            count += len(pairs)
            elapsed = time.perf_counter() - t0
            if elapsed >= args.min_seconds:
                break
        rates.append(count / elapsed)
    result = {
        "engine": args.engine,
        "pairs": len(pairs),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "load_s": load_s,
        "pairs_per_s": statistics.median(rates),
        "pairs_per_s_all": rates,
    }
    if args.latency:
        times = []
        for i in range(args.latency):
            t0 = time.perf_counter()
            score([pairs[i % len(pairs)]], 1)
            times.append((time.perf_counter() - t0) * 1000)
        result["latency_ms_p50"] = percentile(times, 50)
        result["latency_ms_p99"] = percentile(times, 99)
    result["peak_rss_mb"] = peak_rss_mb()
    if args.scores_out:
        with open(args.scores_out, "w", encoding="utf-8") as handle:
            json.dump(np.asarray(scores, dtype=np.float64).ravel().tolist(), handle)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
