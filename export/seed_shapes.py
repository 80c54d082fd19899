"""Export a random-weight checkpoint of every models.yaml entry's exact shape and write the parity table.

    python export/seed_shapes.py [--models a,b,...] [--work DIR] [--out export/PARITY.md]

Random weights (the Hub is not reachable here): this proves every architecture and size exports, fuses and
validates in fp32, fp16 and int8; rank agreement of int8 on random weights means little (near-tied scores), so
its gate is absolute error only. Real-weight accuracy is in benchmarks/results/accuracy.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from crossonnx.checkpoints.synthetic import RANDOM_WEIGHT_GATES, build_seed_shape, seed_config
from crossonnx.exporter.pipeline import export_model
from crossonnx.manifest import load_manifest
from crossonnx.registry import load_registry


def _size(name: str) -> int:
    config = seed_config(name)
    return int(config["num_hidden_layers"]) * int(config["hidden_size"]) ** 2


def _rows(name: str, folder: Path, seconds: float | None) -> list[dict]:
    """One row per precision the export built: those in the folder, then those it left out (FAIL, no file)."""
    manifest = load_manifest(folder)
    built = [(precision, entry.parity, entry.bytes / 2**20) for precision, entry in manifest.precisions.items()]
    built += [(left.precision, left.parity, None) for left in manifest.left_out]
    return [
        {
            "model": name, "precision": precision, "arch": manifest.architecture["model_type"],
            "layers": manifest.architecture["num_hidden_layers"], "hidden": manifest.architecture["hidden_size"],
            "mb": mb, "max_abs_diff": parity.max_abs_diff, "max_abs_logit_diff": parity.max_abs_logit_diff,
            "spearman": parity.spearman, "passed": parity.passed, "export_s": seconds,
        }
        for precision, parity, mb in built
    ]


def _reusable(name: str, reuse: Path | None) -> Path | None:
    """An export of the same seed shape made by another script (the throughput benchmark), if there is one."""
    if reuse is None or not (reuse / name / "crossonnx.json").is_file():
        return None
    arch = load_manifest(reuse / name).architecture
    config = seed_config(name)
    same = all(int(arch[k]) == int(config[k]) for k in ("num_hidden_layers", "hidden_size", "intermediate_size"))
    return reuse / name if same else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated models.yaml names (default: all); the table keeps the "
                        "earlier rows of the other models")
    parser.add_argument("--work", default=".cache/seed-shapes", help="scratch folder for checkpoints and exports")
    parser.add_argument("--reuse", default=".cache/bench/onnx",
                        help="take the rows of seed shapes already exported here (same gates) instead of re-exporting")
    parser.add_argument("--out", default="export/PARITY.md")
    parser.add_argument("--keep", action="store_true", help="keep the exported folders")
    args = parser.parse_args()
    names = sorted(args.models.split(",") if args.models else list(load_registry()), key=_size)
    work, reuse, out = Path(args.work), Path(args.reuse) if args.reuse else None, Path(args.out)
    kept = _kept_rows(out, names, all_models=not args.models)
    rows: list[dict] = []
    versions: dict[str, str] = {}
    for name in names:
        existing = _reusable(name, reuse)
        if existing is not None:
            rows += _rows(name, existing, None)
            versions = versions or load_manifest(existing).versions
        else:
            started = time.perf_counter()
            checkpoint = build_seed_shape(name, work / "ckpt" / name)
            folder = export_model(str(checkpoint), out=work / "onnx" / name, gate_overrides=RANDOM_WEIGHT_GATES,
                                  overwrite=True)
            rows += _rows(name, folder, time.perf_counter() - started)
            versions = load_manifest(folder).versions
            if not args.keep:
                shutil.rmtree(checkpoint)
                shutil.rmtree(folder)
        # after each model: a stopped run still leaves a correct table
        table = _by_size(kept + rows)
        measured = {row["model"] for row in table}
        write_table(table, out, versions, pending=[n for n in sorted(load_registry(), key=_size) if n not in measured])


def _kept_rows(out: Path, names: list[str], all_models: bool) -> list[dict]:
    """Rows of an earlier run for models this run does not measure (none when every model is rerun)."""
    previous = out.with_suffix(".json")
    if all_models or not previous.is_file():
        return []
    return [row for row in json.loads(previous.read_text(encoding="utf-8")) if row["model"] not in names]


def _by_size(rows: list[dict]) -> list[dict]:
    order = {"fp32": 0, "fp16": 1, "int8": 2}
    return sorted(rows, key=lambda r: (_size(r["model"]), r["model"], order.get(r["precision"], 3)))


def write_table(rows: list[dict], out: Path, versions: dict[str, str], pending: list[str] | None = None) -> None:
    lines = [
        "# Parity of every seed model's exact shape (random weights), per precision",
        "",
        "Generated by `python export/seed_shapes.py`. Each row: the exported file scored on the exporter's 75",
        "validation pairs (STSb, query-passage, over-long and non-ASCII pairs, empty strings) by the crossonnx",
        "runtime on the CPU provider, against sentence-transformers `CrossEncoder` (PyTorch fp32) on the same",
        "checkpoint. Scores are sigmoid outputs (0..1). Random weights score every pair alike, so the int8",
        "Spearman column is noise here; real-weight accuracy per precision is in benchmarks/results/accuracy.md.",
        "Rows with export s `–` come from the throughput benchmark's exports of the same seed shapes (same gates).",
        "",
        "| model | arch | layers x hidden | precision | file MB | max abs diff (score) | max abs diff (logit) "
        "| Spearman | gate | export s |",
        "|---|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        seconds = "–" if r["export_s"] is None else f"{r['export_s']:.0f}"
        lines.append(
            f"| {r['model']} | {r['arch']} | {r['layers']} x {r['hidden']} | {r['precision']} "
            f"| {'–' if r['mb'] is None else format(r['mb'], '.1f')} "
            f"| {r['max_abs_diff']:.2e} | {r['max_abs_logit_diff']:.2e} | {r['spearman']:.4f} "
            f"| {'pass' if r['passed'] else 'FAIL'} | {seconds} |"
        )
    if pending:
        lines += ["", f"Not measured yet (the run was stopped before them): {', '.join(pending)}."]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
