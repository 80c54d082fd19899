"""Does ``crossonnx tune`` pick what a benchmark then measures as fastest, and in how long? benchmarks/results/
tune_agreement.{json,md,png}.

    python benchmarks/tune_agreement.py              # the reference model, 3 runs (each a tune and a benchmark)
    python benchmarks/tune_agreement.py --model-dir DIR --runs 1 --tune-seconds 5 --reps 1 --out /tmp/x  # smoke

Each run, on one exported folder (default: the reference model in every precision this machine builds, as
benchmarks/soak.py exports it):

1. ``crossonnx tune MODEL_DIR --threads T --seconds S`` as a child process in a crossonnx cache of its own (a fresh
   temporary ``CROSSONNX_CACHE``, so nothing an earlier tune or run stored is reused), timed from process start to
   exit: the wall time a user waits. What it chose is read from the result it stored (``load_tuned``), resolved as
   ``CrossEncoder`` resolves it: each level through ``levels.resolve_level`` with the stored speeds, and
   ``provider="auto"`` per precision through ``TuneResult.provider_for``.
2. then the throughput benchmark's machinery (``crossonnx.bench.throughput.run_matrix``, as benchmarks/
   throughput.py runs it: a fresh worker process per variant, --pairs query-passage pairs, batch 32, --reps timed
   passes whose median counts) on every variant tune measured, in that run's cache, so each variant loads as
   ``CrossEncoder`` loads it after tuning (``token_budget="auto"`` takes the tuned budget). The benchmark's fastest
   for a level is ``resolve_level`` again with the benchmark's pairs/s as the speeds: the same qualification
   (recorded parity against the level's thresholds, what this machine runs, the fallback to a more accurate level),
   the other measurement.
3. per choice (each level, and ``provider="auto"`` for each precision more than one provider runs): tune's pick,
   the benchmark's fastest, whether they agree, and the benchmark's speed of tune's pick over the speed of its
   fastest (what following tune costs by the benchmark's measure; 1 where they agree).

Only choices with something to choose count (``tune.open_choice``: at least two runnable candidates). With
--latency the benchmark also times batch-1 calls (``run_latency``: one pair per call, its p50) and tune's latency
picks are compared with them the same way. A variant pending validation (bf16 exported on a CPU without bf16) is
left out of the levels on both sides (``resolve_level`` without ``check_pending``), where ``CrossEncoder`` would
validate it at first use.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crossonnx.levels import Machine
    from crossonnx.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
TUNE_TARGET_S = 120.0  # issue 23: tune on this machine takes under two minutes for the reference model
DEFAULT_PAIRS = 256  # what tune measures on (crossonnx.tune.PAIRS) and throughput.py's size for this workload
WORKLOAD_NAME = "query-passage"  # crossonnx.bench.workloads, the pairs tune measures too


@contextlib.contextmanager
def crossonnx_cache(path: Path) -> Iterator[None]:
    """``CROSSONNX_CACHE`` set to ``path`` in this process (and the children it starts) for the block."""
    before = os.environ.get("CROSSONNX_CACHE")
    os.environ["CROSSONNX_CACHE"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CROSSONNX_CACHE", None)
        else:
            os.environ["CROSSONNX_CACHE"] = before


def crossonnx_command() -> list[str]:
    """The ``crossonnx`` console script of this Python's environment, or the CLI module run by this Python."""
    script = Path(sys.executable).with_name("crossonnx")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "crossonnx.cli"]


def run_tune(model_dir: Path, threads: int, seconds: float, cache: Path) -> dict[str, Any]:
    """``crossonnx tune`` in a child process with ``cache`` as its crossonnx cache: wall seconds, exit status and
    the result it stored (``load_tuned``: the key is the folder, this machine, ``threads`` and the versions)."""
    from crossonnx.manifest import load_manifest
    from crossonnx.tune import load_tuned

    command = [*crossonnx_command(), "tune", str(model_dir), "--threads", str(threads), "--seconds", f"{seconds:g}"]
    env = {**os.environ, "CROSSONNX_CACHE": str(cache)}
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=max(900.0, 10 * seconds),
                          check=False)
    wall = time.perf_counter() - began
    out: dict[str, Any] = {"wall_s": round(wall, 2), "returncode": done.returncode}
    if done.returncode != 0:
        out["error"] = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        return out
    with crossonnx_cache(cache):
        result = load_tuned(load_manifest(model_dir), threads)
    if result is None:
        out["error"] = f"crossonnx tune exited 0 but stored no result for {threads} threads under {cache}"
        return out
    out["result"] = result.to_dict()
    return out


def run_benchmark(model_dir: Path, variants: list[tuple[str, str]], args: argparse.Namespace, cache: Path,
                  work: Path) -> dict[str, Any]:
    """The throughput benchmark (and with --latency the batch-1 one) on ``variants``, each engine a fresh process
    with ``cache`` as its crossonnx cache: raw rows, and ``variant_key`` -> pairs/s (batch-1 calls/s) of those
    that ran."""
    from crossonnx.bench.throughput import BenchConfig, BenchModel, run_latency, run_matrix
    from crossonnx.bench.worker import crossonnx_variant, engine_name
    from crossonnx.levels import variant_key

    model = BenchModel(name=model_dir.name, checkpoint=None, export_dir=model_dir)
    engines = [engine_name(*v) for v in variants]
    config = BenchConfig(threads=args.threads, reps=args.reps, rounds=args.rounds, min_seconds=args.min_seconds,
                         pairs={WORKLOAD_NAME: args.pairs})

    def key(row: dict[str, Any]) -> str:
        variant = crossonnx_variant(row["engine"])
        assert variant is not None, row["engine"]
        return variant_key(*variant)

    out: dict[str, Any] = {}
    with crossonnx_cache(cache):
        rows = run_matrix([model], engines, [WORKLOAD_NAME], config, work)["results"]
        out["throughput_rows"] = rows
        out["throughput"] = {key(r): r["pairs_per_s"] for r in rows if "error" not in r}
        out["errors"] = {key(r): r["error"] for r in rows if "error" in r}
        if args.latency:
            rows = run_latency([model], engines, config, work, calls=args.latency_calls)
            out["latency_rows"] = rows
            out["latency"] = {key(r): 1000.0 / r["latency_ms_p50"] for r in rows if "error" not in r}
    return out


def compare(manifest: Manifest, machine: Machine, tune_speeds: Mapping[str, float], bench_speeds: Mapping[str, float],
            workload: str) -> list[dict[str, Any]]:
    """Per open choice (each level, then ``provider="auto"`` per precision): tune's pick with ``tune_speeds``, the
    benchmark's fastest with ``bench_speeds`` (both ``variant_key`` -> higher is faster), whether they agree, and
    the benchmark's speed of tune's pick over that of its fastest."""
    from crossonnx.errors import PrecisionNotExportedError
    from crossonnx.levels import LEVELS, TUNED, resolve_level, variant_key
    from crossonnx.tune import open_choice, runnable_variants

    def level_pick(level: str, speeds: Mapping[str, float]) -> tuple[str | None, str | None]:
        try:
            choice = resolve_level(manifest, level, machine=machine, speeds=speeds)
        except PrecisionNotExportedError:
            return None, None
        if choice.basis != TUNED:  # none of the qualifying variants was measured
            return None, choice.met
        return variant_key(choice.provider, choice.precision), choice.met

    picks: list[tuple[str, str, str | None, str | None, str | None]] = []  # (kind, name, tune's, bench's, met)
    for level in LEVELS:
        if open_choice(manifest, level, "auto", machine) is None:
            continue
        tune_pick, met = level_pick(level, tune_speeds)
        bench_pick, _ = level_pick(level, bench_speeds)
        picks.append(("level", level, tune_pick, bench_pick, met))
    runnable = runnable_variants(manifest, machine)
    for precision in dict.fromkeys(p for _, p in runnable):
        if open_choice(manifest, precision, "auto", machine) is None:
            continue
        keys = [variant_key(pr, p) for pr, p in runnable if p == precision]
        tune_measured = [k for k in keys if k in tune_speeds]
        bench_measured = [k for k in keys if k in bench_speeds]
        picks.append(("provider auto", precision,
                      max(tune_measured, key=tune_speeds.__getitem__) if tune_measured else None,
                      max(bench_measured, key=bench_speeds.__getitem__) if bench_measured else None, None))
    out = []
    for kind, name, tune_pick, bench_pick, met in picks:
        row: dict[str, Any] = {"workload": workload, "kind": kind, "choice": name, "tune_pick": tune_pick,
                               "bench_fastest": bench_pick, "met": met, "agree": None, "pick_over_fastest": None}
        if tune_pick is not None and bench_pick is not None:
            row["agree"] = tune_pick == bench_pick
            if tune_pick in bench_speeds:
                row["pick_over_fastest"] = round(bench_speeds[tune_pick] / bench_speeds[bench_pick], 4)
        out.append(row)
    return out


def one_run(number: int, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Tune, then benchmark, in a fresh crossonnx cache; what each measured and how their choices compare."""
    from crossonnx.levels import Machine
    from crossonnx.manifest import load_manifest
    from crossonnx.tune import TuneResult

    manifest, machine = load_manifest(model_dir), Machine.probe()
    run: dict[str, Any] = {"run": number}
    with tempfile.TemporaryDirectory(prefix="tune-agreement-") as tmp:
        cache, work = Path(tmp) / "cache", Path(tmp) / "work"
        work.mkdir()
        print(f"run {number}: crossonnx tune ({args.tune_seconds:g} s) in a fresh cache", flush=True)
        run["tune"] = run_tune(model_dir, args.threads, args.tune_seconds, cache)
        if "error" in run["tune"]:
            print(f"run {number}: tune failed: {run['tune']['error']}", flush=True)
            return run
        result = TuneResult.from_dict(run["tune"]["result"])
        print(f"run {number}: tune took {run['tune']['wall_s']:.1f} s; benchmarking {len(result.variants)} variants",
              flush=True)
        variants = [(v.provider, v.precision) for v in result.variants]
        run["bench"] = run_benchmark(model_dir, variants, args, cache, work)
    run["choices"] = []
    for workload in ("throughput", "latency") if args.latency else ("throughput",):
        run["choices"] += compare(manifest, machine, result.speeds(workload), run["bench"][workload], workload)
    for row in run["choices"]:
        print(f"run {number}: {row['workload']:10s} {row['kind']} {row['choice']:12s} tune {row['tune_pick']}, "
              f"benchmark {row['bench_fastest']}, agree {row['agree']}", flush=True)
    return run


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Tune's wall time per run, and per choice: agreements out of the runs that compared it, and the benchmark's
    pick/fastest ratio (median, worst)."""
    walls = [r["tune"]["wall_s"] for r in runs]
    per: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        for row in run.get("choices", []):
            per.setdefault((row["workload"], row["kind"], row["choice"]), []).append(row)
    choices = []
    for (workload, kind, name), rows in per.items():
        compared = [r for r in rows if r["agree"] is not None]
        ratios = [r["pick_over_fastest"] for r in rows if r["pick_over_fastest"] is not None]
        choices.append({"workload": workload, "kind": kind, "choice": name,
                        "agreements": sum(r["agree"] for r in compared), "compared": len(compared), "runs": len(runs),
                        "median_pick_over_fastest": round(statistics.median(ratios), 4) if ratios else None,
                        "worst_pick_over_fastest": min(ratios) if ratios else None})
    return {"tune_wall_s": walls, "tune_under_target": sum(w < TUNE_TARGET_S for w in walls),
            "tune_target_s": TUNE_TARGET_S, "choices": choices}


def _speed(value: float | None, workload: str) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if workload == "throughput" else f"{1000.0 / value:.2f} ms"


def markdown(doc: dict[str, Any]) -> str:
    from crossonnx.bench.report import result_header

    lines = result_header("Does crossonnx tune pick the fastest variant? (tune agreement)", doc)
    latency = "; with the batch-1 latency benchmark too" if doc["latency"] else ""
    lines += [
        f"Model folder: `{doc['model']}` ({', '.join(doc['variants'])}). Runs: {doc['run_count']}; each: `crossonnx "
        f"tune --seconds {doc['tune_seconds']:g} --threads {doc['threads']}` in a fresh crossonnx cache (timed from "
        f"process start to exit), then the throughput benchmark on every variant tune measured, in that cache: a "
        f"fresh process per variant, {doc['pairs']} query-passage pairs, batch 32, timed passes per process: "
        f"{doc['reps']}, processes per variant: {doc['rounds']}, threads: {doc['threads']}{latency}. A level's "
        "fastest is `resolve_level` with each side's speeds (the same qualification and fallback); provider 'auto' "
        "is the fastest provider of the precision. pick/fastest: the benchmark's speed of tune's pick over its "
        "fastest (1 where they agree).",
        "",
        "## Summary",
        "",
        f"Tune wall time per run: {', '.join(f'{w:.0f} s' for w in doc['summary']['tune_wall_s'])}; under "
        f"{TUNE_TARGET_S:.0f} s in {doc['summary']['tune_under_target']} of {doc['run_count']}.",
        "",
        "| workload | choice | tune and benchmark agree | pick/fastest median | worst |",
        "|---|---|---:|---:|---:|",
    ]
    for c in doc["summary"]["choices"]:
        median = "–" if c["median_pick_over_fastest"] is None else f"{c['median_pick_over_fastest']:.3f}"
        worst = "–" if c["worst_pick_over_fastest"] is None else f"{c['worst_pick_over_fastest']:.3f}"
        lines.append(f"| {c['workload']} | {c['kind']} {c['choice']} | {c['agreements']} of {c['compared']} | "
                     f"{median} | {worst} |")
    lines += ["", "## Per run", "",
              "| run | workload | choice | tune's pick | benchmark's fastest | agree | pick/fastest |",
              "|---:|---|---|---|---|---|---:|"]
    for run in doc["runs"]:
        if "error" in run["tune"]:
            lines.append(f"| {run['run']} | | tune failed: {run['tune']['error']} | | | | |")
            continue
        for c in run["choices"]:
            agree = {True: "yes", False: "no", None: "–"}[c["agree"]]
            ratio = "–" if c["pick_over_fastest"] is None else f"{c['pick_over_fastest']:.3f}"
            met = f" (meets {c['met']})" if c["met"] and c["met"] != c["choice"] else ""
            lines.append(f"| {run['run']} | {c['workload']} | {c['kind']} {c['choice']}{met} | {c['tune_pick']} | "
                         f"{c['bench_fastest']} | {agree} | {ratio} |")
    lines += ["", "## Measurements", "",
              "pairs/s: tune's at the token budget it kept (budget), the benchmark's with that budget; p50: one pair "
              "per call.", ""]
    header = "| run | variant | tune pairs/s | budget | benchmark pairs/s |"
    rule = "|---:|---|---:|---:|---:|"
    if doc["latency"]:
        header += " tune p50 | benchmark p50 |"
        rule += "---:|---:|"
    lines += [header, rule]
    for run in doc["runs"]:
        if "error" in run["tune"]:
            continue
        bench = run["bench"]
        for v in run["tune"]["result"]["variants"]:
            key = f"{v['provider']}/{v['precision']}"
            measured = _speed(bench["throughput"].get(key), "throughput")
            if key in bench["errors"]:
                measured = f"error: {bench['errors'][key]}"
            line = f"| {run['run']} | {key} | {v['pairs_per_s']:.1f} | {v['token_budget']} | {measured} |"
            if doc["latency"]:
                line += f" {v['latency_ms_p50']:.2f} ms | {_speed(bench['latency'].get(key), 'latency')} |"
            lines.append(line)
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], out: Path) -> Path | None:
    """Per run, each variant's pairs/s as the benchmark and tune measured them; in a benchmark bar, the levels tune
    picked that variant for (throughput)."""
    from crossonnx.bench.report import pyplot

    runs = [r for r in doc["runs"] if "error" not in r["tune"]]
    plt = pyplot()
    if plt is None or not runs:
        return None
    variants = doc["variants"]
    figure, axes = plt.subplots(1, len(runs), figsize=(3 + 3 * len(runs), 4.5), sharey=True, squeeze=False)
    for axis, run in zip(axes[0], runs, strict=True):
        tuned = {f"{v['provider']}/{v['precision']}": v["pairs_per_s"] for v in run["tune"]["result"]["variants"]}
        bench = run["bench"]["throughput"]
        xs = range(len(variants))
        bars = axis.bar([x - 0.2 for x in xs], [bench.get(k, 0.0) for k in variants], 0.4, label="benchmark")
        axis.bar([x + 0.2 for x in xs], [tuned.get(k, 0.0) for k in variants], 0.4, label="tune", alpha=0.5,
                 hatch="//")
        for x, key in enumerate(variants):
            levels = [c["choice"] for c in run["choices"]
                      if c["workload"] == "throughput" and c["kind"] == "level" and c["tune_pick"] == key]
            if levels:
                axis.annotate("tune's pick: " + ", ".join(levels), (bars[x].get_x() + 0.2, 0), xytext=(0, 4),
                              textcoords="offset points", ha="center", va="bottom", fontsize=7, rotation=90,
                              color="white", weight="bold")
        axis.set_xticks(list(xs), variants, rotation=60, ha="right", fontsize=7)
        axis.set_title(f"run {run['run']}: tune {run['tune']['wall_s']:.0f} s", fontsize=9)
    axes[0][0].set_ylabel("pairs/s (query-passage, batch 32)")
    axes[0][0].legend(fontsize=7)
    figure.suptitle("Tune's measurement and pick against the throughput benchmark's", fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def main() -> int:
    from crossonnx.engines import default_threads
    from crossonnx.runtime_args import positive_int
    from crossonnx.tune import DEFAULT_SECONDS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="an exported folder (default: the reference model)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench", help="where the reference export goes")
    parser.add_argument("--runs", type=positive_int, default=3, help="tune + benchmark runs (default 3)")
    parser.add_argument("--tune-seconds", type=float, default=DEFAULT_SECONDS,
                        help=f"crossonnx tune --seconds (default {DEFAULT_SECONDS:g}, tune's own default)")
    parser.add_argument("--threads", type=positive_int, default=default_threads(),
                        help="for tune and every benchmark engine (default: all CPUs, as tune and CrossEncoder)")
    parser.add_argument("--pairs", type=positive_int, default=DEFAULT_PAIRS,
                        help=f"query-passage pairs per benchmark pass (default {DEFAULT_PAIRS}, as tune)")
    parser.add_argument("--reps", type=positive_int, default=2, help="timed passes per benchmark process (default 2)")
    parser.add_argument("--rounds", type=positive_int, default=1,
                        help="benchmark processes per variant, variants taking turns (default 1)")
    parser.add_argument("--min-seconds", type=float, default=1.0,
                        help="a benchmark pass repeats until it took this long (default 1)")
    parser.add_argument("--latency", action="store_true",
                        help="also compare tune's latency picks with the batch-1 latency benchmark")
    parser.add_argument("--latency-calls", type=positive_int, default=200, help="one-pair calls per variant")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--stem", default="tune_agreement")
    args = parser.parse_args()
    if not args.tune_seconds > 0:
        parser.error("--tune-seconds must be positive")

    from soak import reference_folder

    from crossonnx.bench.machine import library_versions
    from crossonnx.bench.report import write_result
    from lab.machine import cpu_info

    model_dir = (args.model_dir or reference_folder(args.work)).resolve()
    runs = [one_run(number, model_dir, args) for number in range(1, args.runs + 1)]
    tuned = next((r["tune"]["result"] for r in runs if "result" in r["tune"]), None)
    doc = {"command": "python benchmarks/tune_agreement.py " + " ".join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d"), "cpu": cpu_info(),
           "libraries": library_versions(("crossonnx", "numpy", "onnxruntime", "openvino", "tokenizers")),
           "model": model_dir.name, "model_dir": str(model_dir),
           "variants": [f"{v['provider']}/{v['precision']}" for v in tuned["variants"]] if tuned else [],
           "run_count": args.runs, "tune_seconds": args.tune_seconds, "threads": args.threads, "pairs": args.pairs,
           "reps": args.reps, "rounds": args.rounds, "min_seconds": args.min_seconds, "latency": args.latency,
           "runs": runs, "summary": summarize(runs)}
    write_result(doc, args.out, args.stem, markdown, plot)
    print(f"wrote {args.out / (args.stem + '.md')}")
    return 0 if tuned is not None else 1


if __name__ == "__main__":
    sys.exit(main())
