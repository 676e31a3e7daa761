"""An SQS stand-in for the benchmark's production stack: standard queues in memory, one process.

``python -m bench.sqs_standin --port N`` serves, in the foreground, the SQS JSON 1.0 protocol
(``POST /`` with ``X-Amz-Target: AmazonSQS.<Operation>``) that botocore and the dispatcher's
:class:`dispatcher.queue.sqs.SqsQueue` speak, for the operations they use:

``CreateQueue`` (``VisibilityTimeout``, ``DelaySeconds``, ``ReceiveMessageWaitTimeSeconds``,
``MessageRetentionPeriod``, ``RedrivePolicy``), ``GetQueueUrl``, ``ListQueues``, ``DeleteQueue``,
``GetQueueAttributes``, ``SendMessage``, ``SendMessageBatch``, ``ReceiveMessage`` (long polling,
``VisibilityTimeout``, system and message attributes), ``DeleteMessage``, ``DeleteMessageBatch``,
``ChangeMessageVisibility``, ``ChangeMessageVisibilityBatch`` and ``PurgeQueue``.

Why it exists: in ``python -m bench`` the production stack's queue ran on ``moto_server``, which
spent 2-5 ms of CPU per delivery on its own (more than the gateway and a worker together) and
fell behind at 100 single-recipient notifications/s, so the production figures measured moto,
not the dispatcher. In a deployment SQS's CPU is AWS's. This stand-in keeps SQS's semantics that
the dispatcher relies on, at a small cost per request:

* at-least-once delivery: a received message is hidden for its visibility timeout, then seen
  again with ``ApproximateReceiveCount`` one higher, until it is deleted with the receipt handle
  of its latest receive (an older handle deletes nothing, as SQS documents; a handle this server
  never issued is ``ReceiptHandleIsInvalid``);
* long polling: ``WaitTimeSeconds`` (0-20) answers as soon as a message is visible, or empty
  when the wait ends; a message whose visibility timeout ends during the wait is returned;
* redrive: with a ``RedrivePolicy``, a message received ``maxReceiveCount`` times and not
  deleted moves to the dead-letter queue the next time it would be received;
* SQS's bounds: 1-10 entries per batch with distinct ids, 256 KiB per message and per batch,
  ``MaxNumberOfMessages`` 1-10, ``VisibilityTimeout`` 0-43,200 s; an error names the problem in
  SQS's own JSON error shape (``__type`` and ``message``, HTTP 400).

It checks that an ``Authorization`` header is present but verifies no signature, like the
provider stand-ins in :mod:`bench.standins`. Not modelled: FIFO queues, message retention
expiry, ``MessageGroupId``, tags, permissions, the one-purge-a-minute limit.

``GET /_health`` answers ``{"queues": N}`` once the server is up.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from bench.standins import run_main

__all__ = ["SqsStandIn", "main"]

ACCOUNT: Final = "000000000000"
REGION: Final = "us-east-1"
MAX_MESSAGE_BYTES: Final = 262_144
MAX_ENTRIES: Final = 10
MAX_WAIT_SECONDS: Final = 20
MAX_VISIBILITY: Final = 43_200
JSON_10: Final = "application/x-amz-json-1.0"
COUNT_ATTRIBUTES: Final = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                           "ApproximateNumberOfMessagesDelayed")
DEFAULTS: Final = {"VisibilityTimeout": "30", "DelaySeconds": "0", "MaximumMessageSize": "262144",
                   "MessageRetentionPeriod": "345600", "ReceiveMessageWaitTimeSeconds": "0"}
SETTABLE: Final = (*DEFAULTS, "RedrivePolicy", "Policy", "SqsManagedSseEnabled")


class SqsError(Exception):
    """Answered as SQS's JSON error: ``{"__type": "com.amazonaws.sqs#<code>", "message"}``."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass
class Message:
    id: str
    body: str
    md5: str
    attributes: dict[str, Any]
    sent_ms: int
    visible_at: float            # monotonic seconds; hidden (delayed or in flight) until then
    receives: int = 0
    first_receive_ms: int = 0
    receipt: str = ""            # the latest receive's handle: only it deletes the message
    in_flight: bool = False


@dataclass
class Queue:
    name: str
    url: str
    attributes: dict[str, str]
    created: int = field(default_factory=lambda: int(time.time()))
    messages: dict[str, Message] = field(default_factory=dict)
    ready: deque[str] = field(default_factory=deque)
    #: (visible_at, serial, id): hidden messages; an entry whose message moved on is skipped.
    hidden: list[tuple[float, int, str]] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    #: From RedrivePolicy: (the dead-letter queue's name, maxReceiveCount).
    redrive: tuple[str, int] | None = None

    @property
    def arn(self) -> str:
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{self.name}"

    def setting(self, name: str) -> int:
        return int(self.attributes.get(name, DEFAULTS[name]))

    def promote(self, now: float) -> None:
        """Messages whose hiding ended become receivable, in the order they became due."""
        hidden = self.hidden
        while hidden and hidden[0][0] <= now:
            due, _, mid = heapq.heappop(hidden)
            message = self.messages.get(mid)
            if message is not None and message.visible_at == due:
                message.in_flight = False
                self.ready.append(mid)

    def hide(self, message: Message, until: float, serial: int) -> None:
        message.visible_at = until
        heapq.heappush(self.hidden, (until, serial, message.id))

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()

    def counts(self, now: float) -> dict[str, int]:
        self.promote(now)
        visible = sum(1 for mid in self.ready if mid in self.messages)
        in_flight = sum(1 for m in self.messages.values() if m.in_flight)
        return {"ApproximateNumberOfMessages": visible,
                "ApproximateNumberOfMessagesNotVisible": in_flight,
                "ApproximateNumberOfMessagesDelayed": len(self.messages) - visible - in_flight}


class SqsStandIn:
    """The queues and the handlers (one event loop, so no locks)."""

    def __init__(self) -> None:
        self.queues: dict[str, Queue] = {}
        self._serial = 0
        self._base = ""
        self._operations: dict[str, Callable[[dict[str, Any]], Any]] = {
            "CreateQueue": self.create_queue, "GetQueueUrl": self.get_queue_url,
            "ListQueues": self.list_queues, "DeleteQueue": self.delete_queue,
            "GetQueueAttributes": self.get_queue_attributes, "SendMessage": self.send_message,
            "SendMessageBatch": self.send_message_batch, "ReceiveMessage": self.receive_message,
            "DeleteMessage": self.delete_message, "DeleteMessageBatch": self.delete_message_batch,
            "ChangeMessageVisibility": self.change_visibility,
            "ChangeMessageVisibilityBatch": self.change_visibility_batch,
            "PurgeQueue": self.purge_queue,
        }

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * MAX_MESSAGE_BYTES)
        app.router.add_get("/_health", self.health)
        app.router.add_post("/", self.dispatch)
        return app

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"queues": len(self.queues)})

    async def dispatch(self, request: web.Request) -> web.Response:
        if not self._base:
            self._base = f"http://{request.host}"
        body = await request.read()
        try:
            if not request.headers.get("Authorization"):
                raise SqsError("MissingAuthenticationToken", "Request is missing Authentication "
                               "Token", 403)
            service, _, operation = request.headers.get("X-Amz-Target", "").partition(".")
            handler = self._operations.get(operation) if service == "AmazonSQS" else None
            if handler is None:
                raise SqsError("InvalidAction", f"no stand-in for the operation "
                               f"{request.headers.get('X-Amz-Target')!r}")
            try:
                payload = json.loads(body) if body else {}
            except ValueError:
                raise SqsError("SerializationException", "the body is not JSON") from None
            if not isinstance(payload, dict):
                raise SqsError("SerializationException", "the body is not a JSON object")
            answer = handler(payload)
            if asyncio.iscoroutine(answer):
                answer = await answer
        except SqsError as exc:
            return web.Response(status=exc.status, content_type=JSON_10, text=json.dumps(
                {"__type": f"com.amazonaws.sqs#{exc.code}", "message": exc.message}))
        return web.Response(content_type=JSON_10, text=json.dumps(answer))

    # -- queues --------------------------------------------------------------------------------

    def _queue(self, payload: dict[str, Any]) -> Queue:
        url = payload.get("QueueUrl")
        if not isinstance(url, str) or not url:
            raise SqsError("MissingParameter", "The request must contain the parameter QueueUrl.")
        queue = self.queues.get(url.rstrip("/").rsplit("/", 1)[-1])
        if queue is None:
            raise SqsError("QueueDoesNotExist", "The specified queue does not exist.")
        return queue

    def create_queue(self, payload: dict[str, Any]) -> dict[str, Any]:
        name = payload.get("QueueName")
        if not isinstance(name, str) or not name or len(name) > 80 or not all(
                c.isascii() and (c.isalnum() or c in "-_") for c in name):
            raise SqsError("InvalidParameterValue", "QueueName: 1-80 letters, digits, - and _")
        attributes = {str(k): str(v) for k, v in (payload.get("Attributes") or {}).items()}
        unknown = sorted(set(attributes) - set(SETTABLE))
        if unknown:
            raise SqsError("InvalidAttributeName", f"Unknown Attribute {unknown[0]}.")
        _check_attributes(attributes)
        existing = self.queues.get(name)
        if existing is not None:
            if any(existing.attributes.get(k, DEFAULTS.get(k)) != v for k, v in attributes.items()):
                raise SqsError("QueueAlreadyExists", "A queue already exists with the same name "
                               "and a different value for attribute(s)")
            return {"QueueUrl": existing.url}
        queue = Queue(name, f"{self._base}/{ACCOUNT}/{name}", attributes)
        if "RedrivePolicy" in attributes:
            rule = json.loads(attributes["RedrivePolicy"])
            queue.redrive = (str(rule["deadLetterTargetArn"]).rsplit(":", 1)[-1],
                             int(rule["maxReceiveCount"]))
        self.queues[name] = queue
        return {"QueueUrl": queue.url}

    def get_queue_url(self, payload: dict[str, Any]) -> dict[str, Any]:
        queue = self.queues.get(str(payload.get("QueueName")))
        if queue is None:
            raise SqsError("QueueDoesNotExist", "The specified queue does not exist.")
        return {"QueueUrl": queue.url}

    def list_queues(self, payload: dict[str, Any]) -> dict[str, Any]:
        prefix = str(payload.get("QueueNamePrefix") or "")
        return {"QueueUrls": [q.url for name, q in sorted(self.queues.items())
                              if name.startswith(prefix)]}

    def delete_queue(self, payload: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(payload)
        queue.wake()
        del self.queues[queue.name]
        return {}

    def get_queue_attributes(self, payload: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(payload)
        names = payload.get("AttributeNames") or []
        every = "All" in names
        answer = dict(DEFAULTS) | queue.attributes if every else {}
        answer.update({k: v for k, v in queue.attributes.items() if k in names})
        answer.update({k: DEFAULTS[k] for k in names if k in DEFAULTS and k not in answer})
        if every or any(n in COUNT_ATTRIBUTES for n in names):
            answer.update({k: str(v) for k, v in queue.counts(time.monotonic()).items()
                           if every or k in names})
        if every or "QueueArn" in names:
            answer["QueueArn"] = queue.arn
        if every or "CreatedTimestamp" in names:
            answer["CreatedTimestamp"] = str(queue.created)
        return {"Attributes": answer} if answer else {}

    def purge_queue(self, payload: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(payload)
        queue.messages.clear()
        queue.ready.clear()
        queue.hidden.clear()
        return {}

    # -- sending -------------------------------------------------------------------------------

    def _enqueue(self, queue: Queue, entry: dict[str, Any]) -> dict[str, Any]:
        body = entry.get("MessageBody")
        if not isinstance(body, str) or not body:
            raise SqsError("MissingParameter", "The request must contain the parameter "
                           "MessageBody.")
        size = len(body.encode())
        if size > MAX_MESSAGE_BYTES:
            raise SqsError("InvalidParameterValue", f"One or more parameters are invalid. Reason: "
                           f"Message must be shorter than {MAX_MESSAGE_BYTES} bytes.")
        delay = _bounded(entry, "DelaySeconds", queue.setting("DelaySeconds"), 0, 900)
        md5 = hashlib.md5(body.encode()).hexdigest()
        message = Message(str(uuid.uuid4()), body, md5, dict(entry.get("MessageAttributes") or {}),
                          int(time.time() * 1000), 0.0)
        queue.messages[message.id] = message
        if delay:
            self._serial += 1
            queue.hide(message, time.monotonic() + delay, self._serial)
        else:
            queue.ready.append(message.id)
            queue.wake()
        return {"MessageId": message.id, "MD5OfMessageBody": md5}

    def send_message(self, payload: dict[str, Any]) -> dict[str, Any]:
        return self._enqueue(self._queue(payload), payload)

    def send_message_batch(self, payload: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(payload)
        entries = _entries(payload)
        total = sum(len(str(e.get("MessageBody", "")).encode()) for e in entries)
        if total > MAX_MESSAGE_BYTES:
            raise SqsError("BatchRequestTooLong", f"Batch requests cannot be longer than "
                           f"{MAX_MESSAGE_BYTES} bytes. You have sent {total} bytes.")
        successful, failed = [], []
        for entry in entries:
            try:
                successful.append({"Id": entry["Id"], **self._enqueue(queue, entry)})
            except SqsError as exc:
                failed.append({"Id": entry["Id"], "SenderFault": True, "Code": exc.code,
                               "Message": exc.message})
        return {"Successful": successful, "Failed": failed}

    # -- receiving -----------------------------------------------------------------------------

    async def receive_message(self, payload: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(payload)
        limit = _bounded(payload, "MaxNumberOfMessages", 1, 1, MAX_ENTRIES)
        wait = _bounded(payload, "WaitTimeSeconds", queue.setting("ReceiveMessageWaitTimeSeconds"),
                        0, MAX_WAIT_SECONDS)
        visibility = _bounded(payload, "VisibilityTimeout", queue.setting("VisibilityTimeout"),
                              0, MAX_VISIBILITY)
        deadline = time.monotonic() + wait
        while True:
            now = time.monotonic()
            taken = self._take(queue, limit, visibility, now)
            if taken or now >= deadline or queue.name not in self.queues:
                break
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            queue.waiters.append(waiter)
            until = min(deadline, queue.hidden[0][0]) if queue.hidden else deadline
            try:
                await asyncio.wait_for(waiter, max(until - now, 0.001))
            except TimeoutError:
                pass
            finally:
                if waiter in queue.waiters:
                    queue.waiters.remove(waiter)
        if not taken:
            return {}
        system = set(payload.get("MessageSystemAttributeNames") or []) | set(
            payload.get("AttributeNames") or [])
        wanted = set(payload.get("MessageAttributeNames") or [])
        return {"Messages": [_received(m, system, wanted) for m in taken]}

    def _take(self, queue: Queue, limit: int, visibility: int, now: float) -> list[Message]:
        queue.promote(now)
        taken: list[Message] = []
        while queue.ready and len(taken) < limit:
            message = queue.messages.get(queue.ready.popleft())
            if message is None or message.in_flight or message.visible_at > now:
                continue  # deleted, or seen again through a stale entry
            if self._redriven(queue, message):
                continue
            message.receives += 1
            message.first_receive_ms = message.first_receive_ms or int(time.time() * 1000)
            self._serial += 1
            message.receipt = f"{queue.name}/{message.id}/{self._serial}"
            message.in_flight = True
            queue.hide(message, now + visibility, self._serial)
            taken.append(message)
        return taken

    def _redriven(self, queue: Queue, message: Message) -> bool:
        """Moved to the dead-letter queue: received maxReceiveCount times already."""
        if queue.redrive is None or message.receives < queue.redrive[1]:
            return False
        target = self.queues.get(queue.redrive[0])
        if target is None:
            return False  # SQS keeps the message where it is when the DLQ is gone
        del queue.messages[message.id]
        message.in_flight, message.visible_at, message.receipt = False, 0.0, ""
        target.messages[message.id] = message
        target.ready.append(message.id)
        target.wake()
        return True

    # -- deleting and hiding -------------------------------------------------------------------

    def _held(self, queue: Queue, handle: Any) -> Message | None:
        """The message a receipt handle names, if that handle is its latest; None if older."""
        if not isinstance(handle, str) or handle.count("/") != 2:
            raise SqsError("ReceiptHandleIsInvalid", f"The input receipt handle {handle!r} is "
                           "not a valid receipt handle.")
        name, mid, _ = handle.split("/")
        if name != queue.name:
            raise SqsError("ReceiptHandleIsInvalid", "The receipt handle is not for this queue.")
        message = queue.messages.get(mid)
        return message if message is not None and message.receipt == handle else None

    def delete_message(self, payload: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(payload)
        message = self._held(queue, payload.get("ReceiptHandle"))
        if message is not None:
            del queue.messages[message.id]
        return {}

    def delete_message_batch(self, payload: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(payload)
        return _batch(payload, lambda entry: self.delete_message(
            {"QueueUrl": queue.url, "ReceiptHandle": entry.get("ReceiptHandle")}))

    def change_visibility(self, payload: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(payload)
        seconds = _bounded(payload, "VisibilityTimeout", None, 0, MAX_VISIBILITY)
        message = self._held(queue, payload.get("ReceiptHandle"))
        if message is None or not message.in_flight:
            raise SqsError("MessageNotInflight", "The message referred to is not in flight.")
        self._serial += 1
        queue.hide(message, time.monotonic() + seconds, self._serial)
        if seconds == 0:
            queue.promote(time.monotonic())
            queue.wake()
        return {}

    def change_visibility_batch(self, payload: dict[str, Any]) -> dict[str, Any]:
        queue = self._queue(payload)
        return _batch(payload, lambda entry: self.change_visibility(
            {"QueueUrl": queue.url, "ReceiptHandle": entry.get("ReceiptHandle"),
             "VisibilityTimeout": entry.get("VisibilityTimeout")}))


def _check_attributes(attributes: dict[str, str]) -> None:
    for name, (low, high) in {"VisibilityTimeout": (0, MAX_VISIBILITY), "DelaySeconds": (0, 900),
                              "ReceiveMessageWaitTimeSeconds": (0, MAX_WAIT_SECONDS),
                              "MessageRetentionPeriod": (60, 1_209_600),
                              "MaximumMessageSize": (1024, MAX_MESSAGE_BYTES)}.items():
        if name in attributes and not (attributes[name].isdigit()
                                       and low <= int(attributes[name]) <= high):
            raise SqsError("InvalidAttributeValue", f"Invalid value for the parameter {name}: "
                           f"{low}-{high} seconds.")
    if "RedrivePolicy" in attributes:
        try:
            rule = json.loads(attributes["RedrivePolicy"])
            valid = (str(rule["deadLetterTargetArn"]).startswith("arn:aws:sqs:")
                     and 1 <= int(rule["maxReceiveCount"]) <= 1000)
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            raise SqsError("InvalidAttributeValue", "Invalid value for the parameter "
                           "RedrivePolicy: a JSON object with deadLetterTargetArn and "
                           "maxReceiveCount (1-1000).")


def _bounded(payload: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int:
    value = payload.get(name, default)
    if value is None:
        raise SqsError("MissingParameter", f"The request must contain the parameter {name}.")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SqsError("InvalidParameterValue", f"Value {value!r} for parameter {name} is "
                       f"invalid. Reason: must be between {low} and {high}.")
    return value


def _entries(payload: dict[str, Any]) -> list[dict[str, Any]]:
    entries = payload.get("Entries")
    if not isinstance(entries, list) or not entries:
        raise SqsError("EmptyBatchRequest", "There should be at least one entry in the request.")
    if len(entries) > MAX_ENTRIES:
        raise SqsError("TooManyEntriesInBatchRequest", f"Maximum number of entries per request "
                       f"are {MAX_ENTRIES}. You have sent {len(entries)}.")
    ids = [e.get("Id") if isinstance(e, dict) else None for e in entries]
    if any(not isinstance(i, str) or not i for i in ids):
        raise SqsError("InvalidBatchEntryId", "Every entry needs an Id.")
    if len(set(ids)) != len(ids):
        raise SqsError("BatchEntryIdsNotDistinct", "Two or more batch entries in the request "
                       "have the same Id.")
    return entries


def _batch(payload: dict[str, Any], one: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    successful, failed = [], []
    for entry in _entries(payload):
        try:
            one(entry)
            successful.append({"Id": entry["Id"]})
        except SqsError as exc:
            failed.append({"Id": entry["Id"], "SenderFault": True, "Code": exc.code,
                           "Message": exc.message})
    return {"Successful": successful, "Failed": failed}


def _received(message: Message, system: set[str], wanted: set[str]) -> dict[str, Any]:
    answer: dict[str, Any] = {"MessageId": message.id, "ReceiptHandle": message.receipt,
                              "MD5OfBody": message.md5, "Body": message.body}
    every = "All" in system
    values = {"ApproximateReceiveCount": str(message.receives),
              "SentTimestamp": str(message.sent_ms),
              "ApproximateFirstReceiveTimestamp": str(message.first_receive_ms)}
    attributes = {k: v for k, v in values.items() if every or k in system}
    if attributes:
        answer["Attributes"] = attributes
    chosen = {k: v for k, v in message.attributes.items()
              if "All" in wanted or ".*" in wanted or k in wanted}
    if chosen:
        answer["MessageAttributes"] = chosen
    return answer


# -- running it ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    return run_main(argv, prog="python -m bench.sqs_standin", description=__doc__,
                    name="sqs stand-in", make_app=lambda args: SqsStandIn().app())


if __name__ == "__main__":
    raise SystemExit(main())
