"""The accuracy report behind benchmarks/results/accuracy.{json,md}: every precision on real STSb data.

    python benchmarks/accuracy.py                        # the project's reference cross-encoder (offline)
    python benchmarks/accuracy.py --model stsb-roberta-base   # any models.yaml entry, for users with the Hub

Engines: sentence-transformers on PyTorch fp32 (the reference) and bf16; every crossonnx (provider, precision) the
export holds (ONNX Runtime fp32 / fp16 / int8, OpenVINO fp32 and, where exported, bf16 / int8-static /
int8-dynamic); the int8 baseline crossonnx's int8 replaced (``crossonnx-int8-plain``, its own model folder:
benchmarks/lab/int8_baseline.py);
and, with the OpenVINO peers' environment (bash benchmarks/setup_peers_openvino.sh), sentence-transformers'
``backend="openvino"`` and its static int8 (``st-openvino``, ``st-openvino-qint8``; prepared as in the throughput
benchmark).

Columns: STSb test Spearman x100 (the metric the seed model cards publish), agreement with PyTorch fp32 (max and
mean abs score difference, Spearman of the scores), top-10 / top-1 agreement of rank() over 100 candidate lists
(each STSb test sentence against its partner and 99 other test sentences), and end-to-end speed on STSb pairs
measured side by side in separate processes.

Held-out query-passage pairs (``--heldout-sets``, default 8 sets of 1024): the throughput benchmark's workload
drawn with fresh seeds (1..N; the benchmark's own pairs are seed 0), so that the quality levels' tiers
(benchmarks/lab/targets.py: Spearman >= 0.9999 and max abs <= 0.01 faithful, >= 0.999 fast) are judged on pairs no
precision was calibrated, validated or timed on: per engine the worst and the median set.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from crossonnx.bench.accuracy import crossonnx_scorer, evaluate, torch_scorer
from crossonnx.bench.machine import describe_cpu
from crossonnx.bench.throughput import OPENVINO_PEER_ENGINES, BenchConfig, BenchModel, run_matrix
from crossonnx.bench.worker import crossonnx_variant, engine_name
from crossonnx.checkpoints.stsb_minilm import build_reference_model
from crossonnx.engines import OPENVINO_ONLY, openvino_installed
from crossonnx.engines.openvino import PRECISIONS as OPENVINO_PRECISIONS
from crossonnx.exporter.pipeline import export_model
from crossonnx.exporter.source import resolve_source
from crossonnx.manifest import PRECISIONS, load_manifest
from lab.accuracy import heldout_agreement, worker_scorer
from lab.int8_baseline import plain_int8_folder
from lab.machine import environment
from lab.peers import prepare_st_openvino
from lab.targets import FAITHFUL, FAST

ROOT = Path(__file__).resolve().parents[1]
TORCH = {"torch-fp32": "st-torch-fp32", "torch-bf16": "st-torch-bf16"}  # report name -> worker engine
BASELINE = "crossonnx-int8-plain"  # the int8 baseline, run as crossonnx-int8 on its own folder


def crossonnx_engines(manifest_precisions: list[str]) -> list[str]:
    """Every (provider, precision) this export runs: ONNX Runtime CPU for its precisions, OpenVINO for its own.
    TensorRT's unfused graph (an entry of its own, not a precision) is left out."""
    engines = [engine_name("cpu", p) for p in manifest_precisions if p in PRECISIONS and p not in OPENVINO_ONLY]
    if openvino_installed():
        engines += [engine_name("openvino", p) for p in OPENVINO_PRECISIONS if p in manifest_precisions]
    return engines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference", help="'reference' or a models.yaml name / Hub id")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=100, help="rank lists of 100 candidates")
    parser.add_argument("--work", default=str(ROOT / ".cache/accuracy"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--no-bf16", action="store_true", help="skip PyTorch bf16 (slow on CPUs without bf16)")
    parser.add_argument("--peers-openvino-python", default=str(ROOT / ".cache/peers-openvino-venv/bin/python"),
                        help="benchmarks/setup_peers_openvino.sh's Python (st-openvino, st-openvino-qint8)")
    parser.add_argument("--engines", help="comma-separated subset of the engines above (default: all)")
    parser.add_argument("--heldout-sets", type=int, default=8,
                        help="fresh sets of query-passage pairs (seeds 1..N) for agreement with PyTorch fp32; 0: none")
    parser.add_argument("--heldout-pairs", type=int, default=1024, help="pairs per held-out set")
    args = parser.parse_args()

    if args.model == "reference":
        checkpoint, name = build_reference_model(), "stsb-minilm-l6"
    else:
        source = resolve_source(args.model)
        checkpoint, name = source.path, source.name
    work = Path(args.work)
    export_dir = work / name
    if not (export_dir / "crossonnx.json").is_file():
        export_model(str(checkpoint), out=export_dir, tensorrt=True)
    baseline_dir = plain_int8_folder(export_dir, work / f"{name}-int8-plain")
    manifest = load_manifest(export_dir)
    peers_openvino = args.peers_openvino_python if Path(args.peers_openvino_python).is_file() else None
    model = BenchModel(name=name, checkpoint=Path(checkpoint), export_dir=export_dir)
    baseline = BenchModel(name=f"{name} (int8 baseline)", checkpoint=Path(checkpoint), export_dir=baseline_dir)
    if peers_openvino:
        model.st_openvino_dir = prepare_st_openvino(model, work / "st-openvino" / name, peers_openvino)
    config = BenchConfig(threads=args.threads, reps=1, min_seconds=0.0, peers_openvino_python=peers_openvino)

    names = ["torch-fp32", *([] if args.no_bf16 else ["torch-bf16"]), *crossonnx_engines(list(manifest.precisions)),
             BASELINE, *(OPENVINO_PEER_ENGINES if peers_openvino else ())]
    if args.engines:
        wanted = {"torch-fp32", *args.engines.split(",")}
        names = [n for n in names if n in wanted]
    scorers = {}
    for engine in names:
        if engine in TORCH:
            scorers[engine] = torch_scorer(checkpoint, engine.removeprefix("torch-"), args.threads)
        elif engine == BASELINE:
            scorers[engine] = crossonnx_scorer(baseline_dir, "int8", args.threads)
        elif engine in OPENVINO_PEER_ENGINES:
            scorers[engine] = worker_scorer(engine, model, config)
        else:
            provider, precision = crossonnx_variant(engine)
            scorers[engine] = crossonnx_scorer(export_dir, precision, args.threads, provider)
    rows = evaluate(scorers, queries=args.queries)
    heldout = heldout_agreement(scorers, args.heldout_sets, args.heldout_pairs) if args.heldout_sets > 0 else {}

    speed_config = BenchConfig(threads=args.threads, reps=5, pairs={"sentence-pairs": 512},
                               peers_openvino_python=peers_openvino)
    with tempfile.TemporaryDirectory() as tmp:
        speed = run_matrix([model], [TORCH.get(n, n) for n in names if n != BASELINE], ["sentence-pairs"],
                           speed_config, Path(tmp))["results"]
        if BASELINE in names:
            speed += [{**r, "engine": BASELINE} for r in run_matrix(
                [baseline], ["crossonnx-int8"], ["sentence-pairs"], speed_config, Path(tmp))["results"]]
    by_engine = {r["engine"]: r for r in speed}
    torch_rate = by_engine.get("st-torch-fp32", {}).get("pairs_per_s")
    for row in rows:
        measured = by_engine.get(TORCH.get(row["engine"], row["engine"]), {})
        row["executes"] = measured.get("executes")
        row["pairs_per_s"] = measured.get("pairs_per_s")
        row["x_torch_fp32"] = row["pairs_per_s"] / torch_rate if row["pairs_per_s"] and torch_rate else None

    env = environment()
    doc = {"environment": env, "model": name, "checkpoint": str(checkpoint), "manifest_int8": (
        manifest.precisions["int8"].details if "int8" in manifest.precisions else None), "results": rows,
        "heldout_query_passage": {"sets": args.heldout_sets, "pairs_per_set": args.heldout_pairs,
                                  "engines": heldout}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "accuracy" if args.model == "reference" else f"accuracy-{name}"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(markdown(doc, args), encoding="utf-8")
    print(f"wrote {out}/{stem}.{{json,md}}")


def markdown(doc: dict, args: argparse.Namespace) -> str:
    env = doc["environment"]
    lines = [
        f"# Accuracy per precision — {doc['model']}",
        "",
        f"Command: `python benchmarks/accuracy.py{'' if args.model == 'reference' else ' --model ' + args.model}`  ",
        f"Date: {env['date']}  ",
        f"CPU: {describe_cpu(env['cpu'])}  ",
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        "",
        "STSb test: 1379 pairs, Spearman x100 against the gold scores. Agreement columns compare each engine's "
        "scores with sentence-transformers on PyTorch fp32 (sigmoid scores, 0..1). Rank: top-10 / top-1 overlap "
        f"with PyTorch fp32 over {args.queries} rank() calls of 100 candidates. Speed: end-to-end pairs/s on 512 "
        f"STSb pairs, batch 32, {args.threads} threads, each engine in its own process. `crossonnx-int8-plain` is "
        "the baseline the exporter's int8 replaced: ONNX Runtime dynamic int8 on every MatMul (per-channel, 7-bit "
        "weights) with no [CLS]-row split and no fp32 MatMuls; it is not shipped. `executes`: the precision the "
        "engine reported it ran (OpenVINO: read back from the compiled model; it defaults to bf16 on CPUs with "
        "bf16).",
        "",
        "| engine | executes | STSb Spearman x100 | Δ vs fp32 | max abs diff | mean abs diff | Spearman vs fp32 "
        "| top-10 agree | top-1 agree | pairs/s | x torch fp32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = doc["results"][0]["stsb_test_spearman_x100"]
    for r in doc["results"]:
        speed = f"{r['pairs_per_s']:.0f}" if r.get("pairs_per_s") else "–"
        ratio = f"{r['x_torch_fp32']:.2f}" if r.get("x_torch_fp32") else "–"
        lines.append(
            f"| {r['engine']} | {r.get('executes') or '–'} | {r['stsb_test_spearman_x100']:.2f} "
            f"| {r['stsb_test_spearman_x100'] - base:+.2f} "
            f"| {r['max_abs_diff_vs_fp32']:.1e} | {r['mean_abs_diff_vs_fp32']:.1e} | {r['spearman_vs_fp32']:.5f} "
            f"| {r['top10_agreement']:.3f} | {r['top1_agreement']:.3f} | {speed} | {ratio} |"
        )
    heldout = doc.get("heldout_query_passage", {})
    if heldout.get("engines"):
        sets, size = heldout["sets"], heldout["pairs_per_set"]
        faithful, fast = FAITHFUL["min_spearman"], FAST["min_spearman"]
        lines += ["", f"Held-out query-passage pairs: {sets} sets of {size} pairs (the throughput benchmark's "
                  "workload drawn with seeds 1.." f"{sets}; its own pairs are seed 0), agreement of sigmoid scores "
                  f"with PyTorch fp32 per set. Quality levels: faithful Spearman >= {faithful} and max abs <= "
                  f"{FAITHFUL['max_abs']}, fast Spearman >= {fast}.", "",
                  f"| engine | Spearman vs fp32: worst set | median set | sets >= {fast} | sets >= {faithful} "
                  "| max abs |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, item in heldout["engines"].items():
            rho = [s["spearman"] for s in item["sets"]]
            lines.append(f"| {name} | {item['min_spearman']:.5f} | {item['median_spearman']:.5f} | "
                         f"{sum(r >= fast for r in rho)}/{sets} | {sum(r >= faithful for r in rho)}/{sets} | "
                         f"{item['max_abs']:.1e} |")
    if doc.get("manifest_int8"):
        lines += ["", "int8 as chosen at export (from the manifest):", "", "```",
                  json.dumps(doc["manifest_int8"], indent=1), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
