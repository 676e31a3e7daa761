"""The in-app feed: entries per user, newest first, updated in place by later versions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.model import FeedEntry, now_us
from dispatcher.pagination import decode_cursor, encode_cursor
from dispatcher.store.database import Database
from dispatcher.store.schema import inbox

__all__ = ["FeedStore"]


class FeedStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # In every unit of work with in-app rows: built once (an entry's updated_at is the
        # inserted row's, i.e. now).
        self._write = db.insert_rows(inbox, [c.name for c in inbox.columns], lambda insert: (
            insert.on_conflict_do_update(
                index_elements=[inbox.c.user_id, inbox.c.notification_id],
                set_={
                    "version": insert.excluded.version, "title": insert.excluded.title,
                    "body": insert.excluded.body, "state": insert.excluded.state,
                    "category": insert.excluded.category, "read": False,
                    "updated_at": insert.excluded.updated_at,
                },
                where=inbox.c.version < insert.excluded.version,
            )))

    async def write(self, conn: AsyncConnection, entries: Sequence[FeedEntry]) -> None:
        """Insert entries, or refresh existing ones that hold an older version (unread again).

        Runs inside the caller's transaction, so that the ledger row and the entry commit
        together."""
        if not entries:
            return
        # One statement may not upsert a row twice: of one entry's versions (a notification
        # and its update in one batch), the newest is the one the upsert would leave.
        newest: dict[tuple[str, str], FeedEntry] = {}
        for e in entries:
            kept = newest.get((e.user_id, e.notification_id))
            if kept is None or e.version > kept.version:
                newest[(e.user_id, e.notification_id)] = e
        entries = list(newest.values())
        now = now_us()
        await self._write.run(conn, [
            {"user_id": e.user_id, "notification_id": e.notification_id, "version": e.version,
             "title": e.title, "body": e.body, "state": e.state, "category": e.category,
             "read": False, "created_at": now, "updated_at": now}
            for e in entries
        ])

    async def list(
        self, user_id: str, *, limit: int, cursor: str | None = None, unread_only: bool = False,
    ) -> tuple[list[dict[str, Any]], str | None]:
        query = sa.select(inbox).where(inbox.c.user_id == user_id)
        if unread_only:
            query = query.where(inbox.c.read.is_(False))
        if cursor:
            created_at, notification_id = decode_cursor(cursor, 2)
            query = query.where(sa.or_(
                inbox.c.created_at < created_at,
                sa.and_(inbox.c.created_at == created_at, inbox.c.notification_id < notification_id),
            ))
        query = query.order_by(inbox.c.created_at.desc(), inbox.c.notification_id.desc())
        async with self._db.read() as conn:
            rows = (await conn.execute(query.limit(limit + 1))).all()
        page = [dict(r._mapping) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["notification_id"])
        return page, next_cursor

    async def unread_count(self, user_id: str) -> int:
        async with self._db.read() as conn:
            return int((await conn.execute(
                sa.select(sa.func.count()).select_from(inbox)
                .where(inbox.c.user_id == user_id, inbox.c.read.is_(False))
            )).scalar_one())

    async def mark_read(self, user_id: str, notification_id: str) -> bool:
        """True when the user has that entry (read already or not)."""
        async with self._db.write() as conn:
            result = await conn.execute(
                inbox.update()
                .where(inbox.c.user_id == user_id, inbox.c.notification_id == notification_id)
                .values(read=True)
            )
        return bool(result.rowcount)

    async def mark_all_read(self, user_id: str) -> int:
        async with self._db.write() as conn:
            result = await conn.execute(
                inbox.update().where(inbox.c.user_id == user_id, inbox.c.read.is_(False))
                .values(read=True)
            )
        return int(result.rowcount)

    async def categories(self, user_id: str, *, limit: int = 100) -> tuple[str, ...]:
        """The categories of the user's feed entries (at most ``limit``; the feed index's
        user prefix serves it)."""
        async with self._db.read() as conn:
            rows = (await conn.execute(
                sa.select(inbox.c.category).where(inbox.c.user_id == user_id)
                .distinct().order_by(inbox.c.category).limit(limit)
            )).all()
        return tuple(str(r[0]) for r in rows)
