"""The gateway's half of fan-out: check a request, split it into chunk messages, enqueue them.

A request to up to 10,000 recipients becomes ``ceil(n / chunk_size)`` queue messages carrying
the notification and a slice of the recipients; the workers do the per-recipient work. The
request is checked here as the worker will check each message (template, channels, a trial
render), so a bad request is a 4xx now instead of a dead letter later.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, replace
from typing import Any

from dispatcher.errors import InvalidRequest, NotificationCancelled, TemplateError, UnknownTemplate
from dispatcher.group_commit import GroupCommit
from dispatcher.messages import ChunkMessage, encode_chunk
from dispatcher.model import HeaderUpdate, now_us
from dispatcher.planning import category_of, channel_sets, header_update, trial_render
from dispatcher.queue.enqueue import Enqueuer, Intake
from dispatcher.render_budget import OverCap, capped
from dispatcher.rendering import TemplateRegistry

__all__ = ["INLINE_RENDER_SECONDS", "Accepted", "FanOut"]

#: How long the gateway's trial render may run on the event loop before it moves to a thread.
INLINE_RENDER_SECONDS = 0.005


@dataclass(frozen=True)
class Accepted:
    id: str
    recipients: int
    chunks: int


class FanOut:
    """``max_message_bytes``: the queue's limit on one message (None: no limit that matters).
    Requests are committed through ``enqueue``, group-committed across concurrent requests."""

    def __init__(self, enqueue: Enqueuer, templates: TemplateRegistry, chunk_size: int,
                 max_message_bytes: int | None) -> None:
        self._templates = templates
        self._chunk_size = chunk_size
        self._limit = max_message_bytes

        self._commit: GroupCommit[Intake, set[str]] = GroupCommit(enqueue)

    async def accept(self, service: str, request: dict[str, Any],
                     send_at: int | None = None) -> Accepted:
        """``request`` holds the fields of ``POST /v1/notifications`` (id already checked);
        ``send_at`` (µs since the epoch): hold its messages until then. Raises
        :class:`~dispatcher.errors.InvalidRequest` naming the field at fault, and
        :class:`~dispatcher.errors.NotificationCancelled` for a cancelled notification."""
        recipients, own = _recipients(request["recipients"])
        base = ChunkMessage(service=service, recipients=tuple(recipients[:1]),
                            recipients_total=len(recipients), **_fields(request))
        personal_keys = frozenset(k for data in own.values() for k in data)
        header = await self._check(base, personal_keys)
        if send_at is not None and send_at > now_us():
            header = replace(header, send_at=send_at)
        bodies = [body for i in range(0, len(recipients), self._chunk_size)
                  for body in self._encode(base, recipients[i:i + self._chunk_size], own)]
        refused = await self._commit.submit([Intake(header, bodies)])
        if base.id in refused:
            raise NotificationCancelled(base.id)
        return Accepted(base.id, len(recipients), len(bodies))

    def _encode(self, base: ChunkMessage, recipients: list[str],
                own: dict[str, dict[str, Any]]) -> list[str]:
        """Encoded chunks of these recipients (with their own data), halved until each fits the
        queue's size limit."""
        data = {r: own[r] for r in recipients if r in own} if own else {}
        body = encode_chunk(base.model_copy(update={"recipients": tuple(recipients),
                                                    "recipient_data": data}))
        limit = self._limit
        if limit is None or len(body.encode()) <= limit:
            return [body]
        if len(recipients) == 1:
            field = f"recipients[{recipients[0]!r}].data" if data else "data"
            raise InvalidRequest(field, f"the notification is too large for the queue "
                                        f"({len(body.encode())} bytes; the limit is {limit})")
        half = len(recipients) // 2
        return self._encode(base, recipients[:half], own) + self._encode(base, recipients[half:], own)

    async def _check(self, message: ChunkMessage, personal_keys: frozenset[str]) -> HeaderUpdate:
        """Check the request as the worker will: template, channels, and a trial render of the
        parts that are the same for every recipient. The render runs on the event loop for at
        most ``INLINE_RENDER_SECONDS``; one that takes longer starts again in a thread (a
        template may take up to its render budget; the event loop must not). Most renders take
        tens of microseconds, and the hop to a thread cost more than that: 8 % of the API
        process's CPU at 250 notifications/s. Parts rendered per recipient can fail for some
        recipients only: those fail their rows (``template_error``), not the request."""
        templates = self._templates.current()
        try:
            template = templates.info(message.template)
        except UnknownTemplate as exc:
            raise InvalidRequest("template", f"{exc}; known: {templates.names()}") from None
        sets = channel_sets(message.channels, template)  # ChannelNotInTemplate names the field
        trial = functools.partial(trial_render, templates, message, category_of(message, template),
                                  sorted(sets.all), personal_keys)
        try:
            try:
                with capped(INLINE_RENDER_SECONDS):
                    trial()
            except OverCap:
                await asyncio.to_thread(trial)
        except TemplateError as exc:
            raise InvalidRequest("data", f"the template can't be rendered with this data: {exc}") from None
        return header_update(message, template, sets)


def _recipients(items: list[Any]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Recipient ids in order without repeats, and the data of those that carry their own
    (``{"id": ..., "data": {...}}``). An id given twice with different data is refused."""
    ids: dict[str, None] = {}
    own: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(items):
        user_id, data = (item, None) if isinstance(item, str) else (item["id"], item.get("data"))
        if data and user_id in own and own[user_id] != data:
            raise InvalidRequest(f"recipients[{i}]", f"user {user_id!r} is listed more than once "
                                                     "with different data")
        ids[user_id] = None
        if data:
            own[user_id] = data
    return list(ids), own


def _fields(request: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "version", "template", "data", "channels", "category", "state", "locale")
    return {k: request[k] for k in keys if request.get(k) is not None}


