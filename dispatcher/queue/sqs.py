"""Amazon SQS as the queue (``DISPATCHER_QUEUE_URL=https://sqs.<region>.amazonaws.com/<acct>/<name>``).

* Sending: ``SendMessageBatch``, 10 entries per call and at most 256 KiB per call.
* Receiving: long polling (``WaitTimeSeconds``), up to 10 messages per call, with the
  approximate receive count; deleting: ``DeleteMessageBatch``.
* In progress: the worker extends a message's visibility (``ChangeMessageVisibility``).
* Redrive: SQS moves a message to the dead-letter queue after the queue's ``maxReceiveCount``
  (set by the operator's redrive policy). Poison messages are moved by the worker at once:
  sent to the DLQ with the reason as a message attribute, then deleted.

The calls go through :class:`transport.aws.AwsClient` (botocore's credentials, endpoints and
SigV4 signing over one HTTP client), the SQS JSON protocol.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from dispatcher.errors import Unavailable
from dispatcher.queue import DeadLetter, QueuedMessage, QueueStats
from transport.aws import AwsClient, AwsError

__all__ = ["SqsQueue", "MAX_BATCH_BYTES"]

MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 262_144
MAX_WAIT_SECONDS = 20


class SqsQueue:
    max_message_bytes: int | None = MAX_BATCH_BYTES
    max_receive: int | None = MAX_BATCH_ENTRIES

    def __init__(self, client: AwsClient, queue_url: str, *, visibility_timeout: float,
                 dead_letter_url: str | None = None) -> None:
        self._client = client
        self._url = queue_url
        self._visibility = max(int(visibility_timeout), 1)
        self._dlq_url = dead_letter_url

    async def send_batch(self, bodies: Sequence[str]) -> None:
        """All of ``bodies``, in calls of up to 10 made concurrently; raises if any failed."""
        await asyncio.gather(*(self._send_entries(batch) for batch in _batches(bodies)))

    async def _send_entries(self, batch: list[str]) -> None:
        entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(batch)]
        answer = await self._call("SendMessageBatch", {"QueueUrl": self._url, "Entries": entries})
        failed = answer.get("Failed") or []
        if failed:
            raise RuntimeError(f"SQS refused {len(failed)} of {len(entries)} messages: "
                               f"{failed[0].get('Code')}: {failed[0].get('Message')}")

    async def receive(self, max_messages: int, wait_seconds: float) -> list[QueuedMessage]:
        answer = await self._call("ReceiveMessage", {
            "QueueUrl": self._url,
            "MaxNumberOfMessages": max(1, min(max_messages, MAX_BATCH_ENTRIES)),
            "WaitTimeSeconds": max(0, min(int(wait_seconds), MAX_WAIT_SECONDS)),
            "VisibilityTimeout": self._visibility,
            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
        })
        return [QueuedMessage(m["MessageId"], m["Body"], m["ReceiptHandle"],
                              int((m.get("Attributes") or {}).get("ApproximateReceiveCount", 1)))
                for m in answer.get("Messages") or []]

    async def ack(self, messages: Sequence[QueuedMessage]) -> None:
        for start in range(0, len(messages), MAX_BATCH_ENTRIES):
            batch = messages[start:start + MAX_BATCH_ENTRIES]
            await self._call("DeleteMessageBatch", {"QueueUrl": self._url, "Entries": [
                {"Id": str(i), "ReceiptHandle": m.receipt} for i, m in enumerate(batch)]})

    async def extend(self, message: QueuedMessage, seconds: float) -> None:
        await self._call("ChangeMessageVisibility", {
            "QueueUrl": self._url, "ReceiptHandle": message.receipt,
            "VisibilityTimeout": max(0, min(int(seconds), 43_200))})

    async def dead_letter(self, message: QueuedMessage, reason: str) -> None:
        dlq = await self._dead_letter_url()
        await self._call("SendMessage", {
            "QueueUrl": dlq, "MessageBody": message.body,
            "MessageAttributes": {
                "reason": {"DataType": "String", "StringValue": reason[:4096]},
                "source_message_id": {"DataType": "String", "StringValue": message.id},
            }})
        await self.ack([message])

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Peek at the DLQ: each message is received (hidden, so that the next receive
        returns others), then made visible again at once, ready to be replayed."""
        dlq = await self._dead_letter_url()
        letters: list[DeadLetter] = []
        seen: list[dict[str, Any]] = []
        try:
            while len(letters) < limit:
                answer = await self._call("ReceiveMessage", {
                    "QueueUrl": dlq, "MaxNumberOfMessages": min(10, limit - len(letters)),
                    "WaitTimeSeconds": 0, "VisibilityTimeout": 30, "MessageAttributeNames": ["All"],
                    "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"]})
                batch = answer.get("Messages") or []
                if not batch:
                    break
                seen += batch
                letters += [_letter(m) for m in batch]
        finally:
            await self._release(dlq, seen)
        return letters

    async def _release(self, queue_url: str, messages: Sequence[dict[str, Any]]) -> None:
        """Make received messages visible again now."""
        for start in range(0, len(messages), MAX_BATCH_ENTRIES):
            await self._call("ChangeMessageVisibilityBatch", {"QueueUrl": queue_url, "Entries": [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(messages[start:start + MAX_BATCH_ENTRIES])]})

    async def dead_letter_count(self) -> int:
        answer = await self._call("GetQueueAttributes", {
            "QueueUrl": await self._dead_letter_url(),
            "AttributeNames": ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]})
        attributes = answer.get("Attributes", {})
        return (int(attributes.get("ApproximateNumberOfMessages", 0))
                + int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)))

    async def replay(self, ids: Sequence[str] | None = None) -> int:
        """Receive from the DLQ, send each chosen message to the queue, then delete it from
        the DLQ (sent before deleted: a crash in between replays it twice, which the ledger
        absorbs, rather than losing it). Messages not chosen are made visible again."""
        dlq = await self._dead_letter_url()
        wanted = set(ids) if ids is not None else None
        replayed, skipped = 0, []
        while wanted is None or wanted:
            answer = await self._call("ReceiveMessage", {
                "QueueUrl": dlq, "MaxNumberOfMessages": MAX_BATCH_ENTRIES, "WaitTimeSeconds": 1,
                "VisibilityTimeout": 60})
            batch = answer.get("Messages") or []
            if not batch:
                break
            chosen = [m for m in batch if wanted is None or m["MessageId"] in wanted]
            skipped += [m for m in batch if m not in chosen]
            if chosen:
                await self.send_batch([m["Body"] for m in chosen])
                await self._call("DeleteMessageBatch", {"QueueUrl": dlq, "Entries": [
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chosen)]})
                replayed += len(chosen)
                if wanted is not None:
                    wanted -= {m["MessageId"] for m in chosen}
        await self._release(dlq, skipped)
        return replayed

    async def purge_dead_letters(self) -> int:
        """``PurgeQueue`` on the DLQ (SQS allows one a minute; the count is approximate)."""
        count = await self.dead_letter_count()
        await self._call("PurgeQueue", {"QueueUrl": await self._dead_letter_url()})
        return count

    async def depth(self) -> int:
        answer = await self._call("GetQueueAttributes", {
            "QueueUrl": self._url, "AttributeNames": ["ApproximateNumberOfMessages"]})
        return int(answer.get("Attributes", {}).get("ApproximateNumberOfMessages", 0))

    async def stats(self) -> QueueStats:
        """SQS's approximate figures (``ApproximateNumberOfMessages*``); the dead letters are
        those of the DLQ (None when there is none to ask)."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                 "ApproximateNumberOfMessagesDelayed"]
        answer = await self._call("GetQueueAttributes", {"QueueUrl": self._url, "AttributeNames": names})
        visible, in_flight, delayed = (int(answer.get("Attributes", {}).get(n, 0)) for n in names)
        try:
            dlq = await self._call("GetQueueAttributes", {
                "QueueUrl": await self._dead_letter_url(), "AttributeNames": names[:1]})
            dead: int | None = int(dlq.get("Attributes", {}).get(names[0], 0))
        except RuntimeError:  # no DLQ configured
            dead = None
        return QueueStats(visible, in_flight, delayed, dead)

    async def close(self) -> None:
        return None  # the HTTP client belongs to the runtime

    async def _dead_letter_url(self) -> str:
        """The DLQ: configured, or the target of the queue's redrive policy."""
        if self._dlq_url is None:
            answer = await self._call("GetQueueAttributes", {
                "QueueUrl": self._url, "AttributeNames": ["RedrivePolicy"]})
            policy = answer.get("Attributes", {}).get("RedrivePolicy")
            if not policy:
                raise RuntimeError(f"SQS queue {self._url} has no redrive policy and "
                                   "DISPATCHER_DEAD_LETTER_QUEUE_URL is unset: no DLQ to use")
            name = json.loads(policy)["deadLetterTargetArn"].rsplit(":", 1)[1]
            self._dlq_url = (await self._call("GetQueueUrl", {"QueueName": name}))["QueueUrl"]
        return self._dlq_url

    async def _call(self, operation: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._client.json_target(f"AmazonSQS.{operation}", payload)
        except AwsError as exc:  # the core's word for it: the queue does not answer
            raise Unavailable(f"SQS {operation} failed: {exc}") from exc


def _batches(bodies: Sequence[str]) -> list[list[str]]:
    """Groups of at most 10 messages and 256 KiB; a single larger message is refused."""
    batches: list[list[str]] = []
    current: list[str] = []
    size = 0
    for body in bodies:
        n = len(body.encode())
        if n > MAX_BATCH_BYTES:
            raise ValueError(f"a message of {n} bytes exceeds SQS's {MAX_BATCH_BYTES} bytes")
        if current and (len(current) == MAX_BATCH_ENTRIES or size + n > MAX_BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(body)
        size += n
    if current:
        batches.append(current)
    return batches


def _letter(m: dict[str, Any]) -> DeadLetter:
    attributes = m.get("MessageAttributes") or {}
    reason = (attributes.get("reason") or {}).get("StringValue") or "redriven by SQS (maxReceiveCount)"
    system = m.get("Attributes") or {}
    return DeadLetter(m["MessageId"], m["Body"], reason,
                      int(system.get("ApproximateReceiveCount", 0)),
                      int(system.get("SentTimestamp", 0)) * 1000)


