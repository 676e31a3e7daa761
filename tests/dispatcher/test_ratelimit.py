"""GCRA reservations on the real shared stores (Redis, SQLite, PostgreSQL): many gates in
parallel, as many worker processes would be, never get overlapping send times."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from dispatcher.ratelimit import RateGate, Reserver
from dispatcher.ratelimit.redis import RedisReserver
from dispatcher.store import Database
from dispatcher.store.rate_limits import DatabaseReserver


async def _times(reserver: Reserver, *, gates: int, each: int, rate: float) -> list[int]:
    """Send times handed out by ``gates`` gates sharing ``reserver``, ``each`` permits each."""
    seen: list[int] = []

    class Recording:
        async def reserve(self, key: str, n: int, interval_us: int) -> int:
            start = await reserver.reserve(key, n, interval_us)
            seen.extend(start + i * interval_us for i in range(n))
            return start

    async def run(gate: RateGate) -> None:
        for _ in range(each):
            await gate.permit()

    await asyncio.gather(*(run(RateGate("email", rate, Recording())) for _ in range(gates)))
    return sorted(seen)


def _check(times: list[int], rate: float) -> None:
    interval = int(1_000_000 / rate)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= interval, f"two send times closer than 1/rate: {min(gaps)} µs"


async def test_redis_reservations_never_overlap(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.delete("dispatcher:rate:email")
        times = await _times(RedisReserver(client), gates=4, each=50, rate=500)
    finally:
        await client.aclose()
    _check(times, 500)
    assert len(times) >= 200


async def test_database_reservations_never_overlap(database_url: str) -> None:
    db = Database(database_url)  # SQLite and PostgreSQL (the fixture's two parameters)
    await db.create_schema()
    try:
        times = await _times(DatabaseReserver(db), gates=4, each=50, rate=500)
    finally:
        await db.close()
    _check(times, 500)
