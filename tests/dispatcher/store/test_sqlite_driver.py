"""The embedded store's SQLite driver (dispatcher.store.sqlite_driver): one trip to its thread
per statement, none while holding the write lock, and what must not change with that: a
writer waits for another process's writer, a failed statement rolls its transaction back,
results come back whole."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from dispatcher.store.database import Database

users = sa.Table("people", sa.MetaData(), sa.Column("id", sa.String, primary_key=True),
                 sa.Column("email", sa.String, nullable=False), sa.Column("locale", sa.String))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'driver.db'}")
    async with database.write() as conn:
        await conn.run_sync(users.metadata.create_all)
    yield database
    await database.close()


def _user(i: int) -> dict[str, object]:
    return {"id": f"u{i}", "email": f"u{i}@example.com"}


async def test_a_writer_waits_for_another_processs_writer_and_the_event_loop_keeps_going(
        db: Database, tmp_path: Path) -> None:
    held, release = threading.Event(), threading.Event()

    def other_process() -> None:  # another connection to the file, as a worker process has
        conn = sqlite3.connect(tmp_path / "driver.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO people (id, email) VALUES ('other', 'o@example.com')")
        held.set()
        release.wait(30)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=other_process)
    holder.start()
    assert await asyncio.to_thread(held.wait, 30)

    async def write() -> None:
        async with db.write() as conn:
            await conn.execute(users.insert(), [_user(1)])

    writer = asyncio.create_task(write())
    ticks = 0
    while ticks < 50:  # the loop runs other work while the writer waits for the lock
        await asyncio.sleep(0.001)
        ticks += 1
    assert not writer.done()
    release.set()
    await asyncio.wait_for(writer, 30)
    await asyncio.to_thread(holder.join, 30)
    async with db.read() as conn:
        ids = (await conn.execute(sa.select(users.c.id).order_by(users.c.id))).scalars().all()
    assert ids == ["other", "u1"]


async def test_a_failed_statement_rolls_its_transaction_back_and_the_connection_goes_on(
        db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(users.insert(), [_user(1)])
    with pytest.raises(sa.exc.IntegrityError):
        async with db.write() as conn:
            await conn.execute(users.insert(), [_user(2)])
            await conn.execute(users.insert(), [_user(1)])  # the same id again
    async with db.write() as conn:
        await conn.execute(users.insert(), [_user(3)])
    async with db.read() as conn:
        ids = (await conn.execute(sa.select(users.c.id).order_by(users.c.id))).scalars().all()
    assert ids == ["u1", "u3"]


async def test_results_come_back_whole_with_their_counts(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(users.insert(), [_user(i) for i in range(2_500)])
        updated = await conn.execute(users.update().where(users.c.id.like("u1%")).values(locale="ko-KR"))
        assert updated.rowcount == 1 + 10 + 100 + 1_000
    async with db.read() as conn:
        result = await conn.execute(sa.select(users.c.id, users.c.locale).order_by(users.c.id))
        first = result.fetchone()
        rest = result.fetchall()
    assert first is not None and first.id == "u0"
    assert len(rest) == 2_499
    assert sum(1 for r in [first, *rest] if r.locale == "ko-KR") == 1_111


async def test_a_write_transaction_runs_in_the_callers_thread_and_a_read_in_the_drivers(
        tmp_path: Path) -> None:
    """Every other writer of the file waits while one holds the lock, so its statements must
    not wait for turns of a busy event loop; a read, or a write of many rows (a cancel, a
    prune), which can be long, must not block the loop."""
    database = Database(f"sqlite:///{tmp_path / 'threads.db'}")

    @event.listens_for(database.engine.sync_engine, "connect")
    def _thread_function(dbapi_conn: object, _record: object) -> None:
        sqlite_conn = dbapi_conn.driver_connection._conn  # type: ignore[attr-defined]
        sqlite_conn.create_function("thread_id", 0, threading.get_ident)

    try:
        async with database.write() as conn:
            await conn.run_sync(users.metadata.create_all)
            await conn.execute(users.insert(), [_user(1)])
            in_write = (await conn.execute(sa.text("SELECT thread_id()"))).scalar_one()
        async with database.write(many_rows=True) as conn:
            await conn.execute(users.insert(), [_user(2)])
            in_long_write = (await conn.execute(sa.text("SELECT thread_id()"))).scalar_one()
        async with database.read() as conn:
            in_read = (await conn.execute(sa.text("SELECT thread_id()"))).scalar_one()
            stored = (await conn.execute(sa.select(users.c.id).order_by(users.c.id))).scalars().all()
        async with database.read(short=True) as conn:
            in_short_read = (await conn.execute(sa.text("SELECT thread_id()"))).scalar_one()
        async with database.write() as conn:  # the short read ended: the next write goes on
            await conn.execute(users.insert(), [_user(3)])
        async with database.read() as conn:
            after = (await conn.execute(sa.select(users.c.id).order_by(users.c.id))).scalars().all()
    finally:
        await database.close()
    assert in_write == threading.get_ident()
    assert in_long_write != threading.get_ident()
    assert in_read != threading.get_ident()
    assert in_short_read == threading.get_ident()  # a few keyed rows: no trip
    assert stored == ["u1", "u2"]
    assert after == ["u1", "u2", "u3"]


async def test_a_write_transaction_commits_in_the_callers_thread(tmp_path: Path) -> None:
    """The lock is held until the commit is done: a trip to the driver's thread for it made
    every other writer wait for that thread to wake up too. A write of many rows commits
    from the driver's thread (its commit may write many pages)."""
    database = Database(f"sqlite:///{tmp_path / 'commits.db'}")
    commits: list[int] = []

    @event.listens_for(database.engine.sync_engine, "connect")
    def _trace(dbapi_conn: object, _record: object) -> None:
        sqlite_conn = dbapi_conn.driver_connection._conn  # type: ignore[attr-defined]
        sqlite_conn.set_trace_callback(
            lambda sql: commits.append(threading.get_ident()) if sql == "COMMIT" else None)

    try:
        async with database.write() as conn:
            await conn.run_sync(users.metadata.create_all)
        commits.clear()
        async with database.write() as conn:
            await conn.execute(users.insert(), [_user(1)])
        in_write = list(commits)
        commits.clear()
        async with database.write(many_rows=True) as conn:
            await conn.execute(users.insert(), [_user(2)])
        in_long_write = list(commits)
        async with database.read() as conn:
            stored = (await conn.execute(sa.select(users.c.id).order_by(users.c.id))).scalars().all()
    finally:
        await database.close()
    assert in_write == [threading.get_ident()]
    assert len(in_long_write) == 1 and in_long_write[0] != threading.get_ident()
    assert stored == ["u1", "u2"]


async def test_a_short_read_sees_what_was_committed_while_another_process_writes(
        db: Database, tmp_path: Path) -> None:
    """A short read runs on the event loop's thread: it must never wait for a writer (WAL),
    and it sees the last commit, not the writer's transaction in progress."""
    async with db.write() as conn:
        await conn.execute(users.insert(), [_user(1)])
    other = sqlite3.connect(tmp_path / "driver.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock…
        other.execute("INSERT INTO people (id, email) VALUES ('other', 'o@example.com')")
        async with db.read(short=True) as conn:  # …and the short read goes on at once
            seen = (await conn.execute(sa.select(users.c.id).order_by(users.c.id))).scalars().all()
        other.execute("COMMIT")
        async with db.read(short=True) as conn:
            now = (await conn.execute(sa.select(users.c.id).order_by(users.c.id))).scalars().all()
    finally:
        other.close()
    assert seen == ["u1"]
    assert now == ["other", "u1"]
