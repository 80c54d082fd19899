"""Running the app on uvicorn with a graceful drain on SIGTERM / SIGINT.

On the first signal the server keeps listening but answers new scoring requests with 503 (so that a load balancer
retries elsewhere instead of seeing refused connections), waits until the requests in flight are answered (at
most ``limits.drain_timeout`` seconds), then lets uvicorn shut down: close the socket, finish open connections,
run the lifespan shutdown (which stops the inference thread). A drained shutdown exits with status 0. A second
signal skips the drain; a third SIGINT forces the exit (uvicorn's behaviour).
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from crossonnx.serve.app import ServeState

logger = logging.getLogger("crossonnx.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain phase before its own graceful shutdown."""

    def __init__(self, config: uvicorn.Config, state: ServeState):
        super().__init__(config)
        self.state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler (uvicorn installs it on the main thread); tests may call it from any thread."""
        if self._loop is None or self.state.draining or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self.state.begin_drain()
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        timeout = self.state.limits.drain_timeout
        logger.info("draining: refusing new requests, waiting for %d in flight", self.state.inflight)
        if not await self.state.wait_idle(timeout):
            logger.warning("drain timeout (%.0f s): %d requests still in flight", timeout, self.state.inflight)
        self.should_exit = True


def make_server(app: Starlette, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info") -> DrainingServer:
    """A ``DrainingServer`` for an app made by ``create_app``; call ``.run()`` (or ``.run(sockets=[sock])``)."""
    state: ServeState = app.state.serve
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=max(1, math.ceil(state.limits.drain_timeout)),
        access_log=log_level in ("debug", "trace"),
        proxy_headers=False,  # X-Forwarded-For/-Proto are not trusted, from any address (uvicorn trusts 127.0.0.1)
    )
    return DrainingServer(config, state)
