"""Benchmark results -> markdown tables and a PNG plot people read, and the JSON they are rendered from."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crossonnx.bench.machine import describe_cpu


def pyplot() -> Any | None:
    """matplotlib's pyplot on its file-only backend (Agg), or None where matplotlib is missing: plots are optional."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def result_header(title: str, doc: dict[str, Any]) -> list[str]:
    """A result's first markdown lines: its title, then the command, date, CPU and libraries ``doc`` records."""
    return [
        f"# {title}",
        "",
        f"Command: `{doc['command']}`  ",
        f"Date: {doc['date']}  ",
        f"CPU: {describe_cpu(doc['cpu'])}  ",
        "Libraries: " + ", ".join(f"{k} {v}" for k, v in doc["libraries"].items()),
        "",
    ]


def write_result(doc: dict[str, Any], out: Path, stem: str, markdown: Callable[[dict[str, Any]], str],
                 plot: Callable[[dict[str, Any], Path], Path | None]) -> None:
    """``stem``.json, .md and .png (where matplotlib is installed) of ``doc`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    (out / f"{stem}.md").write_text(markdown(doc))
    plot(doc, out / f"{stem}.png")


def _fmt(value: Any, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def speed_ratio(row: dict[str, Any], peer: dict[str, Any]) -> float:
    """``row``'s speed over ``peer``'s. When both ran the same rounds (engines take turns, so a round's two rates
    were measured side by side) it is the median round's ratio, else the ratio of their rates."""
    ours, theirs = row.get("pairs_per_s_rounds"), peer.get("pairs_per_s_rounds")
    if ours and theirs and len(ours) == len(theirs):
        return statistics.median_low(a / b for a, b in zip(ours, theirs, strict=True))
    return row["pairs_per_s"] / peer["pairs_per_s"]


def throughput_markdown(doc: dict[str, Any], title: str, command: str,
                        sections: Callable[[dict[str, Any]], list[str]] | None = None) -> str:
    """A throughput result as markdown: how it was measured, then a table per (model, workload), batch-1 latency
    and cold start where ``doc`` has them. ``sections(doc)``: markdown lines placed before the tables (the
    benchmarks add the targets their results are judged by there)."""
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
    rounds = doc["config"].get("rounds", 1)
    per_round = (f" The engines took turns over {rounds} rounds, a fresh process each; a rate is the median "
                 "round's, and a ratio between two engines is the median of their per-round ratios, so drift of "
                 "the machine falls on all engines alike." if rounds > 1 else "")
    lines += [
        "",
        "End-to-end pairs per second (tokenize, run, activation), median of "
        f"{doc['config']['reps']} timed passes after a warm-up, each engine in its own process.{per_round} Batch size "
        f"{doc['config']['batch_size']}. `x fp32` / `x bf16`: ratio to sentence-transformers on PyTorch fp32 / "
        "bf16 in the same run. Spearman / max diff: agreement of the engine's scores with PyTorch fp32's on the "
        "same pairs (sigmoid scores, 0..1). Peak RSS: the engine's whole process.",
        "",
    ]
    if sections is not None:
        lines += sections(doc)
    results = doc["throughput"]["results"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault((row["model"], row["workload"]), []).append(row)
    for (model, workload), rows in groups.items():
        n = next((r["pairs"] for r in rows if "pairs" in r), "?")
        lines += [
            f"### {model} — {workload} ({n} pairs)",
            "",
            "| engine | executes | pairs/s | x fp32 | x bf16 | Spearman | max diff | peak RSS MB |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['engine']} | | not run: {r['error']} | | | | | |")
                continue
            lines.append(
                f"| {r['engine']} | {r.get('executes', '?')} | {r['pairs_per_s']:.1f} "
                f"| {_fmt(r.get('x_torch_fp32'), '.2f')} "
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
                  "Median of the runs after an untimed first one, which fills the file cache and OpenVINO's "
                  "compiled-model cache (crossonnx's OpenVINO engine keeps one under the crossonnx cache), as "
                  "any later start finds them.", "",
                  "| model | engine | executes | seconds (median) | peak RSS MB |", "|---|---|---|---:|---:|"]
        for r in doc["cold_start"]:
            if "error" not in r:
                rss = _fmt(r.get("peak_rss_mb"), ".0f")
                lines.append(f"| {r['model']} | {r['engine']} | {r.get('executes', '?')} | {r['cold_start_s']:.2f} "
                             f"| {rss} |")
            else:
                lines.append(f"| {r['model']} | {r['engine']} | | not run: {r['error']} | |")
        lines.append("")
    if doc.get("notes"):
        lines += ["## Notes", "", *doc["notes"], ""]
    return "\n".join(lines)


def throughput_plot(doc: dict[str, Any], out: Path, workload: str = "query-passage") -> Path | None:
    """Grouped bars: each engine's speed as a multiple of PyTorch fp32, per model."""
    plt = pyplot()
    if plt is None:
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
        executes = next((r.get("executes") for r in rows if r["engine"] == engine), None)
        label = f"{engine} ({executes})" if "openvino" in engine and executes else engine  # what OpenVINO ran
        bars = ax.bar([j + i * width for j in range(len(models))], values, width, label=label)
        labels = ["not run" if math.isnan(v) else f"{v:.2f}" for v in values]
        ax.bar_label(bars, labels=labels, fontsize=6, rotation=90, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(models))], models, fontsize=8)
    ax.set_ylabel("throughput / sentence-transformers PyTorch fp32")
    ax.set_title(f"{workload}: end-to-end pairs/s relative to PyTorch fp32 ({doc['config']['threads']} threads)")
    top = max((r["x_torch_fp32"] for r in rows), default=1.0)
    ax.set_ylim(0, top * 1.2)  # room for the bar labels
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out
