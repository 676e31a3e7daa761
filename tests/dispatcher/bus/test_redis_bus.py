"""The Redis bus against a real Redis: events cross processes' connections, per topic."""

from __future__ import annotations

import asyncio

from dispatcher.bus.redis import RedisBus


async def test_events_reach_subscribers_of_their_topic_only(redis_url: str) -> None:
    publisher, listener = RedisBus.from_url(redis_url), RedisBus.from_url(redis_url)
    try:
        async with listener.subscribe("feed:u1") as events:
            await publisher.publish("feed:u2", {"type": "notification", "id": "other"})
            await publisher.publish_many([("feed:u1", {"type": "notification", "id": "a"}),
                                          ("feed:u1", {"type": "read", "id": "a"})])
            stream = aiter(events)
            got = [await asyncio.wait_for(anext(stream), 10) for _ in range(2)]
        assert got == [{"type": "notification", "id": "a"}, {"type": "read", "id": "a"}]
    finally:
        await publisher.close()
        await listener.close()


async def test_ping_answers(redis_url: str) -> None:
    bus = RedisBus.from_url(redis_url)
    try:
        await bus.ping()
    finally:
        await bus.close()
