"""``python -m bench unit``: what the worker's ledger work for small traffic costs, in process.

A worker's unit of work for small traffic is a batch of single-recipient notifications: it
opens their rows in one transaction (headers, the four channels' rows inserted, the in-app
feed entries, the rows to send claimed) and records the three sends' outcomes in another;
each update (version 2, push and in-app) opens again, taking over those two rows, and records
its push. This runs exactly those store calls (``LedgerStore.open`` and ``record``), with no
planning, queue or provider, ``--units`` times per batch size (after 20 to warm up), on a
fresh SQLite file or a fresh PostgreSQL database, and reports per notification (its four rows
and its update's two) the process's CPU (every thread), the PostgreSQL backends' CPU (the
server processes of this run's database, read with psutil), the wall time, and the
statements SQLAlchemy sent. Run it before and after a change to the store: per notification,
and in process, it separates a change of a few per cent that the open-loop runs' noise hides.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import sqlalchemy as sa

from bench.commit_cost import StatementCount
from bench.processes import PostgresBackends
from dispatcher.model import (
    ChunkRows,
    Claim,
    DeliveryStatus,
    FeedEntry,
    HeaderUpdate,
    RowKey,
    RowState,
)
from dispatcher.store import Store
from dispatcher.store.database import Database

__all__ = ["measure"]

_WARM_UP = 20
_CHANNELS = ("email", "in_app", "push", "sms")
_SENT_BY_PROVIDERS = ("email", "push", "sms")


def measure(units: int, sizes: list[int], engine: str, admin_url: str) -> dict[str, Any]:
    return {"engine": engine, "units": units,
            "per_unit": [asyncio.run(_one(units, size, engine, admin_url)) for size in sizes]}


async def _one(units: int, size: int, engine: str, admin_url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-unit-") as folder:
        if engine == "sqlite":
            url, dropped = f"sqlite:///{Path(folder) / 'dispatcher.db'}", None
        else:
            name = f"bench_unit_{uuid.uuid4().hex[:8]}"
            _admin(admin_url, f'CREATE DATABASE "{name}"')
            url, dropped = admin_url.rsplit("/", 1)[0] + f"/{name}", name
        db = Database(url)
        try:
            await db.create_schema()
            store = Store.from_database(db)
            statements = StatementCount(db)
            for _ in range(_WARM_UP):
                await _unit(store, size)
            statements.n = 0
            server = _ServerCpu(admin_url, dropped)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(units):
                await _unit(store, size)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            server_cpu = server.spent()
        finally:
            await db.close()
            if dropped is not None:
                _admin(admin_url, f'DROP DATABASE IF EXISTS "{dropped}" WITH (FORCE)')
    per = units * size
    return {"notifications": size, "cpu_us_per_notification": round(1e6 * cpu / per),
            "server_cpu_us_per_notification": None if server_cpu is None else round(1e6 * server_cpu / per),
            "wall_us_per_notification": round(1e6 * wall / per),
            "statements_per_unit": round(statements.n / units, 1)}


async def _unit(store: Store, size: int) -> None:
    """``size`` notifications opened, sent and recorded; then their updates, the same way."""
    ledger, token = store.ledger, uuid.uuid4().hex
    ids = [f"bench#{uuid.uuid4()}" for _ in range(size)]
    users = [f"user-{uuid.uuid4().hex[:12]}" for _ in range(size)]
    for version, state, channels in ((1, "installing", _CHANNELS), (2, "completed", ("in_app", "push"))):
        headers = [HeaderUpdate(id=nid, service="bench", version=version, template="app-install",
                                data={"app_name": "Notes"}, state=state, category="default",
                                locale=None, channels=_CHANNELS, recipients=1) for nid in ids]
        chunks = [ChunkRows(nid, version,
                            [RowState(RowKey(nid, user, c),
                                      DeliveryStatus.SENT if c == "in_app" else DeliveryStatus.PENDING)
                             for c in channels],
                            frozenset(channels), frozenset(channels) if version > 1 else frozenset(),
                            {user: FeedEntry(user, nid, version, f"Notes {state}", "body", state,
                                             "default")})
                  for nid, user in zip(ids, users, strict=True)]
        opened = await ledger.open(headers, chunks, Claim(token, 10 * size))
        await ledger.record([(RowState(key, DeliveryStatus.SENT, provider_message_id="m"), token)
                             for key in opened.claimed if key.channel in _SENT_BY_PROVIDERS])


class _ServerCpu:
    """CPU time of the PostgreSQL backends serving one database (none on SQLite)."""

    def __init__(self, admin_url: str, database: str | None) -> None:
        self._backends = None if database is None else PostgresBackends(admin_url, database)
        self._start = self._read()

    def _read(self) -> dict[int, float]:
        found: dict[int, float] = {}
        for pid in self._backends() if self._backends is not None else ():
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            found[pid] = times.user + times.system
        return found

    def spent(self) -> float | None:
        if self._backends is None:
            return None
        end = self._read()
        self._backends.close()
        return sum(cpu - self._start.get(pid, 0.0) for pid, cpu in end.items())


def _admin(url: str, statement: str) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1),
                              isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(statement)
    finally:
        engine.dispose()
