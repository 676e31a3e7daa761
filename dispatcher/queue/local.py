"""The embedded queue: a table in the store's database (``DISPATCHER_QUEUE_URL=database``; ``sqlite`` is an alias).

Durable because it is the database: a message is enqueued when its transaction commits and
leaves only when a worker acknowledges it. Receiving hides a message for the visibility
timeout (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock on SQLite), so a
crashed worker's messages come back. A message received more than ``max_receives`` times
moves to ``dead_letters`` with the reason, as SQS's redrive policy would.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.model import now_us
from dispatcher.queue import DeadLetter, QueuedMessage, QueueStats
from dispatcher.queue.doorbell import POLL_WHEN_LISTENING, Doorbell
from dispatcher.store.database import Database
from dispatcher.store.schema import dead_letters, queue_messages

__all__ = ["ACTIVE_FOR", "LocalQueue"]

#: Seconds a receiver keeps polling at ``poll_interval`` after it last got messages.
ACTIVE_FOR = 2.0


class LocalQueue:
    max_message_bytes: int | None = None
    max_receive: int | None = None

    def __init__(
        self, db: Database, *, name: str = "chunks", visibility_timeout: float = 30.0,
        max_receives: int = 5, poll_interval: float = 0.2, doorbell: bool = True,
    ) -> None:
        """``doorbell``: on a SQLite file, wake receivers in other processes on this machine
        when a message is committed (:mod:`dispatcher.queue.doorbell`). A receiver polls every
        ``poll_interval`` while messages come (for :data:`ACTIVE_FOR` seconds after it last got
        one: its polls find batches, where a ring per commit would wake every receiver for
        each); once idle, it waits for a ring and polls only every
        :data:`~dispatcher.queue.doorbell.POLL_WHEN_LISTENING` seconds."""
        self._db = db
        self._doorbell = (Doorbell(db.sqlite_file) if doorbell and db.sqlite_file is not None
                          else None)
        self._name = name
        self._visibility_us = int(visibility_timeout * 1e6)
        self._max_receives = max_receives
        self._poll = poll_interval
        self._active_until = 0.0  # monotonic: polling at poll_interval until then
        self._insert = db.direct(queue_messages.insert(),
                                 ("queue", "body", "visible_at", "receive_count", "created_at"))
        # Wakes a waiting receive in this process once this process's messages are committed,
        # and in others through the doorbell.
        self._arrived = asyncio.Event()
        # Every receive and acknowledgement runs these: built once.
        visible = (queue_messages.c.queue == self._name,
                   queue_messages.c.visible_at <= sa.bindparam("b_now"))
        self._peek = db.direct(sa.select(queue_messages.c.id).where(*visible).limit(1))
        self._visible = db.direct(
            sa.select(queue_messages.c.id, queue_messages.c.body, queue_messages.c.receive_count)
            .where(*visible).order_by(queue_messages.c.visible_at, queue_messages.c.id)
            .limit(sa.bindparam("b_max", type_=sa.Integer)).with_for_update(skip_locked=True))
        self._hide = db.direct(
            queue_messages.update().where(queue_messages.c.id == sa.bindparam("b_id"))
            .values(visible_at=sa.bindparam("b_until"), receipt=sa.bindparam("b_receipt"),
                    receive_count=sa.bindparam("b_count")))
        self._delete = db.direct(queue_messages.delete().where(
            queue_messages.c.id == sa.bindparam("b_id"),
            queue_messages.c.receipt == sa.bindparam("b_receipt")))

    async def send_batch(self, bodies: Sequence[str]) -> None:
        if not bodies:
            return
        async with self._db.write() as conn:
            await self.send_batch_in(conn, bodies)

    def shares(self, db: Database) -> bool:
        """True when the queue lives in ``db``, so one transaction can cover both."""
        return db is self._db

    async def send_batch_in(self, conn: AsyncConnection, bodies: Sequence[str]) -> None:
        """Enqueue inside the caller's write transaction (visible when it commits)."""
        if not bodies:
            return
        now = now_us()
        await self._insert.many(conn, [
            {"queue": self._name, "body": b, "visible_at": now, "receive_count": 0,
             "created_at": now} for b in bodies])
        self._db.after_commit(conn, self._committed)  # a receiver woken before would find nothing

    def _rung(self) -> None:
        """Another process committed messages: wake an idle receiver (an active one polls)."""
        if asyncio.get_running_loop().time() >= self._active_until:
            self._arrived.set()

    def _committed(self) -> None:
        self._arrived.set()
        if self._doorbell is not None:
            self._doorbell.ring()

    async def receive(self, max_messages: int, wait_seconds: float) -> list[QueuedMessage]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        listening = self._doorbell is not None and self._doorbell.listen(self._rung)
        while True:
            self._arrived.clear()
            messages = await self._take(max_messages)
            now = loop.time()
            if messages:
                self._active_until = now + ACTIVE_FOR
                return messages
            remaining = deadline - now
            if remaining <= 0:
                return messages
            poll = self._poll
            if listening and now >= self._active_until:
                poll = max(poll, POLL_WHEN_LISTENING)
            try:
                await asyncio.wait_for(self._arrived.wait(), min(poll, remaining))
            except TimeoutError:
                pass

    async def _any_visible(self, now: int) -> bool:
        """A read, which never waits for SQLite's one writer: polling an empty queue (idle
        workers, a batch topping up) takes no write lock from the gateway's commits."""
        async with self._db.read(short=True) as conn:
            return bool(await self._peek.rows(conn, {"b_now": now}))

    async def _take(self, max_messages: int) -> list[QueuedMessage]:
        now = now_us()
        if not await self._any_visible(now):
            return []
        async with self._db.write() as conn:
            rows = await self._visible.rows(conn, {"b_now": now, "b_max": max_messages})
            exhausted = [r for r in rows if r["receive_count"] >= self._max_receives]
            for row in exhausted:
                await self._move_to_dlq(conn, row["id"], row["body"], row["receive_count"],
                                        f"received {row['receive_count']} times without success "
                                        f"(max {self._max_receives})")
            taken = [QueuedMessage(str(r["id"]), r["body"], secrets.token_hex(16), r["receive_count"] + 1)
                     for r in rows if r["receive_count"] < self._max_receives]
            if taken:
                until = now + self._visibility_us
                await self._hide.many(conn, [
                    {"b_id": int(m.id), "b_until": until, "b_receipt": m.receipt,
                     "b_count": m.receive_count} for m in taken])
        return taken

    async def ack(self, messages: Sequence[QueuedMessage]) -> None:
        if not messages:
            return
        async with self._db.write() as conn:
            await self._delete.many(conn, [{"b_id": int(m.id), "b_receipt": m.receipt} for m in messages])

    async def extend(self, message: QueuedMessage, seconds: float) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                queue_messages.update()
                .where(queue_messages.c.id == int(message.id),
                       queue_messages.c.receipt == message.receipt)
                .values(visible_at=now_us() + int(seconds * 1e6))
            )

    async def dead_letter(self, message: QueuedMessage, reason: str) -> None:
        async with self._db.write() as conn:
            owned = await conn.execute(
                sa.select(queue_messages.c.id).where(
                    queue_messages.c.id == int(message.id),
                    queue_messages.c.receipt == message.receipt)
            )
            if owned.first() is not None:
                await self._move_to_dlq(conn, int(message.id), message.body,
                                        message.receive_count, reason)

    async def _move_to_dlq(self, conn: AsyncConnection, message_id: int,
                           body: str, receive_count: int, reason: str) -> None:
        await conn.execute(dead_letters.insert().values(
            queue=self._name, body=body, reason=reason, receive_count=receive_count,
            created_at=now_us()))
        await conn.execute(queue_messages.delete().where(queue_messages.c.id == message_id))

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        async with self._db.read() as conn:
            rows = (await conn.execute(
                sa.select(dead_letters).where(dead_letters.c.queue == self._name)
                .order_by(dead_letters.c.id).limit(limit)
            )).all()
        return [DeadLetter(str(r.id), r.body, r.reason, r.receive_count, r.created_at) for r in rows]

    async def dead_letter_count(self) -> int:
        async with self._db.read() as conn:
            return int((await conn.execute(
                sa.select(sa.func.count()).select_from(dead_letters)
                .where(dead_letters.c.queue == self._name))).scalar_one())

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        """Move dead letters back in one transaction: each is on the queue or in the DLQ,
        never both, never neither."""
        query = sa.select(dead_letters.c.id, dead_letters.c.body).where(dead_letters.c.queue == self._name)
        if ids is not None:
            numbers = [int(i) for i in ids if i.isdigit()]
            query = query.where(dead_letters.c.id.in_(numbers))
        async with self._db.write(many_rows=True) as conn:
            rows = (await conn.execute(query.order_by(dead_letters.c.id))).all()
            if rows:
                await self.send_batch_in(conn, [r.body for r in rows])
            for start in range(0, len(rows), 500):  # bound the statement's parameters
                await conn.execute(dead_letters.delete().where(
                    dead_letters.c.id.in_([r.id for r in rows[start:start + 500]])))
        return len(rows)

    async def purge_dead_letters(self) -> int:
        async with self._db.write(many_rows=True) as conn:
            result = await conn.execute(dead_letters.delete().where(dead_letters.c.queue == self._name))
        return int(result.rowcount)

    async def depth(self) -> int:
        async with self._db.read() as conn:
            return int((await conn.execute(
                sa.select(sa.func.count()).select_from(queue_messages)
                .where(queue_messages.c.queue == self._name)
            )).scalar_one())

    async def stats(self) -> QueueStats:
        """Visible and in flight (received, hidden until its visibility timeout) in one read,
        with the dead letters; the embedded queue has no delayed messages."""
        visible = sa.case((queue_messages.c.visible_at <= now_us(), 1), else_=0)
        async with self._db.read() as conn:
            total, ready = (await conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(visible), 0))
                .where(queue_messages.c.queue == self._name))).one()
            dead = (await conn.execute(
                sa.select(sa.func.count()).select_from(dead_letters)
                .where(dead_letters.c.queue == self._name))).scalar_one()
        return QueueStats(visible=int(ready), in_flight=int(total) - int(ready), delayed=0,
                          dead_letters=int(dead))

    async def close(self) -> None:
        if self._doorbell is not None:
            self._doorbell.close()
