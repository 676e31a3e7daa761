"""``/v1/notifications``: accept, read and inspect notifications (services only)."""


from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from dispatcher.api.auth import Authenticator, Caller
from dispatcher.api.critical import CriticalSenders
from dispatcher.api.data_bounds import DataBounds
from dispatcher.api.errors import ApiError, error_responses
from dispatcher.api.schemas import (
    EXAMPLE_ID,
    AcceptedOut,
    CancelOut,
    DeliveryPage,
    NotificationIn,
    NotificationOut,
    bounded_notification,
)
from dispatcher.api.timefmt import iso
from dispatcher.errors import InvalidNotificationId, InvalidRequest
from dispatcher.model import DeliveryStatus, NotificationHeader, Reason, now_us, parse_notification_id
from dispatcher.observability import rows_settled
from dispatcher.resend import Resender
from dispatcher.runtime import Runtime

__all__ = ["router"]

#: A notification id in a path (``#`` written ``%23``).
NotificationId = Annotated[str, Path(description="<service>#<uuid>", examples=[EXAMPLE_ID],
                                      openapi_examples={"id": {"value": EXAMPLE_ID}})]


def router(runtime: Runtime, auth: Authenticator) -> APIRouter:
    api = APIRouter(prefix="/v1/notifications", tags=["notifications"])
    Auth = Annotated[Caller, Depends(auth)]
    # A subclass per app: FastAPI validates with the annotation's class, and the bounds are settings.
    Notification = bounded_notification(DataBounds(runtime.settings.max_data_bytes,
                                                   runtime.settings.max_data_depth))
    critical = CriticalSenders(runtime.settings.critical_categories, runtime.settings.critical_services,
                               runtime.templates)

    @api.post("", status_code=202, response_model=AcceptedOut,
              responses=error_responses(400, 401, 403, 409, 422))
    async def send_notification(payload: Notification, caller: Auth) -> JSONResponse:  # type: ignore[valid-type]
        body: NotificationIn = payload
        service = caller.require_service()
        try:
            parse_notification_id(body.id, service)
        except InvalidNotificationId as exc:  # another service's id too: it can't be sent
            raise ApiError(400, str(exc), "invalid_id") from None
        critical.check(service, body.template, body.category)
        send_at = _send_at(body, runtime.settings.schedule_horizon_days)
        accepted = await runtime.fan_out.accept(service, body.model_dump(exclude={"send_at"}),
                                                send_at)
        answer: dict[str, Any] = {"id": accepted.id, "accepted": accepted.recipients}
        if send_at is not None and send_at > now_us():
            answer["send_at"] = iso(send_at)
        return JSONResponse(answer, 202)

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
