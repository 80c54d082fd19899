"""One OpenVINO stream with all threads (the runtime engine) against two streams of half the threads, batches in
pairs: what it would gain for many batches, and what it costs a lone pair and memory.

    python benchmarks/openvino_streams.py      # about five minutes on 2 cores

For every OpenVINO precision of the export (default: the throughput benchmark's reference model), over the batches
``CrossEncoder`` plans for the benchmark's 512 query-passage pairs (batch 32, 2 threads), model only:

- pairs/s of the runtime engine (1 stream) and of the same graph and options compiled with 2 streams, two batches in
  flight, in alternating order over the rounds (a ratio is the median of the per-round ratios);
- the latency of one lone pair on each (on two streams a lone request gets one stream's threads);
- the resident memory the second compiled model adds, and the largest logit difference between the two.

Writes benchmarks/results/openvino_streams.{json,md,png}; what was decided from it: docs/design/openvino-streams.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from crossonnx.bench.machine import library_versions
from crossonnx.bench.report import pyplot, result_header, write_result
from crossonnx.bench.workloads import query_passage_pairs
from crossonnx.engines.openvino import PRECISIONS
from crossonnx.manifest import load_manifest
from crossonnx.runtime_args import positive_int
from lab.engine_profile import model_folder, open_openvino, workload_feeds
from lab.machine import cpu_info
from lab.streams import compile_streams, median_ms, resident_mb, run_pipelined

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("crossonnx", "numpy", "openvino", "tokenizers")
STREAMS = 2


def measure(model_dir: Path, precision: str, pairs: list[tuple[str, str]], batch_size: int, threads: int,
            rounds: int) -> dict[str, Any]:
    """One precision: both ways over the workload's batches, round by round, and a lone pair on each."""
    engine = open_openvino(model_dir, precision, threads)
    feeds = workload_feeds(model_dir, engine, pairs, batch_size)
    lone = workload_feeds(model_dir, engine, query_passage_pairs(1, seed=3), 1)[0]
    one_out = [engine.run(feed) for feed in feeds]  # also every shape once, before any timing
    before = resident_mb()
    compiled = compile_streams(model_dir, engine, STREAMS)
    requests = [compiled.create_infer_request() for _ in range(STREAMS)]
    two_out = run_pipelined(requests, feeds)
    added_mb = resident_mb() - before
    passes = {"one": lambda: [engine.run(feed) for feed in feeds], "two": lambda: run_pipelined(requests, feeds)}
    per_round: list[dict[str, float]] = []
    for index in range(rounds):
        order = ("one", "two") if index % 2 == 0 else ("two", "one")
        seconds = {}
        for name in order:
            started = time.perf_counter()
            passes[name]()
            seconds[name] = time.perf_counter() - started
        per_round.append({name: len(pairs) / s for name, s in seconds.items()})
    ratios = [r["two"] / r["one"] for r in per_round]
    return {
        "precision": precision, "executes": engine.executes, "batches": len(feeds),
        "streams": int(compiled.get_property("NUM_STREAMS")),
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "rounds": per_round,
        "one_pairs_per_s": statistics.median(r["one"] for r in per_round),
        "two_pairs_per_s": statistics.median(r["two"] for r in per_round),
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "lone_pair_tokens": int(lone["input_ids"].shape[1]),
        "lone_pair_ms_one": median_ms(lambda: engine.run(lone), 20),
        "lone_pair_ms_two": median_ms(lambda: requests[0].infer(lone), 20),
        "added_resident_mb": added_mb,
        "max_abs_logit_diff": float(np.abs(np.concatenate(one_out) - np.concatenate(two_out)).max()),
    }


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        *result_header(f"One OpenVINO stream or two — {doc['model']}", doc),
        f"Workload: {doc['pairs']} query-passage pairs of the throughput benchmark, batch {doc['batch_size']}, "
        f"{doc['threads']} threads, model only (no tokenization), {doc['rounds']} rounds in alternating order. "
        f"*1 stream*: the runtime engine. *{STREAMS} streams*: the same graph and options with its threads split "
        f"over {STREAMS} streams, {STREAMS} batches in flight. Ratio: median of the per-round ratios (range). "
        "Lone pair: one pair alone, median of 20 calls (on two streams it gets one stream's threads). Memory: "
        "resident memory added by compiling and running the second model.",
        "",
        f"| precision | executes | 1 stream pairs/s | {STREAMS} streams pairs/s | ratio (range) | lone pair ms, "
        f"1 stream | lone pair ms, {STREAMS} streams | memory added MB | max logit diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in doc["rows"]:
        lines.append(
            f"| {row['precision']} | {row['executes']} | {row['one_pairs_per_s']:.1f} | {row['two_pairs_per_s']:.1f} "
            f"| {row['ratio']:.3f} ({row['ratio_min']:.2f}–{row['ratio_max']:.2f}) | {row['lone_pair_ms_one']:.1f} "
            f"| {row['lone_pair_ms_two']:.1f} | {row['added_resident_mb']:.0f} | {row['max_abs_logit_diff']:.1e} |"
        )
    return "\n".join([*lines, ""])


def plot(doc: dict[str, Any], out: Path) -> Path | None:
    """Per precision: the two-stream / one-stream ratio of every round, and the lone pair's latency ratio."""
    plt = pyplot()
    if plt is None:
        return None
    rows = doc["rows"]
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.6))
    for i, row in enumerate(rows):
        ratios = [r["two"] / r["one"] for r in row["rounds"]]
        ax.scatter(ratios, [i] * len(ratios), color="tab:blue", s=14,
                   label="many batches: pairs/s, 2 streams / 1 (each round)" if i == 0 else None)
        ax.scatter([row["lone_pair_ms_one"] / row["lone_pair_ms_two"]], [i], color="tab:red", marker="x",
                   label="a lone pair: speed, 2 streams / 1" if i == 0 else None)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_yticks(range(len(rows)), [row["precision"] for row in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"2 streams of {doc['threads'] // STREAMS} thread(s) / 1 stream of {doc['threads']} (higher: "
                  "2 streams faster)")
    ax.set_title(f"OpenVINO streams: {doc['model']}, {doc['cpu'].get('core') or doc['cpu']['model']}", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="an exported model folder (default: the reference model)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache/bench")
    parser.add_argument("--pairs", type=positive_int, default=512)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--threads", type=int, default=2, choices=range(STREAMS, 257), metavar="THREADS",
                        help=f"CPU threads, at least {STREAMS} (default 2)")
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--stem", default="openvino_streams")
    parser.add_argument("--render", type=Path, metavar="JSON", help="rewrite a result's markdown and plot, no run")
    args = parser.parse_args()
    if args.render:
        doc = json.loads(args.render.read_text())
        write_result(doc, args.render.parent, args.render.stem, markdown, plot)
        return

    model_dir = model_folder(args.model_dir, args.work)
    manifest = load_manifest(model_dir)
    pairs = query_passage_pairs(args.pairs)
    rows = []
    for precision in [p for p in PRECISIONS if p in manifest.precisions]:
        print(f"measuring {precision}", flush=True)
        rows.append(measure(model_dir, precision, pairs, args.batch_size, args.threads, args.rounds))
    doc = {
        "model": manifest.source.get("registry_name") or model_dir.name,
        "command": "python benchmarks/openvino_streams.py",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_info(), "libraries": library_versions(LIBRARIES),
        "pairs": len(pairs), "batch_size": args.batch_size, "threads": args.threads, "rounds": args.rounds,
        "rows": rows,
    }
    write_result(doc, args.out, args.stem, markdown, plot)
    print(markdown(doc))


if __name__ == "__main__":
    main()
