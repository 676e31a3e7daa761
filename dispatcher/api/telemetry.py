"""What the API tells operators: a request id and an access log line per request, HTTP
metrics by route template, and ``GET /metrics``.

* :class:`RequestTelemetry` (pure ASGI, outermost of the app's own middleware, so it sees the
  413s and 408s answered before routing): takes ``X-Request-ID`` when the caller sent a sane
  one (1 to 128 of ``A-Z a-z 0-9 . _ : -``), else makes one; binds it to every log line of the
  request; returns it in the response's ``X-Request-ID``; writes one ``dispatcher.access``
  line (method, route template, path, status, duration; DEBUG for the probes and the scrapes,
  INFO otherwise) and counts the request in ``dispatcher_http_requests_total``.
* ``GET /metrics``: the Prometheus text format (:mod:`dispatcher.observability.metrics`). Open
  by default, like ``/healthz``: it shows counts and route templates, no user data, and
  scrapers sit inside the network. With ``DISPATCHER_METRICS_TOKEN`` set it needs
  ``Authorization: Bearer <that token>`` (Prometheus: ``authorization: {credentials: …}``).
"""

from __future__ import annotations

import hmac
import logging
import random
import re
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.api.errors import ApiError, error_responses
from dispatcher.observability import logs, metrics
from dispatcher.queue import Queue, QueueStats

__all__ = ["REQUEST_ID_HEADER", "RequestTelemetry", "metrics_router", "record", "request_id_of"]

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Asked every few seconds by probes and scrapers: their access lines are DEBUG.
_QUIET = frozenset({"/healthz", "/readyz", "/metrics"})

access = logging.getLogger("dispatcher.access")
log = logging.getLogger("dispatcher.api")


class RequestTelemetry:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        logs.bind(request_id=request_id)
        start = time.monotonic()
        status = 500  # unless the app answers: an exception escapes to the server's handler

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            record(scope, status, time.monotonic() - start)


def request_id_of(scope: Scope) -> str:
    """The caller's ``X-Request-ID`` when sane, else a new one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER.encode():
            given = value.decode("latin-1")
            if _SANE_ID.fullmatch(given):
                return str(given)
            break
    # 128 random bits as uuid4().hex writes them. A correlation id, not a secret: the Mersenne
    # Twister instead of os.urandom, whose system call was 2 % of the API process's CPU.
    return f"{random.getrandbits(128):032x}"


def record(scope: Scope, status: int, seconds: float, *, route: str | None = None) -> None:
    """The access line and the HTTP metrics of one request (``route``: its template, when
    no router matched it)."""
    route = route or getattr(scope.get("route"), "path", None) or "unmatched"
    method = scope["method"] if scope["method"] in _METHODS else "other"
    metrics.http_request(method, route, status, seconds)
    params = scope.get("path_params") or {}
    fields = {k: params[k] for k in ("user_id", "notification_id") if isinstance(params.get(k), str)}
    level = logging.DEBUG if route in _QUIET and status < 400 else logging.INFO
    access.log(level, "%s %s %d %.1f ms", method, scope["path"], status, seconds * 1000,
               extra={"method": method, "route": route, "path": scope["path"], "status": status,
                      "duration_ms": round(seconds * 1000, 3), **fields})


def metrics_router(queue: Queue, token: str | None) -> APIRouter:
    api = APIRouter(tags=["operations"])

    @api.get("/metrics", response_class=Response, responses={
        200: {"description": "Prometheus text format (README, \"Metrics\")",
              "content": {"text/plain": {"schema": {"type": "string"}}}},
        **error_responses(*((401,) if token else ()), page=True)})
    async def prometheus_metrics(request: Request) -> Response:
        if token is not None:
            _check(request.headers.get("authorization", ""), token)
        return Response(metrics.exposition(await _queue_stats(queue)),
                        media_type=metrics.CONTENT_TYPE)

    return api


def _check(header: str, token: str) -> None:
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "GET /metrics needs 'Authorization: Bearer <DISPATCHER_METRICS_TOKEN>'")


async def _queue_stats(queue: Queue) -> QueueStats | None:
    """The queue's figures, or None when it does not answer (the scrape still succeeds)."""
    try:
        return await queue.stats()
    except Exception as exc:
        log.warning("GET /metrics: the queue did not give its figures: %s: %s", type(exc).__name__, exc)
        return None
