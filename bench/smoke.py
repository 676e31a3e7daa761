"""The embedded default end to end, in one process: seed users, send one bulk, deliver it.

Measures what a user of ``dispatcher serve`` sees: how long the gateway takes to accept a
request, and how long until every ledger row of the bulk is final, with the ``log``
providers (so it measures the dispatcher itself, not a provider).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import sqlalchemy as sa

from dispatcher.api import create_app
from dispatcher.config import Settings
from dispatcher.model import now_us
from dispatcher.runtime import Runtime
from dispatcher.store.schema import deliveries, devices, users

__all__ = ["SmokeResult", "run_smoke"]

MAX_PER_REQUEST = 10_000


@dataclass(frozen=True)
class SmokeResult:
    recipients: int
    rows: int
    final_rows: int
    accept_seconds: float
    deliver_seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.deliver_seconds if self.deliver_seconds else 0.0


async def run_smoke(recipients: int, *, workers: int = 4, folder: Path | None = None,
                    channels: list[str] | None = None) -> SmokeResult:
    with tempfile.TemporaryDirectory() as tmp:
        base = folder or Path(tmp)
        settings = Settings(database_url=f"sqlite:///{base / 'bench.db'}", api_keys="app:bench",
                            user_token_secret="bench-secret-bench-secret-bench-secret",
                            worker_concurrency=workers, sqlite_synchronous="NORMAL")
        runtime = await Runtime.open(settings)
        try:
            await _seed(runtime, recipients)
            return await _send_and_deliver(runtime, recipients, channels)
        finally:
            await runtime.close()


async def _seed(runtime: Runtime, n: int) -> None:
    now = now_us()
    async with runtime.store.db.write() as conn:
        await conn.execute(users.insert(), [
            {"id": f"u{i}", "email": f"u{i}@example.com", "phone": f"+8210{i % 10**8:08d}",
             "locale": "ko-KR" if i % 3 == 0 else None, "timezone": None,
             "preferences": {"channels": {"sms": i % 50 != 0}, "categories": {}},
             "created_at": now, "updated_at": now} for i in range(n)])
        await conn.execute(devices.insert(), [
            {"token": f"token-{i}", "user_id": f"u{i}", "platform": "android", "active": True,
             "created_at": now, "updated_at": now} for i in range(n)])


async def _send_and_deliver(runtime: Runtime, n: int, channels: list[str] | None) -> SmokeResult:
    transport = httpx.ASGITransport(app=create_app(runtime))
    nid = f"app#{uuid.uuid4()}"
    started = time.perf_counter()
    async with httpx.AsyncClient(transport=transport, base_url="http://bench",
                                 headers={"Authorization": "Bearer bench"}) as client:
        for start in range(0, n, MAX_PER_REQUEST):
            r = await client.post("/v1/notifications", json={
                "id": nid, "recipients": [f"u{i}" for i in range(start, min(n, start + MAX_PER_REQUEST))],
                "template": "app-install", "data": {"app_name": "Bench"}, "state": "installing",
                "channels": channels})
            r.raise_for_status()
    accepted = time.perf_counter()
    await runtime.worker().drain()
    done = time.perf_counter()
    async with runtime.store.db.read() as conn:
        rows = dict((await conn.execute(
            sa.select(deliveries.c.status, sa.func.count()).where(deliveries.c.notification_id == nid)
            .group_by(deliveries.c.status))).all())
    final = sum(v for k, v in rows.items() if k in ("sent", "failed", "skipped"))
    return SmokeResult(n, sum(rows.values()), final, accepted - started, done - accepted)


def main(recipients: int, workers: int, channels: list[str] | None = None) -> SmokeResult:
    return asyncio.run(run_smoke(recipients, workers=workers, channels=channels))
