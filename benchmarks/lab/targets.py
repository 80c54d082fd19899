"""The targets the throughput results are judged by: the tables benchmarks/throughput.py puts before its
measurements (crossonnx bench reports the measurements alone).

- Quality levels (``level_checks``): the faithful tier (the fastest crossonnx variant whose scores stay within
  ``FAITHFUL`` of PyTorch fp32) and the fast tier (``FAST``) against sentence-transformers' OpenVINO backend and
  PyTorch bf16, on the real MiniLM's query-passage pairs.
- Targets against PyTorch fp32 / bf16 and the ONNX peers (``target_checks``): speed, agreement, cold start, memory.
"""

from __future__ import annotations

from typing import Any

from crossonnx.bench.report import speed_ratio

TARGET_MODELS = ("stsb-minilm-l6", "ms-marco-TinyBERT-L-6")
PEERS = ("st-onnx", "st-onnx-qint8", "fastembed", "flashrank-style")
LEVELS_MODEL, LEVELS_WORKLOAD = "stsb-minilm-l6", "query-passage"
FAITHFUL = {"min_spearman": 0.9999, "max_abs": 0.01}  # vs torch fp32, sigmoid scores
FAST = {"min_spearman": 0.999}


def _run_label(doc: dict[str, Any]) -> str:
    rounds = doc.get("config", {}).get("rounds", 1)
    return f"one run, median of {rounds} rounds" if rounds > 1 else "one run"


def _row(doc: dict[str, Any], model: str, workload: str, engine: str) -> dict[str, Any] | None:
    return next((r for r in doc["throughput"]["results"] if r["model"] == model and r["workload"] == workload
                 and r["engine"] == engine and "error" not in r), None)


def target_checks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Speed against PyTorch and the ONNX peers, agreement, cold start and memory: each target with the measured value
    and whether it was met (query-passage, batch 32; a target whose rows are missing is left out)."""
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
    lines = [f"## Targets against PyTorch and the ONNX peers (query-passage pairs, batch 32, same thread count, "
             f"{_run_label(doc)})", "",
             "| target | model | measured | required | met |", "|---|---|---:|---:|---|"]
    for c in checks:
        sign = "<=" if any(k in c["target"] for k in ("cold start", "RSS", "diff")) else ">="
        verdict = "yes" if c["met"] else f"**no** (by {abs(c['measured'] - c['required']) / c['required']:.1%})"
        lines.append(f"| {c['target']} | {c['model']} | {c['measured']:.4g} | {sign} {c['required']:.4g} "
                     f"| {verdict} |")
    return [*lines, ""]


def _fastest(rows: list[dict[str, Any]], min_spearman: float, max_abs: float | None = None) -> dict[str, Any] | None:
    ok = [r for r in rows if r.get("spearman_vs_torch_fp32", -1.0) >= min_spearman
          and (max_abs is None or r.get("max_abs_diff_vs_torch_fp32", float("inf")) <= max_abs)]
    return max(ok, key=lambda r: r["pairs_per_s"]) if ok else None


def level_checks(doc: dict[str, Any], model: str = LEVELS_MODEL) -> list[dict[str, Any]]:
    """The quality levels (real MiniLM, query-passage, batch 32): the faithful tier (the fastest crossonnx variant
    with Spearman >= 0.9999 and max abs <= 0.01 vs torch fp32) >= 1.3x st-openvino and >= 2x torch bf16; the fast
    tier (the fastest with Spearman >= 0.999) >= 1.3x st-openvino-qint8; crossonnx fp32 on OpenVINO within 1e-5.

    Each check: target, engine (the variant the tier picked), measured, required, met (None: not measurable, with
    ``why``)."""
    rows = [r for r in doc["throughput"]["results"] if r["model"] == model and r["workload"] == LEVELS_WORKLOAD
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


def levels_markdown(checks: list[dict[str, Any]], doc: dict[str, Any]) -> list[str]:
    if not checks:
        return []
    by_engine = {r["engine"]: r for r in doc["throughput"]["results"] if r["model"] == LEVELS_MODEL
                 and r["workload"] == LEVELS_WORKLOAD and "error" not in r}
    lines = [f"## Quality levels: faithful and fast tiers against PyTorch and sentence-transformers' OpenVINO "
             f"({LEVELS_MODEL}, {LEVELS_WORKLOAD}, {_run_label(doc)})", "",
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


def markdown_sections(doc: dict[str, Any]) -> list[str]:
    """Both target tables of a throughput result, for ``throughput_markdown(..., sections=markdown_sections)``."""
    return levels_markdown(level_checks(doc), doc) + targets_markdown(target_checks(doc), doc)
