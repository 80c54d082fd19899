"""Which graph file each engine should run, measured side by side in one process, model only: for static int8 one
portable QDQ ONNX that both engines run, or OpenVINO's own IR (what crossonnx ships as int8-static); for bf16 the
fused fp32 graph (crossonnx's, with ONNX Runtime's fusions) or the unfused one.

    python benchmarks/graph_formats.py      # about five minutes on 2 cores (plus two exports on the first run)

The QDQ file is int8-static's own NNCF recipe applied to the reference model's unfused fp32 ONNX graph
(benchmarks/lab/qdq_int8.py): the same 128 calibration pairs (one pair per sample), SmoothQuant and nodes in float;
only the file format differs.
Seven engines run the benchmark's 512 query-passage pairs (batch 32, 2 threads), each with its own engine's batching
(token budget) and compile options, over alternating rounds:

- ONNX Runtime fp32 and ONNX Runtime dynamic int8 (crossonnx's fp32 and int8);
- the QDQ file on ONNX Runtime, and on OpenVINO (the rest of the graph in bf16, as int8-static);
- OpenVINO's int8-static IR;
- OpenVINO bf16 on the fused fp32 graph (crossonnx's bf16) and on the unfused one.

Agreement is with ONNX Runtime fp32 (PyTorch to about 1e-6): Spearman of the logits and the largest difference of
the scores. Writes benchmarks/results/graph_formats.{json,md,png}; what was decided from it:
docs/design/int8-static-ir.md (int8) and docs/design/unfused-bf16.md (bf16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.batching import plan_batches
from crossonnx.bench.machine import library_versions
from crossonnx.bench.report import pyplot, result_header, write_result
from crossonnx.bench.workloads import query_passage_pairs
from crossonnx.checkpoints.stsb_minilm import build_reference_model
from crossonnx.engines import open_engine
from crossonnx.engines.onnxruntime import TOKEN_BUDGET as ORT_BUDGET
from crossonnx.engines.onnxruntime import create_session
from crossonnx.engines.openvino import TOKEN_BUDGET as OV_BUDGET
from crossonnx.exporter.convert import exported_input_names
from crossonnx.exporter.pipeline import calibration_feeds, export_model
from crossonnx.manifest import UNFUSED_GRAPH, load_manifest
from crossonnx.metrics import spearman
from crossonnx.runtime_args import positive_int
from crossonnx.scoring import ACTIVATION_FNS
from crossonnx.tokenization import PairTokenizer
from lab.engine_profile import model_folder
from lab.machine import cpu_info
from lab.qdq_int8 import quantize_qdq_static

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("crossonnx", "numpy", "onnxruntime", "openvino", "nncf", "tokenizers")
Run = Callable[[dict[str, np.ndarray]], np.ndarray]


def unfused_graph(work: Path) -> Path:
    """The reference model's unfused fp32 graph, from an export made once under ``work`` with ``tensorrt=True``."""
    unfused_dir = work / "onnx" / "stsb-minilm-l6-unfused"
    if not (unfused_dir / "crossonnx.json").is_file():
        export_model(str(build_reference_model()), out=unfused_dir, precisions=["fp32"], tensorrt=True, log=None)
    return unfused_dir / load_manifest(unfused_dir).entry(UNFUSED_GRAPH).file


def qdq_file(unfused: Path, shipped: Path, out: Path) -> dict[str, Any]:
    """Write ``out``: the QDQ static int8 of ``unfused``, with the float MatMuls of ``shipped``'s int8-static."""
    manifest = load_manifest(unfused.parent)
    plan = load_manifest(shipped).entry("int8-static").details
    feeds = calibration_feeds(unfused.parent / manifest.tokenizer.file, manifest.tokenizer, manifest.max_length,
                              exported_input_names(unfused), batch=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    return quantize_qdq_static(unfused, out, feeds, plan["float_matmuls"])


class OrtFile:
    """A graph file on ONNX Runtime's CPU provider with the runtime's session options: feed -> logits."""

    def __init__(self, path: Path, threads: int):
        self._session = create_session(path, "cpu", threads)

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._session.run(None, feed)[0], dtype=np.float32)


def openvino_run(path: Path, threads: int) -> Run:
    """A graph file on OpenVINO with the runtime's compile options for bf16 and int8-static (float in bf16 where the
    CPU has it)."""
    import openvino as ov

    from crossonnx.engines.openvino import has_bf16

    hint = "bf16" if has_bf16() else "f32"
    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY"})
    request, output = compiled.create_infer_request(), compiled.outputs[0]
    return lambda feed: np.asarray(request.infer(feed)[output], dtype=np.float32)


def engines(model_dir: Path, qdq: Path, unfused: Path, threads: int) -> dict[str, tuple[Path, Run, int]]:
    """name -> (graph file, feed -> logits, token budget)."""
    manifest = load_manifest(model_dir)

    def shipped(precision: str, provider: str) -> tuple[Path, Run, int]:
        engine = open_engine(model_dir, manifest, precision, provider, threads=threads, max_batch=32,
                             max_length=manifest.max_length)
        return model_dir / engine.graph_file, engine.run, int(engine.token_budget or 0)

    return {
        "ONNX Runtime fp32": shipped("fp32", "cpu"),
        "ONNX Runtime dynamic int8 (crossonnx int8)": shipped("int8", "cpu"),
        "QDQ static int8 on ONNX Runtime": (qdq, OrtFile(qdq, threads), ORT_BUDGET),
        "QDQ static int8 on OpenVINO": (qdq, openvino_run(qdq, threads), OV_BUDGET),
        "OpenVINO IR int8-static (crossonnx int8-static)": shipped("int8-static", "openvino"),
        "OpenVINO bf16, fused fp32 graph (crossonnx bf16)": shipped("bf16", "openvino"),
        "OpenVINO bf16, unfused fp32 graph": (unfused, openvino_run(unfused, threads), OV_BUDGET),
    }


def file_mb(graph: Path) -> float:
    """A graph's size on disk with its weights file (an IR's ``.bin``), in MB."""
    weights = graph.with_suffix(".bin")
    return (graph.stat().st_size + (weights.stat().st_size if weights.is_file() else 0)) / 1e6


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        *result_header("Graph files: a portable QDQ int8 or OpenVINO's IR, a fused or unfused graph for bf16 — "
                       f"{doc['model']}", doc),
        f"Workload: {doc['pairs']} query-passage pairs of the throughput benchmark, batch {doc['batch_size']}, "
        f"{doc['threads']} threads, model only, each engine with its own token budget; {doc['rounds']} rounds in "
        "alternating order, the median round's rate, and the median of the per-round ratios to ONNX Runtime's "
        f"dynamic int8. QDQ file: {doc['qdq']['quantizer']}, {doc['qdq']['int8_matmuls']} int8 MatMuls, "
        f"{len(doc['qdq']['float_matmuls'])} in float (attention's, and those int8-static's plan keeps in float), "
        f"calibrated on {doc['qdq']['calibration_feeds']} export pairs. Agreement: with ONNX Runtime fp32.",
        "",
        "| engine | file | MB | pairs/s | x ONNX Runtime int8 | Spearman (logits) | max abs diff (scores) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in doc["rows"]:
        lines.append(f"| {row['engine']} | `{row['file']}` | {row['mb']:.0f} | {row['pairs_per_s']:.1f} | "
                     f"{row['x_ort_int8']:.2f} | {row['spearman']:.5f} | {row['max_abs_diff']:.1e} |")
    return "\n".join([*lines, ""])


def plot(doc: dict[str, Any], out: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    rows = doc["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.4))
    ax.barh([row["engine"] for row in rows], [row["pairs_per_s"] for row in rows], color="tab:blue")
    for i, row in enumerate(rows):
        ax.text(row["pairs_per_s"], i, f"  {row['pairs_per_s']:.0f} pairs/s, Spearman {row['spearman']:.4f}",
                va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(row["pairs_per_s"] for row in rows) * 1.5)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel(f"pairs/s, {doc['pairs']} query-passage pairs, model only, {doc['threads']} threads")
    ax.set_title(f"Graph files per engine: {doc['model']}, {doc['cpu'].get('core') or doc['cpu']['model']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="the shipped export (default: the reference model's)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache/bench")
    parser.add_argument("--pairs", type=positive_int, default=512)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--stem", default="graph_formats")
    parser.add_argument("--render", type=Path, metavar="JSON", help="rewrite a result's markdown and plot, no run")
    args = parser.parse_args()
    doc = json.loads(args.render.read_text()) if args.render else measure(args)
    if args.render:
        write_result(doc, args.render.parent, args.render.stem, markdown, plot)
        return
    write_result(doc, args.out, args.stem, markdown, plot)
    print(markdown(doc))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = model_folder(args.model_dir, args.work)
    manifest = load_manifest(model_dir)
    unfused = unfused_graph(args.work)
    qdq = args.work / "graph_formats" / "model_int8_qdq.onnx"
    print("quantizing the QDQ file", flush=True)
    details = qdq_file(unfused, model_dir, qdq)
    runs = engines(model_dir, qdq, unfused, args.threads)
    pairs = query_passage_pairs(args.pairs)
    names = exported_input_names(unfused)  # the unfused and fused graphs take the same inputs
    tokenizer = PairTokenizer(model_dir / manifest.tokenizer.file, manifest.tokenizer, manifest.max_length, names)
    encoded = tokenizer.encode(pairs)
    planned = {name: [(rows, tokenizer.batch(encoded, rows))
                      for rows in plan_batches(encoded.lengths, args.batch_size, budget or None)]
               for name, (_, _, budget) in runs.items()}
    logits = {}
    for name, (_, run, _) in runs.items():  # also every shape once, before any timing
        out = np.empty((len(pairs), int(manifest.num_labels)), dtype=np.float32)
        for rows, feed in planned[name]:
            out[rows] = run(feed)
        logits[name] = out
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for index in range(args.rounds):
        for name in (list(runs) if index % 2 == 0 else list(reversed(runs))):
            started = time.perf_counter()
            for _, feed in planned[name]:
                runs[name][1](feed)
            rates[name].append(len(pairs) / (time.perf_counter() - started))
    reference, baseline = logits["ONNX Runtime fp32"], "ONNX Runtime dynamic int8 (crossonnx int8)"
    activation = ACTIVATION_FNS[manifest.activation]
    rows = [{
        "engine": name, "file": file.name, "mb": file_mb(file),
        "rounds": rates[name], "pairs_per_s": statistics.median(rates[name]),
        "x_ort_int8": statistics.median(a / b for a, b in zip(rates[name], rates[baseline], strict=True)),
        "spearman": spearman(logits[name][:, 0], reference[:, 0]),
        "max_abs_diff": float(np.abs(activation(logits[name]) - activation(reference)).max()),
    } for name, (file, _, _) in runs.items()]
    return {
        "model": manifest.source.get("registry_name") or model_dir.name,
        "command": "python benchmarks/graph_formats.py",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_info(), "libraries": library_versions(LIBRARIES),
        "pairs": len(pairs), "batch_size": args.batch_size, "threads": args.threads, "rounds": args.rounds,
        "qdq": details, "rows": rows,
    }


if __name__ == "__main__":
    main()
