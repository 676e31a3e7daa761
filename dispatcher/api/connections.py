"""How the gateway's HTTP server treats connections: a bound on slow and idle ones, and on
how many it serves at once.

What uvicorn bounds by itself, and what it does not (read in uvicorn 0.3x-0.5x,
``protocols/http/httptools_impl.py``):

* ``timeout_keep_alive`` closes a connection idle *after a response*
  (``DISPATCHER_KEEP_ALIVE_TIMEOUT``). Its timer is armed in ``on_response_complete`` and
  cancelled by the next byte received;
* nothing bounds a connection that sends *nothing* after connecting (no timer is armed in
  ``connection_made``), nor request headers that trickle in a byte at a time (each byte cancels
  the keep-alive timer and nothing re-arms one), nor a body that trickles in: the parser
  waits for ever, and no ASGI app runs before the headers are complete;
* ``limit_concurrency`` answers 503 to a request once that many connections or tasks exist
  (``DISPATCHER_MAX_CONNECTIONS``): a cap on what the process serves at once.

So the request bound (``DISPATCHER_REQUEST_READ_TIMEOUT``) lives in two places:

* :class:`DeadlineHttpToolsProtocol`: the first request must arrive whole within the bound
  of connecting, each later one within the bound of its first byte. Headers late: a 408 and
  close. Body late: the app's :class:`~dispatcher.api.limits.ReadDeadline` answers 408 at the
  same deadline (handed over in the scope); this protocol closes the connection
  :data:`BACKSTOP` seconds later whatever the app did (e.g. answered without reading the
  body, which the parser would otherwise go on reading slowly);
* :class:`~dispatcher.api.limits.ReadDeadline`: the 408 as JSON, with the error envelope.

The hooks used are httptools' parser callbacks (``on_message_begin`` /
``on_headers_complete`` / ``on_message_complete``) and asyncio's ``connection_made`` /
``connection_lost``; tests/e2e/test_gateway_connections.py proves the behaviour against a
real process, so an upgrade of uvicorn that changes them fails there.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from dispatcher.api.limits import READ_DEADLINE
from dispatcher.config import Settings

__all__ = ["BACKSTOP", "DeadlineHttpToolsProtocol", "server_config"]

#: Seconds past the bound before the protocol closes a connection whose body the app let pass.
BACKSTOP = 1.0

_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline on reading each request.

    The first request of a connection must be whole within the bound of connecting; each
    later one within the bound of its first byte. The deadline goes to the app in the scope
    (:data:`~dispatcher.api.limits.READ_DEADLINE`), so its 408 for a late body comes at the
    same instant."""

    read_timeout: float = 10.0  # set per server by :func:`server_config`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # time.monotonic() by which the current request must be whole
        self._first = True
        self._reading_headers = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_request()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._first:  # the first request's clock started at connection_made
            self._start_request()
        self._first = False
        self._reading_headers = True

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self.scope.setdefault("extensions", {})[READ_DEADLINE] = {"monotonic": self._deadline}
        self._arm(self._deadline - time.monotonic() + BACKSTOP)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _start_request(self) -> None:
        self._deadline = time.monotonic() + self.read_timeout
        self._arm(self.read_timeout)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(max(seconds, 0), self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._reading_headers and self._cycle_idle():
            body = (b'{"error":{"code":"request_timeout","message":"the request did not arrive '
                    b'within %g s (DISPATCHER_REQUEST_READ_TIMEOUT)"}}' % self.read_timeout)
            self.transport.write(_TIMEOUT_408 % (len(body), body))
        self.transport.close()

    def _cycle_idle(self) -> bool:
        """No response is being written on this connection (so a 408 can't interleave)."""
        return self.cycle is None or self.cycle.response_complete


def server_config(app: Any, settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration of ``dispatcher serve`` and ``dispatcher gateway``."""
    protocol = type("DeadlineHttpToolsProtocol", (DeadlineHttpToolsProtocol,),
                    {"read_timeout": settings.request_read_timeout})
    return uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                          access_log=False, http=protocol,
                          timeout_keep_alive=settings.keep_alive_timeout,
                          limit_concurrency=settings.max_connections)
