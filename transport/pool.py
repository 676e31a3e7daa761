"""A small HTTP/1.1 client for the providers' APIs: keep-alive pools over asyncio, httptools' parser.

Why this exists: the worker calls SES, SNS and FCM once per delivery, and aiohttp's client
spent about 0.06 ms of CPU per call on this machine (session, request and response objects,
multidicts, timers, tracing hooks, the cookie jar), where a protocol that writes the request
in one buffer and parses the answer with httptools (the C parser uvicorn already brings)
spends about 0.015 ms: ``python -m bench.http_client``, docs/BENCHMARKS.md. The providers'
calls need very little of HTTP: one origin each, ``POST`` with a small body, an answer with
``Content-Length`` or chunked, keep-alive, TLS.

What it does:

* one :class:`Origin` per scheme, host and port, from :meth:`HttpClient.origin`; each keeps
  its idle connections (most recently used first) and opens at most ``limit`` at once; a
  request beyond that waits for a free one;
* a request is written in one buffer: the request line, the caller's headers, ``Host`` when
  the caller did not set it, ``User-Agent``, ``Content-Length``; nothing else is added (no
  ``Accept-Encoding``: answers come uncompressed);
* the answer's body by ``Content-Length``, chunked, or until the server closes; at most
  ``max_response`` bytes (:class:`HttpTransportError` ``ResponseTooLarge`` beyond);
* a connection goes back to its pool only after a whole answer that allows keep-alive; one
  idle for ``idle_timeout`` seconds, or closed by the server while idle, is not reused;
* ``timeout`` bounds the whole call: waiting for a connection, connecting, writing, the
  answer. A call that times out or is cancelled closes its connection.

There are no retries here (as in :mod:`transport.aws`): a failure surfaces at once as
:class:`HttpTransportError`, and the caller's retry policy decides.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

__all__ = ["HttpClient", "HttpTransportError", "Origin", "Response"]

USER_AGENT: Final = "notification-dispatcher"
#: What any provider answers fits many times over: SES, SNS and FCM answer in under 2 KiB.
MAX_RESPONSE: Final = 1 << 20


class HttpTransportError(Exception):
    """No usable answer: connection refused or reset, timeout, a malformed or oversized
    answer. ``code`` names which (``TimeoutError``, ``ConnectionRefusedError``, …). As with
    any HTTP client, the request may still have been processed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _TooLarge(Exception):
    """Raised in httptools' body callback; the parser raises it again as the context of its
    ``HttpParserCallbackError``."""


class Headers(dict[str, str]):
    """The answer's headers, looked up without regard to case (names are kept lower-case)."""

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Headers
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, max_response: int) -> None:
        self._max_response = max_response
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Response] | None = None
        self._headers = Headers()
        self._body: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self._delimited = False  # by Content-Length or chunked, rather than by closing
        self._keep_alive = False
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but have its methods)
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # an answer nobody asked for: the connection is not sound
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail("MalformedResponse", "the server switched protocols")
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _TooLarge):
                self.fail("ResponseTooLarge", str(exc.__context__))
            else:
                self.fail("MalformedResponse", str(exc) or type(exc).__name__)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._delimited and exc is None:
            self.on_message_complete()  # an answer delimited by closing the connection
            return
        self._waiter = None
        waiter.set_exception(HttpTransportError(
            type(exc).__name__ if exc else "ServerDisconnectedError",
            str(exc) if exc else "the server closed the connection before answering"))

    # httptools' callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        dict.__setitem__(self._headers, key, text if previous is None else f"{previous}, {text}")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._keep_alive = self._parser.should_keep_alive()
        self._delimited = ("content-length" in self._headers
                           or "chunked" in (self._headers.get("transfer-encoding") or "").lower())

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_response:
            raise _TooLarge(f"the answer's body is over {self._max_response} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._parser.get_status_code(), self._headers,
                                       b"".join(self._body)))

    # use

    def send(self, request: bytes) -> asyncio.Future[Response]:
        assert self._transport is not None and self._waiter is None
        self._headers, self._body, self._size = Headers(), [], 0
        self._headers_done = self._delimited = self._keep_alive = False
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return self._waiter

    @property
    def reusable(self) -> bool:
        return not self.closed and self._keep_alive

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    def fail(self, code: str, message: str) -> None:
        """The waiting call gets :class:`HttpTransportError`; the connection is dropped."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(HttpTransportError(code, message))
        self.close()


class Origin:
    """The pool of connections to one scheme, host and port."""

    def __init__(self, scheme: str, host: str, port: int, *, limit: int, idle_timeout: float,
                 max_response: int, ssl_context: ssl.SSLContext | None) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        # What botocore signs as Host: the lower-case host (urlsplit's ``hostname``), IPv6 in
        # brackets, the port only when it is not the scheme's default.
        default = 443 if scheme == "https" else 80
        bracketed = f"[{host}]" if ":" in host else host
        self.host_header = bracketed if port == default else f"{bracketed}:{port}"
        self._ssl = ssl_context if scheme == "https" else None
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slots = asyncio.Semaphore(limit)
        self._idle_timeout = idle_timeout
        self._max_response = max_response
        self._closed = False

    async def request(self, method: str, target: str, headers: Mapping[str, str], body: bytes,
                      *, timeout: float) -> Response:
        """``target`` is the path and query, already percent-encoded, sent as given."""
        request = self._encode(method, target, headers, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # The deadline is armed only around what can wait: a free slot and an idle connection
        # (the common case) cost one timer on the answer, not an ``asyncio.timeout`` scope per
        # call (a tenth of a provider call's CPU in the worker's profile: docs/BENCHMARKS.md).
        try:
            if self._slots.locked():
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            else:
                await self._slots.acquire()  # a slot is free: returns without waiting
        except TimeoutError as exc:
            raise self._timed_out(timeout) from exc
        try:
            connection = self._take()
            if connection is None:
                async with asyncio.timeout_at(deadline):
                    connection = await self._connect()
            waiter = connection.send(request)
            timer = loop.call_at(deadline, self._expire, connection, timeout)
            try:
                response = await waiter
            except BaseException:
                connection.close()
                raise
            finally:
                timer.cancel()
            self._give_back(connection)
            return response
        except TimeoutError as exc:
            raise self._timed_out(timeout) from exc
        except OSError as exc:
            raise HttpTransportError(type(exc).__name__, str(exc) or repr(exc)) from exc
        finally:
            self._slots.release()

    def _timed_out(self, timeout: float) -> HttpTransportError:
        return HttpTransportError("TimeoutError", self._no_answer(timeout))

    def _expire(self, connection: _Connection, timeout: float) -> None:
        connection.fail("TimeoutError", self._no_answer(timeout))

    def _no_answer(self, timeout: float) -> str:
        return f"no answer from {self.host_header} in {timeout:g} s"

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def _encode(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> bytes:
        lines = [f"{method} {target} HTTP/1.1"]
        has_host = False
        for name, value in headers.items():
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise ValueError(f"header {name!r}: a line break in a header")
            has_host = has_host or name.lower() == "host"
            lines.append(f"{name}: {value}")
        if not has_host:
            lines.append(f"Host: {self.host_header}")
        lines.append(f"User-Agent: {USER_AGENT}")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "\r\n".join(lines).encode("latin-1") + body

    def _take(self) -> _Connection | None:
        if self._closed:
            raise HttpTransportError("ClientClosedError", "the HTTP client is closed")
        loop = asyncio.get_running_loop()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and loop.time() - connection.idle_since < self._idle_timeout:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        max_response = self._max_response
        _, connection = await loop.create_connection(
            lambda: _Connection(max_response), self.host, self.port, ssl=self._ssl,
            server_hostname=self.host if self._ssl else None)
        return connection

    def _give_back(self, connection: _Connection) -> None:
        if self._closed or not connection.reusable:
            connection.close()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.append(connection)


class HttpClient:
    """Every origin's pool, for one process. Cheap to create; :meth:`close` closes them all."""

    def __init__(self, *, limit: int = 100, idle_timeout: float = 15.0,
                 max_response: int = MAX_RESPONSE,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._max_response = max_response
        self._ssl_context = ssl_context
        self._origins: dict[tuple[str, str, int], Origin] = {}
        self.closed = False

    def origin(self, url: str) -> Origin:
        """The pool for ``url``'s scheme, host and port (the rest of ``url`` is ignored)."""
        if self.closed:
            raise HttpTransportError("ClientClosedError", "the HTTP client is closed")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname, port)
        origin = self._origins.get(key)
        if origin is None:
            context = self._ssl_context
            if parts.scheme == "https" and context is None:
                context = self._ssl_context = ssl.create_default_context()
            origin = self._origins[key] = Origin(
                parts.scheme, parts.hostname, port, limit=self._limit,
                idle_timeout=self._idle_timeout, max_response=self._max_response,
                ssl_context=context)
        return origin

    async def close(self) -> None:
        self.closed = True
        for origin in self._origins.values():
            origin.close()
        self._origins.clear()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
