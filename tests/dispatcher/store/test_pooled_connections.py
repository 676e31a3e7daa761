"""A pooled PostgreSQL connection whose server side is gone (a restart, a killed backend) is
found out at checkout and replaced: the caller gets a live connection, not an error; a live
one is used again."""

from __future__ import annotations

import psycopg
import sqlalchemy as sa
from support import POSTGRES_ADMIN_URL

from dispatcher.store.database import Database


async def _backend_pid(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())


def _terminate(pid: int) -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        # Gone once the server no longer lists it (pg_terminate_backend only signals it).
        for _ in range(500):
            if conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                            (pid,)).fetchone() == (0,):
                return
            conn.execute("SELECT pg_sleep(0.01)")
    raise AssertionError(f"backend {pid} still listed after pg_terminate_backend")


async def test_a_pooled_connection_whose_backend_died_is_replaced_before_use(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        first = await _backend_pid(db)
        _terminate(first)
        assert await _backend_pid(db) != first  # no error: the checkout found it closed
    finally:
        await db.close()


async def test_a_live_pooled_connection_is_used_again(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        first = await _backend_pid(db)
        for _ in range(5):
            assert await _backend_pid(db) == first
    finally:
        await db.close()
