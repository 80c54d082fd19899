"""Server soak: `crossonnx serve` at saturation for minutes, every response checked, a SIGKILL and restart midway.

    python benchmarks/server_soak.py                        # the reference model, 10 minutes per variant
    python benchmarks/server_soak.py --model-dir DIR --minutes 0.3 --clients 2 --sample-s 5 --out /tmp/x  # smoke

For each variant (provider, precision) the real server (``python -m crossonnx.cli serve``) runs on a free loopback
port and ``--clients`` async httpx clients send requests back to back for ``--minutes``: a query and 1-64 passages
of 1-300 words (STSb sentences), across TEI ``/rerank``, Cohere ``/v1/rerank`` and ``/v2/rerank`` (some with
``top_n``, some asking for their texts back). The requests come from a fixed pool whose expected scores in-process
``CrossEncoder.predict`` computed before the run, so checking a response costs nothing during it: status, indices,
order, texts, and scores within the precision's tolerance (int8's dynamic activation scales follow the batch, so a
request merged with others scores slightly differently from ``predict`` on it alone). A wrong score is counted
apart from errors (refused or dropped connections, 4xx/5xx), and a run with one is a failure.

Every ``--sample-s`` seconds: the server's resident memory (VmRSS), p50/p99 latency of the responses completed in
that window, requests/s, pairs/s and errors. At the middle of the run the server is SIGKILLed and started again on
the same port while the clients keep going: they see errors while it is down, then answers; the report gives the
time until /health answers again, until the first answer, and the errors in between.

The default variants are ONNX Runtime int8 and OpenVINO bf16 where the CPU has bf16 arithmetic; elsewhere OpenVINO
int8-dynamic (or fp32 when the folder lacks it). Writes server_soak.{json,md,png} under --out.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENDPOINTS = ("/rerank", "/v1/rerank", "/v2/rerank")
# Largest |server score - predict score| a response may show, per precision. int8 (ONNX Runtime) quantizes
# activations with scales computed over the whole model batch, which the server merges from several requests.
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 2e-2, "int8": 5e-2, "int8-static": 2e-2, "int8-dynamic": 2e-2}
MAX_DOCS = 64
MAX_WORDS = 300
REQUEST_TIMEOUT_S = 300.0
STARTUP_TIMEOUT_S = 300.0
BACKOFF_S = 0.1  # a client's pause after a refused or dropped connection, as a retrying client would
RSS_EVERY_S = 5.0  # memory samples for the plot; the table uses the one at each window's end
SHOWN_WRONG = 10  # wrong responses described in the JSON


# -- the request pool -----------------------------------------------------------------------------------------
@dataclass
class Case:
    """One request of the pool: endpoint, body (serialized once), and the scores ``predict`` gives its pairs."""

    endpoint: str
    query: str
    documents: list[str]
    top_n: int | None = None
    return_texts: bool = False
    body: bytes = b""
    expected: np.ndarray = field(default_factory=lambda: np.empty(0))


def sentences() -> list[str]:
    from crossonnx.stsb import load_stsb

    rows = load_stsb("dev") + load_stsb("test")
    return [r.sentence1 for r in rows] + [r.sentence2 for r in rows]


def build_pool(count: int, seed: int, max_docs: int = MAX_DOCS) -> list[Case]:
    """``count`` requests (deterministic): a 2-12 word query, 1-``max_docs`` passages of 1-300 words, endpoints in
    turn; a third of the Cohere requests ask for ``top_n``, a third of all ask for their texts back."""
    pool_sentences = sentences()
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        endpoint = ENDPOINTS[i % len(ENDPOINTS)]
        query = " ".join(rng.choice(pool_sentences).split()[: rng.randint(2, 12)])
        documents = []
        for _ in range(rng.randint(1, max_docs)):
            words: list[str] = []
            target = rng.randint(1, MAX_WORDS)
            while len(words) < target:
                words += rng.choice(pool_sentences).split()
            documents.append(" ".join(words[:target]))
        top_n = rng.randint(1, len(documents)) if endpoint != "/rerank" and rng.random() < 1 / 3 else None
        return_texts = endpoint != "/v2/rerank" and rng.random() < 1 / 3  # v2 has no return_documents
        case = Case(endpoint, query, documents, top_n, return_texts)
        case.body = json.dumps(request_body(case, rng)).encode()
        cases.append(case)
    return cases


def request_body(case: Case, rng: random.Random) -> dict[str, Any]:
    """The JSON body ``case.endpoint`` takes; v1 gets some documents as ``{"text": ...}`` objects."""
    if case.endpoint == "/rerank":
        return {"query": case.query, "texts": case.documents, "return_text": case.return_texts}
    body: dict[str, Any] = {"model": "soak", "query": case.query}
    if case.endpoint == "/v1/rerank":
        body["documents"] = [{"text": d} if rng.random() < 0.5 else d for d in case.documents]
        body["return_documents"] = case.return_texts
    else:
        body["documents"] = case.documents
    if case.top_n is not None:
        body["top_n"] = case.top_n
    return body


def fill_expected(model_dir: Path, provider: str, precision: str, threads: int | None,
                  cases: list[Case]) -> dict[str, float]:
    """Score each case in process, request by request (``CrossEncoder.predict``); the engine is released after."""
    from crossonnx import CrossEncoder

    started = time.perf_counter()
    encoder = CrossEncoder(model_dir, provider=provider, precision=precision, threads=threads)
    for case in cases:
        case.expected = np.asarray(encoder.predict([(case.query, d) for d in case.documents]), dtype=np.float64)
    seconds = time.perf_counter() - started
    del encoder
    gc.collect()
    scores = np.concatenate([c.expected for c in cases])
    return {"seconds": round(seconds, 1), "pairs": int(scores.size), "score_std": float(scores.std()),
            "non_finite": int((~np.isfinite(scores)).sum())}


# -- checking a response --------------------------------------------------------------------------------------
def check(case: Case, payload: Any, tolerance: float) -> tuple[str | None, float]:
    """(None or what is wrong, largest score difference) for a 200 answer to ``case``: every index it must hold
    once, scores finite and within ``tolerance`` of ``predict``'s, sorted highest first, the texts asked for, and
    for ``top_n`` the best documents (up to the tolerance)."""
    if case.endpoint == "/rerank":
        items, key, text_key = payload, "score", "text"
    else:
        items = payload.get("results") if isinstance(payload, dict) else None
        key, text_key = "relevance_score", "document"
    if not isinstance(items, list):
        return "not a list of results", math.inf
    n = len(case.documents)
    want = min(case.top_n, n) if case.top_n is not None else n
    if len(items) != want:
        return f"{len(items)} results, expected {want}", math.inf
    try:
        indices = [int(item["index"]) for item in items]
        scores = np.asarray([float(item[key]) for item in items], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed result: {exc!r}", math.inf
    if len(set(indices)) != len(indices) or not all(0 <= i < n for i in indices):
        return f"indices {sorted(indices)[:8]}... not distinct documents of {n}", math.inf
    if not np.isfinite(scores).all():
        return "a score is not finite", math.inf
    diff = float(np.max(np.abs(scores - case.expected[indices])))
    if diff > tolerance:
        worst = int(np.argmax(np.abs(scores - case.expected[indices])))
        return (f"document {indices[worst]}: score {scores[worst]:.6f}, predict {case.expected[indices[worst]]:.6f}",
                diff)
    if np.any(np.diff(scores) > 0):
        return "results not sorted by score", diff
    if case.top_n is not None and want < n:
        left_out = np.delete(case.expected, indices)
        if left_out.max() > case.expected[indices].min() + 2 * tolerance:
            return "top_n left out a better document", diff
    if case.return_texts:
        for index, item in zip(indices, items, strict=True):
            text = item.get(text_key)
            text = text.get("text") if isinstance(text, dict) else text
            if text != case.documents[index]:
                return f"result {index} returned another document's text", diff
    return None, diff


# -- the server -----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` in MB (None once it is gone)."""
    from crossonnx.bench.machine import process_memory_mb

    return process_memory_mb("VmRSS", pid)


class Server:
    """``crossonnx serve`` as a subprocess on one loopback port, which ``restart`` keeps."""

    def __init__(self, model_dir: Path, provider: str, precision: str, threads: int | None, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "crossonnx.cli", "serve", str(model_dir), "--port", str(self.port),
                        "--provider", provider, "--precision", precision, "--log-level", "warning"]
        if threads:
            self.command += ["--threads", str(threads)]
        self.log_path = log
        self.starts = 0
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            return subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    async def wait_ready(self) -> None:
        """Poll /health until it answers 200."""
        import httpx

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited ({self.process.returncode}): {self.log_tail()}")
                try:
                    if (await client.get(self.url + "/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the server did not answer /health in {STARTUP_TIMEOUT_S:.0f} s: {self.log_tail()}")

    async def kill_and_restart(self) -> None:
        """SIGKILL, wait for the process to go, start a new one on the same port (not waiting for it)."""
        self.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.process.wait)
        self.process = self._start()

    def stop(self) -> int | None:
        """SIGTERM (the graceful drain) and wait; SIGKILL after a minute. The exit status of the graceful stop."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


# -- the run --------------------------------------------------------------------------------------------------
@dataclass
class Record:
    """One request: when it was sent and answered (seconds from the start), its outcome, its pairs."""

    sent: float
    done: float
    latency: float
    outcome: str  # "ok", "wrong", or an error: "refused", "disconnected", "timeout", "<status> <error_type>"
    pairs: int


def error_kind(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.ConnectError):
        return "refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return "disconnected"
    return type(exc).__name__


def sample_times(seconds: float, width: float) -> list[float]:
    """When to read the server's memory: every RSS_EVERY_S seconds (the plot) and at each window's end (the table)."""
    seconds, every = round(seconds, 3), min(RSS_EVERY_S, width)
    times = {round(i * every, 3) for i in range(int(seconds / every) + 1)}
    times |= {round(min(i * width, seconds), 3) for i in range(1, math.ceil(seconds / width - 1e-9) + 1)}
    return sorted(t for t in times if t <= seconds)


async def soak(server: Server, cases: list[Case], clients: int, seconds: float, width: float, tolerance: float,
               seed: int) -> dict[str, Any]:
    """``clients`` clients sending ``cases`` in random order for ``seconds``; the server is SIGKILLed and restarted
    at the middle; memory read at ``sample_times``. Returns every request's record, the memory samples, the
    restart's times and the wrong answers."""
    import httpx

    records: list[Record] = []
    wrong: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    restart: dict[str, Any] = {}
    max_diff = 0.0
    started = time.monotonic()
    end = started + seconds
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    def now() -> float:
        return time.monotonic() - started

    async with httpx.AsyncClient(base_url=server.url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def worker(index: int) -> None:
            nonlocal max_diff
            rng = random.Random(seed * 1000 + index)
            while time.monotonic() < end:
                case = rng.choice(cases)
                sent = now()
                try:
                    response = await client.post(case.endpoint, content=case.body, headers=headers)
                except httpx.HTTPError as exc:
                    done = now()
                    records.append(Record(sent, done, done - sent, error_kind(exc), len(case.documents)))
                    await asyncio.sleep(BACKOFF_S)
                    continue
                done = now()
                if response.status_code != 200:
                    try:
                        payload = response.json()
                    except ValueError:
                        payload = None
                    kind = str(payload.get("error_type", "")) if isinstance(payload, dict) else ""
                    records.append(Record(sent, done, done - sent, f"{response.status_code} {kind}".strip(),
                                          len(case.documents)))
                    continue
                try:
                    problem, diff = check(case, response.json(), tolerance)
                except ValueError:
                    problem, diff = "the body is not JSON", math.inf
                if math.isfinite(diff):
                    max_diff = max(max_diff, diff)
                if problem is not None and len(wrong) < SHOWN_WRONG:
                    wrong.append({"at_s": round(done, 2), "endpoint": case.endpoint, "documents": len(case.documents),
                                  "top_n": case.top_n, "problem": problem})
                records.append(Record(sent, done, done - sent, "ok" if problem is None else "wrong",
                                      len(case.documents)))

        async def sample_memory() -> None:
            for at in sample_times(seconds, width):
                await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                memory.append({"at_s": round(at, 2), "pid": server.process.pid,
                               "rss_mb": rss_mb(server.process.pid)})

        async def kill_midway() -> None:
            await asyncio.sleep(max(0.0, started + seconds / 2 - time.monotonic()))
            restart["killed_at_s"] = round(now(), 3)
            restart["old_pid"] = server.process.pid
            await server.kill_and_restart()
            restart["new_pid"] = server.process.pid
            await server.wait_ready()
            restart["ready_at_s"] = round(now(), 3)

        await asyncio.gather(*(worker(i) for i in range(clients)), sample_memory(), kill_midway())
    return {"records": records, "memory": memory, "restart": restart, "wrong": wrong, "max_abs_diff": max_diff}


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 1) if values else None


def windows(records: list[Record], memory: list[dict[str, Any]], seconds: float, width: float,
            killed_at: float | None) -> list[dict[str, Any]]:
    """Per window of ``width`` seconds (by when requests were answered): RSS at its end, p50/p99 latency of its
    answers, requests/s and pairs/s answered correctly, wrong answers, errors by kind, and the restart mark."""
    count = max(1, math.ceil(seconds / width - 1e-9))
    out = []
    for i in range(count):
        lo, hi = i * width, min((i + 1) * width, seconds)
        last = i == count - 1
        inside = [r for r in records if lo <= r.done < hi or (last and r.done >= hi)]
        ok = [r for r in inside if r.outcome == "ok"]
        errors = Counter(r.outcome for r in inside if r.outcome not in ("ok", "wrong"))
        at_end = [m for m in memory if m["at_s"] <= hi + 1e-6]
        span = hi - lo
        out.append({
            "start_s": round(lo, 2), "end_s": round(hi, 2),
            "rss_mb": at_end[-1]["rss_mb"] if at_end else None,
            "p50_ms": percentile_ms([r.latency for r in ok], 50), "p99_ms": percentile_ms([r.latency for r in ok], 99),
            "requests_per_s": round(len(ok) / span, 2), "pairs_per_s": round(sum(r.pairs for r in ok) / span, 1),
            "ok": len(ok), "wrong": sum(r.outcome == "wrong" for r in inside), "errors": dict(errors),
            "restart": killed_at is not None and lo <= killed_at < hi,
        })
    return out


def summarize(run: dict[str, Any], seconds: float, width: float) -> dict[str, Any]:
    """Totals of one variant's run: responses checked, wrong, errors (during the restart and outside it), the
    restart's times, memory growth."""
    records: list[Record] = run["records"]
    restart = dict(run["restart"])
    killed = restart.get("killed_at_s")
    after = sorted((r for r in records if killed is not None and r.sent >= killed and r.outcome == "ok"),
                   key=lambda r: r.done)
    recovered = after[0].done if after else None
    restart["first_answer_at_s"] = round(recovered, 3) if recovered is not None else None
    restart["down_s"] = round(restart["ready_at_s"] - killed, 2) if "ready_at_s" in restart else None
    restart["until_first_answer_s"] = round(recovered - killed, 2) if recovered is not None else None
    restart["answers_after"] = len(after)

    def in_gap(r: Record) -> bool:
        return killed is not None and r.done >= killed and (recovered is None or r.done <= recovered)

    errors = [r for r in records if r.outcome not in ("ok", "wrong")]
    restart["errors"] = dict(Counter(r.outcome for r in errors if in_gap(r)))
    outside = [r for r in errors if not in_gap(r)]
    table = windows(records, run["memory"], seconds, width, killed)
    return {
        "requests": len(records),
        "responses_checked": sum(r.outcome in ("ok", "wrong") for r in records),
        "wrong_scores": sum(r.outcome == "wrong" for r in records),
        "wrong_examples": run["wrong"],
        "max_abs_diff": run["max_abs_diff"],
        "errors": dict(Counter(r.outcome for r in errors)),
        "errors_outside_restart": [{"at_s": round(r.done, 2), "error": r.outcome} for r in outside[:50]],
        "errors_outside_restart_count": len(outside),
        "non_finite_errors": sum(r.outcome.endswith("NonFinite") for r in errors),
        "pairs_per_s": round(sum(r.pairs for r in records if r.outcome == "ok") / seconds, 1),
        "restart": restart,
        "memory": run["memory"],
        "windows": table,
        "rss_growth": rss_growth(table, run["memory"], width, restart),
    }


def rss_growth(table: list[dict[str, Any]], memory: list[dict[str, Any]], width: float,
               restart: dict[str, Any]) -> dict[str, Any]:
    """Relative RSS growth from the end of the first window to the end of the run; and within each server process:
    the first from the end of its first window to its last sample, the restarted one from a window after it was
    ready to the end."""

    def grow(a: float | None, b: float | None) -> float | None:
        return round((b - a) / a, 4) if a and b else None

    first = table[0]["rss_mb"]
    old = [m for m in memory if m["pid"] == restart.get("old_pid") and m["rss_mb"] is not None]
    new = [m for m in memory if m["pid"] == restart.get("new_pid") and m["rss_mb"] is not None
           and m["at_s"] >= restart.get("ready_at_s", math.inf) + width]
    return {
        "first_window_end_mb": first,
        "end_mb": table[-1]["rss_mb"],
        "overall": grow(first, table[-1]["rss_mb"]),
        "before_kill": grow(first, old[-1]["rss_mb"]) if old else None,
        "after_restart": grow(new[0]["rss_mb"], new[-1]["rss_mb"]) if len(new) > 1 else None,
    }


# -- variants -------------------------------------------------------------------------------------------------
def default_variants(model_dir: Path) -> tuple[list[tuple[str, str]], str]:
    """ONNX Runtime int8 and OpenVINO bf16 where this CPU has bf16, else OpenVINO int8-dynamic (fp32 where the folder
    lacks it); with the reason, for the report."""
    from crossonnx.engines import openvino_installed
    from crossonnx.manifest import load_manifest

    held = set(load_manifest(model_dir).precisions)
    ort = ("cpu", "int8") if "int8" in held else ("cpu", "fp32")
    why = [] if ort[1] == "int8" else ["the folder has no int8, so ONNX Runtime runs fp32"]
    if not openvino_installed():
        return [ort], "; ".join([*why, "OpenVINO is not installed, so no OpenVINO variant"])
    from crossonnx.engines.openvino import has_bf16

    if has_bf16() and "bf16" in held:
        return [ort, ("openvino", "bf16")], "; ".join([*why, "this CPU has bf16 arithmetic: OpenVINO bf16"])
    lacking = ("this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX), so OpenVINO bf16 cannot run here" if not
               has_bf16() else "the folder has no bf16")
    ov = "int8-dynamic" if "int8-dynamic" in held else "fp32"
    reason = ("OpenVINO int8-dynamic (its int8 weights, activations quantized per token) instead" if ov != "fp32"
              else "the folder has no int8-dynamic either: OpenVINO fp32 instead")
    return [ort, ("openvino", ov)], "; ".join([*why, f"{lacking}; {reason}"])


def parse_variants(text: str, model_dir: Path) -> list[tuple[str, str]]:
    """``provider:precision,...``, each one the folder holds and the provider runs (ValueError naming what is not)."""
    from crossonnx.manifest import load_manifest
    from crossonnx.precisions import PRECISIONS

    held = set(load_manifest(model_dir).precisions)
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        provider, _, precision = item.partition(":")
        if precision not in PRECISIONS or provider not in PRECISIONS[precision].providers:
            raise ValueError(f"{item}: not a provider:precision crossonnx runs")
        if precision not in held:
            raise ValueError(f"{item}: the folder {model_dir} has no {precision} (it has {', '.join(sorted(held))})")
        out.append((provider, precision))
    if not out:
        raise ValueError("no variants given")
    return out


ENGINE_NAMES = {"cpu": "ONNX Runtime", "openvino": "OpenVINO"}


def variant_name(row: dict[str, Any]) -> str:
    return f"{ENGINE_NAMES.get(row['provider'], row['provider'])} {row['precision']}"


# -- report ---------------------------------------------------------------------------------------------------
def _v(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def markdown(doc: dict[str, Any]) -> str:
    from crossonnx.bench.report import result_header

    cfg = doc["config"]
    lines = result_header("crossonnx serve: soak at saturation with a SIGKILL and restart", doc)
    tolerances = ", ".join(f"{r['precision']} {r['tolerance']:g}" for r in doc["rows"])
    names = [f"`{r['provider']}:{r['precision']}`" for r in doc["rows"]]
    lines += [
        f"Model `{doc['model']}`; per variant {cfg['minutes']:g} minutes of {cfg['clients']} clients sending requests "
        f"back to back to `crossonnx serve` on loopback (server and clients share the machine's CPUs). Requests: a "
        f"pool of {cfg['pool']} (seed {cfg['seed']}), each a query and 1-{cfg['max_docs']} passages of 1-300 words "
        "from STSb sentences, spread over `/rerank`, `/v1/rerank` and `/v2/rerank` (a third of the Cohere ones with "
        "`top_n`, a third asking for their texts back), sent in random order. Every 200 answer is checked against "
        "in-process `CrossEncoder.predict` on the same request: indices, order, texts, and scores within the "
        f"precision's tolerance ({tolerances}; int8's activation scales follow the batch the server merges). A "
        "wrong score is counted apart from errors. At the middle of each run the server is SIGKILLed and started "
        "again on the same port; the clients keep going (a client pauses "
        f"{BACKOFF_S:g} s after a refused or dropped connection).",
        "",
        f"Variants: {', '.join(names)}. {doc['variants_why']}.",
        "",
        "## Totals",
        "",
        "| variant | responses checked | wrong scores | max abs diff (tolerance) | pairs/s | errors | errors "
        "outside the restart | restart: /health again after | first answer after | RSS growth (first window end "
        "to end) |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        if "error" in r:
            lines.append(f"| {variant_name(r)} | not run: {r['error']} | | | | | | | | |")
            continue
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "none"
        rs = r["restart"]
        lines.append(
            f"| {variant_name(r)} | {r['responses_checked']} | {r['wrong_scores']} | {r['max_abs_diff']:.2g} "
            f"({r['tolerance']:g}) | {r['pairs_per_s']:.1f} | {errors} | {r['errors_outside_restart_count']} "
            f"| {_v(rs.get('down_s'), '.1f')} s | {_v(rs.get('until_first_answer_s'), '.1f')} s "
            f"| {_pct(r['rss_growth']['overall'])} |"
        )
    for r in doc["rows"]:
        if "error" in r:
            continue
        rs, growth = r["restart"], r["rss_growth"]
        gap = ", ".join(f"{k}: {v}" for k, v in sorted(rs["errors"].items())) or "none"
        lines += [
            "",
            f"## {variant_name(r)} (`--provider {r['provider']} --precision {r['precision']}`)",
            "",
            f"Expected scores: {r['expected']['pairs']} pairs in process in {r['expected']['seconds']:.0f} s; their "
            f"standard deviation {r['expected']['score_std']:.2g} against the tolerance {r['tolerance']:g}. "
            f"SIGKILL at {_clock(rs['killed_at_s'])} (pid {rs['old_pid']}); the new server (pid {rs['new_pid']}) "
            f"answered /health {_v(rs.get('down_s'), '.1f')} s later and the first request "
            f"{_v(rs.get('until_first_answer_s'), '.1f')} s later; errors in between: {gap}; "
            f"{rs['answers_after']} answers after it. Server exit status at the end (SIGTERM): {r['exit_status']}.",
            "",
            f"RSS: {_v(growth['first_window_end_mb'], '.0f')} MB at the end of the first window, "
            f"{_v(growth['end_mb'], '.0f')} MB at the end ({_pct(growth['overall'])}); the first process "
            f"{_pct(growth['before_kill'])} until the kill, the restarted one {_pct(growth['after_restart'])} from a "
            "window after it was ready to the end.",
            "",
        ]
        if r["wrong_examples"]:
            lines += ["Wrong answers (first ones): " + "; ".join(
                f"{w['at_s']} s {w['endpoint']} ({w['documents']} documents): {w['problem']}"
                for w in r["wrong_examples"]), ""]
        if r["errors_outside_restart"]:
            lines += ["Errors outside the restart: " + ", ".join(
                f"{e['at_s']} s {e['error']}" for e in r["errors_outside_restart"][:20]), ""]
        lines += [
            "| window | server RSS MB | requests/s | pairs/s | p50 ms | p99 ms | answers checked | wrong | errors | |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for w in r["windows"]:
            errors = ", ".join(f"{k}: {v}" for k, v in sorted(w["errors"].items()))
            note = f"SIGKILL at {_clock(rs['killed_at_s'])}, restart" if w["restart"] else ""
            lines.append(
                f"| {_clock(w['start_s'])}-{_clock(w['end_s'])} | {_v(w['rss_mb'], '.0f')} "
                f"| {w['requests_per_s']:.2f} | {w['pairs_per_s']:.1f} | {_v(w['p50_ms'], '.0f')} "
                f"| {_v(w['p99_ms'], '.0f')} | {w['ok'] + w['wrong']} | {w['wrong']} | {errors} | {note} |"
            )
    lines += [
        "",
        "Latency: seconds from sending a request to its checked answer, answers only (errors are counted, not timed). "
        "A window's RSS is the server's at its end (the restarted process's after the kill). A model output that is "
        "not finite (NaN or infinity) is never sent as a score: the server answers 500 `NonFinite` naming the "
        f"precision and the fix; this run had {sum(r.get('non_finite_errors', 0) for r in doc['rows'])} such.",
        "",
    ]
    return "\n".join(lines)


def plot(doc: dict[str, Any], out: Path) -> Path | None:
    from crossonnx.bench.report import pyplot

    plt = pyplot()
    if plt is None:
        return None
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for index, r in enumerate(r for r in doc["rows"] if "error" not in r):
        color = f"C{index}"
        memory = [m for m in r["memory"] if m["rss_mb"] is not None]
        top.plot([m["at_s"] / 60 for m in memory], [m["rss_mb"] for m in memory], color=color, marker=".",
                 label=variant_name(r))
        table = [w for w in r["windows"] if w["p99_ms"] is not None]
        bottom.plot([w["end_s"] / 60 for w in table], [w["p99_ms"] / 1000 for w in table], color=color, marker="o",
                    label=f"{variant_name(r)} p99")
        bottom.plot([w["end_s"] / 60 for w in table], [w["p50_ms"] / 1000 for w in table], color=color,
                    linestyle=":", label=f"{variant_name(r)} p50")
        rs = r["restart"]
        for axis in (top, bottom):
            axis.axvline(rs["killed_at_s"] / 60, color=color, linestyle="--", linewidth=1)
            if rs.get("ready_at_s"):
                axis.axvspan(rs["killed_at_s"] / 60, rs["ready_at_s"] / 60, color=color, alpha=0.15)
    top.set_ylabel("server resident memory, MB")
    top.set_title("crossonnx serve at saturation; dashed: SIGKILL, shaded: until /health answers again")
    top.legend(fontsize=8)
    bottom.set_ylabel("latency per window, s")
    bottom.set_xlabel("minutes")
    bottom.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


# -- main -----------------------------------------------------------------------------------------------------
def run_variant(model_dir: Path, provider: str, precision: str, cases: list[Case], args: argparse.Namespace,
                tolerance: float, logs: Path) -> dict[str, Any]:
    """Expected scores, then the server and the soak; a row of the report."""
    row: dict[str, Any] = {"provider": provider, "precision": precision, "tolerance": tolerance}
    print(f"{provider}:{precision}: scoring the pool in process ...", flush=True)
    row["expected"] = fill_expected(model_dir, provider, precision, args.threads, cases)
    seconds = args.minutes * 60
    server = Server(model_dir, provider, precision, args.threads, logs / f"{provider}-{precision}.log")
    try:
        asyncio.run(server.wait_ready())
        print(f"{provider}:{precision}: serving on {server.url}; {seconds:.0f} s with {args.clients} clients",
              flush=True)
        run = asyncio.run(soak(server, cases, args.clients, seconds, args.sample_s, tolerance, args.seed))
    except Exception:
        server.stop()
        print(server.log_tail(), file=sys.stderr)
        raise
    row["exit_status"] = server.stop()
    row.update(summarize(run, seconds, args.sample_s))
    print(json.dumps({k: row[k] for k in ("provider", "precision", "responses_checked", "wrong_scores", "errors",
                                          "max_abs_diff", "pairs_per_s")}), flush=True)
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="an exported folder (default: the reference model, exported "
                        "once under --work as benchmarks/soak.py does)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench", help="where the reference export goes")
    parser.add_argument("--variants", help="PROVIDER:PRECISION,... (default: cpu:int8,openvino:bf16 where the CPU has "
                        "bf16, else cpu:int8,openvino:int8-dynamic)")
    parser.add_argument("--minutes", type=float, default=10.0, help="per variant (default 10)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--sample-s", type=float, default=60.0, help="window of the table, seconds (default 60)")
    parser.add_argument("--pool", type=int, default=200, help="distinct requests, reused in random order (default 200)")
    parser.add_argument("--max-docs", type=int, default=MAX_DOCS, help=f"most passages a request (default {MAX_DOCS})")
    parser.add_argument("--threads", type=int, default=None, help="server and in-process threads (default: all CPUs)")
    parser.add_argument("--tolerance", type=float, default=None, help="max abs score difference (default by "
                        "precision)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.clients < 1 or args.sample_s <= 0 or args.pool < 1 or args.max_docs < 1:
        parser.error("--minutes, --sample-s, --clients, --pool and --max-docs must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from crossonnx.bench.machine import library_versions
    from crossonnx.bench.report import write_result
    from lab.machine import cpu_info

    if args.model_dir is None:
        from soak import reference_folder

        args.model_dir = reference_folder(args.work)
    model_dir = args.model_dir
    if args.variants:
        try:
            variants, why = parse_variants(args.variants, model_dir), "as asked (--variants)"
        except ValueError as exc:
            print(f"--variants: {exc}", file=sys.stderr)
            return 2
    else:
        variants, why = default_variants(model_dir)
    cases = build_pool(args.pool, args.seed, args.max_docs)
    rows = []
    with tempfile.TemporaryDirectory(prefix="crossonnx-server-soak-") as logs:
        for provider, precision in variants:
            tolerance = args.tolerance if args.tolerance is not None else TOLERANCE.get(precision, 1e-4)
            rows.append(run_variant(model_dir, provider, precision, cases, args, tolerance, Path(logs)))
    argv_shown = sys.argv[1:] if argv is None else argv
    doc = {
        "command": "python benchmarks/server_soak.py " + " ".join(map(str, argv_shown)),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_info(),
        "libraries": library_versions(("crossonnx", "numpy", "onnxruntime", "openvino", "tokenizers", "starlette",
                                       "uvicorn", "httpx")),
        "model": model_dir.name,
        "variants_why": why[0].upper() + why[1:],
        "config": {"minutes": args.minutes, "clients": args.clients, "sample_s": args.sample_s, "pool": args.pool,
                   "max_docs": args.max_docs, "threads": args.threads, "seed": args.seed,
                   "backoff_s": BACKOFF_S, "model_dir": str(model_dir)},
        "rows": rows,
        "summary": {
            "wrong_scores": sum(r["wrong_scores"] for r in rows),
            "recovered": all(r["restart"]["answers_after"] > 0 for r in rows),
            "errors_outside_restart": sum(r["errors_outside_restart_count"] for r in rows),
        },
    }
    write_result(doc, args.out, "server_soak", markdown, plot)
    print(f"wrote {args.out / 'server_soak.md'}; {json.dumps(doc['summary'])}")
    return 0 if doc["summary"]["wrong_scores"] == 0 and doc["summary"]["recovered"] else 1


if __name__ == "__main__":
    sys.exit(main())
