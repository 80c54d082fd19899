"""Benchmark results -> markdown tables and a PNG plot people read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossonnx.bench.machine import describe_cpu


def _fmt(value: Any, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


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
        values = [next((r["x_torch_fp32"] for r in rows if r["model"] == m and r["engine"] == engine), 0.0)
                  for m in models]
        bars = ax.bar([j + i * width for j in range(len(models))], values, width, label=engine)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(models))], models, fontsize=8)
    ax.set_ylabel("throughput / sentence-transformers PyTorch fp32")
    ax.set_title(f"{workload}: end-to-end pairs/s relative to PyTorch fp32 ({doc['config']['threads']} threads)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out
