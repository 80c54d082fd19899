"""Export a random-weight checkpoint of every models.yaml entry's exact shape; write the parity and cost tables.

    python export/seed_shapes.py [--models a,b,...] [--work DIR] [--out export/PARITY.md]

Random weights (the Hub is not reachable here): this proves every architecture and size exports, fuses and
validates in every precision this machine builds; rank agreement on random weights means little (near-tied
scores), so the gates are absolute error only. Real-weight accuracy is in benchmarks/results/accuracy.md.

Each export runs as `crossonnx export` in a child process (export/profile_export.py): its wall time and peak
resident memory, whole and per step of the export's own log, are measured, not estimated. Shapes that several
models share (same layers, hidden and intermediate sizes) are exported once.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from profile_export import profile_export

from crossonnx.checkpoints.synthetic import RANDOM_WEIGHT_GATES, build_seed_shape, seed_config
from crossonnx.exporter.pipeline import BUILDERS
from crossonnx.manifest import load_manifest
from crossonnx.registry import load_registry

SHAPE_KEYS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size")


def _size(name: str) -> int:
    config = seed_config(name)
    return int(config["num_hidden_layers"]) * int(config["hidden_size"]) ** 2


def step_costs(profile: dict) -> dict[str, dict[str, float]]:
    """Per precision: its build step's seconds and peak RSS, and its validation's seconds (from the step log)."""
    builds = {builder.step: precision for precision, builder in BUILDERS.items() if builder.step}
    costs: dict[str, dict[str, float]] = {}
    for step in profile["steps"]:
        name = step["step"]
        if name in builds:
            costs.setdefault(builds[name], {}).update(build_s=step["seconds"], build_peak_mb=step["peak_rss_mb"])
        elif name.startswith("validating ") and name.endswith(" against PyTorch"):
            precision = name.removeprefix("validating ").removesuffix(" against PyTorch")
            costs.setdefault(precision, {}).update(validate_s=step["seconds"])
    return costs


def _rows(name: str, folder: Path, profile: dict | None) -> list[dict]:
    """One row per precision the export built: those in the folder, then those it left out (FAIL, no file)."""
    manifest = load_manifest(folder)
    built = [(precision, entry.parity, (entry.bytes + sum(r["bytes"] for r in entry.extra_files.values())) / 2**20)
             for precision, entry in manifest.precisions.items()  # an OpenVINO IR's weights are its extra file
             if entry.pending is None]
    built += [(left.precision, left.parity, None) for left in manifest.left_out if left.not_built is None]
    costs = step_costs(profile) if profile else {}
    arch = manifest.architecture
    not_built = [
        {"model": name, "precision": left.precision, "arch": arch["model_type"], "layers": arch["num_hidden_layers"],
         "hidden": arch["hidden_size"], "mb": None, "not_built": left.not_built}
        for left in manifest.left_out if left.not_built is not None
    ] + [  # written without validation (bf16 on a CPU without bf16): validated where it next runs
        {"model": name, "precision": precision, "arch": arch["model_type"], "layers": arch["num_hidden_layers"],
         "hidden": arch["hidden_size"], "mb": None, "pending": entry.pending.get("why", "pending validation"),
         **costs.get(precision, {})}
        for precision, entry in manifest.precisions.items() if entry.pending is not None
    ]
    return not_built + [
        {
            "model": name, "precision": precision, "arch": manifest.architecture["model_type"],
            "layers": manifest.architecture["num_hidden_layers"], "hidden": manifest.architecture["hidden_size"],
            "mb": mb, "max_abs_diff": parity.max_abs_diff, "max_abs_logit_diff": parity.max_abs_logit_diff,
            "spearman": parity.spearman, "passed": parity.passed,
            "export_s": profile["seconds"] if profile else None,
            "export_peak_mb": profile["peak_rss_mb"] if profile else None,
            **costs.get(precision, {}),
        }
        for precision, parity, mb in built
    ]


def shape_key(name: str) -> tuple:
    """What decides an export's cost and files: models with the same key are exported once."""
    config = seed_config(name)
    return tuple(config.get(key) for key in SHAPE_KEYS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated models.yaml names (default: all); the table keeps the "
                        "earlier rows of the other models")
    parser.add_argument("--work", default=".cache/seed-shapes", help="scratch folder for checkpoints and exports")
    parser.add_argument("--out", default="export/PARITY.md")
    parser.add_argument("--keep", action="store_true", help="keep the exported folders")
    parser.add_argument("--measured", action="append", default=[], metavar="NAME=FOLDER,PROFILE_JSON",
                        help="take NAME's rows from an export already profiled by export/profile_export.py "
                        "(its folder and its --json), instead of exporting it again (repeatable)")
    args = parser.parse_args()
    measured = {}
    for item in args.measured:
        name, _, paths = item.partition("=")
        folder, _, profile = paths.partition(",")
        if not (name and folder and profile):
            parser.error(f"--measured {item!r}: expected NAME=FOLDER,PROFILE_JSON")
        measured[name] = (Path(folder), json.loads(Path(profile).read_text(encoding="utf-8")))
    names = sorted(args.models.split(",") if args.models else list(load_registry()), key=_size)
    work, out = Path(args.work), Path(args.out)
    kept = _kept_rows(out, names, all_models=not args.models)
    gates = [arg for gate in RANDOM_WEIGHT_GATES for arg in ("--gate", gate)]
    rows: list[dict] = []
    versions: dict[str, str] = {}
    exported: dict[tuple, str] = {}  # shape -> the model whose export measured it
    for name in names:
        twin = exported.get(shape_key(name))
        if twin is not None:
            rows += [{**row, "model": name, "same_as": twin} for row in rows if row["model"] == twin]
        elif name in measured:
            folder, profile = measured[name]
            rows += _rows(name, folder, profile)
            versions = load_manifest(folder).versions
            exported[shape_key(name)] = name
        else:
            checkpoint = build_seed_shape(name, work / "ckpt" / name)
            folder = work / "onnx" / name
            profile = profile_export(checkpoint, folder, gates, echo=False)
            rows += _rows(name, folder, profile)
            versions = load_manifest(folder).versions
            exported[shape_key(name)] = name
            print(f"{name}: {profile['seconds']:.0f} s, peak {profile['peak_rss_mb']} MB", flush=True)
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


PRECISION_ORDER = tuple(BUILDERS)


def _by_size(rows: list[dict]) -> list[dict]:
    order = {name: index for index, name in enumerate(PRECISION_ORDER)}
    return sorted(rows, key=lambda r: (_size(r["model"]), r["model"], order.get(r["precision"], len(order))))


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def write_table(rows: list[dict], out: Path, versions: dict[str, str], pending: list[str] | None = None) -> None:
    from crossonnx.bench.machine import cpu_info, describe_cpu

    lines = [
        "# Every seed model's exact shape (random weights): export cost and parity per precision",
        "",
        "Generated by `python export/seed_shapes.py`: each shape exported by `crossonnx export` in a child process",
        "with every precision this machine builds, its wall time and resident memory sampled every 0.2 s",
        "(export/profile_export.py). Models of the same shape are exported once (`same as`).",
        "",
        f"Machine: {describe_cpu(cpu_info())}",
        "",
        "## Cost per shape",
        "",
        "Peak: the export process's peak resident set (VmHWM). fp32 MB: the fp32 graph's size; the peak's ratio to",
        "it is what an export of a larger model of the same family needs.",
    ]
    if any(r["precision"] == "fp32" and not r.get("export_peak_mb") for r in rows):
        lines[-1] += (" Rows with `–` were measured before this table recorded cost (by an earlier exporter); a run "
                      "without --models measures them.")
    lines += [
        "",
        "| model | arch | layers x hidden | fp32 MB | export s | peak RSS MB | peak / fp32 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["precision"] != "fp32":
            continue
        peak = r.get("export_peak_mb")  # None: a row from before this table measured cost
        ratio = peak / r["mb"] if peak and r["mb"] else None
        model = r["model"] + (f" (same as {r['same_as']})" if r.get("same_as") else "")
        lines.append(f"| {model} | {r['arch']} | {r['layers']} x {r['hidden']} | {_num(r['mb'], '.1f')} "
                     f"| {_num(r.get('export_s') if peak else None, '.0f')} | {_num(peak, '.0f')} "
                     f"| {_num(ratio, '.1f')} |")
    lines += [
        "",
        "## Per precision",
        "",
        "Each row: the exported file scored on the exporter's 75 validation pairs (STSb, query-passage, over-long and",
        "non-ASCII pairs, empty strings) by the crossonnx runtime, against sentence-transformers `CrossEncoder`",
        "(PyTorch fp32) on the same checkpoint; scores are sigmoid outputs (0..1). Random weights score every pair",
        "alike, so the Spearman column is noise here; real-weight accuracy per precision is in",
        "benchmarks/results/accuracy.md. Build: the step that writes the precision's file (bf16 writes none: it runs",
        "the fp32 graph); its peak is the resident set during that step.",
        "",
        "| model | precision | file MB | max abs diff (score) | max abs diff (logit) | Spearman | gate "
        "| build s | build peak MB | validate s |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("same_as"):
            continue
        if r.get("not_built"):
            lines.append(f"| {r['model']} | {r['precision']} | – | not built here: {r['not_built']} | | | | | | |")
            continue
        if r.get("pending"):
            lines.append(f"| {r['model']} | {r['precision']} | – | written, not validated here: {r['pending']} "
                         f"| | | | | | {_num(r.get('validate_s'), '.0f')} |")
            continue
        lines.append(
            f"| {r['model']} | {r['precision']} | {_num(r['mb'], '.1f')} "
            f"| {r['max_abs_diff']:.2e} | {r['max_abs_logit_diff']:.2e} | {r['spearman']:.4f} "
            f"| {'pass' if r['passed'] else 'FAIL'} | {_num(r.get('build_s'), '.0f')} "
            f"| {_num(r.get('build_peak_mb'), '.0f')} | {_num(r.get('validate_s'), '.0f')} |"
        )
    if pending:
        lines += ["", f"Not measured yet (the run was stopped before them): {', '.join(pending)}."]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    out.write_text("\n".join(lines), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
