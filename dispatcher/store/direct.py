"""Statements that run straight on the driver's connection inside a transaction.

SQLAlchemy's execution of a statement (a greenlet for the async connection, the compiled
cache's key, an execution context, parameter and result set-up, the async adapter's cursor)
costs tens of microseconds of Python around what the database itself does in a few: in the
gateway's commit of one request (``python -m bench commit``), SQLite's own work was about 3 %
of the process's time and SQLAlchemy's machinery around four statements about 40 %. The
gateway makes that commit for every batch of requests, on the event loop that also parses
them; a worker's unit of work runs about sixteen such statements.

:class:`Direct` is a Core statement compiled once for the engine's dialect. It binds the
parameters with the statement's own bind processors (JSON serialised as SQLAlchemy would),
runs the compiled SQL on the driver's connection, and reads the rows with the columns' result
processors:

* SQLite: while the connection holds the write lock, or is in a short read
  (:class:`~dispatcher.store.sqlite_driver.FusedConnection`: its statements run in the
  caller's thread anyway), on the ``sqlite3`` connection; anywhere else (any other read)
  it is ``conn.execute`` of the same statement.
* PostgreSQL: on psycopg's connection under ``conn``, awaited on the event loop like
  SQLAlchemy's own execution, in the same transaction (psycopg begins it at the first
  statement and SQLAlchemy commits or rolls it back as before).

The driver's errors come out as SQLAlchemy's (:meth:`sqlalchemy.exc.DBAPIError.instance`), as
they would through the engine: the API's 503 for an unavailable store still applies, and a
PostgreSQL connection found broken is invalidated, as the engine does.

What the gateway's commit and the worker's units of work need: one statement with its rows
(expanding ``IN`` parameters included), one per parameter set with their rows (an ``INSERT …
RETURNING``), or many without.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.store.sqlite_driver import FusedConnection

__all__ = ["Direct"]

_Processor = Callable[[Any], Any] | None


class Direct:
    """``statement`` compiled for ``dialect`` (SQLite or PostgreSQL). ``keys``: an INSERT's
    columns, all given in every row (a column left out would miss its default here)."""

    def __init__(self, statement: Any, dialect: sa.Dialect, keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self._sqlite = dialect.name == "sqlite"
        self._postgres = dialect.name == "postgresql" and dialect.driver == "psycopg"
        self._expanding = False
        if not (self._sqlite or self._postgres):
            return
        compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys is not None else None)
        if compiled.insert_prefetch or compiled.update_prefetch:  # Python-side defaults: the engine's job
            raise ValueError(f"{statement!r} has columns with Python-side defaults: run it through the engine")
        if compiled.escaped_bind_names:
            raise ValueError(f"{statement!r} has bind names the dialect escapes: run it through the engine")
        self._compiled = compiled
        self._expanding = any(bind.expanding for bind in compiled.binds.values())
        self._sql: str = compiled.string
        # Each parameter (in SQLite's order; PostgreSQL's are named): its name and bind
        # processor; and the constants the statement itself holds (``status == 'pending'``,
        # ``attempts + 1``), already processed.
        names = compiled.positiontup if self._sqlite else list(dict.fromkeys(compiled.bind_names.values()))
        processors = compiled._bind_processors  # the engine's own: each bind's type as the dialect binds it
        self._binds: tuple[tuple[str, _Processor], ...] = tuple(
            (name, processors.get(name)) for name in names or ()
            if not compiled.binds[name].expanding)
        self._constants: dict[str, Any] = {}
        for name, processor in self._binds:
            bind = compiled.binds[name]
            if not bind.required and (keys is None or name not in keys):
                value = bind.effective_value
                self._constants[name] = value if processor is None else processor(value)
        given = {name for name, _ in self._binds} - set(self._constants)
        if keys is not None and not given <= set(keys):
            raise ValueError(f"{statement!r} binds more than the keys given: {sorted(given - set(keys))}")
        columns: list[Any] = list(getattr(statement, "selected_columns", None)
                                  or getattr(statement, "exported_columns", None) or ())
        self._columns: tuple[tuple[str, _Processor], ...] = tuple(
            # The engine's own too (the dialect's implementation of each column's type).
            (column.key, column.type._cached_result_processor(dialect, None)) for column in columns)

    async def rows(self, conn: AsyncConnection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run once with ``params``; its rows as dicts by column key."""
        if self._postgres and (pg := _psycopg(conn)) is not None:
            sql, named = self._bound_named(params)
            async with _as_sqlalchemys_pg(conn, pg, sql, named), pg.cursor() as cursor:
                await cursor.execute(sql, named)
                found = await cursor.fetchall() if cursor.description is not None else []
            return [self._row(row) for row in found]
        raw = self._raw(conn)
        if raw is None:
            return [dict(row._mapping) for row in await conn.execute(self.statement, dict(params))]
        sql, values = self._bound(params)
        with _as_sqlalchemys(sql, values):
            found = raw.execute(sql, values).fetchall()
        return [self._row(row) for row in found]

    async def each(self, conn: AsyncConnection, params: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Run once per item of ``params`` (an ``INSERT … RETURNING``: SQLite's executemany
        returns no rows); every run's rows, in order."""
        if not params:
            return []
        if self._postgres:
            return [row for p in params for row in await self.rows(conn, p)]
        raw = None if self._expanding else self._raw(conn)
        if raw is None:
            return [dict(row._mapping) for row in await conn.execute(self.statement, [dict(p) for p in params])]
        cursor = raw.cursor()
        found: list[dict[str, Any]] = []
        try:
            with _as_sqlalchemys(self._sql, params):  # as the engine's executemany names them
                for p in params:
                    found.extend(self._row(row) for row in cursor.execute(self._sql, self._values(p)).fetchall())
        finally:
            cursor.close()
        return found

    async def many(self, conn: AsyncConnection, params: Sequence[Mapping[str, Any]]) -> None:
        """Run once per item of ``params`` (a statement without rows)."""
        if not params:
            return
        if self._postgres and not self._expanding and (pg := _psycopg(conn)) is not None:
            named = [self._named(p) for p in params]
            async with _as_sqlalchemys_pg(conn, pg, self._sql, named), pg.cursor() as cursor:
                await cursor.executemany(self._sql, named)
            return
        raw = None if self._expanding else self._raw(conn)
        if raw is None:
            await conn.execute(self.statement, [dict(p) for p in params])
            return
        values = [self._values(p) for p in params]
        with _as_sqlalchemys(self._sql, values):
            raw.executemany(self._sql, values)

    def _raw(self, conn: AsyncConnection) -> sqlite3.Connection | None:
        return _here(conn) if self._sqlite else None

    def _bound(self, params: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        if not self._expanding:
            return self._sql, self._values(params)
        state = self._compiled.construct_expanded_state(dict(params))
        processors = state.processors
        values = tuple(
            value if (processor := processors.get(name)) is None else processor(value)
            for name, value in zip(state.positiontup or (), state.positional_parameters, strict=True))
        return state.statement, values

    def _bound_named(self, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if not self._expanding:
            return self._sql, self._named(params)
        state = self._compiled.construct_expanded_state(dict(params))
        processors = state.processors
        return state.statement, {name: value if (processor := processors.get(name)) is None else processor(value)
                                 for name, value in state.parameters.items()}

    def _values(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        constants = self._constants
        return tuple(constants[name] if name in constants
                     else params[name] if processor is None else processor(params[name])
                     for name, processor in self._binds)

    def _named(self, params: Mapping[str, Any]) -> dict[str, Any]:
        constants = self._constants
        return {name: constants[name] if name in constants
                else params[name] if processor is None else processor(params[name])
                for name, processor in self._binds}

    def _row(self, row: Sequence[Any]) -> dict[str, Any]:
        return {key: value if processor is None else processor(value)
                for (key, processor), value in zip(self._columns, row, strict=True)}


def _driver(conn: AsyncConnection) -> Any:
    """The driver's connection under ``conn``, unless SQLAlchemy has closed or invalidated it."""
    sync = conn.sync_connection
    if sync is None or sync.closed or sync.invalidated:
        return None
    return sync.connection.driver_connection


def _here(conn: AsyncConnection) -> sqlite3.Connection | None:
    """SQLite's connection under ``conn`` while its statements run in the caller's thread (a
    write transaction holding the lock, or a short read), else None."""
    driver = _driver(conn)
    return driver.here() if isinstance(driver, FusedConnection) else None


def _psycopg(conn: AsyncConnection) -> psycopg.AsyncConnection[Any] | None:
    """psycopg's connection under ``conn``, else None."""
    driver = _driver(conn)
    return driver if isinstance(driver, psycopg.AsyncConnection) else None


@contextlib.contextmanager
def _as_sqlalchemys(sql: str, values: Any) -> Iterator[None]:
    """SQLite's errors as the engine raises them (sqlite3's IntegrityError as SQLAlchemy's…)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise sa.exc.DBAPIError.instance(sql, values, exc, sqlite3.Error) from exc


@contextlib.asynccontextmanager
async def _as_sqlalchemys_pg(conn: AsyncConnection, pg: psycopg.AsyncConnection[Any],
                             sql: str, values: Any) -> AsyncIterator[None]:
    """psycopg's errors as the engine raises them; a connection they left closed or broken is
    invalidated, as the engine does with a disconnect (the pool then replaces it)."""
    try:
        yield
    except psycopg.Error as exc:
        gone = pg.closed or pg.broken or conn.dialect.is_disconnect(cast(Any, exc), None, None)
        if gone:
            await conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(sql, values, exc, psycopg.Error, connection_invalidated=gone,
                                         dialect=conn.dialect) from exc
