"""Load test of `crossonnx serve`: latency, throughput, correctness and backpressure over loopback HTTP.

    python benchmarks/load_test.py                          # models/stsb-minilm-l6, fp32; a few minutes on 2 cores
    python benchmarks/load_test.py --model-dir DIR --quick  # smoke run

What it does, all on 127.0.0.1 and bounded in requests and seconds:

1. builds realistic rerank requests (a 2-8 word query and 16-32 passages of 40-150 words, from STSb sentences) and
   scores them in process with ``CrossEncoder.predict`` (the expected scores, and the in-process throughput);
2. starts the real server as a subprocess (``python -m crossonnx.cli serve``) on a free port and sends the same
   requests to ``POST /rerank`` at concurrency 1, 8, 32 and 64 with httpx: p50/p95/p99 latency, requests/s,
   pairs/s, merged batch sizes (from ``/metrics``), and every response checked against the expected scores
   (indices, order, scores within the tolerance); server RSS before and after;
3. overload: a second server with a small queue, pushed far past it, must answer 429 at once rather than time out;
   then SIGTERM while requests keep coming: 503 during the drain, the requests in flight answered, exit status 0.

Writes benchmarks/results/load_test.{json,md} (or --out-dir) with the CPU model and library versions.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from crossonnx.bench.machine import LIBRARIES, describe_cpu, process_memory_mb
from crossonnx.bench.workloads import rank_pairs
from crossonnx.encoder import CrossEncoder
from crossonnx.versions import library_versions
from lab.machine import cpu_info

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32, 64)
TOLERANCE = {"fp32": 1e-5, "fp16": 2e-3, "int8": 5e-2}  # int8: dynamic activation scales follow the batch
TARGET_RATIO = 0.8  # server pairs/s at concurrency 32 over in-process predict pairs/s
REQUEST_TIMEOUT_S = 120.0
STARTUP_TIMEOUT_S = 120.0


@dataclass
class RerankCase:
    """One /rerank request and the scores in-process ``predict`` gives its pairs."""

    query: str
    texts: list[str]
    expected: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))

    def body(self) -> dict[str, Any]:
        return {"query": self.query, "texts": self.texts}


def build_cases(count: int, docs: tuple[int, int], seed: int = 0) -> list[RerankCase]:
    """``count`` rerank requests: one query and ``docs`` passages each (deterministic)."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        pairs = rank_pairs(rng.randint(*docs), seed=seed * 100_003 + i)
        cases.append(RerankCase(pairs[0][0], [passage for _, passage in pairs]))
    return cases


def score_in_process(encoder: CrossEncoder, cases: list[RerankCase]) -> dict[str, float]:
    """Fill in the expected scores; in-process throughput over all pairs at once and request by request."""
    encoder.predict([(cases[0].query, t) for t in cases[0].texts])  # warm-up
    pairs = [(case.query, text) for case in cases for text in case.texts]
    started = time.perf_counter()
    scores = np.asarray(encoder.predict(pairs), dtype=np.float32)
    all_at_once = time.perf_counter() - started
    started = time.perf_counter()
    for case in cases:
        case.expected = np.asarray(encoder.predict([(case.query, t) for t in case.texts]), dtype=np.float32)
    per_request = time.perf_counter() - started
    drift = float(np.max(np.abs(np.concatenate([c.expected for c in cases]) - scores)))
    return {
        "pairs": len(pairs),
        "pairs_per_s": len(pairs) / all_at_once,
        "per_request_pairs_per_s": len(pairs) / per_request,
        "per_request_requests_per_s": len(cases) / per_request,
        "max_abs_diff_all_at_once_vs_per_request": drift,
    }


# -- the server subprocess ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    return {field: round((process_memory_mb(field, pid) or 0.0) * 1024) for field in ("VmRSS", "VmHWM")}


class ServerProcess:
    """``python -m crossonnx.cli serve`` on a free loopback port."""

    def __init__(self, model_dir: str, precision: str, threads: int | None, extra: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "crossonnx.cli", "serve", model_dir, "--port", str(self.port),
                   "--precision", precision, "--log-level", "warning", "--no-tune", *extra]
        if threads:
            command += ["--threads", str(threads)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}): {self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not become healthy in {STARTUP_TIMEOUT_S:.0f} s")

    def memory(self) -> dict[str, int]:
        return memory_kib(self.process.pid)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int | None:
        """SIGTERM and wait; kill if it does not exit. Returns the exit status of the graceful stop (None: killed)."""
        if self.process.poll() is None:
            self.terminate()
        code = self.wait()
        if code is None:
            self.process.kill()
            self.process.wait()
        self._log.close()
        return code


def scrape(url: str) -> dict[str, float]:
    """Unlabelled samples of /metrics (sums and counts of the batch histograms, gauges)."""
    values: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


# -- load -----------------------------------------------------------------------------------------------------
def check_response(case: RerankCase, items: Any, tolerance: float) -> tuple[bool, float]:
    """(matches, max abs score difference): every index once, sorted by score, scores within ``tolerance``."""
    if not isinstance(items, list) or len(items) != len(case.texts):
        return False, float("inf")
    indices = [item.get("index") for item in items]
    if sorted(indices) != list(range(len(case.texts))):
        return False, float("inf")
    scores = [item["score"] for item in items]
    got = np.empty(len(items), dtype=np.float64)
    got[indices] = scores
    diff = float(np.max(np.abs(got - case.expected)))
    ordered = all(a >= b for a, b in itertools.pairwise(scores))
    return ordered and diff <= tolerance, diff


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.asarray(values) * 1000
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
            "p99_ms": float(np.percentile(arr, 99)), "max_ms": float(arr.max())}


async def load_level(url: str, cases: list[RerankCase], concurrency: int, tolerance: float,
                     deadline_s: float) -> dict[str, Any]:
    """Send every case once with ``concurrency`` clients; latencies, throughput, lost and mismatched results."""
    queue: asyncio.Queue[RerankCase] = asyncio.Queue()
    for case in cases:
        queue.put_nowait(case)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    mismatched, max_diff, pairs_ok = 0, 0.0, 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def worker() -> None:
            nonlocal mismatched, max_diff, pairs_ok
            while not queue.empty():
                case = queue.get_nowait()
                started = time.perf_counter()
                try:
                    response = await client.post("/rerank", json=case.body())
                except httpx.TimeoutException:
                    statuses["timeout"] += 1
                    continue
                except httpx.TransportError as exc:
                    statuses[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[str(response.status_code)] += 1
                if response.status_code == 200:
                    ok, diff = check_response(case, response.json(), tolerance)
                    max_diff = max(max_diff, diff)
                    mismatched += not ok
                    pairs_ok += len(case.texts) if ok else 0

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), deadline_s)
        wall = time.perf_counter() - started
    ok = statuses.get("200", 0)
    return {
        "concurrency": concurrency,
        "requests": len(cases),
        "pairs": sum(len(c.texts) for c in cases),
        "statuses": dict(statuses),
        "lost": len(cases) - ok,
        "mismatched": mismatched,
        "max_abs_diff": max_diff,
        "wall_s": wall,
        "requests_per_s": ok / wall,
        "pairs_per_s": pairs_ok / wall,
        **percentiles(latencies),
    }


async def burst(url: str, cases: list[RerankCase], concurrency: int, tolerance: float, deadline_s: float,
                on_first_ok: Any = None) -> dict[str, Any]:
    """Push every case with ``concurrency`` clients and count what comes back (statuses, errors, latency)."""
    queue: asyncio.Queue[RerankCase] = asyncio.Queue()
    for case in cases:
        queue.put_nowait(case)
    outcomes: Counter[str] = Counter()
    by_status: dict[str, list[float]] = {}
    mismatched = 0
    first_ok = asyncio.Event()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def worker() -> None:
            nonlocal mismatched
            while not queue.empty():
                case = queue.get_nowait()
                started = time.perf_counter()
                try:
                    response = await client.post("/rerank", json=case.body())
                except httpx.TimeoutException:
                    outcomes["timeout"] += 1
                    continue
                except httpx.ConnectError:
                    outcomes["refused"] += 1  # the drained server closed its socket
                    continue
                except httpx.RemoteProtocolError:
                    # sent on a keep-alive connection the stopping server was closing: never read, never scored
                    outcomes["disconnected"] += 1
                    continue
                except httpx.TransportError as exc:
                    outcomes[type(exc).__name__] += 1
                    continue
                status = str(response.status_code)
                outcomes[status] += 1
                by_status.setdefault(status, []).append(time.perf_counter() - started)
                if response.status_code == 200:
                    mismatched += not check_response(case, response.json(), tolerance)[0]
                    if not first_ok.is_set():
                        first_ok.set()
                        if on_first_ok is not None:
                            on_first_ok()

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), deadline_s)
        wall = time.perf_counter() - started
    return {
        "requests": len(cases),
        "concurrency": concurrency,
        "outcomes": dict(outcomes),
        "mismatched": mismatched,
        "wall_s": wall,
        "latency_by_status": {status: percentiles(values) for status, values in sorted(by_status.items())},
    }


# -- report ---------------------------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown(doc: dict[str, Any]) -> str:
    env, cfg, inproc = doc["environment"], doc["config"], doc["in_process"]
    lines = [
        "# crossonnx serve: load test",
        "",
        f"Model `{cfg['model_dir']}` ({cfg['precision']}), {cfg['requests']} `/rerank` requests per level, "
        f"{cfg['docs'][0]}-{cfg['docs'][1]} passages of 40-150 words each ({doc['levels'][0]['pairs']} pairs); "
        f"server and load generator on the same machine over loopback. Generated by `benchmarks/load_test.py`"
        f"{' --quick' if cfg['quick'] else ''}.",
        "",
        f"CPU: {describe_cpu(env['cpu'])}",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v != "-"),
        "",
        "| concurrency | ok | lost | mismatched | p50 ms | p95 ms | p99 ms | requests/s | pairs/s | "
        "pairs per model call | max abs diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in doc["levels"]:
        lines.append(
            f"| {level['concurrency']} | {level['statuses'].get('200', 0)} | {level['lost']} | {level['mismatched']} "
            f"| {_ms(level['p50_ms'])} | {_ms(level['p95_ms'])} | {_ms(level['p99_ms'])} "
            f"| {level['requests_per_s']:.2f} | {level['pairs_per_s']:.1f} "
            f"| {level.get('mean_pairs_per_model_call', 0):.1f} | {level['max_abs_diff']:.2g} |"
        )
    ratio = doc["summary"]["ratio_c32_to_in_process"]
    lines += [
        "",
        f"In process, `CrossEncoder.predict` on the same {inproc['pairs']} pairs: {inproc['pairs_per_s']:.1f} pairs/s "
        f"all at once, {inproc['per_request_pairs_per_s']:.1f} pairs/s request by request. Server at concurrency 32: "
        f"{ratio:.0%} of all-at-once (target {TARGET_RATIO:.0%}: "
        f"{'met' if doc['summary']['target_met'] else 'not met'}).",
        "",
        "Server memory (KiB): " + ", ".join(f"{k} {v}" for k, v in doc["server_memory"].items()),
        "",
        "## Overload and drain",
        "",
        f"A server with `--max-queue-pairs {doc['overload']['max_queue_pairs']}` pushed with "
        f"{doc['overload']['flood']['requests']} requests at concurrency {doc['overload']['flood']['concurrency']}, "
        "then SIGTERM while another burst was running.",
        "",
        "| phase | outcomes | mismatched | latency by status (p50 / p99 / max ms) |",
        "|---|---|---:|---|",
    ]
    for phase in ("flood", "drain"):
        result = doc["overload"][phase]
        latency = "; ".join(f"{s}: {_ms(p['p50_ms'])} / {_ms(p['p99_ms'])} / {_ms(p['max_ms'])}"
                            for s, p in result["latency_by_status"].items())
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(result["outcomes"].items()))
        lines.append(f"| {phase} | {outcomes} | {result['mismatched']} | {latency} |")
    lines += [
        "",
        f"Drain: exit status {doc['overload']['exit_status']}; "
        f"overload answered without timeouts: {'yes' if doc['summary']['overload_ok'] else 'NO'}.",
        "",
    ]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=str(ROOT / "models" / "stsb-minilm-l6"))
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--requests", type=int, default=None, help="requests per concurrency level (default 128)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads, server and in process")
    parser.add_argument("--tolerance", type=float, default=None, help="max abs score difference (default by precision)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="time limit of each phase")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few requests, short passages lists")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    return parser.parse_args(argv)


def run(args: argparse.Namespace, requests: int, docs: tuple[int, int], tolerance: float, logs: Path) -> dict:
    """All phases; the servers' logs go to ``logs`` (printed when a server fails)."""
    cases = build_cases(requests, docs)
    encoder = CrossEncoder(args.model_dir, precision=args.precision, threads=args.threads)
    print(f"in process: scoring {sum(len(c.texts) for c in cases)} pairs ...", flush=True)
    in_process = score_in_process(encoder, cases)
    print(f"in process: {in_process['pairs_per_s']:.1f} pairs/s", flush=True)

    server = ServerProcess(args.model_dir, args.precision, args.threads, [], logs / "server.log")
    levels = []
    try:
        server.wait_healthy()
        asyncio.run(load_level(server.url, cases[: min(4, len(cases))], 2, tolerance, args.max_seconds))  # warm-up
        memory_before = server.memory()
        for concurrency in CONCURRENCY:
            before = scrape(server.url)
            level = asyncio.run(load_level(server.url, cases, concurrency, tolerance, args.max_seconds))
            after = scrape(server.url)
            calls = after["crossonnx_batch_pairs_count"] - before["crossonnx_batch_pairs_count"]
            level["model_calls"] = calls
            level["mean_pairs_per_model_call"] = (
                (after["crossonnx_batch_pairs_sum"] - before["crossonnx_batch_pairs_sum"]) / calls if calls else 0.0
            )
            levels.append(level)
            print(f"concurrency {concurrency:3d}: {level['requests_per_s']:.2f} req/s, {level['pairs_per_s']:.1f} "
                  f"pairs/s, p50 {_ms(level['p50_ms'])} ms, p99 {_ms(level['p99_ms'])} ms, lost {level['lost']}, "
                  f"mismatched {level['mismatched']}, max diff {level['max_abs_diff']:.2g}", flush=True)
        memory_after = server.memory()
    finally:
        main_exit = server.stop()

    # overload: room for about two requests; four times as many clients as the largest level, twice the requests
    queue_pairs = 2 * docs[1]
    flood_cases = (cases * 4)[: max(2 * requests, 48)]
    overload = ServerProcess(args.model_dir, args.precision, args.threads,
                             ["--max-queue-pairs", str(queue_pairs), "--max-texts-per-request", str(docs[1])],
                             logs / "overload.log")
    try:
        overload.wait_healthy()
        flood = asyncio.run(burst(overload.url, flood_cases, 128, tolerance, args.max_seconds))
        print(f"overload: {flood['outcomes']}", flush=True)
        drain = asyncio.run(burst(overload.url, flood_cases, 32, tolerance, args.max_seconds,
                                  on_first_ok=overload.terminate))
        exit_status = overload.wait()
        print(f"drain: {drain['outcomes']}, exit status {exit_status}", flush=True)
    finally:
        overload.stop()

    c32 = next(level for level in levels if level["concurrency"] == 32)
    ratio = c32["pairs_per_s"] / in_process["pairs_per_s"]
    # the flood is answered 200 or 429, every time; the drain also 503 or a refused / closed connection
    overload_ok = (
        set(flood["outcomes"]) <= {"200", "429"} and flood["outcomes"].get("429", 0) > 0
        and set(drain["outcomes"]) <= {"200", "429", "503", "refused", "disconnected"}
        and flood["mismatched"] == 0 and drain["mismatched"] == 0 and exit_status == 0
    )
    if exit_status != 0 or main_exit != 0:
        print((logs / "server.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        print((logs / "overload.log").read_text(errors="replace")[-4000:], file=sys.stderr)
    doc = {
        "environment": {"cpu": cpu_info(), "versions": library_versions(
            (*LIBRARIES, "starlette", "uvicorn", "h11", "httptools", "uvloop", "prometheus-client", "httpx"))},
        "config": {"model_dir": args.model_dir, "precision": args.precision, "requests": requests, "docs": docs,
                   "threads": args.threads or encoder.threads, "tolerance": tolerance, "quick": args.quick,
                   "concurrency": list(CONCURRENCY)},
        "in_process": in_process,
        "levels": levels,
        "server_memory": {"rss_before_kib": memory_before["VmRSS"], "rss_after_kib": memory_after["VmRSS"],
                          "peak_rss_kib": memory_after["VmHWM"]},
        "server_exit_status": main_exit,
        "overload": {"max_queue_pairs": queue_pairs, "flood": flood, "drain": drain, "exit_status": exit_status},
        "summary": {
            "lost": sum(level["lost"] for level in levels),
            "mismatched": sum(level["mismatched"] for level in levels),
            "ratio_c32_to_in_process": ratio,
            "target_met": ratio >= TARGET_RATIO,
            "overload_ok": overload_ok,
        },
    }
    return doc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    requests = args.requests or (12 if args.quick else 128)
    docs = (4, 8) if args.quick else (16, 32)
    tolerance = args.tolerance if args.tolerance is not None else TOLERANCE.get(args.precision, 1e-5)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="crossonnx-load-") as logs:
        doc = run(args, requests, docs, tolerance, Path(logs))
    (out_dir / "load_test.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (out_dir / "load_test.md").write_text(markdown(doc), encoding="utf-8")
    print(f"wrote {out_dir / 'load_test.json'} and {out_dir / 'load_test.md'}")
    print(json.dumps(doc["summary"]))
    summary = doc["summary"]
    return 0 if summary["lost"] == 0 and summary["mismatched"] == 0 and summary["overload_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
