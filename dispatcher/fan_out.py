"""The gateway's half of fan-out: check a request, split it into chunk messages, enqueue them.

A request to up to 10,000 recipients becomes ``ceil(n / chunk_size)`` queue messages carrying
the notification and a slice of the recipients; the workers do the per-recipient work. The
request is checked here as the worker will check each message (template, channels, a trial
render), so a bad request is a 4xx now instead of a dead letter later.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from dispatcher.errors import InvalidRequest, NotificationCancelled, TemplateError, UnknownTemplate
from dispatcher.group_commit import GroupCommit
from dispatcher.messages import ChunkMessage, encode_chunk
from dispatcher.model import HeaderUpdate, now_us
from dispatcher.planning import category_of, channel_sets, header_update, render_context
from dispatcher.queue.enqueue import Enqueuer, Intake
from dispatcher.rendering import TemplateRegistry

__all__ = ["Accepted", "FanOut"]


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
        recipients = list(dict.fromkeys(request["recipients"]))
        base = ChunkMessage(service=service, recipients=tuple(recipients[:1]),
                            recipients_total=len(recipients), **_fields(request))
        header = await self._check(base)
        if send_at is not None and send_at > now_us():
            header = replace(header, send_at=send_at)
        bodies = [body for i in range(0, len(recipients), self._chunk_size)
                  for body in self._encode(base, recipients[i:i + self._chunk_size])]
        refused = await self._commit.submit([Intake(header, bodies)])
        if base.id in refused:
            raise NotificationCancelled(base.id)
        return Accepted(base.id, len(recipients), len(bodies))

    def _encode(self, base: ChunkMessage, recipients: list[str]) -> list[str]:
        """Encoded chunks of these recipients, halved until each fits the queue's size limit."""
        body = encode_chunk(base.model_copy(update={"recipients": tuple(recipients)}))
        limit = self._limit
        if limit is None or len(body.encode()) <= limit:
            return [body]
        if len(recipients) == 1:
            raise InvalidRequest("data", f"the notification is too large for the queue "
                                   f"({len(body.encode())} bytes; the limit is {limit})")
        half = len(recipients) // 2
        return self._encode(base, recipients[:half]) + self._encode(base, recipients[half:])

    async def _check(self, message: ChunkMessage) -> HeaderUpdate:
        """Check the request as the worker will: template, channels, and a trial render, in a
        thread (a template may take up to its render budget; the event loop must not)."""
        try:
            template = self._templates.info(message.template)
        except UnknownTemplate as exc:
            raise InvalidRequest("template", f"{exc}; known: {self._templates.names()}") from None
        sets = channel_sets(message.channels, template)  # ChannelNotInTemplate names the field
        context = render_context(message, category_of(message, template), message.locale)
        try:
            await asyncio.to_thread(self._templates.render, message.template, sorted(sets.all),
                                    context, message.locale)
        except TemplateError as exc:
            raise InvalidRequest("data", f"the template can't be rendered with this data: {exc}") from None
        return header_update(message, template, sets)


def _fields(request: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "version", "template", "data", "channels", "category", "state", "locale")
    return {k: request[k] for k in keys if request.get(k) is not None}


