"""``/v1/providers/ses/events``: SES events as SNS delivers them over HTTP(S).

No API key: SNS can't send one. The SNS signature is the credential (``dispatcher.sns_messages``):
anything unsigned, badly signed, signed with a certificate from elsewhere, or from a topic
not in ``DISPATCHER_SNS_TOPIC_ARNS`` is a 403 and changes nothing. Answers are 2xx once a
message is applied (or needs nothing): SNS retries 5xx answers, so a store outage (503)
delivers the event again later. Concurrent events are applied in one transaction
(``dispatcher.group_commit``): a burst costs a few commits, not one per event.
"""

import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dispatcher.api.errors import ApiError, error_responses, response_for
from dispatcher.api.limits import content_length, read_body
from dispatcher.api.telemetry import REQUEST_ID_HEADER, record, request_id_of
from dispatcher.errors import UntrustedMessage
from dispatcher.group_commit import GroupCommit
from dispatcher.observability import logs
from dispatcher.runtime import Runtime
from dispatcher.ses_events import ProviderEvent, parse_ses_event
from dispatcher.sns_messages import parse_sns_message
from dispatcher.store.provider_events import Applied, SoftBounces

__all__ = ["MAX_SNS_BODY", "SesEvents", "SesEventsLane", "router"]

log = logging.getLogger("dispatcher.api.providers")

#: An SNS message is at most 256 KiB; its envelope (JSON-escaped, with the signature and the
#: URLs) stays well under twice that.
MAX_SNS_BODY = 512 * 1024


class SesEvents:
    """What ``POST /v1/providers/ses/events`` does with one SNS message (its body)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        soft = SoftBounces(runtime.settings.soft_bounce_limit, runtime.settings.soft_bounce_window)

        async def flush(batch: list[_Pending]) -> None:
            applied = await runtime.store.provider_events.apply_many([p.event for p in batch], soft)
            for pending, result in zip(batch, applied, strict=True):
                pending.applied = result

        self._commit: GroupCommit[_Pending, None] = GroupCommit(flush)

    async def handle(self, body: bytes) -> dict[str, Any]:
        """Verify, then confirm a subscription or apply an event; the answer's fields (none
        that is None). Raises the core's errors (403 ``untrusted_message``, 422, 503)."""
        message = parse_sns_message(body)
        verifier = self._runtime.sns
        if verifier is None:
            raise UntrustedMessage("SNS messages can't be verified in this process")
        await verifier.verify(message)
        if message.type == "SubscriptionConfirmation":
            await verifier.confirm(message)
            log.info("confirmed the SNS subscription to %s", message.topic_arn)
            return {"subscription": "confirmed", "topic": message.topic_arn}
        if message.type == "UnsubscribeConfirmation":
            log.warning("SNS says this endpoint was unsubscribed from %s", message.topic_arn)
            return {"subscription": "unsubscribed", "topic": message.topic_arn}
        event = parse_ses_event(message.message, message.message_id, message.published_at)
        if event is None:
            return {"applied": False, "reason": "an event type that changes nothing"}
        pending = _Pending(event)
        await self._commit.submit([pending])
        applied = pending.applied
        assert applied is not None
        return {"applied": applied.moved, "event": event.kind,
                "matched": applied.row is not None, "suppressed": list(applied.suppressed)}


def router(events: SesEvents) -> APIRouter:
    """The operation as the OpenAPI document and the app's own stack know it. In a server,
    :class:`SesEventsLane` answers it first."""
    api = APIRouter(prefix="/v1/providers", tags=["providers"])

    @api.post("/ses/events", response_model=SesEventOut, response_model_exclude_none=True,
              responses=error_responses(403, 413, 422), openapi_extra={"requestBody": {"required": True, "content": {
        "text/plain": {"schema": {"type": "string", "description": "an SNS message (JSON)"}}}}})
    async def ses_events(request: Request) -> dict[str, Any]:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_SNS_BODY:
                raise ApiError(413, _TOO_LARGE)
        return await events.handle(bytes(body))

    return api


class SesEventsLane:
    """ASGI, in front of the app: answers ``POST /v1/providers/ses/events`` itself, with what
    the app's own middleware would do for it (a request id, the access line and metrics, the
    body limit, the read deadline, the error envelope), and hands every other request on.

    SES sends one event per message, as fast as the messages go out: during a bulk the events
    arrive at the sending rate, into the same processes that send. Through the general stack
    (middleware, routing, dependencies, response validation) an event cost about 0.6 ms of
    CPU; this lane leaves the verification and the group-committed update as the main cost
    (``python -m bench events``, docs/BENCHMARKS.md).
    """

    def __init__(self, app: ASGIApp, events: SesEvents, *, read_timeout: float) -> None:
        self.app = app
        self._events = events
        self._read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        request_id = request_id_of(scope)
        logs.bind(request_id=request_id)
        response = await self._answer(scope, receive)
        response.headers[REQUEST_ID_HEADER] = request_id
        if response.status_code in (400, 408, 413):  # the body may be unread: end the connection
            response.headers["connection"] = "close"
        await response(scope, receive, send)
        record(scope, response.status_code, time.monotonic() - started, route=PATH)

    async def _answer(self, scope: Scope, receive: Receive) -> Response:
        try:
            body = await self._body(scope, receive)
            return JSONResponse({k: v for k, v in (await self._events.handle(body)).items() if v is not None})
        except Exception as exc:  # the envelope the app's own handlers give
            return response_for(exc, f"POST {PATH}")

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        declared = content_length(scope)
        if declared is not None and declared > MAX_SNS_BODY:
            raise ApiError(413, _TOO_LARGE)
        body, more, last = await read_body(scope, receive, max_bytes=MAX_SNS_BODY,
                                           seconds=self._read_timeout)
        if last is not None:
            raise ApiError(400, "the client went away before the body arrived")
        if len(body) > MAX_SNS_BODY:
            raise ApiError(413, _TOO_LARGE)
        if more:
            raise ApiError(408, f"the request body did not arrive within {self._read_timeout:g} s "
                                "(DISPATCHER_REQUEST_READ_TIMEOUT)", "request_timeout")
        return body


PATH = "/v1/providers/ses/events"
_TOO_LARGE = f"an SNS message is at most {MAX_SNS_BODY} bytes"


class SesEventOut(BaseModel):
    """What one SNS message did: a subscription confirmed, or an event applied (or not)."""

    model_config = ConfigDict(extra="forbid")

    subscription: str | None = None
    topic: str | None = None
    applied: bool | None = None
    event: str | None = None
    matched: bool | None = None
    suppressed: list[str] | None = None
    reason: str | None = None


@dataclass
class _Pending:
    """One event waiting for its group commit, and what applying it did."""

    event: ProviderEvent
    applied: Applied | None = None
