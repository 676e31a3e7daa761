"""``dispatcher serve``'s worker processes send their live events up a real OS pipe."""

from __future__ import annotations

import asyncio
import os

from dispatcher.bus.local import LocalBus
from dispatcher.bus.pipe import PipeBus, forward


async def test_events_written_to_the_pipe_reach_the_parents_subscribers() -> None:
    ours, theirs = os.pipe()
    parent, child = LocalBus(), PipeBus(theirs)
    forwarding = asyncio.create_task(forward(ours, parent))
    async with parent.subscribe("feed:u1") as events:
        await child.publish_many([("feed:u2", {"id": "other"}),
                                  ("feed:u1", {"id": "n1", "title": "설치 중"})])
        await child.publish("feed:u1", {"id": "n2"})
        iterator = aiter(events)
        got = [await asyncio.wait_for(anext(iterator), 5) for _ in range(2)]
    assert got == [{"id": "n1", "title": "설치 중"}, {"id": "n2"}]
    await child.close()
    os.close(theirs)
    await asyncio.wait_for(forwarding, 5)  # the pipe closed: forwarding ends by itself


async def test_a_malformed_line_is_dropped_and_the_stream_goes_on() -> None:
    ours, theirs = os.pipe()
    parent = LocalBus()
    forwarding = asyncio.create_task(forward(ours, parent))
    async with parent.subscribe("feed:u1") as events:
        os.write(theirs, b"not json\n" + b'["feed:u1", {"id": "n1"}]\n')
        assert await asyncio.wait_for(anext(aiter(events)), 5) == {"id": "n1"}
    os.close(theirs)
    await asyncio.wait_for(forwarding, 5)
