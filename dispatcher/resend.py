"""Resend only what failed: a notification's ``failed`` rows (by reason, by channel) sent again.

The rows are made ``pending`` at the notification's current version (the same rows: never a
second row, never one that is ``sent``/``delivered``/…), then chunk messages carrying the
current version's content go to the queue for exactly those recipients and channels; the
worker plans them again (so a suppressed or opted-out address is skipped now) and claims each
row as a new attempt.

With the embedded queue the rows and their messages commit in one transaction (``enqueue_in``).
With SQS the rows commit first and the messages follow (as headers do before messages,
``dispatcher.queue.enqueue``); should the enqueue fail the rows are put back as they were (the
caller sees the error), but a gateway killed between the two leaves those rows ``pending``
with no message (they show as pending in the counts).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from dispatcher.messages import ChunkMessage, encode_chunk
from dispatcher.model import Channel, NotificationHeader
from dispatcher.queue import Queue
from dispatcher.store import Store
from dispatcher.store.resend import Reopened

__all__ = ["RESENDABLE", "Resender"]

RESENDABLE = (Channel.EMAIL.value, Channel.SMS.value, Channel.PUSH.value)


#: Enqueue inside the store's transaction (the embedded queue's ``send_batch_in``).
EnqueueIn = Callable[[Any, Sequence[str]], Awaitable[None]]


class Resender:
    def __init__(self, store: Store, queue: Queue, chunk_size: int, *,
                 enqueue_in: EnqueueIn | None = None) -> None:
        self._store = store
        self._queue = queue
        self._chunk_size = chunk_size
        self._enqueue_in = enqueue_in

    async def resend(self, header: NotificationHeader, *, reasons: Sequence[str] | None,
                     channels: Sequence[str] | None) -> int:
        """Resend the matching failed rows; return how many."""
        wanted = [c for c in (channels or RESENDABLE) if c in RESENDABLE]
        together = self._enqueue_in

        async def enqueue_in(conn: Any, rows: list[Reopened]) -> None:
            assert together is not None
            await together(conn, self._bodies(header, rows))

        rows = await self._store.resend.reopen(header.id, header.version, reasons=reasons, channels=wanted,
                                               enqueue_in=enqueue_in if together else None)
        if together is None and rows:
            bodies = self._bodies(header, rows)
            try:
                for i in range(0, len(bodies), 10):
                    await self._queue.send_batch(bodies[i:i + 10])
            except BaseException:
                await self._store.resend.restore(rows)
                raise
        return len(rows)

    def _bodies(self, header: NotificationHeader, rows: list[Reopened]) -> list[str]:
        by_channel: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            by_channel[row.key.channel].append(row.key.user_id)
        return [encode_chunk(_message(header, channel, users[i:i + self._chunk_size]))
                for channel, users in sorted(by_channel.items())
                for i in range(0, len(users), self._chunk_size)]


def _message(header: NotificationHeader, channel: str, users: list[str]) -> ChunkMessage:
    return ChunkMessage(id=header.id, service=header.service, version=header.version,
                        template=header.template, recipients=tuple(users), data=header.data,
                        channels=(channel,), category=header.category, state=header.state,
                        locale=header.locale, recipients_total=header.recipients)
