"""One benchmark measurement in a fresh process: load one engine, warm up, time repeated passes, print JSON.

Runs under the main environment or a peers' environment (sentence-transformers 5 + optimum-onnx + fastembed, or
sentence-transformers 6 + optimum-intel), so it imports nothing from crossonnx at module level: engines import
their own libraries when they are built. Engines: the peers by name (``NAMED_ENGINES``) and every crossonnx variant
as ``crossonnx[-PROVIDER]-PRECISION`` (``crossonnx-int8``: ONNX Runtime CPU; ``crossonnx-openvino-bf16``). The
result names what the engine executed (OpenVINO's precision is read back from the compiled model).

    python worker.py --engine crossonnx-int8 --model-dir M --checkpoint C --pairs pairs.json --threads 2 --reps 5
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Pair = tuple[str, str]
Scorer = Callable[[list[Pair], int], np.ndarray]
Built = tuple[Scorer, str]  # the scorer, and the precision it executes


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


def st_openvino(args: argparse.Namespace, file_name: str) -> Built:
    """sentence-transformers backend="openvino" (optimum-intel) on the IR it exported itself (``--peer-dir``:
    prepare_st_openvino's folder); its defaults, but the thread count set explicitly."""
    from sentence_transformers import CrossEncoder

    model_kwargs = {"ov_config": {"INFERENCE_NUM_THREADS": args.threads}, "file_name": file_name}
    model = CrossEncoder(args.peer_dir, device="cpu", backend="openvino", local_files_only=True,
                         model_kwargs=model_kwargs)

    def score(pairs: list[Pair], batch: int) -> np.ndarray:
        return np.asarray(model.predict(pairs, batch_size=batch, show_progress_bar=False))

    return score, openvino_precision(model.model)


def openvino_precision(ov_model: object) -> str:
    """What an optimum OVModel's compiled model really runs, read back from it: its inference precision (OpenVINO's
    CPU plugin defaults to bf16 where the CPU has bf16), as "int8 + ..." when int8 FullyConnected layers run beside
    it (the rule of crossonnx.engines.openvino.executed_precision, which this module cannot import; NNCF's static
    int8 is the only int8 a peer runs)."""
    if getattr(ov_model, "request", None) is None:
        ov_model.compile()  # type: ignore[attr-defined]
    compiled = ov_model.request  # type: ignore[attr-defined]
    if hasattr(compiled, "get_compiled_model"):  # an InferRequest
        compiled = compiled.get_compiled_model()
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT")).removeprefix("<Type: '").removesuffix("'>")
    layers = (op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops())
    int8 = any(info["layerType"].astype(str) == "FullyConnected"
               and info["runtimePrecision"].astype(str) in ("i8", "u8") for info in layers)
    return f"int8 + {hint}" if int8 else hint


ST_OPENVINO_FILE = "openvino/openvino_model.xml"  # what CrossEncoder(..., backend="openvino").save_pretrained wrote
ST_OPENVINO_QINT8_FILE = "openvino/openvino_model_qint8_quantized.xml"  # export_static_quantized_openvino_model


def crossonnx_runtime(args: argparse.Namespace, provider: str, precision: str) -> Built:
    """crossonnx's CrossEncoder on one (provider, precision); what it executes as its engine reports it."""
    from crossonnx import CrossEncoder

    model = CrossEncoder(args.model_dir, precision=precision, provider=provider, threads=args.threads)
    executes = model.info()["executes"]  # OpenVINO: its inference precision; ONNX Runtime: the graph's own
    if executes.startswith("as stored"):
        executes = f"{precision} ({executes})"
    return (lambda pairs, batch: model.predict(pairs, batch_size=batch)), executes


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


# name -> build(args) -> (scorer, what it executes); OpenVINO's precision is read back from its compiled model
NAMED_ENGINES: dict[str, Callable[[argparse.Namespace], Built]] = {
    "st-torch-fp32": lambda a: (st_torch(a, "fp32"), "fp32"),
    "st-torch-bf16": lambda a: (st_torch(a, "bf16"), "bf16"),
    "st-onnx": lambda a: (st_onnx(a, "model.onnx"), "fp32"),
    "st-onnx-qint8": lambda a: (st_onnx(a, st_int8_file(a.peer_dir)), "int8 (dynamic)"),
    "st-openvino": lambda a: st_openvino(a, ST_OPENVINO_FILE),
    "st-openvino-qint8": lambda a: st_openvino(a, ST_OPENVINO_QINT8_FILE),
    "fastembed": lambda a: (fastembed_engine(a), "fp32"),
    "flashrank-style": lambda a: (flashrank_style(a), "fp32"),
}
# crossonnx engines are named crossonnx[-PROVIDER]-PRECISION: no provider is ONNX Runtime's CPU provider, as in
# crossonnx-int8; crossonnx-openvino-bf16 is the OpenVINO engine. Kept in step with crossonnx.engines.PROVIDERS (a
# test checks), since this module imports nothing from crossonnx; the precisions are the precision table's
# (crossonnx/precisions.py, read by path: plain data, standard library only).
NAMED_PROVIDERS = ("openvino", "cuda", "tensorrt")  # besides "cpu", which a name leaves out


def _precision_table() -> Any:
    """crossonnx/precisions.py, loaded from beside this file: peers' environments may not have crossonnx installed."""
    path = Path(__file__).resolve().parents[1] / "precisions.py"
    spec = importlib.util.spec_from_file_location("_crossonnx_precisions", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


CROSSONNX_PRECISIONS = tuple(_precision_table().PRECISIONS)
ENGINE_FORMS = (f"{', '.join(NAMED_ENGINES)}, or crossonnx[-PROVIDER]-PRECISION with PROVIDER one of "
                f"{', '.join(NAMED_PROVIDERS)} (none: ONNX Runtime CPU) and PRECISION one of "
                f"{', '.join(CROSSONNX_PRECISIONS)}")


def crossonnx_variant(engine: str) -> tuple[str, str] | None:
    """(provider, precision) of a crossonnx engine name: crossonnx-int8 is (cpu, int8), crossonnx-openvino-int8-static
    is (openvino, int8-static); None for a peer's name; ValueError for a crossonnx name that names no
    provider/precision."""
    if not engine.startswith("crossonnx-"):
        return None
    rest = engine.removeprefix("crossonnx-")
    provider, _, precision = rest.partition("-")
    if provider not in NAMED_PROVIDERS:
        provider, precision = "cpu", rest
    if precision not in CROSSONNX_PRECISIONS:
        raise ValueError(f"unknown engine {engine!r}: precision {precision!r} is not one of "
                         f"{', '.join(CROSSONNX_PRECISIONS)}. Engines: {ENGINE_FORMS}")
    return provider, precision


def engine_name(provider: str, precision: str) -> str:
    """The engine name of a crossonnx variant, crossonnx_variant's inverse: (cpu, int8) -> crossonnx-int8."""
    return "crossonnx-" + ("" if provider == "cpu" else f"{provider}-") + precision


def check_engine(engine: str) -> str:
    """The name itself when it is a known engine; else ValueError listing the engines and the crossonnx form."""
    if engine not in NAMED_ENGINES and crossonnx_variant(engine) is None:
        raise ValueError(f"unknown engine {engine!r}. Engines: {ENGINE_FORMS}")
    return engine


def build_engine(engine: str, args: argparse.Namespace) -> Built:
    """The engine's scorer, and what it executes."""
    variant = crossonnx_variant(engine)
    return NAMED_ENGINES[engine](args) if variant is None else crossonnx_runtime(args, *variant)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss, which may include the parent's peak, without /proc)."""
    from crossonnx.bench.machine import process_memory_mb

    peak = process_memory_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", required=True, help=f"one of: {ENGINE_FORMS}")
    parser.add_argument("--model-dir", help="crossonnx export folder")
    parser.add_argument("--checkpoint", help="Hugging Face checkpoint folder (PyTorch engines)")
    parser.add_argument("--peer-dir", help="folder laid out for sentence-transformers onnx / openvino, fastembed")
    parser.add_argument("--pairs", required=True, help="JSON file: list of [a, b]")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.0, help="repeat a pass until it took this long")
    parser.add_argument("--latency", type=int, default=0, help="also time N single-pair calls")
    parser.add_argument("--scores-out", help="write the last pass's scores here (JSON)")
    args = parser.parse_args()
    try:
        check_engine(args.engine)
    except ValueError as exc:
        parser.error(str(exc))

    pairs = [tuple(p) for p in json.loads(Path(args.pairs).read_text(encoding="utf-8"))]
    started = time.perf_counter()
    score, executes = build_engine(args.engine, args)
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
        "executes": executes,
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
