"""Statements run straight on the driver's connection (``dispatcher.store.direct``: SQLite's
inside a write transaction, psycopg's in any) do what the engine does with the same statement:
the same rows, JSON written and read the same way, expanding ``IN`` lists, and SQLAlchemy's
errors; on SQLite outside a write transaction they go through the engine. A PostgreSQL
connection that dies under a direct statement is invalidated, as the engine does, and the
next transaction gets a live one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from support import POSTGRES_ADMIN_URL

from dispatcher.store.database import Database
from dispatcher.store.schema import notifications

_COLUMNS = ("id", "service", "version", "template", "data", "state", "category", "locale",
            "channels", "recipients", "created_at", "updated_at")


def _header(nid: str, data: object) -> dict[str, object]:
    return {"id": nid, "service": "app", "version": 1, "template": "t", "data": data,
            "state": None, "category": "c", "locale": None, "channels": ["email", "push"],
            "recipients": 1, "created_at": 1, "updated_at": 1}


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.create_schema()
    yield database
    await database.close()


async def test_rows_written_directly_read_back_as_the_engine_writes_them(db: Database) -> None:
    insert = db.direct(db.insert(notifications).on_conflict_do_nothing(
        index_elements=[notifications.c.id]).returning(notifications.c.id), _COLUMNS)
    select = db.direct(sa.select(notifications.c.id, notifications.c.data, notifications.c.channels)
                       .where(notifications.c.id.in_(sa.bindparam("ids", expanding=True)))
                       .order_by(notifications.c.id))
    update = db.direct(notifications.update().where(notifications.c.id == sa.bindparam("b_id"))
                       .values(data=sa.bindparam("b_data")))
    data = {"name": "Zoë", "n": [1, 2.5, None], "nested": {"ok": True}}
    seen: list[str] = []  # what went through the engine
    event.listen(db.engine.sync_engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_: seen.append(statement.split()[0]))
    async with db.write() as conn:
        made = await insert.rows(conn, _header("a", data))
        again = await insert.rows(conn, _header("a", {"other": 1}))  # the conflict: nothing
        await conn.execute(notifications.insert(), [_header("b", {"by": "engine"})])
        await update.many(conn, [{"b_id": "b", "b_data": {"by": "direct"}}])
        inside = await select.rows(conn, {"ids": ["a", "b", "missing"]})
    assert (made, again) == ([{"id": "a"}], [])
    # Only the engine's own INSERT went through it (SQLite's BEGIN IMMEDIATE, with the lock
    # free, started in the driver: FusedConnection.begin_here).
    assert seen == ["INSERT"]
    expected = [{"id": "a", "data": data, "channels": ["email", "push"]},
                {"id": "b", "data": {"by": "direct"}, "channels": ["email", "push"]}]
    assert inside == expected
    async with db.read() as conn:  # the engine reads what was written directly, and vice versa
        assert [dict(r._mapping) for r in await conn.execute(select.statement, {"ids": ["a", "b"]})] == expected
        assert await select.rows(conn, {"ids": ["b", "a"]}) == expected  # SQLite: the engine


async def test_a_failing_statement_raises_sqlalchemys_error_and_rolls_back(db: Database) -> None:
    insert = db.direct(notifications.insert(), _COLUMNS)
    with pytest.raises(sa.exc.IntegrityError):
        async with db.write() as conn:
            await insert.many(conn, [_header("a", {})])
            await insert.many(conn, [_header("a", {})])  # the same primary key
    async with db.read() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(notifications))).scalar_one() == 0


def test_an_insert_that_would_miss_a_column_or_a_default_is_refused_when_built(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/d.db")
    with pytest.raises(ValueError, match="binds more than the keys given"):
        db.direct(notifications.insert().values(version=sa.bindparam("v")), ("id",))
    with_default = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column("n", sa.Integer, default=5))
    with pytest.raises(ValueError, match="Python-side defaults"):  # the engine would fill n in
        db.direct(with_default.insert(), ("id",))


@pytest.mark.parametrize("through", ["direct", "engine"])
async def test_a_postgresql_connection_killed_in_a_write_is_the_stores_error_and_replaced(
        postgres_url: str, through: str) -> None:
    db = Database(postgres_url)
    await db.create_schema()
    pid = db.direct(sa.select(sa.func.pg_backend_pid().label("pid")))
    try:
        with pytest.raises(sa.exc.DBAPIError) as raised:  # what the API answers 503 for
            async with db.write() as conn:
                killed = (await pid.rows(conn, {}))[0]["pid"]
                with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (killed,))
                if through == "direct":
                    await pid.rows(conn, {})
                else:
                    await conn.execute(pid.statement)
        assert raised.value.connection_invalidated
        async with db.write() as conn:  # no error: the pool made a new connection
            assert (await pid.rows(conn, {}))[0]["pid"] != killed
    finally:
        await db.close()
