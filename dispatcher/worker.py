"""The worker loop: receive chunk messages, deliver them in batches, acknowledge them.

The unit of work is a *batch*: one or more chunk messages, of one or many notifications,
planned together and opened in one transaction (``Deliverer.deliver_many``). A message of a
bulk (hundreds of recipients) is a batch by itself, as before. Small messages (a notification
to one user, its update) are gathered: when what was received holds fewer than
``batch_recipients`` recipients, the worker takes more from the queue, up to
``batch_messages`` messages. While small messages keep coming (the last one was received less
than ``batch_linger`` seconds before), it first waits ``batch_linger`` seconds for more; a
message after a quiet spell starts at once. So steady single-recipient traffic is delivered in
batches of every message of the last ``batch_linger`` (a few statements per batch instead of a
few per message), while a lone notification waits for nothing. Under load the batches grow by
themselves too: messages accumulate while the batches in progress run. A take that came back
full (``batch_messages`` messages or ``batch_recipients`` recipients) means the queue is
behind: the next take waits for nothing. (With a linger after every take, a worker took at most
``batch_messages`` per linger whatever was waiting, 640 messages/s by default: at 500 small
notifications/s and their updates, two workers were near that cap and the messages waited in
the queue for the linger of every batch before them.)

Up to ``concurrency`` batches are in progress at once per process. While a batch is in
progress its messages' visibility is extended, so no other worker receives them. Outcomes, per
message:

* delivered: acknowledged (deleted), the batch's messages in one call;
* poison (malformed, bad id, unknown template or channel): moved to the DLQ with the reason,
  at once, without retries;
* any other error (the store unreachable, rows claimed elsewhere for too long, …): left on the
  queue, visible again after a short delay; after the queue's maximum receive count it goes
  to the DLQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dispatcher.delivery import Deliverer
from dispatcher.errors import PoisonMessage
from dispatcher.messages import ChunkMessage, decode_chunk
from dispatcher.observability import logs, metrics
from dispatcher.queue import Queue, QueuedMessage
from dispatcher.scheduler import Scheduler

__all__ = ["Batching", "Worker"]

log = logging.getLogger("dispatcher.worker")


@dataclass(frozen=True)
class Batching:
    """How small messages are gathered into one unit of work (see the module docstring). The
    values and their defaults are settings: ``DISPATCHER_WORKER_BATCH_MESSAGES``,
    ``DISPATCHER_CHUNK_SIZE``, ``DISPATCHER_WORKER_BATCH_LINGER``."""

    messages: int
    recipients: int
    linger: float


@dataclass(frozen=True)
class _Received:
    message: QueuedMessage
    chunk: ChunkMessage | PoisonMessage


class Worker:
    def __init__(self, queue: Queue, deliverer: Deliverer, *, concurrency: int,
                 visibility_timeout: float, known_services: frozenset[str] | None,
                 batching: Batching, wait_seconds: float = 1.0, retry_delay: float = 5.0,
                 scheduler: Scheduler | None = None) -> None:
        self._queue = queue
        self._deliverer = deliverer
        self._concurrency = concurrency
        self._visibility = visibility_timeout
        self._services = known_services
        self._retry_delay = retry_delay
        self._wait = wait_seconds
        self._batching = batching
        self._last_received = -math.inf  # monotonic time the last messages were received
        self._behind = False  # the last take came back full: more may be waiting already
        self._scheduler = scheduler
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Process messages until ``stop`` is set; then finish the batches in progress. The
        scheduler (held ``send_at`` messages) runs beside it."""
        scheduling = (asyncio.create_task(self._scheduler.run(stop))
                      if self._scheduler is not None else None)
        try:
            await self._loop(stop)
        finally:
            if scheduling is not None:
                await asyncio.gather(scheduling, return_exceptions=True)

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            free = self._concurrency - len(self._tasks)
            if free <= 0:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                batches = await self._take(free, self._wait)
            except Exception:
                log.exception("receiving from the queue failed; retrying")
                await _sleep_or_stop(stop, 1.0)
                continue
            for batch in batches:
                task = asyncio.create_task(self._handle(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self) -> int:
        """Process messages until the queue has none visible; return how many were handled."""
        handled = 0
        while True:
            if self._scheduler is not None:
                await self._scheduler.release_due()
            batches = await self._take(self._concurrency, 0, linger=False)  # what is there now
            if not batches:
                return handled
            await asyncio.gather(*(self._handle(b) for b in batches))
            handled += sum(len(b) for b in batches)

    async def _take(self, free: int, wait: float, *, linger: bool = True) -> list[list[_Received]]:
        """Receive up to ``free`` messages, top small ones up into a batch (after the linger,
        when traffic is steady and ``linger``), and split what was received into batches of at
        most ``batching.recipients`` recipients each."""
        received = [self._decode(m) for m in await self._queue.receive(free, wait_seconds=wait)]
        size = _recipients(received)
        if received and size < self._batching.recipients:
            steady = time.monotonic() - self._last_received < self._batching.linger
            if linger and steady and not self._behind:
                await asyncio.sleep(self._batching.linger)
            received += await self._top_up(len(received))
        if received:
            self._last_received = time.monotonic()
            self._behind = (len(received) >= self._batching.messages
                            or _recipients(received) >= self._batching.recipients)
        return _split(received, self._batching.recipients)

    async def _top_up(self, count: int) -> list[_Received]:
        """What is visible now, up to ``batching.messages`` in all: one receive, or, from a
        queue that returns at most ``max_receive`` a call (SQS: 10), more while each comes back
        full. (Receiving again while anything arrived meanwhile chased a trickle: at 250 small
        notifications/s a batch took four write transactions of the queue's to fill, where one
        does. One receive of SQS's 10 capped a worker near 120 small messages/s, a batch of at
        most 14 per linger, with its CPU two-thirds idle.)"""
        got: list[QueuedMessage] = []
        cap = self._queue.max_receive
        while count + len(got) < self._batching.messages:
            wanted = self._batching.messages - count - len(got)
            more = await self._queue.receive(wanted, wait_seconds=0)
            got += more
            if cap is None or len(more) < min(wanted, cap):
                break  # nothing more visible now
        return [self._decode(m) for m in got]

    def _decode(self, message: QueuedMessage) -> _Received:
        try:
            return _Received(message, decode_chunk(message.body, self._services))
        except PoisonMessage as exc:
            return _Received(message, exc)

    async def _handle(self, batch: list[_Received]) -> None:
        heartbeat = asyncio.create_task(self._keep_hidden([r.message for r in batch]))
        logs.bind_batch((r.message.id, getattr(r.chunk, "id", None)) for r in batch)
        try:
            await metrics.chunks_timed(self._process(batch), len(batch))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _process(self, batch: list[_Received]) -> None:
        poison = [(r.message, r.chunk) for r in batch if isinstance(r.chunk, PoisonMessage)]
        valid = [(r.message, r.chunk) for r in batch if isinstance(r.chunk, ChunkMessage)]
        try:
            results = await self._deliverer.deliver_many([c for _, c in valid])
        except Exception as exc:  # the whole unit of work failed (the store unreachable, …)
            results = [exc] * len(valid)
        done: list[QueuedMessage] = []
        recipients = 0
        for (message, chunk), result in zip(valid, results, strict=True):
            if isinstance(result, PoisonMessage):
                poison.append((message, result))
            elif isinstance(result, BaseException):
                await self._retry_later(message, result)
            else:
                done.append(message)
                recipients += len(chunk.recipients)
        for message, reason in poison:
            await self._dead_letter(message, reason)
        await self._ack(done)
        if done:
            log.info("delivered %d chunk(s), %d recipients, in one batch", len(done), recipients)

    async def _dead_letter(self, message: QueuedMessage, reason: PoisonMessage) -> None:
        log.error("message %s to the DLQ: %s", message.id, reason)
        try:
            await self._queue.dead_letter(message, str(reason))
        except Exception:  # it comes back after the visibility timeout and is refused again
            log.exception("could not move message %s to the DLQ", message.id)

    async def _retry_later(self, message: QueuedMessage, error: BaseException) -> None:
        log.error("message %s failed (receive %d); it will be retried: %s: %s", message.id,
                  message.receive_count, type(error).__name__, error, exc_info=error)
        with contextlib.suppress(Exception):
            await self._queue.extend(message, self._retry_delay)

    async def _ack(self, messages: list[QueuedMessage]) -> None:
        if not messages:
            return
        try:
            await self._queue.ack(messages)
        except Exception:  # delivered all the same: a redelivery will find every row final
            log.exception("could not acknowledge %d messages; they will come back", len(messages))

    async def _keep_hidden(self, messages: Sequence[QueuedMessage]) -> None:
        while True:
            await asyncio.sleep(self._visibility / 3)
            for message in messages:
                try:
                    await self._queue.extend(message, self._visibility)
                except Exception:
                    log.exception("could not extend the visibility of message %s", message.id)


def _recipients(received: Sequence[_Received]) -> int:
    return sum(len(r.chunk.recipients) for r in received if isinstance(r.chunk, ChunkMessage))


def _split(received: list[_Received], max_recipients: int) -> list[list[_Received]]:
    """Consecutive batches of at most ``max_recipients`` recipients (a bigger message alone)."""
    batches: list[list[_Received]] = []
    size = 0
    for r in received:
        n = len(r.chunk.recipients) if isinstance(r.chunk, ChunkMessage) else 0
        if not batches or size + n > max_recipients:
            batches.append([])
            size = 0
        batches[-1].append(r)
        size += n
    return batches


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
