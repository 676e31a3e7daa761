"""The embedded queue on both engines: visibility, receipts, redrive and dead letters."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dispatcher.queue.local import LocalQueue
from dispatcher.runtime import Runtime

_made: list[LocalQueue] = []


@pytest.fixture(autouse=True)
async def _closed() -> AsyncIterator[None]:
    """Each queue made here is closed after its test (its doorbell's socket removed)."""
    yield
    while _made:
        await _made.pop().close()


def queue(runtime: Runtime, **kwargs: float) -> LocalQueue:
    made = LocalQueue(runtime.store.db, name="test", **kwargs)
    _made.append(made)
    return made


async def test_a_received_message_is_hidden_until_acknowledged_or_timed_out(runtime: Runtime) -> None:
    q = queue(runtime, visibility_timeout=0.2)
    await q.send_batch(["a", "b"])
    first = await q.receive(10, wait_seconds=0)
    assert sorted(m.body for m in first) == ["a", "b"]
    assert await q.receive(10, wait_seconds=0) == []
    await q.ack([m for m in first if m.body == "a"])
    again = await q.receive(10, wait_seconds=5)
    assert [(m.body, m.receive_count) for m in again] == [("b", 2)]


async def test_an_old_receipt_cannot_delete_a_message_received_again(runtime: Runtime) -> None:
    q = queue(runtime, visibility_timeout=0.1)
    await q.send_batch(["x"])
    [old] = await q.receive(1, wait_seconds=0)
    [new] = await q.receive(1, wait_seconds=5)
    await q.ack([old])
    assert await q.depth() == 1
    await q.ack([new])
    assert await q.depth() == 0


async def test_a_message_received_too_often_goes_to_the_dead_letters(runtime: Runtime) -> None:
    q = queue(runtime, visibility_timeout=0.05, max_receives=2)
    await q.send_batch(["poison"])
    assert len(await q.receive(1, wait_seconds=0)) == 1
    assert len(await q.receive(1, wait_seconds=5)) == 1
    assert await q.receive(1, wait_seconds=0.3) == []
    [letter] = await q.dead_letters()
    assert letter.body == "poison" and "received 2 times" in letter.reason
    assert await q.depth() == 0


async def test_dead_lettering_keeps_the_reason(runtime: Runtime) -> None:
    q = queue(runtime)
    await q.send_batch(["{bad"])
    [m] = await q.receive(1, wait_seconds=0)
    await q.dead_letter(m, "message is not JSON")
    assert [(d.body, d.reason) for d in await q.dead_letters()] == [("{bad", "message is not JSON")]


async def poisoned(q: LocalQueue, bodies: list[str]) -> None:
    await q.send_batch(bodies)
    for message in await q.receive(len(bodies), wait_seconds=0):
        await q.dead_letter(message, "unknown template")


async def test_replay_puts_chosen_dead_letters_back_as_fresh_messages(runtime: Runtime) -> None:
    q = queue(runtime)
    await poisoned(q, ["one", "two", "three"])
    letters = {d.body: d for d in await q.dead_letters()}
    assert await q.dead_letter_count() == 3 and all(d.created_at > 0 for d in letters.values())
    assert await q.replay([letters["two"].id, "no-such-id"]) == 1
    assert sorted(d.body for d in await q.dead_letters()) == ["one", "three"]
    [back] = await q.receive(10, wait_seconds=0)
    assert (back.body, back.receive_count) == ("two", 1)
    assert await q.replay() == 2
    assert await q.dead_letter_count() == 0 and await q.depth() == 3


async def test_purge_deletes_every_dead_letter_and_says_how_many(runtime: Runtime) -> None:
    q = queue(runtime)
    await poisoned(q, ["a", "b"])
    assert await q.purge_dead_letters() == 2
    assert await q.dead_letters() == [] and await q.depth() == 0
