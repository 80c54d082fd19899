"""Benchmark results -> markdown tables and a PNG plot people read."""

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


TARGET_MODELS = ("stsb-minilm-l6", "ms-marco-TinyBERT-L-6")
PEERS = ("st-onnx", "st-onnx-qint8", "fastembed", "flashrank-style")


def speed_ratio(row: dict[str, Any], peer: dict[str, Any]) -> float:
    """``row``'s speed over ``peer``'s. When both ran the same rounds (engines take turns, so a round's two rates
    were measured side by side) it is the median round's ratio, else the ratio of their rates."""
    ours, theirs = row.get("pairs_per_s_rounds"), peer.get("pairs_per_s_rounds")
    if ours and theirs and len(ours) == len(theirs):
        return statistics.median_low(a / b for a, b in zip(ours, theirs, strict=True))
    return row["pairs_per_s"] / peer["pairs_per_s"]


def _run_label(doc: dict[str, Any]) -> str:
    rounds = doc.get("config", {}).get("rounds", 1)
    return f"one run, median of {rounds} rounds" if rounds > 1 else "one run"


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
                      speed_ratio(max(ours, key=lambda r: r["pairs_per_s"]), top_peer), 1.0)
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


def targets_markdown(checks: list[dict[str, Any]], doc: dict[str, Any]) -> list[str]:
    if not checks:
        return []
    lines = [f"## Targets (query-passage pairs, batch 32, same thread count, {_run_label(doc)})", "",
             "| target | model | measured | required | met |", "|---|---|---:|---:|---|"]
    for c in checks:
        sign = "<=" if any(k in c["target"] for k in ("cold start", "RSS", "diff")) else ">="
        verdict = "yes" if c["met"] else f"**no** (by {abs(c['measured'] - c['required']) / c['required']:.1%})"
        lines.append(f"| {c['target']} | {c['model']} | {c['measured']:.4g} | {sign} {c['required']:.4g} "
                     f"| {verdict} |")
    return [*lines, ""]


ISSUE13_MODEL, ISSUE13_WORKLOAD = "stsb-minilm-l6", "query-passage"
FAITHFUL = {"min_spearman": 0.9999, "max_abs": 0.01}  # vs torch fp32, sigmoid scores
FAST = {"min_spearman": 0.999}


def _fastest(rows: list[dict[str, Any]], min_spearman: float, max_abs: float | None = None) -> dict[str, Any] | None:
    ok = [r for r in rows if r.get("spearman_vs_torch_fp32", -1.0) >= min_spearman
          and (max_abs is None or r.get("max_abs_diff_vs_torch_fp32", float("inf")) <= max_abs)]
    return max(ok, key=lambda r: r["pairs_per_s"]) if ok else None


def issue13_checks(doc: dict[str, Any], model: str = ISSUE13_MODEL) -> list[dict[str, Any]]:
    """Issue 13's targets (real MiniLM, query-passage, batch 32): the faithful tier (fastest crossonnx variant with
    Spearman >= 0.9999 and max abs <= 0.01 vs torch fp32) >= 1.3x st-openvino and >= 2x torch bf16; the fast tier
    (fastest with Spearman >= 0.999) >= 1.3x st-openvino-qint8; crossonnx fp32 on OpenVINO within 1e-5.

    Each check: target, engine (the variant the tier picked), measured, required, met (None: not measurable, with
    ``why``)."""
    rows = [r for r in doc["throughput"]["results"] if r["model"] == model and r["workload"] == ISSUE13_WORKLOAD
            and "error" not in r]
    ours = [r for r in rows if r["engine"].startswith("crossonnx-")]
    by_engine = {r["engine"]: r for r in rows}
    checks: list[dict[str, Any]] = []

    def ratio(name: str, tier: dict[str, Any] | None, peer: str, required: float, tier_rule: str) -> None:
        check = {"target": name, "model": model, "engine": tier and tier["engine"], "required": required,
                 "higher": True}
        if tier is None:
            check.update(measured=None, met=False, why=f"no crossonnx variant has {tier_rule}")
        elif peer not in by_engine:
            check.update(measured=None, met=None, why=f"{peer} not measured")
        else:
            measured = speed_ratio(tier, by_engine[peer])
            check.update(measured=measured, met=measured >= required)
        checks.append(check)

    faithful = _fastest(ours, FAITHFUL["min_spearman"], FAITHFUL["max_abs"])
    fast = _fastest(ours, FAST["min_spearman"])
    rule = f"Spearman >= {FAITHFUL['min_spearman']} and max abs <= {FAITHFUL['max_abs']}"
    ratio("faithful tier / st-openvino", faithful, "st-openvino", 1.3, rule)
    ratio("faithful tier / torch bf16", faithful, "st-torch-bf16", 2.0, rule)
    ratio("fast tier / st-openvino-qint8", fast, "st-openvino-qint8", 1.3, f"Spearman >= {FAST['min_spearman']}")
    fp32 = by_engine.get("crossonnx-openvino-fp32")
    check = {"target": "crossonnx-openvino-fp32 max abs diff vs torch fp32", "model": model,
             "engine": "crossonnx-openvino-fp32", "required": 1e-5, "higher": False}
    if fp32 is None or "max_abs_diff_vs_torch_fp32" not in fp32:
        check.update(measured=None, met=None, why="not measured")
    else:
        check.update(measured=fp32["max_abs_diff_vs_torch_fp32"], met=fp32["max_abs_diff_vs_torch_fp32"] <= 1e-5)
    checks.append(check)
    return checks


def issue13_markdown(checks: list[dict[str, Any]], doc: dict[str, Any]) -> list[str]:
    if not checks:
        return []
    by_engine = {r["engine"]: r for r in doc["throughput"]["results"] if r["model"] == ISSUE13_MODEL
                 and r["workload"] == ISSUE13_WORKLOAD and "error" not in r}
    lines = [f"## Issue 13 targets ({ISSUE13_MODEL}, {ISSUE13_WORKLOAD}, {_run_label(doc)})", "",
             f"Faithful tier: the fastest crossonnx variant with Spearman >= {FAITHFUL['min_spearman']} and max abs "
             f"<= {FAITHFUL['max_abs']} vs torch fp32; fast tier: the fastest with Spearman >= "
             f"{FAST['min_spearman']}. `executes`: the precision the engine reported it ran (OpenVINO: read back "
             "from the compiled model).", "",
             "| target | engine (executes) | measured | required | met |", "|---|---|---:|---:|---|"]
    for c in checks:
        engine = c["engine"] or "–"
        if c["engine"] in by_engine:
            engine += f" ({by_engine[c['engine']].get('executes', '?')})"
        sign = ">=" if c["higher"] else "<="
        if c["measured"] is None:
            verdict, measured = ("**no**: " if c["met"] is False else "not measured: ") + c["why"], "–"
        else:
            measured = f"{c['measured']:.3f}x" if c["higher"] else f"{c['measured']:.2g}"
            verdict = "yes" if c["met"] else f"**no** (by {abs(c['measured'] - c['required']) / c['required']:.1%})"
        required = f"{sign} {c['required']:g}" + ("x" if c["higher"] else "")
        lines.append(f"| {c['target']} | {engine} | {measured} | {required} | {verdict} |")
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
    lines += issue13_markdown(issue13_checks(doc), doc)
    lines += targets_markdown(target_checks(doc), doc)
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
