"""Prometheus metrics of one server, in its own registry (several apps can live in one process), and the ASGI
middleware that counts requests by endpoint and status."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from crossonnx.serve.batcher import BatchReport, DynamicBatcher

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PAIR_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServeMetrics:
    """The server's counters, histograms and gauges."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("crossonnx_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("crossonnx_request_latency_seconds", "HTTP request latency by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("crossonnx_rejected", "Scoring requests refused before scoring (shed load)",
                                ["reason"], registry=r)
        self.request_pairs = Histogram("crossonnx_request_pairs", "Pairs per accepted scoring request",
                                       buckets=PAIR_BUCKETS, registry=r)
        self.batch_pairs = Histogram("crossonnx_batch_pairs", "Pairs per merged model call",
                                     buckets=PAIR_BUCKETS, registry=r)
        self.batch_requests = Histogram("crossonnx_batch_requests", "Requests merged into one model call",
                                        buckets=PAIR_BUCKETS, registry=r)
        self.batch_tokens = Histogram("crossonnx_batch_tokens", "Tokens (after truncation) per merged model call",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.batch_seconds = Histogram("crossonnx_batch_seconds", "Seconds per merged model call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("crossonnx_queue_wait_seconds", "Seconds a request waited for the model",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.batch_errors = Counter("crossonnx_batch_errors", "Model calls that raised", registry=r)
        self.non_finite = Counter("crossonnx_non_finite", "Scoring requests refused because the model's output was "
                                  "NaN or infinite (e.g. fp16 overflow)", registry=r)
        self.queue_pairs = Gauge("crossonnx_queue_pairs", "Pairs waiting for the model", registry=r)
        self.queue_requests = Gauge("crossonnx_queue_requests", "Requests waiting for the model", registry=r)
        self.running_pairs = Gauge("crossonnx_running_pairs", "Pairs in the model call now running", registry=r)
        self.inflight = Gauge("crossonnx_inflight_requests", "Scoring requests being handled", registry=r)
        self.draining = Gauge("crossonnx_draining", "1 while the server drains before shutting down", registry=r)

    def watch(self, batcher: DynamicBatcher) -> None:
        """Read the queue gauges from ``batcher`` at scrape time."""
        self.queue_pairs.set_function(lambda: batcher.queued_pairs)
        self.queue_requests.set_function(lambda: batcher.queued_requests)
        self.running_pairs.set_function(lambda: batcher.running_pairs)

    def on_batch(self, report: BatchReport) -> None:
        """The batcher's callback (worker thread; prometheus_client is thread-safe)."""
        self.batch_pairs.observe(report.pairs)
        self.batch_requests.observe(report.requests)
        self.batch_seconds.observe(report.seconds)
        for wait in report.queue_waits:
            self.queue_wait.observe(wait)
        if report.failed:
            self.batch_errors.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request by endpoint (known paths, else "other") and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, endpoints: Iterable[str]):
        self.app = app
        self.metrics = metrics
        self.endpoints = frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"
        status = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            self.metrics.requests.labels(endpoint, str(status)).inc()
