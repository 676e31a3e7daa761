"""``python -m bench commit``: what one gateway commit costs on the embedded store.

The gateway answers a request once its header and queue message are committed, and concurrent
requests share a commit (``dispatcher.group_commit``). This times that commit alone, in
process, with nothing else running: ``--commits`` sequential commits (after 50 to warm up) of
1 and of 8 requests each, on a fresh SQLite file, through the same code the gateway uses
(``InOneTransaction``: header upsert, queue insert, one transaction). It reports the process's
CPU (every thread: the event loop's and the SQLite driver's) and wall time per commit, and the
statements SQLAlchemy's engine sent per commit (only the ``BEGIN``: the store runs a write
transaction's statements straight on SQLite's connection). Run it before and after a change to
the store or the driver: the figures are per commit, so they compare across machines less well
than side by side on one.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import event

from dispatcher.model import HeaderUpdate
from dispatcher.queue.enqueue import InOneTransaction, Intake
from dispatcher.queue.local import LocalQueue
from dispatcher.store import Store
from dispatcher.store.database import Database

__all__ = ["StatementCount", "measure"]

_WARM_UP = 50


def measure(commits: int, sizes: list[int], synchronous: str) -> dict[str, Any]:
    return {"synchronous": synchronous, "commits": commits,
            "per_commit": [asyncio.run(_one(commits, size, synchronous)) for size in sizes]}


async def _one(commits: int, size: int, synchronous: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-commit-") as folder:
        db = Database(f"sqlite:///{Path(folder) / 'dispatcher.db'}", sqlite_synchronous=synchronous)
        try:
            await db.create_schema()
            store = Store.from_database(db)
            commit = InOneTransaction(store, LocalQueue(db))
            statements = StatementCount(db)
            for _ in range(_WARM_UP):
                await commit(_intakes(size))
            statements.n = 0
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(commits):
                await commit(_intakes(size))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            await db.close()
    return {"requests": size, "cpu_us": round(1e6 * cpu / commits), "wall_us": round(1e6 * wall / commits),
            "cpu_us_per_request": round(1e6 * cpu / commits / size),
            "statements": round(statements.n / commits, 1)}


class StatementCount:
    """The statements this process sends to ``db``'s database (an executemany counts once);
    ``n``. On PostgreSQL every one, through the engine or straight on psycopg's connection
    (``dispatcher.store.direct``): psycopg's cursors are counted, by a cursor factory set on
    each pooled connection at checkout. On SQLite each transaction's ``BEGIN`` (the driver
    may run it without the engine: ``FusedConnection.begin_here``) and the other statements
    SQLAlchemy's engine sends: those ``dispatcher.store.direct`` runs straight on SQLite's
    connection (inside a write transaction or a short read) aren't counted."""

    def __init__(self, db: Database) -> None:
        self.n = 0
        if db.dialect == "postgresql":
            counting = _counting_cursor(self)
            event.listen(db.engine.sync_engine.pool, "checkout",
                         lambda dbapi_conn, *_: setattr(dbapi_conn.driver_connection, "cursor_factory", counting))
        else:
            event.listen(db.engine.sync_engine, "begin", self._count)
            event.listen(db.engine.sync_engine, "before_cursor_execute", self._count_statement)

    def _count(self, *_: Any) -> None:
        self.n += 1

    def _count_statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.startswith("BEGIN"):  # counted by the "begin" event
            self.n += 1


def _counting_cursor(count: StatementCount) -> type[psycopg.AsyncCursor[Any]]:
    class Counting(psycopg.AsyncCursor[Any]):
        async def execute(self, *args: Any, **kwargs: Any) -> Any:
            count.n += 1
            return await super().execute(*args, **kwargs)

        async def executemany(self, *args: Any, **kwargs: Any) -> None:
            count.n += 1
            await super().executemany(*args, **kwargs)

    return Counting


def _intakes(size: int) -> list[Intake]:
    """``size`` single-recipient requests on all four channels, as the bench's small workload."""
    return [Intake(HeaderUpdate(id=f"bench#{uuid.uuid4()}", service="bench", version=1,
                                template="app-install", data={"app_name": "Notes"},
                                state="installing", category="default", locale=None,
                                channels=("email", "in_app", "push", "sms"), recipients=1),
                   ['{"stand-in": "a chunk message"}']) for _ in range(size)]
