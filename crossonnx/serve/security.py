"""The API key: ``Authorization: Bearer KEY`` on every endpoint but ``/health``, compared in constant time.

Text Embeddings Inference's ``--api-key`` guards every route of its API port, ``/health`` and ``/metrics``
included (its Prometheus exporter also listens, without a key, on a second port). crossonnx has one port: the key
guards the scoring endpoints, ``/info``, ``/metrics`` and unknown paths; ``/health`` stays open for load balancers.

Plain ASGI and the standard library only: ``crossonnx serve``'s argument parsing imports this module, and must
work (and say which extra to install) where Starlette is not installed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

API_KEY_ENV = "CROSSONNX_API_KEY"
OPEN_PATHS = ("/health",)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def check_api_key(key: str, source: str = "the API key") -> str:
    """``key`` if it can be sent in an Authorization header (visible ASCII, no spaces), else ValueError."""
    if not key:
        raise ValueError(f"{source} is empty; give a key, or unset it to serve without one")
    if not all("!" <= char <= "~" for char in key):
        raise ValueError(f"{source} must be visible ASCII without spaces (it travels in an HTTP header)")
    return key


def resolve_api_key(flag: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The key from ``--api-key``, else from ``$CROSSONNX_API_KEY`` (which keeps it out of the process list)."""
    if flag is not None:
        return check_api_key(flag, "--api-key")
    env = os.environ if environ is None else environ
    if API_KEY_ENV in env:
        return check_api_key(env[API_KEY_ENV], f"${API_KEY_ENV}")
    return None


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def _bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class ApiKeyMiddleware:
    """401 with ``WWW-Authenticate: Bearer`` unless the request carries the key (or asks for an open path)."""

    def __init__(self, app: ASGIApp, api_key: str | None, open_paths: Iterable[str] = OPEN_PATHS):
        self.app = app
        # digests of equal length: compare_digest then takes the same time whatever the key's length
        self._digest = _digest(check_api_key(api_key).encode("ascii")) if api_key is not None else None
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._digest is None or scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope.get("headers", ()))
        if token is not None and hmac.compare_digest(_digest(token), self._digest):
            await self.app(scope, receive, send)
            return
        problem = "has no API key" if token is None else "has a wrong API key"
        await _send_unauthorized(send, f"the request {problem}; send the header Authorization: Bearer <key>")


async def _send_unauthorized(send: Send, message: str) -> None:
    """The 401 in the server's JSON error format, written as plain ASGI messages (no web framework needed)."""
    body = json.dumps({"error": message, "error_type": "Unauthorized", "field": None},
                      ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    headers = [(b"content-length", str(len(body)).encode("ascii")), (b"content-type", b"application/json"),
               (b"www-authenticate", b"Bearer")]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
