"""``Queue.stats()``, behind ``dispatcher_queue_messages{state}``: what each queue can tell of its
messages, on the database queue (SQLite and PostgreSQL) and on SQS (moto_server over HTTP)."""

from __future__ import annotations

from support import create_queues

from dispatcher.queue import QueueStats
from dispatcher.queue.sqs import SqsQueue
from dispatcher.runtime import Runtime
from transport.aws import AwsClient
from transport.pool import HttpClient


async def test_the_database_queue_tells_visible_in_flight_and_dead(runtime: Runtime) -> None:
    queue = runtime.queue
    assert await queue.stats() == QueueStats(visible=0, in_flight=0, delayed=0, dead_letters=0)
    await queue.send_batch(["a", "b", "c", "d"])
    received = await queue.receive(2, wait_seconds=0)
    await queue.dead_letter(received[0], "test: refused")
    assert await queue.stats() == QueueStats(visible=2, in_flight=1, delayed=0, dead_letters=1)
    await queue.ack(received[1:])
    assert await queue.stats() == QueueStats(visible=2, in_flight=0, delayed=0, dead_letters=1)


async def test_sqs_tells_its_approximate_figures_and_its_dlq(aws: str) -> None:
    url, dlq = create_queues("stats")
    async with HttpClient() as http:
        queue = SqsQueue(AwsClient.from_environment(http, "sqs"), url, visibility_timeout=30)
        await queue.send_batch(["a", "b", "c"])
        received = await queue.receive(1, wait_seconds=1)
        await queue.dead_letter(received[0], "test: refused")
        [kept] = await queue.receive(1, wait_seconds=1)
        stats = await queue.stats()
    assert stats == QueueStats(visible=1, in_flight=1, delayed=0, dead_letters=1)
    assert kept.body in {"a", "b", "c"}


async def test_sqs_without_a_dlq_leaves_the_dead_letters_out(aws: str) -> None:
    import boto3

    url = boto3.client("sqs").create_queue(QueueName="no-dlq")["QueueUrl"]
    async with HttpClient() as http:
        queue = SqsQueue(AwsClient.from_environment(http, "sqs"), url, visibility_timeout=30)
        await queue.send_batch(["a"])
        assert await queue.stats() == QueueStats(visible=1, in_flight=0, delayed=0, dead_letters=None)
