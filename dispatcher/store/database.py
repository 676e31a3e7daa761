"""One async engine per process, with the differences between SQLite and PostgreSQL kept here.

SQLite (the embedded default) runs in WAL mode, through aiosqlite with one trip to its
thread per statement (:mod:`dispatcher.store.sqlite_driver`); write transactions start with
``BEGIN IMMEDIATE``, which waits for another process's writer, instead of failing with
"database is locked" when a read transaction tries to upgrade. PostgreSQL uses psycopg 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from dispatcher.errors import ConfigurationError, Unavailable
from dispatcher.store.direct import Direct
from dispatcher.store.schema import add_missing_indexes, metadata
from dispatcher.store.sqlite_driver import (
    BEGIN_IMMEDIATE,
    BEGIN_IMMEDIATE_MANY_ROWS,
    BEGIN_SHORT_READ,
    connector,
)

__all__ = ["Database", "RowsInsert"]

_BEGIN = "dispatcher_begin"  # the execution option: the statement a write transaction starts with
_BUSY_TIMEOUT_MS = 60_000
_AFTER_COMMIT = "dispatcher_after_commit"  # a write transaction's callbacks, in conn.info
_NO_LOCK = contextlib.nullcontext()  # PostgreSQL's writers don't queue in the process
_SCHEMA_LOCK = 0x6E6F7469  # any constant shared by every dispatcher process


def _async_url(url: str) -> str:
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://"):]
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class Database:
    """The engine plus the few dialect switches the stores need. ``writes_first``: on SQLite,
    this process's writers take the write lock ahead of other processes' waiting for it
    (the API process: a caller waits for its commits; see ``dispatcher.store.sqlite_driver``)."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL",
                 writes_first: bool = False) -> None:
        self.url = url
        try:
            async_url = _async_url(url)
            self.engine: AsyncEngine = create_async_engine(async_url,
                                                           **_engine_args(async_url, writes_first))
        except (sa.exc.ArgumentError, ValueError) as exc:
            raise ConfigurationError(f"DISPATCHER_DATABASE_URL {_shown(url)} is not usable: {exc}") from exc
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine, sqlite_synchronous)
        else:
            event.listen(self.engine.sync_engine.pool, "checkout", _refuse_if_closed_by_server)
        self._writer = self.engine.execution_options(**{_BEGIN: BEGIN_IMMEDIATE})
        self._many_rows_writer = self.engine.execution_options(**{_BEGIN: BEGIN_IMMEDIATE_MANY_ROWS})
        self._short_reader = (self.engine.execution_options(**{_BEGIN: BEGIN_SHORT_READ})
                              if self.dialect == "sqlite" else self.engine)
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        #: The SQLite database's file (None: PostgreSQL, or SQLite in memory).
        self.sqlite_file: Path | None = None
        name = self.engine.url.database
        if self.dialect == "sqlite" and name and name != ":memory:" and not name.startswith("file:"):
            self.sqlite_file = Path(name)

    @asynccontextmanager
    async def write(self, *, many_rows: bool = False) -> AsyncIterator[AsyncConnection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success.

        SQLite has one writer at a time. Writers of this process queue on an asyncio lock
        instead of on SQLite's busy handler, which sleeps in steps of up to 100 ms and turned
        a busy gateway's p99 into seconds. ``many_rows``: a transaction whose statements may
        touch thousands of rows (a cancel, a prune, a resend): on SQLite they run in the
        driver's thread, so this process's event loop goes on meanwhile (the others'
        statements run on it while they hold the lock: ``dispatcher.store.sqlite_driver``)."""
        writer = self._many_rows_writer if many_rows else self._writer
        committed: list[Callable[[], None]] = []
        async with self._write_lock or _NO_LOCK, writer.begin() as conn:
            # The pooled connection's own dict: ``conn.info`` itself raises once a disconnect
            # has invalidated ``conn``, which would hide the disconnect's error.
            info = conn.info
            info[_AFTER_COMMIT] = committed
            try:
                yield conn
            finally:
                del info[_AFTER_COMMIT]
        for callback in committed:  # only once the transaction has committed
            callback()

    @staticmethod
    def after_commit(conn: AsyncConnection, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the :meth:`write` transaction of ``conn`` has committed (not
        at all if it rolls back); at once outside such a transaction."""
        pending = conn.info.get(_AFTER_COMMIT)
        if pending is None:
            callback()
        elif callback not in pending:
            pending.append(callback)

    @asynccontextmanager
    async def read(self, *, short: bool = False) -> AsyncIterator[AsyncConnection]:
        """A read transaction. ``short``: a few rows by their keys (a unit of work's users, the
        queue's next message): on SQLite its statements run in the caller's thread, with no
        trip to the driver's (``dispatcher.store.sqlite_driver``); a read that may be long
        (a listing, a count) must not say so."""
        async with (self._short_reader if short else self.engine).connect() as conn:
            if short:  # begun now, not at its first statement: Direct's run on the driver from the first
                await conn.begin()
            yield conn

    def insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT, which has ``on_conflict_do_nothing`` / ``_do_update``."""
        return (sqlite.insert if self.dialect == "sqlite" else postgresql.insert)(table)

    def insert_rows(self, table: sa.Table, columns: Sequence[str],
                    finish: Callable[[Any], Any] = lambda insert: insert) -> RowsInsert:
        """An INSERT of many rows of ``columns`` at once (see :class:`RowsInsert`); ``finish``
        adds its ``ON CONFLICT`` and ``RETURNING`` to the dialect's INSERT it is given."""
        return RowsInsert(self, table, columns, finish)

    def direct(self, statement: Any, keys: Sequence[str] | None = None) -> Direct:
        """``statement``, run straight on the driver's connection (SQLite's inside this
        process's write transactions, psycopg's in any; see
        :class:`~dispatcher.store.direct.Direct`); ``keys``: an INSERT's columns."""
        return Direct(statement, self.engine.dialect, keys)

    async def create_schema(self) -> None:
        """Create missing tables, and add missing nullable columns to existing ones (a database
        made by an older release upgrades in place). Processes starting together (a gateway
        and its workers) take turns: an advisory lock on PostgreSQL, the write lock on SQLite.

        The first use of the database at start: one that can't be reached (or refuses us)
        is :class:`~dispatcher.errors.Unavailable` naming it, password hidden."""
        try:
            async with self.write() as conn:
                if self.dialect == "postgresql":
                    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                                       {"key": _SCHEMA_LOCK})
                await conn.run_sync(metadata.create_all)
                await conn.run_sync(_add_missing_columns)
                await conn.run_sync(add_missing_indexes)
        except (sa.exc.OperationalError, sa.exc.InterfaceError, OSError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise Unavailable(f"the database {_shown(self.url)} can't be used: {reason}") from exc

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


def _add_missing_columns(conn: sa.Connection) -> None:
    """``ALTER TABLE … ADD COLUMN`` for each column the schema has and the table lacks. Only
    additive changes happen this way, so a new column must be nullable or have a default."""
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable and column.server_default is None:
                raise RuntimeError(f"cannot add {table.name}.{column.name} to an existing database: "
                                   "a new column must be nullable or have a server default")
            ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))


def _shown(url: str) -> str:
    """``url`` without its password, to print."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return repr(url.split("@")[-1])


class RowsInsert:
    """An INSERT of many rows, given as dicts of its columns, whose SQL is one constant text.

    On PostgreSQL the rows go as one array per column, ``INSERT … SELECT … FROM unnest(…)``:
    the same statement whatever the number of rows, so psycopg parses it once and PostgreSQL
    prepares it once. SQLAlchemy's executemany of an ``INSERT … RETURNING`` renders a
    ``VALUES`` list as long as the batch instead, a new text each time, which psycopg parsed
    again on every call (6 % of a production worker's CPU, nearly all of it the ledger's
    INSERT); without ``RETURNING`` (the feed's upsert) psycopg sent one INSERT per row, in a
    pipeline. One row still goes as a plain ``VALUES`` row, whose text doesn't change either
    and which costs less than thirteen one-item arrays. The casts name each column's type
    without its length, so an over-long value fails as it did in ``VALUES``, not silently
    truncated. On SQLite the rows go straight to SQLite's connection inside a write
    transaction (executemany, or one execution per row for ``RETURNING``), else as
    SQLAlchemy's executemany. Either way through :class:`~dispatcher.store.direct.Direct`.
    """

    def __init__(self, db: Database, table: sa.Table, columns: Sequence[str],
                 finish: Callable[[Any], Any]) -> None:
        self._one: Direct = db.direct(finish(db.insert(table)), columns)
        self._unnest: _Unnest | None = None
        self._from_arrays: Direct | None = None
        if db.dialect != "postgresql":
            return
        self._unnest = _Unnest({name: table.c[name].type for name in columns})
        source = self._unnest.source
        self._from_arrays = db.direct(finish(db.insert(table).from_select(
            list(columns), sa.select(*(source.c[name] for name in columns)))))

    async def run(self, conn: AsyncConnection, rows: Sequence[Mapping[str, object]]) -> None:
        """Insert ``rows`` (each with every one of the columns)."""
        if self._unnest is None:
            await self._one.many(conn, rows)
        elif rows:
            await self._execute(conn, rows)

    async def returned(self, conn: AsyncConnection,
                       rows: Sequence[Mapping[str, object]]) -> list[dict[str, Any]]:
        """Insert ``rows``; what its ``RETURNING`` gave, as dicts."""
        if self._unnest is None:
            return await self._one.each(conn, rows)
        if not rows:
            return []
        return await self._execute(conn, rows)

    async def _execute(self, conn: AsyncConnection,
                       rows: Sequence[Mapping[str, object]]) -> list[dict[str, Any]]:
        assert self._unnest is not None and self._from_arrays is not None
        if len(rows) == 1:
            return await self._one.rows(conn, rows[0])
        return await self._from_arrays.rows(conn, self._unnest.params(rows))


class _Unnest:
    """PostgreSQL's ``unnest(CAST(:rows_a AS T[]), …) AS anon(a, …)``: rows as one array per
    column. JSON values go as their text, cast twice (SQLAlchemy doesn't serialise the items
    of a JSON array)."""

    def __init__(self, columns: Mapping[str, sa.types.TypeEngine[Any]]) -> None:
        self.names = tuple(columns)
        self.json = frozenset(name for name, kind in columns.items() if isinstance(kind, sa.JSON))
        arrays: list[Any] = []
        for name, kind in columns.items():
            # The type without its length: an over-long value fails at the column, not cut.
            element = sa.Text() if name in self.json else type(kind)()
            array: Any = sa.cast(sa.bindparam(_ARRAY_PREFIX + name), postgresql.ARRAY(element))
            if name in self.json:
                array = sa.cast(array, postgresql.ARRAY(sa.JSON()))
            arrays.append(array)
        self.source = sa.func.unnest(*arrays).table_valued(*self.names).render_derived()

    def params(self, rows: Sequence[Mapping[str, object]]) -> dict[str, object]:
        return {_ARRAY_PREFIX + name: ([json.dumps(row[name]) for row in rows] if name in self.json
                                       else [row[name] for row in rows])
                for name in self.names}


_ARRAY_PREFIX = "rows_"


def _engine_args(url: str, writes_first: bool) -> dict[str, Any]:
    if url.startswith("sqlite"):
        parsed = sa.engine.make_url(url)
        args, kwargs = parsed.get_dialect()().create_connect_args(parsed)
        kwargs.setdefault("timeout", _BUSY_TIMEOUT_MS / 1000)
        return {"async_creator": connector(args, kwargs, lock_timeout=_BUSY_TIMEOUT_MS / 1000,
                                           busy_timeout_ms=_BUSY_TIMEOUT_MS,
                                           first_in_line=writes_first),
                "pool_size": 8, "max_overflow": 8}
    return {"pool_size": 10, "max_overflow": 10}


def _refuse_if_closed_by_server(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """At checkout: a pooled PostgreSQL connection the server has spoken on while it sat idle
    is replaced (``DisconnectionError``: the pool discards it and checks out another).

    A server that ends a connection (a restart, ``pg_terminate_backend``, an idle timeout)
    sends its FATAL notice and closes the socket, which makes it readable; a healthy idle
    connection has nothing to read. This asks the kernel, where SQLAlchemy's ``pool_pre_ping``
    sent a ``SELECT 1`` and waited for it at every checkout: a round trip to PostgreSQL per
    transaction (5 % of the production gateway's CPU at 50 notifications/s, one transaction
    per request, and PostgreSQL's work for each). What neither catches is a connection that
    dies between the check and its first statement: that transaction fails, SQLAlchemy
    invalidates the pool, and the caller sees the store unavailable (the API's 503; a
    worker's message comes back)."""
    conn = dbapi_conn.driver_connection
    if conn.closed or conn.broken:
        raise sa.exc.DisconnectionError("the connection is closed")
    poll = select.poll()
    poll.register(conn.pgconn.socket, select.POLLIN | select.POLLPRI)
    if poll.poll(0):
        raise sa.exc.DisconnectionError("the server spoke on (or closed) an idle connection")


def _configure_sqlite(engine: AsyncEngine, synchronous: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how transactions start.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer waits for another process's writer in the driver's thread, in steps of at
        # most 2 ms (dispatcher.store.sqlite_driver): SQLite's own busy handler sleeps 1, 2, 5,
        # 10, … up to 100 ms between tries, and with a gateway and worker processes writing
        # the same file every accept that met a worker's transaction waited tens of
        # milliseconds after the lock was free (bench small: accept p99 400 ms at 50/s).
        # Started in this thread when it needs no wait (FusedConnection.begin_here); else the
        # statement goes the usual way and the driver's thread waits for the lock.
        begin = conn.get_execution_options().get(_BEGIN, "BEGIN")
        if not conn.connection.driver_connection.begin_here(begin):
            conn.exec_driver_sql(begin)


def _switch_to_wal(cursor: Any, attempts: int = 100) -> None:
    """``PRAGMA journal_mode=WAL`` answers "database is locked" at once, without the busy
    handler, while another process opens the same new file: retry for a few seconds."""
    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # sqlite3.OperationalError, from the driver's thread
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)
