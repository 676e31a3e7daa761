"""Resend only what failed: a notification's ``failed`` rows (by reason, by channel) sent again.

The rows are made ``pending`` at the notification's current version (the same rows: never a
second row, never one that is ``sent``/``delivered``/…), then chunk messages carrying the
current version's content go to the queue for exactly those recipients and channels; the
worker plans them again (so a suppressed or opted-out address is skipped now) and claims each
row as a new attempt.

The rows and their messages always commit in one transaction, so a crash can't leave rows
``pending`` with no message: with the embedded queue the messages go on the queue itself
(``enqueue_in``); with SQS they go to the held messages (``scheduled_messages``), due now, and
are released to SQS at once after the commit (``release``). If that release fails, or the
gateway dies before it, the schedulers of the workers release them (under a lease, as any
due message: ``dispatcher.queue.enqueue``), so the resend answered is the resend done.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from dispatcher.messages import ChunkMessage, encode_chunk
from dispatcher.model import Channel, Held, NotificationHeader, now_us
from dispatcher.queue.enqueue import Releaser
from dispatcher.store import Store
from dispatcher.store.resend import Reopened

__all__ = ["RESENDABLE", "Resender"]

log = logging.getLogger("dispatcher.resend")

RESENDABLE = (Channel.EMAIL.value, Channel.SMS.value, Channel.PUSH.value)


#: Enqueue inside the store's transaction (the embedded queue's ``send_batch_in``).
EnqueueIn = Callable[[Any, Sequence[str]], Awaitable[None]]


class Resender:
    """``enqueue_in``: the embedded queue's ``send_batch_in``; None: hold the messages (due
    now) and ``release`` them after the commit."""

    def __init__(self, store: Store, chunk_size: int, *, enqueue_in: EnqueueIn | None = None,
                 release: Releaser | None = None) -> None:
        self._store = store
        self._chunk_size = chunk_size
        self._enqueue_in = enqueue_in
        self._release = release

    async def resend(self, header: NotificationHeader, *, reasons: Sequence[str] | None,
                     channels: Sequence[str] | None) -> int:
        """Resend the matching failed rows; return how many."""
        wanted = [c for c in (channels or RESENDABLE) if c in RESENDABLE]
        direct = self._enqueue_in

        async def enqueue_in(conn: Any, rows: list[Reopened]) -> None:
            bodies = self._bodies(header, rows)
            if direct is not None:
                await direct(conn, bodies)
                return
            now = now_us()
            await self._store.schedule.add_in(conn, [Held(header.id, header.version, now, b) for b in bodies])

        rows = await self._store.resend.reopen(header.id, header.version, reasons=reasons, channels=wanted,
                                               enqueue_in=enqueue_in)
        if rows and direct is None and self._release is not None:
            try:
                await self._release(len(rows) + 10)
            except Exception as exc:  # held and due: a worker's scheduler sends them
                log.warning("%s: releasing the resend's messages failed (%s); the workers will",
                            header.id, exc)
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
