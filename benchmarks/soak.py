"""Engine memory over many calls of random shapes: benchmarks/results/soak.{json,md,png}.

    python benchmarks/soak.py                               # the reference model, every variant this CPU runs
    python benchmarks/soak.py --model-dir DIR --calls 300 --out /tmp/x   # a smoke run on any exported folder

One long-lived ``CrossEncoder`` per variant (provider, precision), each in a process of its own, scores --calls
requests of 1-16 (query, passage) pairs with passages of up to 300 words (STSb sentences), the way a rerank
service sees them: nearly every call has a (rows, padded length) shape not seen before. Resident memory is read
after every twentieth of the calls. For OpenVINO each variant runs twice in the same run: with crossonnx's bound
(calls padded to a multiple of ``WIDTH_MULTIPLE`` tokens, and the CPU plugin's per-shape kernel cache capped at
``RUNTIME_CACHE_CAPACITY``) and with OpenVINO's defaults (padding to the longest pair, a cache unbounded in
practice); the pair gives the bound's effect on memory and its cost in pairs/s.

Growth is measured after warm-up (the first fifth of the calls): (last RSS - RSS at warm-up) / RSS at warm-up.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (("cpu", "fp32"), ("cpu", "int8"), ("openvino", "fp32"), ("openvino", "bf16"),
            ("openvino", "int8-static"), ("openvino", "int8-dynamic"))
SAMPLES = 20
WARMUP_FRACTION = 0.2
GROWTH_TARGET = 0.05


def requests(calls: int, seed: int) -> list[list[tuple[str, str]]]:
    """``calls`` requests of 1-16 pairs: a short query and a passage of 1-300 words, from STSb sentences."""
    from crossonnx.stsb import load_stsb

    rows = load_stsb("dev") + load_stsb("test")
    sentences = [r.sentence1 for r in rows] + [r.sentence2 for r in rows]
    rng = random.Random(seed)
    out = []
    for _ in range(calls):
        pairs = []
        for _ in range(rng.randint(1, 16)):
            words: list[str] = []
            target = rng.randint(1, 300)
            while len(words) < target:
                words += rng.choice(sentences).split()
            pairs.append((" ".join(rng.choice(sentences).split()[:8]), " ".join(words[:target])))
        out.append(pairs)
    return out


def soak_one(model_dir: str, provider: str, precision: str, bounded: bool, calls: int, threads: int,
             seed: int) -> dict[str, Any]:
    """Run in the child process: one long-lived CrossEncoder, RSS after each twentieth of the calls."""
    from crossonnx import CrossEncoder
    from lab.streams import resident_mb

    if provider == "openvino" and not bounded:
        from crossonnx.engines import openvino as openvino_engine

        # OpenVINO's defaults, the comparison arm: its kernel cache's own capacity, calls padded to the longest pair
        openvino_engine.RUNTIME_CACHE_CAPACITY = None
        openvino_engine.WIDTH_MULTIPLE = 1
    work = requests(calls, seed)
    model = CrossEncoder(model_dir, precision=precision, provider=provider, threads=threads)
    model.predict(work[0])
    every = max(1, calls // SAMPLES)
    samples, pairs, started = [], 0, time.perf_counter()
    for index, request in enumerate(work, 1):
        model.predict(request)
        pairs += len(request)
        if index % every == 0 or index == calls:
            samples.append({"calls": index, "seconds": round(time.perf_counter() - started, 2),
                            "rss_mb": round(resident_mb(), 1)})
    seconds = time.perf_counter() - started
    return {"provider": provider, "precision": precision, "bounded": bounded, "calls": calls, "pairs": pairs,
            "pairs_per_second": round(pairs / seconds, 2), "samples": samples, "growth": growth(samples)}


def warm_rss(samples: list[dict[str, Any]]) -> float:
    """Resident memory at the end of warm-up (the first WARMUP_FRACTION of the calls)."""
    return samples[max(0, int(len(samples) * WARMUP_FRACTION) - 1)]["rss_mb"]


def growth(samples: list[dict[str, Any]]) -> float:
    """Relative RSS growth from the end of warm-up to the last sample."""
    warm = warm_rss(samples)
    return round((samples[-1]["rss_mb"] - warm) / warm, 4)


def run_child(model_dir: Path, provider: str, precision: str, bounded: bool, args: argparse.Namespace,
              ) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(model_dir), provider, precision, str(int(bounded)),
               "--calls", str(args.calls), "--threads", str(args.threads), "--seed", str(args.seed)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"provider": provider, "precision": precision, "bounded": bounded, "error": last}
    return json.loads(done.stdout.strip().splitlines()[-1])


def runnable(model_dir: Path) -> list[tuple[str, str]]:
    from crossonnx.engines import openvino_installed
    from crossonnx.manifest import load_manifest

    held = set(load_manifest(model_dir).precisions)
    out = []
    for provider, precision in VARIANTS:
        if precision not in held or (provider == "openvino" and not openvino_installed()):
            continue
        if precision == "bf16":
            from crossonnx.engines.openvino import has_bf16

            if not has_bf16():
                continue
        out.append((provider, precision))
    return out


def markdown(doc: dict[str, Any]) -> str:
    from crossonnx.bench.report import result_header

    lines = result_header("Engine memory over random shapes (soak)", doc)
    lines += [
        f"{doc['calls']} calls of 1-16 query-passage pairs (passages of 1-300 words), one long-lived CrossEncoder "
        f"per row, {doc['threads']} threads; growth: RSS from the end of warm-up (first "
        f"{int(WARMUP_FRACTION * 100)}% of the calls) to the end; target under {GROWTH_TARGET:.0%}.",
        "",
        "| engine | precision | shapes | RSS at warm-up MB | RSS at end MB | growth | pairs/s | "
        "pairs/s vs unbounded |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    rows = doc["rows"]
    unbounded = {(r["provider"], r["precision"]): r for r in rows if not r["bounded"] and "error" not in r}
    for r in rows:
        cache = "n/a" if r["provider"] != "openvino" else ("crossonnx's bound" if r["bounded"] else "OpenVINO default")
        if "error" in r:
            lines.append(f"| {r['provider']} | {r['precision']} | {cache} | error: {r['error']} | | | | |")
            continue
        warm = warm_rss(r["samples"])
        peer = unbounded.get((r["provider"], r["precision"]))
        ratio = f"{r['pairs_per_second'] / peer['pairs_per_second']:.3f}" if r["bounded"] and peer else "–"
        lines.append(f"| {r['provider']} | {r['precision']} | {cache} | {warm:.0f} | "
                     f"{r['samples'][-1]['rss_mb']:.0f} | {r['growth']:+.1%} | {r['pairs_per_second']:.1f} | "
                     f"{ratio} |")
    lines += ["", "crossonnx's bound: calls padded to a multiple of `WIDTH_MULTIPLE` tokens and OpenVINO CPU's "
              "per-shape kernel cache capped (`CPU_RUNTIME_CACHE_CAPACITY`); OpenVINO's default: calls padded to "
              "the longest pair, the plugin's own cache. ONNX Runtime has no such cache and pads to the longest "
              "pair. Why: [docs/design/bounded-engine-memory.md](../../docs/design/bounded-engine-memory.md).", ""]
    return "\n".join(lines)


def plot(doc: dict[str, Any], out: Path) -> Path | None:
    from crossonnx.bench.report import pyplot

    plt = pyplot()
    if plt is None:
        return None
    figure, axis = plt.subplots(figsize=(9, 5))
    for r in doc["rows"]:
        if "error" in r:
            continue
        arm = " (crossonnx's bound)" if r["bounded"] else " (OpenVINO default)"
        label = f"{r['provider']} {r['precision']}" + (arm if r["provider"] == "openvino" else "")
        axis.plot([s["calls"] for s in r["samples"]], [s["rss_mb"] for s in r["samples"]], label=label,
                  linestyle="-" if r["bounded"] else "--")
    axis.set_xlabel("calls (1-16 pairs each, random lengths)")
    axis.set_ylabel("resident memory, MB")
    axis.set_title("One long-lived CrossEncoder per variant: memory over random shapes")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def reference_folder(work: Path) -> Path:
    """The reference model exported to ``work`` in every precision this machine builds (once)."""
    from crossonnx.checkpoints.stsb_minilm import build_reference_model
    from crossonnx.exporter.pipeline import export_model

    out = work / "onnx" / "stsb-minilm-l6-all"
    if not (out / "crossonnx.json").is_file():
        export_model(str(build_reference_model()), out=out, log=None)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=4, metavar=("DIR", "PROVIDER", "PRECISION", "BOUNDED"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help="an exported folder (default: the reference model)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench", help="where the reference export goes")
    parser.add_argument("--calls", type=int, default=2000, help="requests per variant (default 2000)")
    parser.add_argument("--variants", help="comma-separated PROVIDER:PRECISION (default: every one this CPU runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.calls < SAMPLES:
        parser.error(f"--calls must be at least {SAMPLES}")
    if args.child:
        model_dir, provider, precision, bounded = args.child
        print(json.dumps(soak_one(model_dir, provider, precision, bounded == "1", args.calls, args.threads,
                                  args.seed)))
        return 0
    from crossonnx.bench.machine import library_versions
    from crossonnx.bench.report import write_result
    from lab.machine import cpu_info

    model_dir = args.model_dir or reference_folder(args.work)
    rows = []
    chosen = runnable(model_dir)
    if args.variants:
        wanted = [tuple(v.split(":", 1)) for v in args.variants.split(",")]
        missing = [f"{p}:{q}" for p, q in wanted if (p, q) not in chosen]
        if missing:
            parser.error(f"--variants: {', '.join(missing)} not runnable here (folder or machine); "
                         f"runnable: {', '.join(f'{p}:{q}' for p, q in chosen)}")
        chosen = wanted
    for provider, precision in chosen:
        arms = (True, False) if provider == "openvino" else (True,)
        for bounded in arms:
            row = run_child(model_dir, provider, precision, bounded, args)
            print(json.dumps({k: v for k, v in row.items() if k != "samples"}), flush=True)
            rows.append(row)
    doc = {"command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d"), "cpu": cpu_info(),
           "libraries": library_versions(("crossonnx", "numpy", "onnxruntime", "openvino", "tokenizers")),
           "model": model_dir.name, "calls": args.calls, "threads": args.threads, "rows": rows}
    write_result(doc, args.out, "soak", markdown, plot)
    print(f"wrote {args.out / 'soak.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
