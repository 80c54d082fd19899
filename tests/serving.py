"""A real `crossonnx serve` app on uvicorn, on 127.0.0.1 and a free port, in a background thread (serve tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from crossonnx.encoder import CrossEncoder
from crossonnx.serve.app import create_app
from crossonnx.serve.limits import ServeLimits
from crossonnx.serve.server import DrainingServer, make_server

WAIT_S = 30.0
ROOT = Path(__file__).resolve().parents[1]
JSON = {"content-type": "application/json"}
# small enough that the limits are reached cheaply; the body limit is over LARGE_BODY_BYTES (parsed off the loop)
SMALL_LIMITS = ServeLimits(max_texts_per_request=16, max_text_chars=4000, max_queue_pairs=256,
                           max_body_bytes=1_500_000)


class Running:
    """A server running in a background thread, and its base URL."""

    def __init__(self, server: DrainingServer, thread: threading.Thread, url: str, port: int):
        self.server, self.thread, self.url, self.port = server, thread, url, port
        self.state = server.state

    def post(self, path: str, body: object = None, content: bytes | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        """POST ``body`` as JSON, or raw ``content`` sent as ``application/json`` unless ``headers`` say else."""
        if content is not None:
            headers = {**JSON, **(headers or {})}
        return httpx.post(self.url + path, json=body, content=content, headers=headers, timeout=WAIT_S)

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(self.url + path, headers=headers, timeout=WAIT_S)


@contextmanager
def cli_server(args: list[str], env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``crossonnx serve ARGS`` in its own process on a free loopback port, once /health answers: (url, process).

    The process is killed on exit if the test did not stop it; its stdout+stderr stay readable."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "crossonnx.cli", "serve", *args, "--port", str(port)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(process.stdout.read().decode())  # type: ignore[union-attr]
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        until(healthy)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


@contextmanager
def serving(encoder: CrossEncoder, limits: ServeLimits, runner=None, api_key: str | None = None) -> Iterator[Running]:
    """uvicorn on 127.0.0.1 and a free port (bound here), in a thread; stopped (if still running) on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = make_server(create_app(encoder, limits, runner=runner, api_key=api_key), log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        until(lambda: server.started or not thread.is_alive())
        assert server.started, "the server did not start"
        port = sock.getsockname()[1]
        yield Running(server, thread, f"http://127.0.0.1:{port}", port)
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        sock.close()
