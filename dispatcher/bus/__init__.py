"""The bus port: live updates to whoever is listening (the SSE feed stream).

In-process by default (:class:`dispatcher.bus.local.LocalBus`): events published by a worker
reach listeners of the same process only, which is the embedded ``dispatcher serve``. With
``DISPATCHER_REDIS_URL``, :class:`dispatcher.bus.redis.RedisBus` carries them between the
gateway and worker processes.
Delivery is best effort: a listener that falls behind loses events, never the feed itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

__all__ = ["Bus"]


class Bus(Protocol):
    async def publish(self, topic: str, event: dict[str, Any]) -> None: ...

    async def publish_many(self, events: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Publish several events at once (one round trip where the bus allows)."""

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]:
        """``async with bus.subscribe(t) as events: async for e in events: ...``"""

    async def ping(self) -> None:
        """Raise when the bus is unreachable (readiness)."""

    async def close(self) -> None: ...
