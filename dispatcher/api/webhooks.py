"""``/v1/webhooks``: a service's endpoint for outcome webhooks, and what was sent to it.

One endpoint per service: ``PUT`` registers or changes it (the secret is made once and kept;
``rotate_secret`` makes a new one), ``GET`` shows it, ``DELETE`` removes it (webhooks not
sent yet are then kept as failed). ``/deliveries`` lists the webhooks (newest first, by
status), ``/deliveries/replay`` sends failed ones again with their ids.
"""

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from dispatcher.api.auth import Authenticator, Caller
from dispatcher.api.errors import ApiError, error_responses
from dispatcher.api.timefmt import iso
from dispatcher.model import OutboxEntry, WebhookEndpoint
from dispatcher.runtime import Runtime
from dispatcher.webhooks import EVENTS, AddressGuard, new_secret

__all__ = ["router"]

Event = Literal["notification.completed", "delivery.failed", "delivery.bounced", "delivery.complained"]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    events: list[Event] | None = Field(default=None, min_length=1, description="default: all")
    rotate_secret: bool = False


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=64, description="one webhook; default: every failed one")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookOut(_Out):
    url: str
    events: list[str]
    secret: str = Field(description="whsec_<base64>: the Standard Webhooks signing secret")
    created_at: str | None
    updated_at: str | None


class WebhookDeliveryOut(_Out):
    id: str = Field(description="the webhook-id of every attempt")
    event: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    created_at: str | None
    cursor: int = Field(description="pass as `before` for older ones")
    payload: dict[str, Any]


class WebhookDeliveryPage(_Out):
    items: list[WebhookDeliveryOut]
    next_before: int | None


class ReplayOut(_Out):
    replayed: int


def router(runtime: Runtime, auth: Authenticator) -> APIRouter:
    api = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
    Auth = Annotated[Caller, Depends(auth)]
    store = runtime.store.webhooks
    guard = AddressGuard(runtime.settings.webhook_allowed_networks)

    @api.put("", response_model=WebhookOut, responses=error_responses(401, 403, 422))
    async def put_webhook(body: WebhookIn, caller: Auth) -> dict[str, Any]:
        service = caller.require_service()
        await guard.check_url(body.url)
        events = list(dict.fromkeys(body.events or EVENTS))
        endpoint = await store.put_endpoint(service, body.url, events, new_secret(),
                                            rotate=body.rotate_secret)
        return _endpoint_json(endpoint)

    @api.get("", response_model=WebhookOut, responses=error_responses(401, 403, 404))
    async def get_webhook(caller: Auth) -> dict[str, Any]:
        endpoint = await store.endpoint(caller.require_service())
        if endpoint is None:
            raise ApiError(404, "this service has no webhook endpoint (PUT /v1/webhooks)")
        return _endpoint_json(endpoint)

    @api.delete("", status_code=204, responses=error_responses(401, 403, 404))
    async def delete_webhook(caller: Auth) -> Response:
        if not await store.delete_endpoint(caller.require_service()):
            raise ApiError(404, "this service has no webhook endpoint")
        return Response(status_code=204)

    @api.get("/deliveries", response_model=WebhookDeliveryPage, responses=error_responses(401, 403, 422))
    async def list_webhook_deliveries(caller: Auth, status: Literal["pending", "delivered", "failed"] | None = None,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                         before: Annotated[int | None, Query(ge=0, description="created_at cursor, µs")] = None,
                         ) -> dict[str, Any]:
        entries = await store.entries(caller.require_service(), status=status, limit=limit, before=before)
        return {"items": [_entry_json(e) for e in entries],
                "next_before": entries[-1].created_at if len(entries) == limit else None}

    @api.post("/deliveries/replay", response_model=ReplayOut, responses=error_responses(401, 403, 422))
    async def replay_webhooks(body: ReplayIn, caller: Auth) -> dict[str, Any]:
        return {"replayed": await store.replay(caller.require_service(), body.id)}

    return api


def _endpoint_json(e: WebhookEndpoint) -> dict[str, Any]:
    return {"url": e.url, "events": list(e.events), "secret": e.secret,
            "created_at": iso(e.created_at), "updated_at": iso(e.updated_at)}


def _entry_json(e: OutboxEntry) -> dict[str, Any]:
    return {"id": e.id, "event": e.event, "status": e.status, "attempts": e.attempts,
            "next_attempt_at": iso(e.next_attempt_at) if e.status == "pending" else None,
            "last_error": e.last_error, "created_at": iso(e.created_at), "cursor": e.created_at,
            "payload": json.loads(e.payload)}
