"""The accuracy report behind benchmarks/results/accuracy.{json,md}: every precision on real STSb data.

    python benchmarks/accuracy.py                        # the project's reference cross-encoder (offline)
    python benchmarks/accuracy.py --model stsb-roberta-base   # any models.yaml entry, for users with the Hub

Columns: STSb test Spearman x100 (the metric the seed model cards publish), agreement with PyTorch fp32 (max and
mean abs score difference, Spearman of the scores), top-10 / top-1 agreement of rank() over 100 candidate lists
(each STSb test sentence against its partner and 99 other test sentences), and end-to-end speed on STSb pairs
measured side by side in separate processes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from crossonnx.bench.accuracy import crossonnx_scorer, evaluate, torch_scorer
from crossonnx.bench.machine import describe_cpu
from crossonnx.bench.throughput import BenchConfig, BenchModel, environment, run_matrix
from crossonnx.checkpoints.stsb_minilm import build_reference_model
from crossonnx.exporter.pipeline import export_model
from crossonnx.exporter.source import resolve_source
from crossonnx.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]
ENGINE_OF = {"torch-fp32": "st-torch-fp32", "torch-bf16": "st-torch-bf16", "crossonnx-fp32": "crossonnx-fp32",
             "crossonnx-fp16": "crossonnx-fp16", "crossonnx-int8": "crossonnx-int8",
             "crossonnx-int8-plain": "crossonnx-int8-plain"}
PLAIN_INT8 = "int8-plain"


def add_plain_int8(export_dir: Path) -> None:
    """Add the baseline crossonnx's int8 replaced: ORT dynamic int8 on every MatMul (per-channel, 7-bit), no
    [CLS] split, no fp32 MatMuls; built from the unfused graph the folder keeps (exported with --tensorrt)."""
    from crossonnx.exporter.quantize import Int8Plan, write_int8
    from crossonnx.manifest import UNFUSED_GRAPH, sha256_file

    manifest_path = export_dir / "crossonnx.json"
    doc = json.loads(manifest_path.read_text(encoding="utf-8"))
    if PLAIN_INT8 in doc["precisions"]:
        return
    out = export_dir / "model_int8_plain.onnx"
    plan = Int8Plan(first_position_fp32=False)
    write_int8(export_dir / doc["precisions"][UNFUSED_GRAPH]["file"], out, plan)
    doc["precisions"][PLAIN_INT8] = {"file": out.name, "sha256": sha256_file(out), "bytes": out.stat().st_size,
                                     "details": {"plan": "plain dynamic int8 (baseline)"}, "parity": {}}
    manifest_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference", help="'reference' or a models.yaml name / Hub id")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=100, help="rank lists of 100 candidates")
    parser.add_argument("--work", default=str(ROOT / ".cache/accuracy"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    parser.add_argument("--no-bf16", action="store_true", help="skip PyTorch bf16 (slow on CPUs without bf16)")
    args = parser.parse_args()

    if args.model == "reference":
        checkpoint, name = build_reference_model(), "stsb-minilm-l6"
    else:
        source = resolve_source(args.model)
        checkpoint, name = source.path, source.name
    export_dir = Path(args.work) / name
    if not (export_dir / "crossonnx.json").is_file():
        export_model(str(checkpoint), out=export_dir, tensorrt=True)
    add_plain_int8(export_dir)
    manifest = load_manifest(export_dir)

    scorers = {"torch-fp32": torch_scorer(checkpoint, "fp32", args.threads)}
    if not args.no_bf16:
        scorers["torch-bf16"] = torch_scorer(checkpoint, "bf16", args.threads)
    for precision in ("fp32", "fp16", "int8", PLAIN_INT8):
        scorers[f"crossonnx-{precision}"] = crossonnx_scorer(export_dir, precision, args.threads)
    rows = evaluate(scorers, queries=args.queries)

    config = BenchConfig(threads=args.threads, reps=5, pairs={"sentence-pairs": 512})
    model = BenchModel(name=name, checkpoint=Path(checkpoint), export_dir=export_dir)
    with tempfile.TemporaryDirectory() as tmp:
        speed = run_matrix([model], [ENGINE_OF[r["engine"]] for r in rows], ["sentence-pairs"], config, Path(tmp))
    by_engine = {r["engine"]: r for r in speed["results"]}
    for row in rows:
        measured = by_engine.get(ENGINE_OF[row["engine"]], {})
        row["pairs_per_s"] = measured.get("pairs_per_s")
        row["x_torch_fp32"] = measured.get("x_torch_fp32")

    env = environment()
    doc = {"environment": env, "model": name, "checkpoint": str(checkpoint), "manifest_int8": (
        manifest.precisions["int8"].details if "int8" in manifest.precisions else None), "results": rows}
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
        "weights) with no [CLS]-row split and no fp32 MatMuls; it is not shipped.",
        "",
        "| engine | STSb Spearman x100 | Δ vs fp32 | max abs diff | mean abs diff | Spearman vs fp32 "
        "| top-10 agree | top-1 agree | pairs/s | x torch fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = doc["results"][0]["stsb_test_spearman_x100"]
    for r in doc["results"]:
        speed = f"{r['pairs_per_s']:.0f}" if r.get("pairs_per_s") else "–"
        ratio = f"{r['x_torch_fp32']:.2f}" if r.get("x_torch_fp32") else "–"
        lines.append(
            f"| {r['engine']} | {r['stsb_test_spearman_x100']:.2f} | {r['stsb_test_spearman_x100'] - base:+.2f} "
            f"| {r['max_abs_diff_vs_fp32']:.1e} | {r['mean_abs_diff_vs_fp32']:.1e} | {r['spearman_vs_fp32']:.5f} "
            f"| {r['top10_agreement']:.3f} | {r['top1_agreement']:.3f} | {speed} | {ratio} |"
        )
    if doc.get("manifest_int8"):
        lines += ["", "int8 as chosen at export (from the manifest):", "", "```",
                  json.dumps(doc["manifest_int8"], indent=1), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
