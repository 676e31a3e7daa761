"""GCRA reservations in Redis: one Lua script, Redis's own clock (``TIME``), so processes on
several machines agree on "now" without trusting their clocks."""

from __future__ import annotations

import redis.asyncio as aioredis

__all__ = ["RedisReserver"]

# KEYS[1]: the channel's TAT; ARGV: n, interval (µs). Returns the first reserved time (µs).
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local span = tonumber(ARGV[1]) * tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%d', tat + span), 'PX', math.floor((tat + span - now) / 1000) + 60000)
return string.format('%d', tat)
"""


class RedisReserver:
    def __init__(self, client: aioredis.Redis, *, prefix: str = "dispatcher:rate:") -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_RESERVE)

    @classmethod
    def from_url(cls, url: str) -> RedisReserver:
        return cls(aioredis.Redis.from_url(url))

    async def reserve(self, key: str, n: int, interval_us: int) -> int:
        return int(await self._script(keys=[self._prefix + key], args=[n, interval_us]))

    async def close(self) -> None:
        await self._client.aclose()
