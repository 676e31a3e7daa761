"""Redis pub/sub bus (``DISPATCHER_REDIS_URL``): live events across gateway and worker processes.

A worker publishes a feed event on ``<prefix>feed:<user>``; whichever gateway process holds
that user's SSE stream receives it. Pub/sub keeps nothing: a listener that is not connected
misses events, never feed entries (the feed is in the store).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis

__all__ = ["RedisBus"]


class RedisBus:
    def __init__(self, client: aioredis.Redis, *, prefix: str = "dispatcher:") -> None:
        self._client = client
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "dispatcher:") -> RedisBus:
        return cls(aioredis.Redis.from_url(url), prefix=prefix)

    async def publish(self, topic: str, event: dict[str, Any]) -> None:
        await self._client.publish(self._prefix + topic, json.dumps(event))

    async def publish_many(self, events: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """One round trip for a chunk's events."""
        if not events:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for topic, event in events:
                pipe.publish(self._prefix + topic, json.dumps(event))
            await pipe.execute()

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._prefix + topic)
        try:
            yield _messages(pubsub)
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def ping(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()


async def _messages(pubsub: Any) -> AsyncIterator[dict[str, Any]]:
    async for message in pubsub.listen():
        if message.get("type") == "message":
            yield json.loads(message["data"])
