"""Benchmark results -> markdown tables and a PNG plot people read."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from crossonnx.bench.machine import describe_cpu


def _fmt(value: Any, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


TARGET_MODELS = ("stsb-minilm-l6", "ms-marco-TinyBERT-L-6")
PEERS = ("st-onnx", "st-onnx-qint8", "fastembed", "flashrank-style")


def _row(doc: dict[str, Any], model: str, workload: str, engine: str) -> dict[str, Any] | None:
    return next((r for r in doc["throughput"]["results"] if r["model"] == model and r["workload"] == workload
                 and r["engine"] == engine and "error" not in r), None)


def target_checks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it was met (query-passage, batch 32)."""
    checks: list[dict[str, Any]] = []

    def check(name: str, model: str, measured: float | None, required: float, higher: bool = True) -> None:
        if measured is None:
            return
        met = measured >= required if higher else measured <= required
        checks.append({"target": name, "model": model, "measured": measured, "required": required, "met": met})

    for model in TARGET_MODELS:
        fp32 = _row(doc, model, "query-passage", "crossonnx-fp32")
        check("crossonnx fp32 / torch fp32", model, fp32 and fp32.get("x_torch_fp32"), 1.15)
        check("crossonnx fp32 max abs score diff", model, fp32 and fp32.get("max_abs_diff_vs_torch_fp32"), 1e-5,
              higher=False)
        variants = [r for e in ("crossonnx-fp32", "crossonnx-fp16", "crossonnx-int8")
                    if (r := _row(doc, model, "query-passage", e))]
        if variants:
            best = max(variants, key=lambda r: r["pairs_per_s"])
            check(f"fastest crossonnx ({best['engine']}) / torch fp32", model, best.get("x_torch_fp32"), 2.0)
            check(f"fastest crossonnx ({best['engine']}) / torch bf16", model, best.get("x_torch_bf16"), 1.1)
            if model == TARGET_MODELS[0]:  # real weights: rank agreement means something only here
                check(f"fastest crossonnx ({best['engine']}) Spearman vs torch fp32", model,
                      best.get("spearman_vs_torch_fp32"), 0.998)
        workloads = dict.fromkeys(r["workload"] for r in doc["throughput"]["results"] if r["model"] == model)
        for workload in workloads:
            ours = [r for e in ("crossonnx-fp32", "crossonnx-fp16", "crossonnx-int8")
                    if (r := _row(doc, model, workload, e))]
            peers = [r for e in PEERS if (r := _row(doc, model, workload, e))]
            if ours and peers:
                top_peer = max(peers, key=lambda r: r["pairs_per_s"])
                check(f"fastest crossonnx / fastest peer ({top_peer['engine']}), {workload}", model,
                      max(r["pairs_per_s"] for r in ours) / top_peer["pairs_per_s"], 1.0)
    for model in TARGET_MODELS:
        st = next((r for r in doc.get("cold_start", []) if r["model"] == model and r["engine"] == "st-torch-fp32"
                   and "error" not in r), None)
        ours = next((r for r in doc.get("cold_start", []) if r["model"] == model and r["engine"] == "crossonnx-fp32"
                     and "error" not in r), None)
        if st and ours:
            check("cold start crossonnx fp32 / torch fp32", model, ours["cold_start_s"] / st["cold_start_s"], 1 / 3,
                  higher=False)
        st_run = _row(doc, model, "query-passage", "st-torch-fp32")
        our_run = _row(doc, model, "query-passage", "crossonnx-int8") or _row(doc, model, "query-passage",
                                                                                "crossonnx-fp32")
        if st_run and our_run:
            check(f"peak RSS {our_run['engine']} / torch fp32 (query-passage run)", model,
                  our_run["peak_rss_mb"] / st_run["peak_rss_mb"], 0.5, higher=False)
    return checks


def targets_markdown(checks: list[dict[str, Any]]) -> list[str]:
    if not checks:
        return []
    lines = ["## Targets (query-passage pairs, batch 32, same thread count, one run)", "",
             "| target | model | measured | required | met |", "|---|---|---:|---:|---|"]
    for c in checks:
        sign = "<=" if any(k in c["target"] for k in ("cold start", "RSS", "diff")) else ">="
        verdict = "yes" if c["met"] else f"**no** (by {abs(c['measured'] - c['required']) / c['required']:.1%})"
        lines.append(f"| {c['target']} | {c['model']} | {c['measured']:.4g} | {sign} {c['required']:.4g} "
                     f"| {verdict} |")
    return [*lines, ""]


def throughput_markdown(doc: dict[str, Any], title: str, command: str) -> str:
    env = doc["environment"]
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`  ",
        f"Date: {env['date']}  ",
        f"CPU: {describe_cpu(env['cpu'])}  ",
        f"Threads per engine: {doc['config']['threads']} (intra-op; torch.set_num_threads for PyTorch)  ",
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + "  ",
    ]
    if doc.get("peers_versions"):
        lines.append("Peers' environment: " + ", ".join(f"{k} {v}" for k, v in doc["peers_versions"].items()))
    lines += [
        "",
        "End-to-end pairs per second (tokenize, run, activation), median of "
        f"{doc['config']['reps']} timed passes after a warm-up, each engine in its own process, batch size "
        f"{doc['config']['batch_size']}. `x fp32` / `x bf16`: ratio to sentence-transformers on PyTorch fp32 / "
        "bf16 in the same run. Spearman / max diff: agreement of the engine's scores with PyTorch fp32's on the "
        "same pairs (sigmoid scores, 0..1). Peak RSS: the engine's whole process.",
        "",
    ]
    lines += targets_markdown(target_checks(doc))
    results = doc["throughput"]["results"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault((row["model"], row["workload"]), []).append(row)
    for (model, workload), rows in groups.items():
        n = next((r["pairs"] for r in rows if "pairs" in r), "?")
        lines += [
            f"### {model} — {workload} ({n} pairs)",
            "",
            "| engine | pairs/s | x fp32 | x bf16 | Spearman | max diff | peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['engine']} | not run: {r['error']} | | | | | |")
                continue
            lines.append(
                f"| {r['engine']} | {r['pairs_per_s']:.1f} | {_fmt(r.get('x_torch_fp32'), '.2f')} "
                f"| {_fmt(r.get('x_torch_bf16'), '.2f')} | {_fmt(r.get('spearman_vs_torch_fp32'), '.5f')} "
                f"| {_fmt(r.get('max_abs_diff_vs_torch_fp32'), '.1e')} | {r['peak_rss_mb']:.0f} |"
            )
        lines.append("")
    if doc.get("latency"):
        lines += ["### Batch-1 latency (one query-passage pair per call)", "",
                  "| model | engine | p50 ms | p99 ms |", "|---|---|---:|---:|"]
        for r in doc["latency"]:
            if "error" not in r:
                lines.append(
                    f"| {r['model']} | {r['engine']} | {r['latency_ms_p50']:.2f} | {r['latency_ms_p99']:.2f} |"
                )
        lines.append("")
    if doc.get("cold_start"):
        lines += ["### Cold start (whole process: import, load, score one pair) and its peak RSS", "",
                  "| model | engine | seconds (median) | peak RSS MB |", "|---|---|---:|---:|"]
        for r in doc["cold_start"]:
            if "error" not in r:
                rss = _fmt(r.get("peak_rss_mb"), ".0f")
                lines.append(f"| {r['model']} | {r['engine']} | {r['cold_start_s']:.2f} | {rss} |")
        lines.append("")
    if doc.get("notes"):
        lines += ["## Notes", "", *doc["notes"], ""]
    return "\n".join(lines)


def throughput_plot(doc: dict[str, Any], out: Path, workload: str = "query-passage") -> Path | None:
    """Grouped bars: each engine's speed as a multiple of PyTorch fp32, per model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in doc["throughput"]["results"] if r["workload"] == workload and "x_torch_fp32" in r]
    if not rows:
        return None
    models = list(dict.fromkeys(r["model"] for r in rows))
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    width = 0.8 / len(engines)
    fig, ax = plt.subplots(figsize=(max(8, 1.8 * len(models)), 4.8))
    for i, engine in enumerate(engines):
        values = [next((r["x_torch_fp32"] for r in rows if r["model"] == m and r["engine"] == engine), math.nan)
                  for m in models]
        bars = ax.bar([j + i * width for j in range(len(models))], values, width, label=engine)
        labels = ["not run" if math.isnan(v) else f"{v:.2f}" for v in values]
        ax.bar_label(bars, labels=labels, fontsize=6, rotation=90, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(models))], models, fontsize=8)
    ax.set_ylabel("throughput / sentence-transformers PyTorch fp32")
    ax.set_title(f"{workload}: end-to-end pairs/s relative to PyTorch fp32 ({doc['config']['threads']} threads)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out
