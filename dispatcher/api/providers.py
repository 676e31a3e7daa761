"""``/v1/providers/ses/events``: SES events as SNS delivers them over HTTP(S).

No API key: SNS can't send one. The SNS signature is the credential (``dispatcher.sns_messages``):
anything unsigned, badly signed, signed with a certificate from elsewhere, or from a topic
not in ``DISPATCHER_SNS_TOPIC_ARNS`` is a 403 and changes nothing. Answers are 2xx once a
message is applied (or needs nothing): SNS retries 5xx answers, so a store outage (503)
delivers the event again later. Concurrent events are applied in one transaction
(``dispatcher.group_commit``): a burst costs a few commits, not one per event.
"""

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from dispatcher.api.errors import ApiError, error_responses
from dispatcher.errors import UntrustedMessage
from dispatcher.group_commit import GroupCommit
from dispatcher.runtime import Runtime
from dispatcher.ses_events import ProviderEvent, parse_ses_event
from dispatcher.sns_messages import parse_sns_message
from dispatcher.store.provider_events import Applied, SoftBounces

__all__ = ["MAX_SNS_BODY", "router"]

log = logging.getLogger("dispatcher.api.providers")

#: An SNS message is at most 256 KiB; its envelope (JSON-escaped, with the signature and the
#: URLs) stays well under twice that.
MAX_SNS_BODY = 512 * 1024


def router(runtime: Runtime) -> APIRouter:
    api = APIRouter(prefix="/v1/providers", tags=["providers"])
    soft = SoftBounces(runtime.settings.soft_bounce_limit, runtime.settings.soft_bounce_window)

    async def flush(batch: list[_Pending]) -> None:
        applied = await runtime.store.provider_events.apply_many([p.event for p in batch], soft)
        for pending, result in zip(batch, applied, strict=True):
            pending.applied = result

    commit: GroupCommit[_Pending, None] = GroupCommit(flush)

    @api.post("/ses/events", response_model=SesEventOut, response_model_exclude_none=True,
              responses=error_responses(403, 422), openapi_extra={"requestBody": {"required": True, "content": {
        "text/plain": {"schema": {"type": "string", "description": "an SNS message (JSON)"}}}}})
    async def ses_events(request: Request) -> dict[str, Any]:
        message = parse_sns_message(await _bounded_body(request))
        verifier = runtime.sns
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
        event = parse_ses_event(message.message, message.message_id)
        if event is None:
            return {"applied": False, "reason": "an event type that changes nothing"}
        pending = _Pending(event)
        await commit.submit([pending])
        applied = pending.applied
        assert applied is not None
        return {"applied": applied.moved, "event": event.kind,
                "matched": applied.row is not None, "suppressed": list(applied.suppressed)}

    return api


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


async def _bounded_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SNS_BODY:
            raise ApiError(413, f"an SNS message is at most {MAX_SNS_BODY} bytes")
    return bytes(body)
