"""The benchmark's SQS stand-in behaves as SQS (moto_server, over HTTP) does for everything the
dispatcher's queue adapter and boto3 do with it: each scenario runs against both servers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3  # type: ignore[import-untyped]
import botocore.exceptions  # type: ignore[import-untyped]
import pytest
import support

from bench.processes import Proc, start_sqs_standin, stop_all
from dispatcher.queue.sqs import MAX_BATCH_BYTES, SqsQueue
from transport.aws import AwsClient
from transport.pool import HttpClient


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_sqs_standin(Path(tmp_path_factory.mktemp("sqs")))
    yield proc
    stop_all([proc])


@pytest.fixture(params=["moto_server", "stand-in"])
def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The AWS environment pointed at moto_server (reset) or at the stand-in; returns which."""
    if request.param == "moto_server":
        request.getfixturevalue("aws")
        return "moto_server"
    support.point_aws_at(request.getfixturevalue("standin").url, monkeypatch)
    return "stand-in"


@pytest.fixture
async def http(server: str) -> AsyncIterator[HttpClient]:
    async with HttpClient() as session:
        yield session


def create_queues(max_receives: int = 3, visibility_timeout: int = 30) -> tuple[str, str]:
    """A queue with a redrive policy to its DLQ, under a name no other test uses (the stand-in
    is not reset between tests)."""
    return support.create_queues(f"q{uuid.uuid4().hex[:12]}", max_receives, visibility_timeout)


def adapter(http: HttpClient, url: str, visibility_timeout: int = 30) -> SqsQueue:
    return SqsQueue(AwsClient.from_environment(http, "sqs"), url,
                    visibility_timeout=visibility_timeout)


async def receive_all(queue: SqsQueue, n: int) -> list:
    received: list = []
    while len(received) < n:
        batch = await queue.receive(10, wait_seconds=1)
        assert batch, f"{n - len(received)} messages went missing"
        received += batch
    return received


async def test_messages_go_round_trip_and_leave_when_acknowledged(http: HttpClient) -> None:
    url, _ = create_queues()
    queue = adapter(http, url)
    await queue.send_batch([json.dumps({"n": i}) for i in range(25)])
    assert await queue.depth() == 25
    received = await receive_all(queue, 25)
    assert sorted(json.loads(m.body)["n"] for m in received) == list(range(25))
    assert {m.receive_count for m in received} == {1}
    stats = await queue.stats()
    assert (stats.visible, stats.in_flight, stats.delayed, stats.dead_letters) == (0, 25, 0, 0)
    await queue.ack(received)
    assert await queue.receive(10, wait_seconds=0) == []
    assert await queue.depth() == 0


async def test_a_message_not_deleted_comes_back_when_its_visibility_ends(http: HttpClient) -> None:
    url, _ = create_queues(max_receives=10)
    queue = adapter(http, url, visibility_timeout=1)
    await queue.send_batch(["again"])
    [first] = await queue.receive(1, wait_seconds=1)
    # Hidden for one second: a long poll of up to five gets it back, one receive later.
    [second] = await queue.receive(1, wait_seconds=5)
    assert (second.body, second.receive_count) == ("again", 2)
    await queue.extend(second, 0)  # given back at once
    [third] = await queue.receive(1, wait_seconds=2)
    assert third.receive_count == 3 and first.receipt != third.receipt
    await queue.ack([third])
    assert await queue.receive(1, wait_seconds=0) == [] and await queue.depth() == 0


async def test_a_long_poll_answers_when_a_message_arrives(http: HttpClient) -> None:
    url, _ = create_queues()
    queue, sender = adapter(http, url), adapter(http, url)
    started = time.monotonic()
    polling = asyncio.ensure_future(queue.receive(10, wait_seconds=20))
    await asyncio.sleep(0.2)  # the poll is waiting (or not yet sent: either way it must answer)
    await sender.send_batch(["hello"])
    [message] = await polling
    assert message.body == "hello"
    assert time.monotonic() - started < 10, "the long poll waited for its deadline"


async def test_maxreceivecount_moves_a_message_to_the_dead_letter_queue(http: HttpClient) -> None:
    url, dlq = create_queues(max_receives=2)
    queue = adapter(http, url)
    await queue.send_batch(["bad"])
    for count in (1, 2):
        [message] = await queue.receive(1, wait_seconds=1)
        assert message.receive_count == count
        await queue.extend(message, 0)
    assert await queue.receive(1, wait_seconds=1) == []
    [letter] = await queue.dead_letters()
    assert (letter.body, letter.reason) == ("bad", "redriven by SQS (maxReceiveCount)")
    assert await queue.dead_letter_count() == 1


async def test_poison_goes_to_the_dlq_with_its_reason_and_is_replayed(http: HttpClient) -> None:
    url, _ = create_queues()
    queue = adapter(http, url)
    await queue.send_batch(["p1", "p2", "p3"])
    for message in await receive_all(queue, 3):
        await queue.dead_letter(message, "unknown template")
    assert await queue.dead_letter_count() == 3
    letters = {d.body: d for d in await queue.dead_letters()}
    assert {d.reason for d in letters.values()} == {"unknown template"}
    assert await queue.replay([letters["p2"].id]) == 1
    assert sorted(d.body for d in await queue.dead_letters()) == ["p1", "p3"]
    [back] = await queue.receive(10, wait_seconds=1)
    assert (back.body, back.receive_count) == ("p2", 1)
    assert await queue.purge_dead_letters() == 2
    assert await queue.dead_letters() == []


def test_sqs_bounds_are_refused_with_sqs_error_codes(server: str) -> None:
    sqs = boto3.client("sqs")
    url, _ = create_queues()

    def code(call: object, **kwargs: object) -> str:
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            call(QueueUrl=url, **kwargs)  # type: ignore[operator]
        return str(caught.value.response["Error"]["Code"])

    eleven = [{"Id": str(i), "MessageBody": "x"} for i in range(11)]
    assert "TooManyEntriesInBatchRequest" in code(sqs.send_message_batch, Entries=eleven)
    twice = [{"Id": "same", "MessageBody": "x"}] * 2
    assert "BatchEntryIdsNotDistinct" in code(sqs.send_message_batch, Entries=twice)
    if server == "stand-in":  # moto_server checks neither size; the stand-in keeps 256 KiB
        halves = [{"Id": str(i), "MessageBody": "y" * (MAX_BATCH_BYTES // 2 + 1)} for i in range(2)]
        assert "BatchRequestTooLong" in code(sqs.send_message_batch, Entries=halves)
        big = "z" * (MAX_BATCH_BYTES + 1)
        assert "InvalidParameterValue" in code(sqs.send_message, MessageBody=big)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=11)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.get_queue_url(QueueName=f"missing-{uuid.uuid4().hex[:8]}")
    # Nothing refused was kept.
    assert sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])[
        "Attributes"]["ApproximateNumberOfMessages"] == "0"


def test_boto3_sends_with_attributes_and_deletes_in_batches(server: str) -> None:
    sqs = boto3.client("sqs")
    url, _ = create_queues()
    sent = sqs.send_message(QueueUrl=url, MessageBody="with attributes", MessageAttributes={
        "reason": {"DataType": "String", "StringValue": "because"}})
    [message] = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1, MessageAttributeNames=["All"],
                                    MessageSystemAttributeNames=["All"])["Messages"]
    assert message["MessageId"] == sent["MessageId"]
    assert message["MD5OfBody"] == sent["MD5OfMessageBody"]
    assert message["MessageAttributes"]["reason"]["StringValue"] == "because"
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"
    answer = sqs.delete_message_batch(QueueUrl=url, Entries=[
        {"Id": "ok", "ReceiptHandle": message["ReceiptHandle"]}])
    assert [e["Id"] for e in answer["Successful"]] == ["ok"]
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
