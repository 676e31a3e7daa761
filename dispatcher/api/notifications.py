"""``/v1/notifications``: accept, read and inspect notifications (services only)."""

import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher.api.auth import Authenticator, Caller
from dispatcher.api.critical import CriticalSenders
from dispatcher.api.data_bounds import DataBounds
from dispatcher.api.errors import ApiError, error_responses, response_for
from dispatcher.api.limits import content_length, read_body
from dispatcher.api.schemas import (
    EXAMPLE_ID,
    AcceptedOut,
    CancelOut,
    DeliveryPage,
    NotificationIn,
    NotificationOut,
    bounded_notification,
)
from dispatcher.api.telemetry import REQUEST_ID_HEADER, record, request_id_of
from dispatcher.api.timefmt import iso
from dispatcher.errors import InvalidNotificationId, InvalidRequest
from dispatcher.model import DeliveryStatus, NotificationHeader, Reason, now_us, parse_notification_id
from dispatcher.observability import logs, rows_settled
from dispatcher.resend import Resender
from dispatcher.runtime import Runtime

__all__ = ["SEND_PATH", "SendLane", "SendNotification", "router"]

#: A notification id in a path (``#`` written ``%23``).
NotificationId = Annotated[str, Path(description="<service>#<uuid>", examples=[EXAMPLE_ID],
                                      openapi_examples={"id": {"value": EXAMPLE_ID}})]


class SendNotification:
    """What ``POST /v1/notifications`` does once the caller is a service and the body a valid
    :class:`NotificationIn`: the route and :class:`SendLane` both call it."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        #: A subclass per app: FastAPI validates with the annotation's class, and the bounds
        #: are settings.
        self.model = bounded_notification(DataBounds(runtime.settings.max_data_bytes,
                                                     runtime.settings.max_data_depth))
        self._critical = CriticalSenders(runtime.settings.critical_categories,
                                         runtime.settings.critical_services, runtime.templates)

    async def __call__(self, service: str, body: NotificationIn) -> dict[str, Any]:
        """The 202's body; raises the errors the app's handlers answer (400, 403, 409, 422)."""
        try:
            parse_notification_id(body.id, service)
        except InvalidNotificationId as exc:  # another service's id too: it can't be sent
            raise ApiError(400, str(exc), "invalid_id") from None
        self._critical.check(service, body.template, body.category)
        send_at = _send_at(body, self._runtime.settings.schedule_horizon_days)
        accepted = await self._runtime.fan_out.accept(service, body.model_dump(exclude={"send_at"}),
                                                      send_at)
        answer: dict[str, Any] = {"id": accepted.id, "accepted": accepted.recipients}
        if send_at is not None and send_at > now_us():
            answer["send_at"] = iso(send_at)
        return answer


def router(runtime: Runtime, auth: Authenticator, send: SendNotification) -> APIRouter:
    api = APIRouter(prefix="/v1/notifications", tags=["notifications"])
    Auth = Annotated[Caller, Depends(auth)]
    Notification = send.model

    @api.post("", status_code=202, response_model=AcceptedOut,
              responses=error_responses(400, 401, 403, 409, 422))
    async def send_notification(payload: Notification, caller: Auth) -> JSONResponse:  # type: ignore[valid-type]
        # In a server, SendLane answers a service's well-formed sends first; this route the rest.
        return JSONResponse(await send(caller.require_service(), payload), 202)

    @api.post("/{notification_id}/cancel", response_model=CancelOut,
              responses=error_responses(400, 401, 403, 404))
    async def cancel_notification(notification_id: NotificationId, caller: Auth) -> dict[str, Any]:
        """Cancel: every row not sent yet becomes skipped/cancelled, scheduled messages are
        dropped, in-app entries not shown yet never appear; rows in flight end as they end."""
        await _owned(runtime, notification_id, caller.require_service())
        summary = await runtime.store.ledger.cancel(notification_id)
        if summary is None:
            raise ApiError(404, f"no notification {notification_id!r}")
        rows_settled(summary.made_skipped, DeliveryStatus.SKIPPED, Reason.CANCELLED)
        return {"id": notification_id, "cancelled_at": iso(summary.cancelled_at),
                "already_cancelled": not summary.first, "cancelled": summary.cancelled,
                "in_flight": summary.in_flight}

    @api.get("/{notification_id}", response_model=NotificationOut,
             responses=error_responses(400, 401, 403, 404))
    async def get_notification(notification_id: NotificationId, caller: Auth) -> dict[str, Any]:
        header = await _owned(runtime, notification_id, caller.require_service())
        counts = await runtime.store.notifications.counts(header)
        return _header_json(header) | {"counts": counts}

    @api.get("/{notification_id}/deliveries", response_model=DeliveryPage,
             responses=error_responses(400, 401, 403, 404, 422))
    async def list_deliveries(
        notification_id: NotificationId, caller: Auth, cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100, status: DeliveryStatus | None = None,
    ) -> dict[str, Any]:
        await _owned(runtime, notification_id, caller.require_service())
        rows, next_cursor = await runtime.store.notifications.deliveries(
            notification_id, limit=limit, cursor=cursor, status=status.value if status else None)
        return {"items": [_delivery_json(r) for r in rows], "next_cursor": next_cursor}

    @api.post("/{notification_id}/resend", response_model=ResendOut,
              responses=error_responses(400, 401, 403, 404, 409, 422))
    async def resend_notification(notification_id: NotificationId, body: ResendIn,
                                  caller: Auth) -> dict[str, Any]:
        """Send the notification's failed rows again (filter: reasons, channels), as a new
        attempt on the same rows; answers how many."""
        header = await _owned(runtime, notification_id, caller.require_service())
        if header.cancelled_at is not None:
            raise ApiError(409, f"notification {notification_id!r} was cancelled: nothing is resent", "cancelled")
        resender = runtime.resender or Resender(runtime.store, runtime.settings.chunk_size, release=runtime.release)
        resent = await resender.resend(
            header, reasons=[r.value for r in body.reasons] if body.reasons else None,
            channels=body.channels)
        return {"id": header.id, "version": header.version, "resent": resent}

    return api


class SendLane:
    """ASGI, in front of the app: answers ``POST /v1/notifications`` itself when a service
    sends a well-formed JSON body, with what the app's own middleware would do for it (a
    request id, the access line and metrics, the body limit, the read deadline, the error
    envelope), and hands everything else on, a body it has read included.

    That request is most of a gateway's traffic: one notification, then its update. Through
    the general stack (middleware, routing, dependencies) it cost about a third of the
    gateway's CPU per request (py-spy, ``python -m bench small --gateway-alone``). Anything
    the lane does not take whole (another path or method, a user token or no key, a body
    too large, late, not JSON or not valid, a browser's ``Origin``) goes through the app,
    so every error answer is the app's own, by construction.
    """

    def __init__(self, app: ASGIApp, send: SendNotification, auth: Authenticator, *, max_bytes: int,
                 read_timeout: float) -> None:
        self.app = app
        self._send = send
        self._auth = auth
        self._max_bytes = max_bytes
        self._read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] != SEND_PATH or scope["method"] != "POST"
                or not self._may_take(scope)):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        body, more, last = await read_body(scope, receive, max_bytes=self._max_bytes,
                                           seconds=self._read_timeout)
        whole = not more and last is None and len(body) <= self._max_bytes
        payload = self._valid(body) if whole else None
        service = None if payload is None else self._auth.service_of(scope)
        if payload is None or service is None:
            await self.app(scope, _replay(body, more, last, receive), send)
            return
        request_id = request_id_of(scope)
        logs.bind(request_id=request_id)
        try:
            response: Response = JSONResponse(await self._send(service, payload), 202)
        except Exception as exc:  # the envelope the app's own handlers give
            response = response_for(exc, f"POST {SEND_PATH}")
        response.headers[REQUEST_ID_HEADER] = request_id
        await response(scope, receive, send)
        record(scope, response.status_code, time.monotonic() - started, route=SEND_PATH)

    def _may_take(self, scope: Scope) -> bool:
        """``Content-Type: application/json`` (what FastAPI does without one depends on its
        version), a declared length within the limit, and no ``Origin`` (CORS is the app's)."""
        json_body = False
        for name, value in scope["headers"]:
            if name == b"content-type":
                json_body = value.split(b";")[0].strip().lower() == b"application/json"
            elif name == b"origin":
                return False
        declared = content_length(scope)
        return json_body and (declared is None or declared <= self._max_bytes)

    def _valid(self, body: bytes) -> NotificationIn | None:
        """The body as the route would validate it (JSON, then the model in Python mode), or
        None: the app then answers with its own 422."""
        try:
            return self._send.model.model_validate(json.loads(body))
        except (ValueError, ValidationError):  # JSONDecodeError and UnicodeDecodeError included
            return None


SEND_PATH = "/v1/notifications"


def _replay(body: bytes, more: bool, last: Message | None, receive: Receive) -> Receive:
    """``receive`` as if nothing had been read: what was read, then the rest."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": more}]
    if last is not None:
        pending.append(last)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def _send_at(body: NotificationIn, horizon_days: float) -> int | None:
    if body.send_at is None:
        return None
    at = int(body.send_at.timestamp() * 1_000_000)
    if at > now_us() + int(horizon_days * 86_400 * 1_000_000):
        raise InvalidRequest("send_at", f"send_at {body.send_at.isoformat()} is more than "
                             f"{horizon_days:g} days ahead (DISPATCHER_SCHEDULE_HORIZON_DAYS)")
    return at


class ResendOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    version: int = Field(description="the version the rows are sent at (the notification's current one)")
    resent: int = Field(description="rows made pending again and queued")


class ResendIn(BaseModel):
    """Which rows to send again: ``failed`` ones (the only status that can be resent), of
    these reasons (default: any) and channels (default: email, SMS and push)."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["failed"] = "failed"
    reasons: list[Reason] | None = Field(default=None, min_length=1, max_length=20)
    channels: list[Literal["email", "sms", "push"]] | None = Field(default=None, min_length=1, max_length=3)


async def _owned(runtime: Runtime, notification_id: str, service: str) -> NotificationHeader:
    parse_notification_id(notification_id, service)  # ForeignNotification: 403
    header = await runtime.store.notifications.get(notification_id)
    if header is None:
        raise ApiError(404, f"no notification {notification_id!r}")
    return header


def _header_json(h: NotificationHeader) -> dict[str, Any]:
    return {"id": h.id, "state": h.state, "version": h.version, "category": h.category,
            "template": h.template, "data": h.data, "locale": h.locale,
            "channels": list(h.channels), "recipients": h.recipients,
            "send_at": iso(h.send_at) if h.send_at is not None else None,
            "scheduled": h.send_at is not None and h.send_at > now_us() and h.cancelled_at is None,
            "cancelled_at": iso(h.cancelled_at) if h.cancelled_at is not None else None,
            "created_at": iso(h.created_at), "updated_at": iso(h.updated_at)}


def _delivery_json(row: dict[str, Any]) -> dict[str, Any]:
    status = row["status"]
    return {"user_id": row["user_id"], "channel": row["channel"], "version": row["version"],
            "status": "pending" if status == DeliveryStatus.SENDING else status,
            "reason": row["reason"], "detail": row["detail"], "attempts": row["attempts"],
            "provider_message_id": row["provider_message_id"],
            "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"])}
