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

**While a connection holds the write lock, its statements run in the caller's thread**, with
no trip at all. SQLite has one writer for every process on the file, so the lock's hold time
is what every other writer waits for. With a trip per statement the hold stretched over as
many turns of a busy event loop, each waiting behind whatever else the process was doing
(parsing requests, sending to providers): ``bench small`` at 250 notifications/s held it
1.8 ms at the median and 12-16 ms at p99 per transaction, and the gateway waited up to 20 ms
at p99 for it. A statement inside a write transaction never waits for a lock (the writer
already has the one it needs), so it runs at SQLite's speed on the event loop's thread; the
loop is busy for that long, as it was for building the statement. ``BEGIN IMMEDIATE`` is
tried there first too, without waiting (and without SQLAlchemy's execution of a statement:
the engine's ``begin`` event calls :meth:`FusedConnection.begin_here`); only when another
writer holds the lock does the driver's thread wait for it. A read transaction's deferred
``BEGIN`` takes no lock and touches no file: it too starts in the caller's thread, a trip
saved per read (its statements, which may be long, go to the driver's thread). A *short read*
(``BEGIN_SHORT_READ``: a few rows by their keys, as a worker's unit of work reads its
recipients, the suppression list and the queue's next message) keeps its statements and its
rollback in the caller's thread as well: in WAL mode a reader never waits for a writer, and
SQLite's work for such a read is shorter than the two or three trips it saves (a unit of
work's recipients, 4 of them: 869-905 µs of CPU with the trips, 505-533 without). A write
transaction's ``COMMIT`` runs in the caller's thread too: with ``synchronous=FULL`` the loop
waits for the disk meanwhile, but every other writer of every process waits for that commit
anyway, and a trip held the lock longer: ``bench small`` at 550 notifications/s (three
processes on one file, the lock held about 80 % of the time) held it 3.5-4.9 ms per
transaction on average, of which 1.1 ms was the driver's thread waking up for the commit
(p90 3.5 ms) and 1.3-1.4 ms the commit itself; the API process then waited 1.2 ms more
on average (p99 12 ms) for its loop to hear that the commit was done, before answering. A
transaction that may touch thousands of rows (``BEGIN_IMMEDIATE_MANY_ROWS``: a cancel, a
prune) keeps its statements and its commit in the driver's thread: an update of 40,000
ledger rows stopped the event loop for 86-98 ms on the caller's thread, 43 ms from the
driver's.

**A process whose writes someone waits for goes first** (``first_in_line``: the API process,
whose commits a caller's request waits for). SQLite queues no one: when the lock is freed,
the next to try takes it. Such a process tries again every 0.2 ms while it waits; the others
(worker processes, whose units of work no caller waits for) every 0.5 ms at first, then
every 2 ms. So when both wait, the accept usually takes the lock next, and waits for the
transaction in progress, not for a worker's next one as well.

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

__all__ = ["BEGIN_IMMEDIATE", "BEGIN_IMMEDIATE_MANY_ROWS", "BEGIN_SHORT_READ", "FusedConnection", "connector"]

#: The statement that starts a write transaction; the driver waits for the lock itself.
BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"
#: The same, for a transaction whose statements stay in the driver's thread (many rows).
BEGIN_IMMEDIATE_MANY_ROWS = "BEGIN IMMEDIATE -- many rows"
#: A read of a few indexed rows: its statements run in the caller's thread (see the module).
BEGIN_SHORT_READ = "BEGIN -- short read"

_Description = tuple[tuple[Any, ...], ...] | None
_FIRST_IN_LINE_RETRY = 0.0002
_RETRY = (0.0005, 0.002)


class FusedConnection(aiosqlite.Connection):
    """Takes ``lock_timeout``: how long ``BEGIN IMMEDIATE`` waits for another writer (s);
    ``first_in_line``: try for it more often than the others (see the module docstring)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], *, lock_timeout: float,
                 busy_timeout_ms: int, first_in_line: bool = False) -> None:
        super().__init__(connect, iter_chunk_size=64)
        self._lock_timeout = lock_timeout
        self._busy_timeout_ms = busy_timeout_ms
        # Seconds between tries for the write lock while another process holds it: first, most.
        self._retry = (_FIRST_IN_LINE_RETRY, _FIRST_IN_LINE_RETRY) if first_in_line else _RETRY
        #: False only when no transaction can be open (after a commit or a rollback).
        self._maybe_in_transaction = True
        #: True while this connection holds the write lock: statements run in the caller's thread.
        self._writing = False
        #: True in a short read (``BEGIN_SHORT_READ``): statements and the rollback run in the
        #: caller's thread too.
        self._short_read = False

    def cursor(self) -> FusedCursor:  # type: ignore[override]  # no trip: see FusedCursor
        return FusedCursor(self)

    def here(self) -> sqlite3.Connection | None:
        """SQLite's own connection while this one's statements run in the caller's thread (it
        holds the write lock, or it is in a short read): ``dispatcher.store.direct`` may run
        statements on it then; else None."""
        if not (self._writing or self._short_read):
            return None
        self._maybe_in_transaction = True
        return self._conn

    def begin_here(self, sql: str) -> bool:
        """Start a transaction in the caller's thread when that needs no wait: a deferred
        ``BEGIN`` (it takes no lock), a ``BEGIN IMMEDIATE`` while no other process holds the
        write lock. False: it must wait for the lock (:meth:`run` then waits in the driver's
        thread). Saves a statement's way through SQLAlchemy's execution and, for ``BEGIN``,
        a trip to the driver's thread."""
        self._maybe_in_transaction = True
        if sql in ("BEGIN", BEGIN_SHORT_READ):
            self._conn.execute("BEGIN")
            self._short_read = sql == BEGIN_SHORT_READ
            return True
        if sql in (BEGIN_IMMEDIATE, BEGIN_IMMEDIATE_MANY_ROWS) and self._begin_immediate(wait=False):
            self._writing = sql == BEGIN_IMMEDIATE
            return True
        return False

    async def commit(self) -> None:
        if self._writing or self._short_read:  # the lock's holder, or a read: no trip (see above)
            self._writing = self._short_read = False
            self._conn.commit()
        else:
            await self._call(self._conn.commit)
        self._maybe_in_transaction = False

    async def rollback(self) -> None:
        self._writing = False
        if self._short_read:
            self._short_read = False
            self._conn.rollback()
        elif self._maybe_in_transaction:
            await self._call(self._conn.rollback)
        self._maybe_in_transaction = False

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the driver's thread: one trip."""
        return await self._execute(fn, *args)  # type: ignore[no-untyped-call]

    async def run(self, sql: str, parameters: Any) -> tuple[_Description, int, int | None, list[Any]]:
        """One statement, whole: (description, rowcount, lastrowid, rows). In the caller's
        thread while this connection holds the write lock or is in a short read, else in the
        driver's thread."""
        self._maybe_in_transaction = True
        if self._writing or self._short_read:
            return _run(self._conn, sql, parameters)
        if sql in (BEGIN_IMMEDIATE, BEGIN_IMMEDIATE_MANY_ROWS):
            if not self._begin_immediate(wait=False):
                await self._call(self._begin_immediate)
            self._writing = sql == BEGIN_IMMEDIATE
            return None, -1, None, []
        return await self._call(_run, self._conn, sql, parameters)  # type: ignore[no-any-return]

    async def run_many(self, sql: str, parameters: Iterable[Any]) -> int:
        self._maybe_in_transaction = True
        if self._writing or self._short_read:
            return _run_many(self._conn, sql, parameters)
        return await self._call(_run_many, self._conn, sql, parameters)  # type: ignore[no-any-return]

    def _begin_immediate(self, *, wait: bool = True) -> bool:
        """``BEGIN IMMEDIATE`` with SQLite's busy handler off meanwhile; True once it holds the
        write lock. With ``wait`` (in the driver's thread), retrying while another process
        holds the lock, every 0.2 ms first in line, else every 0.5 ms then 2 ms; without,
        False at once if it does."""
        conn = self._conn
        conn.execute("PRAGMA busy_timeout=0")
        try:
            deadline, (delay, most) = time.monotonic() + self._lock_timeout, self._retry
            while True:
                try:
                    conn.execute(BEGIN_IMMEDIATE)
                    return True
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    if not wait:
                        return False
                time.sleep(delay)
                delay = min(delay * 2, most)
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
              busy_timeout_ms: int, first_in_line: bool = False) -> Callable[[], Any]:
    """SQLAlchemy's ``async_creator``: a :class:`FusedConnection` opened with the connect
    arguments the dialect made of the URL."""
    async def create() -> FusedConnection:
        # Used by one thread at a time: the driver's, or the caller's while writing (above).
        connect = partial(sqlite3.connect, *args, **{**kwargs, "check_same_thread": False})
        connection = FusedConnection(connect, lock_timeout=lock_timeout,
                                     busy_timeout_ms=busy_timeout_ms, first_in_line=first_in_line)
        connection._thread.daemon = True  # as SQLAlchemy does for aiosqlite's own connections
        await connection
        return connection
    return create
