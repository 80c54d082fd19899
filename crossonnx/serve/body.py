"""Request bodies: the JSON content type, the size limit, and finishing a body that an early answer left unread.

A server that answers before the client has sent its whole body (413 for a body over the limit, 401, 415, 429,
503) and then closes the connection makes the kernel reset it: a client that writes its whole body before reading
(Python's urllib and http.client, most synchronous clients) then sees "connection reset" instead of the answer.
``FinishBodyMiddleware`` sends the answer at once, then reads and drops the rest of the body (never holding it),
at most ``DISCARD_BYTES`` or ``DISCARD_SECONDS``: what nginx calls a lingering close. A large unread body (over
``SMALL_BODY_BYTES``, or chunked) also gets ``Connection: close``, so the connection ends after that bound; a small
one is already buffered by the server, and its connection stays open for the next request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request

from crossonnx.serve.schema import ApiError, too_large

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DISCARD_BYTES = 1 << 30  # the most of an unread body read and dropped after an early answer
DISCARD_SECONDS = 30.0  # and for at most this long (nginx's lingering_time)
SMALL_BODY_BYTES = 1 << 16  # uvicorn buffers this much of a body before it stops reading


def is_json_media_type(content_type: str | None) -> bool:
    """axum's ``Json`` rule, which TEI answers with: ``application/json`` or ``application/*+json``, any
    parameters (``charset=utf-8``), any case; a missing header is not JSON."""
    if not content_type:
        return False
    essence = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = essence.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def require_json(request: Request) -> None:
    """415 unless the request says its body is JSON."""
    content_type = request.headers.get("content-type")
    if not is_json_media_type(content_type):
        got = f"got {content_type[:60]!r}" if content_type else "the request has no Content-Type header"
        raise ApiError(415, f"send the body as JSON with the header Content-Type: application/json ({got})",
                       "UnsupportedMediaType")


async def read_body(request: Request, limit: int) -> bytearray:
    """The body, refused with 413 past ``limit`` bytes: before reading any of it when Content-Length says so,
    else as soon as the bytes read pass the limit (a chunked body); at most ``limit`` bytes are ever held."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large(f"the request body is {declared} bytes; this server takes at most {limit}", None)
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > limit:
            raise too_large(f"the request body is over {limit} bytes, the most this server takes", None)
        body += chunk
    return body


def _declared_body(scope: Scope) -> int:
    """0 without a body, else its declared length (``SMALL_BODY_BYTES + 1`` for a chunked one)."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding":
            return SMALL_BODY_BYTES + 1
        if name == b"content-length":
            value = value.strip()
            return int(value) if value.isdigit() else SMALL_BODY_BYTES + 1
    return 0


class FinishBodyMiddleware:
    """Answers that leave part of the request body unread are sent at once; the rest of the body is then read and
    dropped (bounded), so that the client receives them; a large body's connection is closed afterwards."""

    def __init__(self, app: ASGIApp, discard_bytes: int = DISCARD_BYTES, discard_seconds: float = DISCARD_SECONDS):
        self.app = app
        self.discard_bytes = discard_bytes
        self.discard_seconds = discard_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _declared_body(scope) if scope["type"] == "http" else 0
        if not declared:
            await self.app(scope, receive, send)
            return
        unread, large = True, declared > SMALL_BODY_BYTES

        async def receive_and_watch() -> Message:
            nonlocal unread
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                unread = False
            return message

        async def send_then_finish(message: Message) -> None:
            if not unread:
                await send(message)
            elif message["type"] == "http.response.start" and large:
                await send({**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]})
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                await send({**message, "more_body": True})  # the client has the whole answer now
                await self._discard(receive)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await send(message)

        await self.app(scope, receive_and_watch, send_then_finish)

    async def _discard(self, receive: Receive) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.discard_seconds
        dropped = 0
        while dropped <= self.discard_bytes:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            dropped += len(message.get("body", b""))
