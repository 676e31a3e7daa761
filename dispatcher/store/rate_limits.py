"""GCRA reservations in the store's database (see ``dispatcher.ratelimit``): one upsert that
returns the new theoretical arrival time, atomic on SQLite (one writer) and PostgreSQL (the
row's lock)."""

from __future__ import annotations

import sqlalchemy as sa

from dispatcher.model import now_us
from dispatcher.store.database import Database
from dispatcher.store.schema import rate_limits

__all__ = ["DatabaseReserver"]


class DatabaseReserver:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def reserve(self, key: str, n: int, interval_us: int) -> int:
        now, span = now_us(), n * interval_us
        stmt = self._db.insert(rate_limits).values(key=key, tat=now + span)
        later = sa.case((rate_limits.c.tat > now, rate_limits.c.tat), else_=now) + span
        stmt = stmt.on_conflict_do_update(index_elements=[rate_limits.c.key],
                                          set_={"tat": later}).returning(rate_limits.c.tat)
        async with self._db.write() as conn:
            tat = int((await conn.execute(stmt)).scalar_one())
        return tat - span
