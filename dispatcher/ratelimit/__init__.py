"""Provider rate limits shared by every worker process (``DISPATCHER_EMAIL_RATE_LIMIT``,
``…_SMS_…``, ``…_PUSH_…``: messages per second for the whole deployment).

The algorithm is GCRA in its reservation form: the shared state per channel is one number,
the *theoretical arrival time* (TAT, µs since the epoch) of the next message. A process
reserves ``n`` consecutive send times with one atomic step, ``start = max(TAT, now);
TAT = start + n·T`` (T = 1/rate), and sends its i-th message at ``start + i·T``. Reservations
of different processes never overlap, so the provider sees at most ``rate`` messages per
second in total (plus the jitter of a timer), with no bursts and without the processes
talking to each other.

Where the state lives (:class:`Reserver`): in Redis when ``DISPATCHER_REDIS_URL`` is set (one
Lua script, ``dispatcher.ratelimit.redis``), else in the store's database
(``dispatcher.store.rate_limits``: one ``INSERT … ON CONFLICT DO UPDATE … RETURNING``).

Each process reserves small blocks (about 20 ms of the rate, at least one message) only when
a sender is waiting, so the shared store sees at most ~50 reservations per second per process
whatever the rate, and capacity a process reserved and did not use is at most one block.

A sender takes its permit *before* it claims the row (``dispatcher.sending``): a row waiting
for the rate limit is ``pending``, never ``sending``, so a crash while waiting loses nothing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from typing import Protocol

__all__ = ["RateGate", "Reserver", "RateLimits"]


class Reserver(Protocol):
    async def reserve(self, key: str, n: int, interval_us: int) -> int:
        """Reserve ``n`` send times ``interval_us`` apart; return the first (µs since epoch)."""


class RateGate:
    """One channel's limit in this process: hands out send times in order."""

    def __init__(self, key: str, rate: float, reserver: Reserver, *, block_seconds: float = 0.02) -> None:
        if rate <= 0:
            raise ValueError("a rate limit must be positive")
        self.key = key
        self.rate = rate
        self._reserver = reserver
        self._interval = max(int(1_000_000 / rate), 1)
        self._block = max(1, math.floor(rate * block_seconds))
        self._next = 0   # the next send time reserved and not handed out (µs)
        self._left = 0   # how many of those remain
        self._lock = asyncio.Lock()

    async def permit(self, n: int = 1) -> None:
        """Return when ``n`` more messages may go (at the time of the last of them)."""
        at = 0
        async with self._lock:  # FIFO: callers get send times in the order they asked
            for _ in range(n):
                now = _now_us()
                if self._left and self._next < now - self._interval:
                    self._left = 0  # reserved times long past: lost, never bunched up
                if not self._left:
                    self._next = await self._reserver.reserve(self.key, self._block, self._interval)
                    self._left = self._block
                at = self._next
                self._next += self._interval
                self._left -= 1
        delay = (at - _now_us()) / 1e6
        if delay > 0:
            await asyncio.sleep(delay)


class RateLimits:
    """The gates of the limited channels (none: nothing is limited)."""

    def __init__(self, gates: Mapping[str, RateGate] | None = None) -> None:
        self._gates = dict(gates or {})

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._gates)

    async def permit(self, channel: str, n: int = 1) -> None:
        gate = self._gates.get(channel)
        if gate is not None and n > 0:
            await gate.permit(n)


def _now_us() -> int:
    return time.time_ns() // 1000
