"""In-process bus: one bounded asyncio queue per subscriber."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

__all__ = ["LocalBus"]


class LocalBus:
    def __init__(self, buffer: int = 256) -> None:
        self._buffer = buffer
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)

    async def publish(self, topic: str, event: dict[str, Any]) -> None:
        for queue in self._subscribers.get(topic, ()):
            if queue.full():  # a slow listener loses its oldest event, not the newest
                queue.get_nowait()
            queue.put_nowait(event)

    async def publish_many(self, events: Sequence[tuple[str, dict[str, Any]]]) -> None:
        for topic, event in events:
            await self.publish(topic, event)

    async def ping(self) -> None:
        return None

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._buffer)
        self._subscribers[topic].add(queue)
        try:
            yield _drain(queue)
        finally:
            self._subscribers[topic].discard(queue)
            if not self._subscribers[topic]:
                del self._subscribers[topic]

    async def close(self) -> None:
        self._subscribers.clear()


async def _drain(queue: asyncio.Queue[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    while True:
        yield await queue.get()
