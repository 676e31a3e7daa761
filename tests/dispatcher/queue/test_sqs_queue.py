"""The SQS queue adapter against moto_server over HTTP: batches, visibility, DLQ, redrive."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import cast

import pytest
from support import create_queues, new_id

from dispatcher.delivery import Deliverer
from dispatcher.messages import ChunkMessage, encode_chunk
from dispatcher.queue.sqs import MAX_BATCH_BYTES, SqsQueue, _batches
from dispatcher.worker import Batching, Worker
from transport.aws import AwsClient
from transport.pool import HttpClient


@pytest.fixture
async def http(aws: str) -> AsyncIterator[HttpClient]:
    async with HttpClient() as session:
        yield session


def sqs_queue(http: HttpClient, url: str, **kwargs: object) -> SqsQueue:
    return SqsQueue(AwsClient.from_environment(http, "sqs"), url,
                    visibility_timeout=kwargs.pop("visibility_timeout", 30), **kwargs)  # type: ignore[arg-type]


async def test_batches_respect_ten_entries_and_256_kib() -> None:
    assert [len(b) for b in _batches(["x"] * 23)] == [10, 10, 3]
    big = "y" * (MAX_BATCH_BYTES // 3 + 1)
    assert [len(b) for b in _batches([big] * 4)] == [2, 2]
    with pytest.raises(ValueError, match="exceeds"):
        _batches(["z" * (MAX_BATCH_BYTES + 1)])


async def test_messages_go_round_trip_and_leave_when_acknowledged(http: HttpClient) -> None:
    url, _ = create_queues()
    queue = sqs_queue(http, url)
    await queue.send_batch([json.dumps({"n": i}) for i in range(25)])
    received = []
    while len(received) < 25:
        batch = await queue.receive(10, wait_seconds=1)
        assert batch, "messages went missing"
        received += batch
    assert sorted(json.loads(m.body)["n"] for m in received) == list(range(25))
    assert {m.receive_count for m in received} == {1}
    await queue.ack(received)
    assert await queue.receive(10, wait_seconds=0) == []
    assert await queue.depth() == 0


async def test_an_unacknowledged_message_comes_back_with_a_higher_count(http: HttpClient) -> None:
    url, _ = create_queues()
    queue = sqs_queue(http, url, visibility_timeout=1)
    await queue.send_batch(["again"])
    [first] = await queue.receive(1, wait_seconds=1)
    await queue.extend(first, 0)  # give it back now
    [second] = await queue.receive(1, wait_seconds=2)
    assert (second.body, second.receive_count) == ("again", 2)


async def test_poison_goes_to_the_redrive_dlq_with_its_reason(http: HttpClient) -> None:
    url, dlq = create_queues()
    queue = sqs_queue(http, url)
    await queue.send_batch(["{not json"])
    [message] = await queue.receive(1, wait_seconds=1)
    await queue.dead_letter(message, "message is not JSON")
    [letter] = await queue.dead_letters()
    assert (letter.body, letter.reason) == ("{not json", "message is not JSON")
    assert await queue.depth() == 0


async def test_a_queue_without_a_dlq_says_so(http: HttpClient) -> None:
    import boto3

    url = boto3.client("sqs").create_queue(QueueName="lonely")["QueueUrl"]
    queue = sqs_queue(http, url)
    await queue.send_batch(["x"])
    [message] = await queue.receive(1, wait_seconds=1)
    with pytest.raises(RuntimeError, match="no redrive policy"):
        await queue.dead_letter(message, "poison")


async def test_replay_moves_dlq_messages_back_to_the_queue(http: HttpClient) -> None:
    url, _ = create_queues()
    queue = sqs_queue(http, url)
    await queue.send_batch(["p1", "p2", "p3"])
    received: list = []
    while len(received) < 3:
        received += await queue.receive(10, wait_seconds=1)
    for message in received:
        await queue.dead_letter(message, "unknown template")
    assert await queue.dead_letter_count() == 3
    letters = {d.body: d for d in await queue.dead_letters()}
    assert await queue.replay([letters["p2"].id]) == 1
    assert sorted(d.body for d in await queue.dead_letters()) == ["p1", "p3"]
    [back] = await queue.receive(10, wait_seconds=1)
    assert (back.body, back.receive_count) == ("p2", 1)
    assert await queue.replay() == 2
    assert await queue.dead_letter_count() == 0 and await queue.depth() == 2


async def test_purge_empties_the_dlq(http: HttpClient) -> None:
    url, _ = create_queues()
    queue = sqs_queue(http, url)
    await queue.send_batch(["x", "y"])
    received: list = []
    while len(received) < 2:
        received += await queue.receive(10, wait_seconds=1)
    for message in received:
        await queue.dead_letter(message, "poison")
    assert await queue.purge_dead_letters() == 2
    assert await queue.dead_letters() == []


async def test_a_worker_fills_a_batch_from_sqs_past_ten_messages_a_receive(http: HttpClient) -> None:
    """SQS returns at most 10 messages a receive: a worker gathering small messages receives
    again while each receive comes back full, so 30 waiting messages make one batch, not 14."""
    url, _ = create_queues()
    queue = sqs_queue(http, url)
    chunks = [ChunkMessage(id=new_id(), service="app", template="app-install", recipients=(f"u{i}",),
                           data={}, state="installing") for i in range(30)]
    await queue.send_batch([encode_chunk(c) for c in chunks])
    worker = Worker(queue, cast(Deliverer, None), concurrency=4, visibility_timeout=30,
                    known_services=None, batching=Batching(messages=64, recipients=500, linger=0))
    batches = await worker._take(4, 1)
    assert [len(b) for b in batches] == [30]
    assert sorted(r.chunk.id for r in batches[0]) == sorted(c.id for c in chunks)
    assert await queue.receive(10, wait_seconds=0) == []
