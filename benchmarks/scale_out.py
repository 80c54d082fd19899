"""The scale-out benchmark behind benchmarks/results/scale_out.{json,md}.

    python benchmarks/scale_out.py            # about 10 minutes on 2 cores (the `scale`, `spark` and `export` extras,
                                              # and a Java runtime for Spark; --no-spark leaves Spark out)
    python benchmarks/scale_out.py --quick    # smoke run (under a minute); writes to .cache/scale_out/

What it measures, on one machine, with a small fast model (the test suite's tiny BERT by default, exported once
into the work folder; --model tinybert-l2 for the ms-marco-TinyBERT-L-2 shape, or --model-dir for any export)
and short query-passage pairs (2-6 word queries, one STSb sentence as the passage):

1. pairs/s on a file of --rows pairs (100k) for: `CrossEncoder.predict` on the pairs already in memory;
   `crossonnx score-file` on Parquet, JSONL and CSV (the whole process, and its scoring loop alone); and the Ray
   Data path (read_parquet -> score_dataset -> write_parquet on a local cluster of --threads CPUs, as
   --threads 1-CPU actors and as one --threads-CPU actor); and Spark in local mode (read.parquet of the same rows
   in 16 files -> score_dataframe -> write.parquet, as --threads 1-CPU task slots and as one --threads-CPU slot),
   each end to end and after the job's fixed cost (starting actors or Python workers, loading the model), so the
   overhead of each engine over predict is known;
2. peak memory (VmHWM) of `crossonnx score-file` on --big-rows (1M) rows against --rows rows, per format in
   --memory-formats: memory independent of file size. Every process runs with the same --threads.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from crossonnx.bench.machine import describe_cpu
from crossonnx.bench.workloads import _sentences
from crossonnx.scale import DEFAULT_CHUNK_ROWS, FORMATS
from crossonnx.versions import library_versions
from lab.machine import cpu_info

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("crossonnx", "numpy", "onnxruntime", "tokenizers", "pyarrow", "ray", "pandas", "pyspark")
ROW_GROUP = 65_536
SMALL_ROWS = 200  # the Ray and Spark jobs that measure the fixed cost per job
SPARK_FILES = 16  # Spark reads the pairs as a folder of Parquet files (its usual input), packed into task partitions

# A child process: runs one measurement and prints a JSON line. VmHWM is the peak resident set of this process.
CHILD = r"""
import json, sys, time
started = time.perf_counter()

def vmhwm_mb():
    from crossonnx.bench.machine import process_memory_mb
    peak = process_memory_mb("VmHWM")
    return float("nan") if peak is None else peak

mode, args = sys.argv[1], json.loads(sys.argv[2])
out = {}
if mode == "score-file":
    import contextlib, io, re
    from crossonnx.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args["argv"])
    sys.stderr.write(err.getvalue())
    if code:
        sys.exit(code)
    # the CLI's own summary: "scored N rows in S s (...)": reading, scoring and writing, after the model load
    out["scoring_s"] = float(re.search(r"rows in ([0-9.]+) s", err.getvalue()).group(1))
elif mode in ("predict", "floor"):
    from crossonnx import CrossEncoder
    model = CrossEncoder(args["model"], precision=args["precision"], threads=args["threads"])
    pairs = []
    with open(args["pairs"], encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            pairs.append((row["query"], row["passage"]))
            if mode == "floor" and len(pairs) == 256:
                break
    model.predict(pairs[:256])  # warm-up
    t0 = time.perf_counter()
    if mode == "predict":
        scores = model.predict(pairs, batch_size=args["batch_size"])
        out["scoring_s"] = time.perf_counter() - t0
        out["rows"] = len(scores)
out["process_s"] = time.perf_counter() - started
out["peak_rss_mb"] = vmhwm_mb()
print(json.dumps(out))
"""

RAY_CHILD = r"""
import json, sys, time, tempfile, os
import ray
import pyarrow.parquet as pq
from crossonnx.scale.ray_data import score_dataset

args = json.loads(sys.argv[1])
t0 = time.perf_counter()
ray.init(address="local", num_cpus=args["threads"] + 1, include_dashboard=False, _node_ip_address="127.0.0.1",
         log_to_driver=False, configure_logging=False)
ctx = ray.data.DataContext.get_current()
ctx.enable_progress_bars = False
# num_cpus: the actors hold `threads` CPUs; one more logical CPU runs Ray Data's list/read/write tasks (a fixed
# pool holding every CPU would stall them). One Parquet file reads as one block unless blocks are capped, and a
# block goes to one actor task: cap them so that the actors share the file.
ctx.target_max_block_size = args["block_bytes"]
results = {"cluster_start_s": time.perf_counter() - t0, "runs": []}

def job(path, out_dir, actors, cpus):
    ds = ray.data.read_parquet(path)
    scored = score_dataset(ds, args["model"], precision=args["precision"], actors=actors, cpus_per_actor=cpus,
                           batch_size=args["ray_batch"])
    t = time.perf_counter()
    scored.write_parquet(out_dir)
    return time.perf_counter() - t

with tempfile.TemporaryDirectory(dir=args["work"]) as tmp:
    for actors, cpus in args["configs"]:
        job(args["small"], os.path.join(tmp, f"w{actors}"), actors, cpus)  # warm-up: worker start, imports
        fixed = job(args["small"], os.path.join(tmp, f"s{actors}"), actors, cpus)
        wall = job(args["big"], os.path.join(tmp, f"b{actors}"), actors, cpus)
        rows = sum(pq.ParquetFile(os.path.join(tmp, f"b{actors}", f)).metadata.num_rows
                   for f in os.listdir(os.path.join(tmp, f"b{actors}")) if f.endswith(".parquet"))
        results["runs"].append({"actors": actors, "cpus_per_actor": cpus, "wall_s": wall, "fixed_s": fixed,
                                "rows": rows})
ray.shutdown()
print(json.dumps(results))
"""


# One Spark layout in a fresh local session: the first job on the big input is cold (Python workers start, import
# crossonnx and load the model), then the same job and the small one run on warm workers that kept their model.
SPARK_CHILD = r"""
import json, os, sys, time, tempfile
args = json.loads(sys.argv[1])
os.environ["PYSPARK_PYTHON"] = sys.executable  # the Python workers run this interpreter (this environment's packages)
t0 = time.perf_counter()
from pyspark.sql import SparkSession
import pyarrow.parquet as pq
from crossonnx.scale.spark import score_dataframe

slots, cpus = args["slots"], args["cpus_per_task"]
spark = (SparkSession.builder.master(f"local[{slots * cpus}]").appName("crossonnx-scale-out")
         .config("spark.task.cpus", str(cpus)).config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false").config("spark.driver.host", "127.0.0.1")
         .config("spark.driver.bindAddress", "127.0.0.1").config("spark.local.dir", args["work"])
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
results = {"session_start_s": time.perf_counter() - t0}

def job(path, out_dir):
    t = time.perf_counter()
    scored = score_dataframe(spark.read.parquet(path), args["model"], precision=args["precision"], provider="cpu",
                             batch_size=args["batch_size"])
    scored.write.mode("overwrite").parquet(out_dir)
    seconds = time.perf_counter() - t
    rows = sum(pq.ParquetFile(os.path.join(out_dir, f)).metadata.num_rows
               for f in os.listdir(out_dir) if f.endswith(".parquet"))
    return seconds, rows

with tempfile.TemporaryDirectory(dir=args["work"]) as tmp:
    cold, rows = job(args["big"], os.path.join(tmp, "cold"))
    warm, warm_rows = job(args["big"], os.path.join(tmp, "warm"))
    fixed, _ = job(args["small"], os.path.join(tmp, "small"))
results.update(cold_s=cold, warm_s=warm, fixed_s=fixed, rows=rows, warm_rows=warm_rows,
               partitions=spark.read.parquet(args["big"]).rdd.getNumPartitions())
spark.stop()
print(json.dumps(results))
"""


def log(message: str) -> None:
    print(f"[scale_out] {message}", file=sys.stderr, flush=True)


def child(mode: str, args: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run CHILD in a fresh interpreter; returns its JSON plus the wall time of the whole process."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, mode, json.dumps(args)], capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{mode} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - started
    return result


def run_session(command: list[str], timeout: float, label: str = "Ray") -> str:
    """Run ``command`` in its own session; on timeout kill the whole group (Ray's raylet, Spark's JVM, workers)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"the {label} run took over {timeout:.0f} s and was killed") from None
    if proc.returncode != 0:
        raise RuntimeError(f"the {label} run failed ({proc.returncode}):\n{err[-3000:]}")
    return out


# ------------------------------------------------------------------------------------------------ inputs


def build_model(kind: str, work: Path, precision: str) -> Path:
    """Export the benchmark model once into ``work`` (needs the `export` extra the first time)."""
    out = work / "onnx" / f"{kind}-{precision}"
    if (out / "crossonnx.json").is_file():
        return out
    from crossonnx.checkpoints.synthetic import build_seed_shape, build_tiny
    from crossonnx.exporter.pipeline import export_model

    log(f"building and exporting the {kind} model into {out} (once)")
    ckpt = work / "ckpt" / kind
    if not (ckpt / "config.json").is_file():
        if kind == "tiny-bert":
            build_tiny("bert", ckpt, seed=1)
        else:
            build_seed_shape("ms-marco-TinyBERT-L-2", ckpt)
    gates = ("fp16:spearman=off", "int8:max_abs=0.05,spearman=off")  # random weights: see export/PARITY.md
    return export_model(str(ckpt), out=out, precisions=precision, gate_overrides=gates, log=None, overwrite=True)


def short_pairs(rows: int, seed: int = 0):
    """Deterministic short query-passage rows; the first n of a longer run are the same rows."""
    rng = random.Random(seed)
    sentences = _sentences()
    for i in range(rows):
        words = rng.choice(sentences).split()
        yield {"id": i, "query": " ".join(words[: rng.randint(2, 6)]).rstrip(".,"), "passage": rng.choice(sentences)}


def write_inputs(folder: Path, rows: int, formats: list[str]) -> dict[str, Path]:
    """pairs-<rows>.<fmt> for each format (cached): Parquet in row groups of 64k rows."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = {fmt: folder / f"pairs-{rows}.{fmt}" for fmt in formats}
    todo = {fmt: path for fmt, path in paths.items() if not path.is_file()}
    if not todo:
        return paths
    log(f"writing {rows:,} rows as {', '.join(todo)}")
    tmp = {fmt: path.with_name(path.name + ".tmp") for fmt, path in todo.items()}
    handles = {fmt: open(tmp[fmt], "w", encoding="utf-8", newline="") for fmt in todo if fmt != "parquet"}  # noqa: SIM115
    writer = pq.ParquetWriter(tmp["parquet"], pa.schema([("id", pa.int64()), ("query", pa.string()),
                                                         ("passage", pa.string())])) if "parquet" in todo else None
    csv_writer = csv.writer(handles["csv"]) if "csv" in handles else None
    if csv_writer:
        csv_writer.writerow(["id", "query", "passage"])
    chunk: list[dict[str, Any]] = []

    def flush() -> None:
        if writer is not None:
            writer.write_table(pa.Table.from_pylist(chunk), row_group_size=ROW_GROUP)
        if "jsonl" in handles:
            handles["jsonl"].write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chunk))
        if csv_writer:
            csv_writer.writerows([r["id"], r["query"], r["passage"]] for r in chunk)
        chunk.clear()

    for row in short_pairs(rows):
        chunk.append(row)
        if len(chunk) == ROW_GROUP:
            flush()
    if chunk:
        flush()
    if writer is not None:
        writer.close()
    for handle in handles.values():
        handle.close()
    for fmt, path in todo.items():
        os.replace(tmp[fmt], path)
    return paths


# ------------------------------------------------------------------------------------------------- runs


def write_parts(folder: Path, source: Path, files: int) -> Path:
    """``source``'s rows split into ``files`` Parquet files of a folder (cached), in order."""
    import pyarrow.parquet as pq

    out = folder / f"{source.stem}-{files}-files"
    if out.is_dir():
        return out
    table = pq.read_table(source)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    step = -(-table.num_rows // files)
    for index in range(files):
        pq.write_table(table.slice(index * step, step), tmp / f"part-{index:03d}.parquet")
    os.replace(tmp, out)
    return out


def run_score_file(model: Path, src: Path, fmt: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / f"out.{fmt}"
    result = child("score-file", {"argv": [
        "score-file", str(model), str(src), "--out", str(out), "--overwrite", "--no-progress",
        "--threads", str(args.threads), "--precision", args.precision, "--batch-size", str(args.batch_size)]})
    out.unlink(missing_ok=True)
    return result


def rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 5k and 20k rows, one Ray layout")
    parser.add_argument("--model", choices=["tiny-bert", "tinybert-l2"], default="tiny-bert")
    parser.add_argument("--model-dir", help="an existing export to use instead of --model")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--memory-formats", default="parquet",
                        help="comma-separated formats scored at --big-rows rows (each about 4 min on 2 cores)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ray-batch", type=int, default=1024, help="rows per map_batches call")
    parser.add_argument("--block-mb", type=float, default=1.0, help="Ray Data target_max_block_size (MiB)")
    parser.add_argument("--ray-timeout", type=float, default=900, help="seconds before the Ray run is killed")
    parser.add_argument("--no-spark", action="store_true", help="leave Spark out (no pyspark or Java here)")
    parser.add_argument("--spark-timeout", type=float, default=900, help="seconds before a Spark run is killed")
    parser.add_argument("--work", default=str(ROOT / ".cache" / "scale_out"))
    parser.add_argument("--out", help="results path without extension (default: benchmarks/results/scale_out)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.big_rows = 5_000, 20_000
        args.ray_timeout = min(args.ray_timeout, 300)
        args.spark_timeout = min(args.spark_timeout, 300)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out_base = Path(args.out) if args.out else (
        work / "scale_out-quick" if args.quick else ROOT / "benchmarks" / "results" / "scale_out")
    memory_formats = [f for f in args.memory_formats.split(",") if f]
    if set(memory_formats) - set(FORMATS):
        parser.error(f"--memory-formats takes {', '.join(FORMATS)}")
    started = time.perf_counter()

    model = Path(args.model_dir) if args.model_dir else build_model(args.model, work, args.precision)
    manifest = json.loads((model / "crossonnx.json").read_text(encoding="utf-8"))
    data = work / "data"
    inputs = write_inputs(data, args.rows, ["parquet", "jsonl", "csv"])
    big = write_inputs(data, args.big_rows, memory_formats)
    small = write_inputs(data, SMALL_ROWS, ["parquet"])["parquet"]
    common = {"model": str(model), "precision": args.precision, "threads": args.threads}

    log("process floor: load the model, score 256 pairs")
    floor = child("floor", {**common, "pairs": str(inputs["jsonl"])})
    log(f"predict on {args.rows:,} pairs in memory")
    predict = child("predict", {**common, "pairs": str(inputs["jsonl"]), "batch_size": args.batch_size})
    base_rate = rate(predict["rows"], predict["scoring_s"])
    throughput: list[dict[str, Any]] = [{
        "engine": "CrossEncoder.predict (pairs in memory)", "rows": predict["rows"], "wall_s": predict["scoring_s"],
        "pairs_per_s": base_rate, "steady_pairs_per_s": base_rate, "peak_rss_mb": predict["peak_rss_mb"],
    }]
    for fmt in ("parquet", "jsonl", "csv"):
        log(f"score-file {fmt}, {args.rows:,} rows")
        r = run_score_file(model, inputs[fmt], fmt, args, work)
        throughput.append({
            "engine": f"crossonnx score-file ({fmt})", "rows": args.rows, "wall_s": r["process_wall_s"],
            "pairs_per_s": rate(args.rows, r["process_wall_s"]),
            "steady_pairs_per_s": rate(args.rows, r["scoring_s"]),
            "peak_rss_mb": r["peak_rss_mb"],
        })

    configs = [[args.threads, 1]] if args.quick else [[args.threads, 1], [1, args.threads]]
    log(f"Ray Data on a local cluster ({args.threads} + 1 logical CPUs): {configs} (actors, CPUs each)")
    ray_args = {**common, "configs": configs, "small": str(small), "big": str(inputs["parquet"]), "work": str(work),
                "ray_batch": args.ray_batch, "block_bytes": int(args.block_mb * 2**20)}
    ray_out = run_session([sys.executable, "-c", RAY_CHILD, json.dumps(ray_args)], timeout=args.ray_timeout)
    ray_result = json.loads(ray_out.strip().splitlines()[-1])
    for run in ray_result["runs"]:
        if run["rows"] != args.rows:
            raise RuntimeError(f"Ray wrote {run['rows']} rows, expected {args.rows}")
        throughput.append({
            "engine": f"Ray Data, {run['actors']} actor(s) x {run['cpus_per_actor']} CPU (parquet)",
            "rows": args.rows, "wall_s": run["wall_s"], "pairs_per_s": rate(args.rows, run["wall_s"]),
            "steady_pairs_per_s": rate(args.rows - SMALL_ROWS, run["wall_s"] - run["fixed_s"]),
            "fixed_s": run["fixed_s"], "layout": f"{run['actors']} x {run['cpus_per_actor']} CPU",
            "peak_rss_mb": None,
        })
    spark_runs: list[dict[str, Any]] = []
    if not args.no_spark:
        parts = write_parts(data, inputs["parquet"], SPARK_FILES)
        layouts = [[args.threads, 1]] if args.quick else [[args.threads, 1], [1, args.threads]]
        log(f"Spark local mode: {layouts} (task slots, CPUs each), a session each")
        for slots, cpus in layouts:
            spark_args = {**common, "slots": slots, "cpus_per_task": cpus, "small": str(small), "big": str(parts),
                          "work": str(work), "batch_size": args.batch_size}
            out = run_session([sys.executable, "-c", SPARK_CHILD, json.dumps(spark_args)], timeout=args.spark_timeout,
                              label="Spark")
            run = json.loads(out.strip().splitlines()[-1])
            if run["rows"] != args.rows or run["warm_rows"] != args.rows:
                raise RuntimeError(f"Spark wrote {run['rows']} and {run['warm_rows']} rows, expected {args.rows}")
            spark_runs.append({"slots": slots, "cpus_per_task": cpus, **run})
            throughput.append({
                "engine": f"Spark local mode, {slots} task slot(s) x {cpus} CPU (parquet)",
                "rows": args.rows, "wall_s": run["cold_s"], "pairs_per_s": rate(args.rows, run["cold_s"]),
                "steady_pairs_per_s": rate(args.rows - SMALL_ROWS, run["warm_s"] - run["fixed_s"]),
                "fixed_s": run["fixed_s"], "first_job_s": run["cold_s"] - run["warm_s"],
                "layout": f"{slots} x {cpus} CPU", "peak_rss_mb": None,
            })
    for row in throughput:
        row["vs_predict"] = row["pairs_per_s"] / base_rate
        row["steady_vs_predict"] = row["steady_pairs_per_s"] / base_rate

    memory: list[dict[str, Any]] = []
    for fmt in memory_formats:
        small_run = next(t for t in throughput if t["engine"] == f"crossonnx score-file ({fmt})")
        memory.append({"format": fmt, "rows": args.rows, "peak_rss_mb": small_run["peak_rss_mb"],
                       "wall_s": small_run["wall_s"], "pairs_per_s": small_run["pairs_per_s"],
                       "file_mb": inputs[fmt].stat().st_size / 2**20})
        log(f"score-file {fmt}, {args.big_rows:,} rows (peak memory)")
        r = run_score_file(model, big[fmt], fmt, args, work)
        memory.append({"format": fmt, "rows": args.big_rows, "peak_rss_mb": r["peak_rss_mb"],
                       "wall_s": r["process_wall_s"], "pairs_per_s": rate(args.big_rows, r["process_wall_s"]),
                       "file_mb": big[fmt].stat().st_size / 2**20})

    doc = {
        "benchmark": "scale_out",
        "quick": args.quick,
        "environment": {"cpu": cpu_info(), "libraries": library_versions(LIBRARIES)},
        "config": {
            "model": str(model.name), "architecture": manifest.get("architecture"), "precision": args.precision,
            "threads": args.threads, "batch_size": args.batch_size, "chunk_rows": DEFAULT_CHUNK_ROWS,
            "ray_rows_per_batch": args.ray_batch, "ray_block_mb": args.block_mb, "spark_files": SPARK_FILES,
            "rows": args.rows,
            "big_rows": args.big_rows, "pairs": "query: 2-6 words of an STSb sentence; passage: one STSb sentence",
        },
        "process_floor": {"peak_rss_mb": floor["peak_rss_mb"], "process_s": floor["process_wall_s"]},
        "ray_cluster_start_s": ray_result["cluster_start_s"],
        "spark": [{"layout": f"{r['slots']} x {r['cpus_per_task']} CPU", "session_start_s": r["session_start_s"],
                   "partitions": r["partitions"]} for r in spark_runs],
        "throughput": throughput,
        "memory": memory,
        "elapsed_s": time.perf_counter() - started,
    }
    out_base.parent.mkdir(parents=True, exist_ok=True)
    out_base.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    out_base.with_suffix(".md").write_text(markdown(doc), encoding="utf-8")
    plot(doc, out_base.with_suffix(".png"))
    print(markdown(doc))
    log(f"wrote {out_base.with_suffix('.json')}, .md and .png in {doc['elapsed_s']:.0f} s")


def plot(doc: dict[str, Any], out: Path) -> Path | None:
    """Each way of scoring as a ratio to in-process predict, end to end and in steady state, side by side."""
    from crossonnx.bench.report import pyplot

    plt = pyplot()
    if plt is None:
        return None
    rows = doc["throughput"]
    figure, axis = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    positions = list(range(len(rows)))[::-1]
    height = 0.38
    axis.barh([p + height / 2 for p in positions], [r["vs_predict"] for r in rows], height, label="end to end")
    axis.barh([p - height / 2 for p in positions], [r["steady_vs_predict"] for r in rows], height, label="steady")
    axis.axvline(1.0, color="grey", linewidth=0.8)
    axis.set_yticks(positions, [r["engine"] for r in rows], fontsize=8)
    axis.set_xlabel("pairs/s as a ratio to CrossEncoder.predict on pairs in memory (same run)")
    axis.set_title(f"Scoring {rows[0]['rows']:,} pairs: files, Ray Data and Spark against predict")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def markdown(doc: dict[str, Any]) -> str:
    cfg, env = doc["config"], doc["environment"]
    arch = cfg["architecture"] or {}
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items())
    lines = [
        "# Scale-out: score-file, Ray Data and Spark against in-process predict"
        + (" (QUICK smoke run)" if doc["quick"] else ""),
        "",
        f"CPU: {describe_cpu(env['cpu'])}  ",
        f"Libraries: {libs}  ",
        f"Model: `{cfg['model']}` ({arch.get('model_type')}, {arch.get('num_hidden_layers')} layers, hidden "
        f"{arch.get('hidden_size')}), {cfg['precision']}, {cfg['threads']} threads per process "
        f"(Ray: the actors hold {cfg['threads']} CPUs; the local cluster has one more logical CPU for Ray Data's "
        f"list, read and write tasks, on the same {env['cpu']['cpus']} cores), batch size {cfg['batch_size']}, Ray "
        f"batches of {cfg['ray_rows_per_batch']} rows, blocks of at most {cfg['ray_block_mb']:g} MiB; Spark: "
        f"local mode with {cfg['threads']} cores, the pairs in {cfg.get('spark_files', SPARK_FILES)} Parquet files, "
        f"Arrow batches of Spark's default 10,000 rows, a model per Python worker. Pairs: {cfg['pairs']}.",
        "",
        f"## Throughput, {cfg['rows']:,} pairs",
        "",
        "*end to end* is rows / wall time of the whole job: for score-file the process (interpreter start, model "
        "load, read, score, write); for Ray the job from `read_parquet` to `write_parquet` (actor start and model "
        f"load included; cluster start, {doc['ray_cluster_start_s']:.1f} s, and a warm-up job not); for Spark the "
        "first job of a new session from `read.parquet` to `write.parquet` (Python workers' start and model load "
        "included, the session's start not). *steady* leaves out the fixed cost: for score-file its own timing of "
        "the read-score-write loop (after start-up and model load), for Ray the marginal rate over the same job on "
        "200 rows, for Spark the same on warm workers (which keep their model from job to job).",
        "",
        "| engine | wall s | end to end pairs/s | vs predict | steady pairs/s | vs predict | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in doc["throughput"]:
        rss = "-" if t["peak_rss_mb"] is None else f"{t['peak_rss_mb']:.0f}"
        lines.append(f"| {t['engine']} | {t['wall_s']:.1f} | {t['pairs_per_s']:,.0f} | {t['vs_predict']:.2f} | "
                     f"{t['steady_pairs_per_s']:,.0f} | {t['steady_vs_predict']:.2f} | {rss} |")
    ray_fixed = [t for t in doc["throughput"] if "fixed_s" in t and t["engine"].startswith("Ray")]
    if ray_fixed:
        lines += ["", "Ray fixed cost per job (the job on 200 rows: actor start, model load, read, write): "
                  + ", ".join(f"{t['layout']}: {t['fixed_s']:.1f} s" for t in ray_fixed) + "."]
    spark_fixed = [t for t in doc["throughput"] if "first_job_s" in t]
    if spark_fixed:
        starts = {s["layout"]: s for s in doc.get("spark", [])}
        lines += ["", "Spark fixed costs: " + "; ".join(
            f"{t['layout']}: session start {starts[t['layout']]['session_start_s']:.1f} s, the first job's extra "
            f"(Python workers start and load the model, the JVM warms up) {t['first_job_s']:.1f} s, every job "
            f"(200 rows on warm workers) {t['fixed_s']:.1f} s, {starts[t['layout']]['partitions']} partitions"
            for t in spark_fixed) + "."]
    lines += [
        "",
        f"## score-file peak memory: {cfg['big_rows']:,} rows against {cfg['rows']:,}",
        "",
        f"VmHWM of the score-file process, chunks of {cfg['chunk_rows']} rows. The process floor (the runtime with "
        f"the model loaded, 256 pairs scored) is {doc['process_floor']['peak_rss_mb']:.0f} MB.",
        "",
        "| format | rows | file MB | peak RSS MB | wall s | pairs/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in doc["memory"]:
        lines.append(f"| {m['format']} | {m['rows']:,} | {m['file_mb']:.1f} | {m['peak_rss_mb']:.0f} | "
                     f"{m['wall_s']:.1f} | {m['pairs_per_s']:,.0f} |")
    lines += ["", "![each way of scoring against predict](scale_out.png)", "",
              f"Benchmark wall time: {doc['elapsed_s']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
