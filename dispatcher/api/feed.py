"""``/v1/users/{id}/notifications``: the in-app feed, read marks and the live stream (SSE).

A browser's ``EventSource`` cannot send an ``Authorization`` header, so the stream also takes
``?stream_token=``: a short-lived token for that one user's stream only (minted by
``POST .../stream-token`` with the usual credentials; see
:class:`~dispatcher.api.auth.ScopedTokens`). The long-lived credential never goes in a URL
(where access logs, proxies and browser history keep it); a stream token that leaks there
is worth one stream opened within ``DISPATCHER_STREAM_TOKEN_LIFETIME`` seconds.
"""


import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from dispatcher.api.auth import Authenticator, Caller, ScopedTokenError, ScopedTokens
from dispatcher.api.errors import ApiError, error_responses
from dispatcher.api.schemas import FeedPage, ReadAllOut, ReadOut, StreamTokenOut
from dispatcher.api.timefmt import iso
from dispatcher.bus import Bus
from dispatcher.feed import feed_topic
from dispatcher.runtime import Runtime

__all__ = ["router"]

KEEPALIVE_SECONDS = 15.0
log = logging.getLogger("dispatcher.api.feed")


def router(runtime: Runtime, auth: Authenticator) -> APIRouter:
    api = APIRouter(prefix="/v1/users/{user_id}/notifications", tags=["feed"])
    Auth = Annotated[Caller, Depends(auth)]
    feed = runtime.store.feed
    stream_tokens = ScopedTokens(runtime.settings.user_token_secret or "", "stream",
                                 runtime.settings.stream_token_lifetime)

    @api.get("", response_model=FeedPage, responses=error_responses(400, 401, 403, 422))
    async def list_feed(
        user_id: str, caller: Auth, cursor: str | None = None, unread: bool = False,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        caller.require_user(user_id)
        rows, next_cursor = await feed.list(user_id, limit=limit, cursor=cursor,
                                            unread_only=unread)
        return {"items": [_entry_json(r) for r in rows], "next_cursor": next_cursor,
                "unread_count": await feed.unread_count(user_id)}

    @api.post("/read-all", response_model=ReadAllOut, responses=error_responses(401, 403))
    async def mark_all_read(user_id: str, caller: Auth) -> dict[str, Any]:
        caller.require_user(user_id)
        marked = await feed.mark_all_read(user_id)
        await runtime.feed.tell(user_id, {"type": "read_all"})
        return {"marked": marked, "unread_count": 0}

    @api.post("/{notification_id}/read", response_model=ReadOut,
              responses=error_responses(401, 403, 404))
    async def mark_read(user_id: str, notification_id: str, caller: Auth) -> dict[str, Any]:
        caller.require_user(user_id)
        if not await feed.mark_read(user_id, notification_id):
            raise ApiError(404, f"user {user_id!r} has no notification {notification_id!r}")
        await runtime.feed.tell(user_id, {"type": "read", "id": notification_id})
        return {"id": notification_id, "read": True,
                "unread_count": await feed.unread_count(user_id)}

    @api.post("/stream-token", response_model=StreamTokenOut, responses=error_responses(401, 403))
    async def stream_token(user_id: str, caller: Auth) -> dict[str, Any]:
        """A short-lived token for ``GET .../stream?stream_token=`` (browsers' EventSource)."""
        caller.require_user(user_id)
        token, expires = stream_tokens.mint(user_id)
        return {"token": token, "expires_at": iso(expires * 1_000_000)}

    @api.get("/stream", response_class=StreamingResponse, responses={
        200: {"description": "The event stream (never ends; a `: keepalive` comment every 15 s)",
              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **error_responses(401, 403, 422)},
        # The header, or a stream token in the query (documented as a parameter) instead.
        openapi_extra={"security": [{"bearer": []}, {}]})
    async def stream_feed(
        user_id: str, request: Request,
        stream_token: Annotated[str | None, Query(max_length=2048, description=(
            "A token from POST .../stream-token, for clients that can't send headers"))] = None,
    ) -> StreamingResponse:
        """Server-sent events: ``notification`` (new or updated entry), ``read``, ``read_all``.

        Authenticated by the ``Authorization`` header, or by ``stream_token``."""
        if stream_token is None:
            (await auth(request)).require_user(user_id)
        else:
            _check_stream_token(stream_tokens, stream_token, user_id)
        return StreamingResponse(_events(runtime.bus, feed_topic(user_id)),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return api


def _check_stream_token(tokens: ScopedTokens, token: str, user_id: str) -> None:
    try:
        owner = tokens.verify(token)
    except ScopedTokenError as exc:
        raise ApiError(401, str(exc)) from None
    if owner != user_id:
        raise ApiError(403, "a stream token only opens its own user's stream")


async def _events(bus: Bus, topic: str) -> AsyncIterator[str]:
    async with bus.subscribe(topic) as events:
        yield ": connected\n\n"
        iterator = aiter(events)
        while True:
            try:
                event = await asyncio.wait_for(anext(iterator), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            yield f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


def _entry_json(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["notification_id"], "title": row["title"], "body": row["body"],
            "state": row["state"], "category": row["category"], "read": row["read"],
            "version": row["version"], "created_at": iso(row["created_at"]),
            "updated_at": iso(row["updated_at"])}
