"""Bounds on what a request may cost the gateway, as pure ASGI middleware around the whole app.

* :class:`BodyLimit` (``DISPATCHER_MAX_BODY_BYTES``): a body larger than the limit is a 413
  ``payload_too_large``, answered before authentication and before JSON parsing, without
  reading past the limit: at once when ``Content-Length`` says so, or as soon as a streamed
  (chunked) body crosses it. The app never sees such a body.
* :class:`ReadDeadline` (``DISPATCHER_REQUEST_READ_TIMEOUT``): a body that has not fully
  arrived by the request's deadline is a 408 ``request_timeout``. The deadline comes from the
  server's protocol when it gives one (counted from the request's first byte), else from
  the end of the headers. Slow or missing *headers* happen before any ASGI app runs; the server's
  protocol bounds those (:mod:`dispatcher.api.connections`).

Both answer with ``Connection: close``, so the server closes the connection after the answer
instead of reading the rest of a body nobody wants. Once one of them has answered, the app
is told the client disconnected and whatever it still sends is dropped.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit", "READ_DEADLINE", "ReadDeadline", "content_length", "read_body", "read_deadline"]

#: ASGI scope extension through which the server's protocol hands over the instant
#: (``time.monotonic()``) by which the request must be whole: ``{"monotonic": float}``.
READ_DEADLINE = "dispatcher.read_deadline"


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = _Guard(send)
        declared = content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await guard.answer(413, "payload_too_large", self._message(f"{declared} bytes"))
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                await guard.answer(413, "payload_too_large", self._message(f"more than {self.max_bytes} bytes"))
                return _DISCONNECT
            return message

        await self.app(scope, guard.wrap(counted), guard.send)

    def _message(self, size: str) -> str:
        return (f"the request body is {size}; the limit is {self.max_bytes} bytes "
                "(DISPATCHER_MAX_BODY_BYTES)")


class ReadDeadline:
    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = _Guard(send)
        deadline = read_deadline(scope, self.seconds)
        body_done = False

        async def bounded() -> Message:
            nonlocal body_done
            if body_done:  # later receives wait for a disconnect (streaming responses): no bound
                return await receive()
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                    message = await receive()
            except TimeoutError:
                await guard.answer(408, "request_timeout", (
                    f"the request body did not arrive within {self.seconds:g} s "
                    "(DISPATCHER_REQUEST_READ_TIMEOUT)"))
                return _DISCONNECT
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, guard.wrap(bounded), guard.send)


_DISCONNECT: Message = {"type": "http.disconnect"}


class _Guard:
    """Lets a middleware answer in the app's place, once, if the app has not started to."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.answered = False
        self.started = False

    def wrap(self, receive: Receive) -> Receive:
        async def guarded() -> Message:
            return _DISCONNECT if self.answered else await receive()
        return guarded

    async def send(self, message: Message) -> None:
        if self.answered:
            return
        self.started = True
        await self._send(message)

    async def answer(self, status: int, code: str, message: str) -> None:
        if self.answered or self.started:  # too late for a status: just stop reading
            self.answered = True
            return
        self.answered = True
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        await self._send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await self._send({"type": "http.response.body", "body": body})


def read_deadline(scope: Scope, seconds: float) -> float:
    """The instant (``time.monotonic()``) by which the request's body must be whole: the one
    the server's protocol handed over (:data:`READ_DEADLINE`), else ``seconds`` from now."""
    handed = (scope.get("extensions") or {}).get(READ_DEADLINE) or {}
    return float(handed.get("monotonic", time.monotonic() + seconds))


async def read_body(scope: Scope, receive: Receive, *, max_bytes: int,
                    seconds: float) -> tuple[bytes, bool, Message | None]:
    """For a lane in front of the app (which reads a body itself): the body as far as it came
    by the request's deadline (:func:`read_deadline`), stopping once past ``max_bytes``.
    Returns (what was read, whether more was still to come, the message that was not a body
    part if one came, such as a disconnect). Past the limit means ``len(body) > max_bytes``."""
    deadline = read_deadline(scope, seconds)
    body = bytearray()
    more = True
    while more and len(body) <= max_bytes:
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                message = await receive()
        except TimeoutError:
            break
        if message["type"] != "http.request":
            return bytes(body), False, message
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return bytes(body), more, None


def content_length(scope: Scope) -> int | None:
    """The request's declared Content-Length, if any."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length before we run
    return None
