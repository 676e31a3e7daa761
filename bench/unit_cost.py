"""``python -m bench unit``: what the worker's ledger work for small traffic costs, in process.

A worker's unit of work for small traffic is a batch of single-recipient notifications: it
opens their rows in one transaction (headers, the four channels' rows inserted, the in-app
feed entries, the rows to send claimed) and records the three sends' outcomes in another;
each update (version 2, push and in-app) opens again, taking over those two rows, and records
its push. This runs exactly those store calls (``LedgerStore.open`` and ``record``), with no
planning, queue or provider, ``--units`` times per batch size (after 20 to warm up), on a
fresh SQLite file or a fresh PostgreSQL database, and reports per notification (its four rows
and its update's two) the process's CPU (every thread), the PostgreSQL backends' CPU (the
server processes of this run's database, read with psutil by ``ResourceMonitor``), the wall
time, and the statements sent (``StatementCount``: on PostgreSQL every statement, also those
run straight on psycopg's connection by ``dispatcher.store.direct``; on SQLite each
transaction's ``BEGIN`` and what the engine sends, the rest running straight on SQLite's
connection). Run it before and after a change to the store: per notification, and in process,
it separates a change of a few per cent that the open-loop runs' noise hides.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.commit_cost import StatementCount
from bench.processes import PostgresBackends, ResourceMonitor, postgres_admin
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
            postgres_admin(admin_url, f'CREATE DATABASE "{name}"')
            url, dropped = admin_url.rsplit("/", 1)[0] + f"/{name}", name
        db = Database(url)
        try:
            await db.create_schema()
            store = Store.from_database(db)
            statements = StatementCount(db)
            for _ in range(_WARM_UP):
                await _unit(store, size)
            statements.n = 0
            # The backends are the engine's pooled connections, there from start to end: the
            # monitor reads them when it starts and when it stops, not in between.
            server = ResourceMonitor(pids={}, interval=3600.0, groups={} if dropped is None else {
                "postgres": PostgresBackends(admin_url, dropped)})
            with server:
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(units):
                    await _unit(store, size)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            server_cpu = None if dropped is None else server.cpu_seconds["postgres"]
        finally:
            await db.close()
            if dropped is not None:
                postgres_admin(admin_url, f'DROP DATABASE IF EXISTS "{dropped}" WITH (FORCE)')
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
