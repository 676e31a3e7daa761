"""Chunk messages held until their notification's ``send_at`` (see ``scheduled_messages``).

Two ways out, one per kind of queue (chosen in ``dispatcher.queue.enqueue``):

* :meth:`ScheduleStore.due_in` + :meth:`ScheduleStore.delete_in`, inside the caller's write
  transaction, for the embedded queue that lives in the same database: a due message moves to
  the queue exactly once, whichever worker does it, whenever it crashes;
* :meth:`ScheduleStore.claim_due` then :meth:`ScheduleStore.delete`, for a queue elsewhere
  (SQS): a due message is leased to one worker, sent, then deleted. A crash between the send
  and the delete sends it again after the lease: a duplicate chunk message, which the ledger
  makes harmless (rows already final are not sent again).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.model import Held, now_us
from dispatcher.store.database import Database
from dispatcher.store.schema import scheduled_messages

__all__ = ["Held", "ScheduleStore"]

_T = scheduled_messages


class ScheduleStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._insert = db.direct(_T.insert(), ("notification_id", "version", "due_at", "body",
                                               "claimed_until", "created_at"))

    async def add_in(self, conn: AsyncConnection, held: Sequence[Held]) -> None:
        if not held:
            return
        now = now_us()
        await self._insert.many(conn, [
            {"notification_id": h.notification_id, "version": h.version, "due_at": h.due_at,
             "body": h.body, "claimed_until": None, "created_at": now} for h in held])

    async def due_in(self, conn: AsyncConnection, now: int, limit: int) -> list[tuple[int, str]]:
        """The due messages (oldest due first), inside the caller's write transaction."""
        query = (sa.select(_T.c.id, _T.c.body).where(_T.c.due_at <= now)
                 .order_by(_T.c.due_at, _T.c.id).limit(limit))
        if self._db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return [(r.id, r.body) for r in (await conn.execute(query)).all()]

    async def delete_in(self, conn: AsyncConnection, ids: Sequence[int]) -> None:
        if ids:
            await conn.execute(_T.delete().where(_T.c.id.in_(list(ids))))

    async def claim_due(self, now: int, limit: int, lease_us: int) -> list[tuple[int, str]]:
        """Lease up to ``limit`` due messages nobody holds (or whose lease ran out)."""
        free = sa.or_(_T.c.claimed_until.is_(None), _T.c.claimed_until < now)
        pick = (sa.select(_T.c.id).where(_T.c.due_at <= now, free)
                .order_by(_T.c.due_at, _T.c.id).limit(limit))
        if self._db.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        async with self._db.write() as conn:
            rows = (await conn.execute(
                _T.update().where(_T.c.id.in_(pick.scalar_subquery()), free)
                .values(claimed_until=now + lease_us).returning(_T.c.id, _T.c.body))).all()
        return [(r.id, r.body) for r in rows]

    async def delete(self, ids: Sequence[int]) -> None:
        if ids:
            async with self._db.write() as conn:
                await self.delete_in(conn, ids)

    async def cancel_in(self, conn: AsyncConnection, notification_id: str) -> int:
        """Drop every held message of a notification; how many there were."""
        result = await conn.execute(_T.delete().where(_T.c.notification_id == notification_id))
        return int(result.rowcount or 0)

    async def next_due(self) -> int | None:
        """When the earliest held message is due (µs), or None."""
        async with self._db.read() as conn:
            value = (await conn.execute(sa.select(sa.func.min(_T.c.due_at)))).scalar()
        return None if value is None else int(value)
