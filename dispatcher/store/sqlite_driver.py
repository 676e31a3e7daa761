"""aiosqlite with one trip to the driver's thread per statement.

SQLite runs in a thread of its own per connection (aiosqlite); the event loop hands it work
and waits for the answer. Each hand-over costs two thread wake-ups and a trip through the
event loop. SQLAlchemy's async adapter makes four of them per statement (open a cursor,
execute, fetch, close the cursor), plus three for a ``BEGIN IMMEDIATE`` with its busy-timeout
switches: one gateway commit of one request was about 50 hand-overs and 4.3 ms of CPU, most
of it the hand-overs themselves, and the worker's units of work pay the same per statement.

:class:`FusedConnection` is aiosqlite's connection whose cursors do the whole statement
(execute, fetch every row, close) in one trip and answer ``fetch*``, ``description`` and
``rowcount`` from what came back. ``BEGIN IMMEDIATE`` waits for another process's writer in
the driver's thread, in steps of at most 2 ms, instead of SQLite's busy handler (which sleeps
up to 100 ms between tries) or the event loop. A rollback with no transaction open costs no
trip (the pool rolls back every connection it gets back).

Used by :class:`~dispatcher.store.database.Database` through SQLAlchemy's public
``async_creator``; the dialect is still SQLAlchemy's ``sqlite+aiosqlite``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import aiosqlite

__all__ = ["BEGIN_IMMEDIATE", "FusedConnection", "connector"]

#: The statement that starts a write transaction; the driver waits for the lock itself.
BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"

_Description = tuple[tuple[Any, ...], ...] | None


class FusedConnection(aiosqlite.Connection):
    """Takes ``lock_timeout``: how long ``BEGIN IMMEDIATE`` waits for another writer (s)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, lock_timeout: float,
                 busy_timeout_ms: int) -> None:
        super().__init__(connect, iter_chunk_size=64)
        self._lock_timeout = lock_timeout
        self._busy_timeout_ms = busy_timeout_ms
        #: False only when no transaction can be open (after a commit or a rollback).
        self._maybe_in_transaction = True

    def cursor(self) -> FusedCursor:  # type: ignore[override]  # no trip: see FusedCursor
        return FusedCursor(self)

    async def commit(self) -> None:
        await self._call(self._conn.commit)
        self._maybe_in_transaction = False

    async def rollback(self) -> None:
        if self._maybe_in_transaction:
            await self._call(self._conn.rollback)
            self._maybe_in_transaction = False

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the driver's thread: one trip."""
        return await self._execute(fn, *args)  # type: ignore[no-untyped-call]

    async def run(self, sql: str, parameters: Any) -> tuple[_Description, int, int | None, list[Any]]:
        """One statement, whole, in the driver's thread: (description, rowcount, lastrowid, rows)."""
        self._maybe_in_transaction = True
        if sql == BEGIN_IMMEDIATE:
            return await self._call(self._begin_immediate)  # type: ignore[no-any-return]
        return await self._call(_run, self._conn, sql, parameters)  # type: ignore[no-any-return]

    async def run_many(self, sql: str, parameters: Iterable[Any]) -> int:
        self._maybe_in_transaction = True
        return await self._call(_run_many, self._conn, sql, parameters)  # type: ignore[no-any-return]

    def _begin_immediate(self) -> tuple[_Description, int, int | None, list[Any]]:
        """In the driver's thread: ``BEGIN IMMEDIATE``, retrying every 0.2-2 ms while another
        process holds the write lock, with SQLite's busy handler off meanwhile."""
        conn = self._conn
        conn.execute("PRAGMA busy_timeout=0")
        try:
            deadline, delay = time.monotonic() + self._lock_timeout, 0.0002
            while True:
                try:
                    conn.execute(BEGIN_IMMEDIATE)
                    return None, -1, None, []
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                time.sleep(delay)
                delay = min(delay * 2, 0.002)
        finally:
            conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")


class FusedCursor:
    """The cursor SQLAlchemy's adapter drives: ``execute`` is the one trip; the rest reads
    what it brought back."""

    arraysize = 1

    def __init__(self, connection: FusedConnection) -> None:
        self._connection = connection
        self.description: _Description = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[Any] = []

    async def __aenter__(self) -> FusedCursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Any = None) -> FusedCursor:
        self.description, self.rowcount, self.lastrowid, rows = await self._connection.run(
            sql, parameters if parameters is not None else ())
        self._rows = rows
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> FusedCursor:
        self.description, self.lastrowid, self._rows = None, None, []
        self.rowcount = await self._connection.run_many(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        n = self.arraysize if size is None else size
        taken, self._rows = self._rows[:n], self._rows[n:]
        return taken

    async def fetchall(self) -> list[Any]:
        taken, self._rows = self._rows, []
        return taken

    async def close(self) -> None:
        self._rows = []

    async def setinputsizes(self, *_: Any) -> None:
        return None


def _run(conn: sqlite3.Connection, sql: str, parameters: Any
         ) -> tuple[_Description, int, int | None, list[Any]]:
    cursor = conn.cursor()
    try:
        cursor.execute(sql, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


def _run_many(conn: sqlite3.Connection, sql: str, parameters: Iterable[Any]) -> int:
    cursor = conn.cursor()
    try:
        cursor.executemany(sql, parameters)
        return cursor.rowcount
    finally:
        cursor.close()


def connector(args: Sequence[Any], kwargs: Mapping[str, Any], *, lock_timeout: float,
              busy_timeout_ms: int) -> Callable[[], Any]:
    """SQLAlchemy's ``async_creator``: a :class:`FusedConnection` opened with the connect
    arguments the dialect made of the URL."""
    async def create() -> FusedConnection:
        connection = FusedConnection(partial(sqlite3.connect, *args, **kwargs),
                                     lock_timeout=lock_timeout, busy_timeout_ms=busy_timeout_ms)
        connection._thread.daemon = True  # as SQLAlchemy does for aiosqlite's own connections
        await connection
        return connection
    return create
