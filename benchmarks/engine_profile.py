"""Where OpenVINO's time goes, per precision, against this CPU's matrix-multiplication peak: the "why" behind the
quality levels' speed figures (benchmarks/results/engine_profile.{json,md,png}; what was decided from it:
docs/design/engine-profile.md).

    python benchmarks/engine_profile.py     # about 2 minutes on 2 cores; exports the reference model if needed

It runs the runtime's own OpenVINO engine (each precision's graph and compile options, plus ``PERF_COUNT``) over
the batches ``CrossEncoder`` plans for the throughput benchmark's query-passage pairs (real MiniLM, batch 32),
adds up OpenVINO's per-layer times by kind (int8 matmuls, float matmuls, attention, the rest), divides each kind's
operations (from the fp32 graph at each batch's shape) by its time, and sets the matmul rates beside one MatMul of
the model's largest shape run alone (the practical peak of that arithmetic on this CPU). See
benchmarks/lab/engine_profile.py for the rules.

Bounds in the report: "matmuls only" is the pairs/s the precision would reach if everything but its matmuls took no
time; "matmuls at peak" additionally runs every matmul at the one-MatMul-alone rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from crossonnx.bench.machine import library_versions
from crossonnx.bench.report import pyplot, result_header, write_result
from crossonnx.bench.workloads import query_passage_pairs
from crossonnx.engines import OPENVINO_INT8
from crossonnx.engines.openvino import PRECISIONS
from crossonnx.manifest import load_manifest
from crossonnx.runtime_args import positive_int
from lab.engine_profile import (
    KINDS,
    float_matmul_names,
    forward_work,
    kind_rates,
    matmul_peak,
    model_folder,
    open_openvino,
    profile_engine,
    workload_feeds,
)
from lab.machine import cpu_info

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("crossonnx", "numpy", "openvino", "nncf", "tokenizers")
PEAK_ARITHMETIC = {"f32": ("f32", False), "bf16": ("bf16", False), "int8": ("bf16", True)}


def peak_arithmetic(kind: str, executes: str) -> str | None:
    """The arithmetic of the one-MatMul-alone figure a kind is compared with (a ``PEAK_ARITHMETIC`` key): int8, or
    the float precision the engine executes; None for attention."""
    if kind == "int8 matmul":
        return "int8"
    if kind == "float matmul":
        return "bf16" if "bfloat16" in executes else "f32"
    return None


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        *result_header(f"Where OpenVINO's time goes — {doc['model']}", doc),
        f"Workload: {doc['pairs']} query-passage pairs of the throughput benchmark, batch {doc['batch_size']}, "
        f"{doc['threads']} threads; {doc['batches']} batches as CrossEncoder plans them (median "
        f"{doc['median_batch'][0]} x {doc['median_batch'][1]} tokens). Times: OpenVINO's per-layer counters "
        "(PERF_COUNT) of a second run of each batch at its shape, summed over the batches, fastest of the passes, "
        "with each kind's share of their sum (which is a few percent over the wall time: OpenVINO prepares layers "
        "while others run). After shape changes: the first run's wall time minus the second's, as a share of the "
        "first's (OpenVINO re-prepares its layers for a new shape). pairs/s: the first runs' wall time (model only: "
        "no tokenization). Each precision's one-MatMul-alone peaks are measured right after its profile, so that "
        "the machine's drift falls on both.",
        "",
        "| precision | executes | pairs/s | int8 matmul | float matmul | attention | other | after shape changes | "
        "bound: matmuls only | bound: matmuls at peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in doc["rows"]:
        counted = sum(row["ms"].values())
        shares = [f"{row['ms'][k]:.0f} ms ({100 * row['ms'][k] / counted:.0f}%)" if row["ms"][k] >= 0.5 else "–"
                  for k in KINDS]
        shares.append(f"{row['shape_change_ms']:.0f} ms ({100 * row['shape_change_ms'] / row['wall_ms']:.0f}%)")
        lines.append(f"| {row['precision']} | {row['executes']} | {row['pairs_per_s']:.1f} | {' | '.join(shares)} | "
                     f"{row['bound_matmuls_only']:.0f} | {row['bound_matmuls_at_peak']:.0f} |")
    lines += ["", "| precision | kind | kernels | G ops | ms | G ops/s | one MatMul alone: G ops/s (kernel) | "
              "of peak |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in doc["rows"]:
        total_ops = sum(rate["gops"] for rate in row["rates"].values())
        for kind, rate in row["rates"].items():
            if rate["gops"] < 0.01 * total_ops:  # e.g. int8-dynamic's float head: too little work for a rate
                continue
            peak = row["peaks"].get(kind)
            alone = f"{peak['gops']:.0f} ({peak['kernel']})" if peak else "–"
            share = f"{100 * rate['gops_per_s'] / peak['gops']:.0f}%" if peak else "–"
            kernels = ", ".join(row["kernels"].get(kind, []))
            lines.append(f"| {row['precision']} | {kind} | {kernels} | {rate['gops']:.0f} | {rate['ms']:.0f} | "
                         f"{rate['gops_per_s']:.0f} | {alone} | {share} |")
    lines += ["", *doc["notes"], ""]
    return "\n".join(lines)


def plot(doc: dict[str, Any], out: Path) -> Path | None:
    """Stacked bars: each precision's model time per pass over the workload, by kind (the layer counters' shares
    of its wall time), with its pairs/s and its bound if only the matmuls took time."""
    plt = pyplot()
    if plt is None:
        return None
    rows = doc["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.7 * len(rows) + 1.6))
    left = [0.0] * len(rows)
    for kind in KINDS:
        widths = [row["wall_ms"] / 1000 * row["ms"][kind] / sum(row["ms"].values()) for row in rows]
        ax.barh([row["precision"] for row in rows], widths, left=left, label=kind)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for i, row in enumerate(rows):
        ax.text(left[i], i, f"  {row['pairs_per_s']:.0f} pairs/s (matmuls only: {row['bound_matmuls_only']:.0f})",
                va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.45)  # room for the labels
    ax.set_xlabel(f"seconds for {doc['pairs']} query-passage pairs (model only, {doc['threads']} threads)")
    ax.set_title(f"Where OpenVINO's time goes: {doc['model']}, {doc['cpu'].get('core') or doc['cpu']['model']}",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


NOTES = [
    "- G ops: 2 x multiply-adds, from the fp32 graph reshaped to each batch (crossonnx's [CLS]-only last layer "
    "included). A matmul kind's time includes what OpenVINO fused into it (bias, GELU, quantize / dequantize).",
    "- One MatMul alone: [median batch tokens x K] x [K x N] at the model's largest weight shape, in the same "
    "arithmetic (int8: a FakeQuantize on the activations and int8 weights per output channel, NNCF's pattern).",
    "- Bound, matmuls only: pairs / (the matmuls' share of the wall time): what removing every other cost would give "
    "at today's matmul speed. Bound, matmuls at peak: the same with every matmul at the one-MatMul-alone rate.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="an exported model folder (default: the reference model)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache/bench")
    parser.add_argument("--pairs", type=positive_int, default=512)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--reps", type=positive_int, default=3, help="passes over the batches; the fastest counts")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--stem", default="engine_profile")
    parser.add_argument("--render", type=Path, metavar="JSON", help="rewrite a result's markdown and plot, no run")
    args = parser.parse_args()
    if args.render:
        doc = json.loads(args.render.read_text())
        doc["notes"] = NOTES
        write_result(doc, args.render.parent, args.render.stem, markdown, plot)
        return

    model_dir = model_folder(args.model_dir, args.work)
    manifest = load_manifest(model_dir)
    pairs = query_passage_pairs(args.pairs)
    rows: list[dict[str, Any]] = []
    work = None
    for precision in [p for p in PRECISIONS if p in manifest.precisions]:
        engine = open_openvino(model_dir, precision, args.threads)
        feeds = workload_feeds(model_dir, engine, pairs, args.batch_size)
        shapes = [tuple(feed["input_ids"].shape) for feed in feeds]
        if work is None:
            per_shape = forward_work(model_dir / manifest.entry("fp32").file, set(shapes))
            work = [per_shape[shape] for shape in shapes]
            median = sorted(shapes, key=lambda s: s[0] * s[1])[len(shapes) // 2]
            largest = max(work[0].matmul_shapes, key=lambda s: s[0] * s[1])
        print(f"profiling {precision} ({len(feeds)} batches)", flush=True)
        profile = profile_engine(model_dir, engine, feeds, reps=args.reps)
        int8 = precision in OPENVINO_INT8
        rates = kind_rates(profile, work, float_matmul_names(manifest.entry(precision).details) if int8 else None)
        # the peaks this precision's matmuls are compared with, right after its profile: the machine's speed drifts,
        # and the comparison should not
        arithmetic = {kind: name for kind in rates if (name := peak_arithmetic(kind, profile["executes"]))}
        measured = {name: matmul_peak(PEAK_ARITHMETIC[name][0], median[0] * median[1], *largest, args.threads,
                                      PEAK_ARITHMETIC[name][1]) for name in set(arithmetic.values())}
        peaks = {kind: measured[name] for kind, name in arithmetic.items()}
        # the per-layer counters add up to a little more than the wall time (OpenVINO prepares layers while others
        # run); bounds scale them to the wall time
        scale = profile["wall_ms"] / sum(profile["ms"].values())
        matmul_ms = scale * sum(profile["ms"][k] for k in ("int8 matmul", "float matmul"))
        at_peak_ms = scale * sum(rates[kind]["gops"] / peak["gops"] * 1000 for kind, peak in peaks.items())
        rows.append({
            "precision": precision, "executes": profile["executes"], "ms": profile["ms"],
            "wall_ms": profile["wall_ms"], "settled_wall_ms": profile["settled_wall_ms"],
            "shape_change_ms": max(0.0, profile["wall_ms"] - profile["settled_wall_ms"]),
            "pairs_per_s": len(pairs) / profile["wall_ms"] * 1000,
            "rates": rates, "kernels": profile["kernels"],
            "peaks": peaks,
            "bound_matmuls_only": len(pairs) / matmul_ms * 1000,
            "bound_matmuls_at_peak": len(pairs) / at_peak_ms * 1000,
        })
    assert work is not None, f"{model_dir} has no OpenVINO precision"
    doc = {
        "model": manifest.source.get("registry_name") or model_dir.name,
        "command": "python benchmarks/engine_profile.py",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_info(), "libraries": library_versions(LIBRARIES),
        "pairs": len(pairs), "batch_size": args.batch_size, "threads": args.threads, "batches": len(work),
        "median_batch": list(median), "median_padded_tokens": statistics.median(s[0] * s[1] for s in shapes),
        "rows": rows, "notes": NOTES,
    }
    write_result(doc, args.out, args.stem, markdown, plot)
    print(markdown(doc))


if __name__ == "__main__":
    main()
