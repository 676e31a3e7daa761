"""The gateway's half of fan-out: check a request, split it into chunk messages, enqueue them.

A request to up to 10,000 recipients becomes ``ceil(n / chunk_size)`` queue messages carrying
the notification and a slice of the recipients; the workers do the per-recipient work. The
request is checked here as the worker will check each message (template, channels, a trial
render), so a bad request is a 4xx now instead of a dead letter later.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from dispatcher.messages import ChunkMessage, encode_chunk
from dispatcher.planning import category_of, channel_sets, header_update, render_context
from dispatcher.queue import Queue
from dispatcher.queue.local import LocalQueue
from dispatcher.rendering import TemplateError, TemplateRegistry, UnknownTemplate
from dispatcher.store import HeaderUpdate, Store

__all__ = ["FanOut", "Rejected"]


class Rejected(ValueError):
    """A request the gateway refuses (422); ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Accepted:
    id: str
    recipients: int
    chunks: int


class FanOut:
    def __init__(self, store: Store, queue: Queue, templates: TemplateRegistry,
                 chunk_size: int) -> None:
        self._store = store
        self._queue = queue
        self._templates = templates
        self._chunk_size = chunk_size
        self._commit = GroupCommit(store, queue)

    async def accept(self, service: str, request: dict[str, Any]) -> Accepted:
        """``request`` holds the fields of ``POST /v1/notifications`` (id already checked)."""
        recipients = list(dict.fromkeys(request["recipients"]))
        base = ChunkMessage(service=service, recipients=tuple(recipients[:1]),
                            recipients_total=len(recipients), **_fields(request))
        header = self._check(base)
        bodies = [body for i in range(0, len(recipients), self._chunk_size)
                  for body in self._encode(base, recipients[i:i + self._chunk_size])]
        await self._commit.submit(header, bodies)
        return Accepted(base.id, len(recipients), len(bodies))

    def _encode(self, base: ChunkMessage, recipients: list[str]) -> list[str]:
        """Encoded chunks of these recipients, halved until each fits the queue's size limit."""
        body = encode_chunk(base.model_copy(update={"recipients": tuple(recipients)}))
        limit = self._queue.max_message_bytes
        if limit is None or len(body.encode()) <= limit:
            return [body]
        if len(recipients) == 1:
            raise Rejected("data", f"the notification is too large for the queue "
                                   f"({len(body.encode())} bytes; the limit is {limit})")
        half = len(recipients) // 2
        return self._encode(base, recipients[:half]) + self._encode(base, recipients[half:])

    def _check(self, message: ChunkMessage) -> HeaderUpdate:
        try:
            template = self._templates.info(message.template)
        except UnknownTemplate as exc:
            raise Rejected("template", f"{exc}; known: {self._templates.names()}") from None
        try:
            sets = channel_sets(message.channels, template)
        except ValueError as exc:
            raise Rejected("channels", str(exc)) from None
        context = render_context(message, category_of(message, template), message.locale)
        try:
            self._templates.render(message.template, sorted(sets.all), context, message.locale)
        except TemplateError as exc:
            raise Rejected("data", f"the template can't be rendered with this data: {exc}") from None
        return header_update(message, template, sets)


class GroupCommit:
    """Writes the headers and chunk messages of concurrent requests together.

    A request's header and messages join the next batch; one writer at a time upserts a
    batch's headers in one transaction and enqueues its messages in one call, then answers
    every request of the batch. Under load that is one commit for many requests instead of
    two per request; alone, a request waits for nothing but its own writes. A request is
    answered only after its messages are durably enqueued."""

    def __init__(self, store: Store, queue: Queue) -> None:
        self._store = store
        self._queue = queue
        self._pending: list[tuple[HeaderUpdate, list[str], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, header: HeaderUpdate, bodies: list[str]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((header, bodies, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await done

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._commit([h for h, _, _ in batch], [b for _, bs, _ in batch for b in bs])
            except Exception as exc:
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, _, done in batch:
                if not done.done():
                    done.set_result(None)


    async def _commit(self, headers: list[HeaderUpdate], bodies: list[str]) -> None:
        queue = self._queue
        if isinstance(queue, LocalQueue) and queue.shares(self._store.db):
            # The embedded queue is in the store: headers and messages commit together.
            async with self._store.db.write() as conn:
                await self._store.notifications.upsert_many_in(conn, headers)
                await queue.send_batch_in(conn, bodies)
            return
        await self._store.notifications.upsert_many(headers)
        await queue.send_batch(bodies)


def _fields(request: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "version", "template", "data", "channels", "category", "state", "locale")
    return {k: request[k] for k in keys if request.get(k) is not None}


