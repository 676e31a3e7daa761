"""The worker loop: receive chunk messages, deliver them, acknowledge them.

Up to ``concurrency`` chunks are in progress at once per process. While a chunk is in
progress its message's visibility is extended, so no other worker receives it. Outcomes:

* delivered: the message is acknowledged (deleted);
* poison (malformed, bad id, unknown template or channel): moved to the DLQ with the reason,
  at once, without retries;
* any other error (the store unreachable, …): left on the queue, visible again after a short
  delay; after the queue's maximum receive count it goes to the DLQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dispatcher.delivery import Deliverer
from dispatcher.errors import PoisonMessage
from dispatcher.messages import decode_chunk
from dispatcher.queue import Queue, QueuedMessage

__all__ = ["Worker"]

log = logging.getLogger("dispatcher.worker")


class Worker:
    def __init__(self, queue: Queue, deliverer: Deliverer, *, concurrency: int,
                 visibility_timeout: float, known_services: frozenset[str] | None,
                 wait_seconds: float = 1.0, retry_delay: float = 5.0) -> None:
        self._queue = queue
        self._deliverer = deliverer
        self._concurrency = concurrency
        self._visibility = visibility_timeout
        self._services = known_services
        self._retry_delay = retry_delay
        self._wait = wait_seconds
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Process messages until ``stop`` is set; then finish the chunks in progress."""
        while not stop.is_set():
            free = self._concurrency - len(self._tasks)
            if free <= 0:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                messages = await self._queue.receive(free, wait_seconds=self._wait)
            except Exception:
                log.exception("receiving from the queue failed; retrying")
                await _sleep_or_stop(stop, 1.0)
                continue
            for message in messages:
                task = asyncio.create_task(self._handle(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self) -> int:
        """Process messages until the queue has none visible; return how many were handled."""
        handled = 0
        while True:
            messages = await self._queue.receive(self._concurrency, wait_seconds=0)
            if not messages:
                return handled
            await asyncio.gather(*(self._handle(m) for m in messages))
            handled += len(messages)

    async def _handle(self, message: QueuedMessage) -> None:
        heartbeat = asyncio.create_task(self._keep_hidden(message))
        try:
            await self._process(message)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _process(self, message: QueuedMessage) -> None:
        try:
            chunk = decode_chunk(message.body, self._services)
            await self._deliverer.deliver(chunk)
        except PoisonMessage as exc:
            log.error("message %s to the DLQ: %s", message.id, exc)
            await self._queue.dead_letter(message, str(exc))
            return
        except Exception:
            log.exception("message %s failed (receive %d); it will be retried",
                          message.id, message.receive_count)
            with contextlib.suppress(Exception):
                await self._queue.extend(message, self._retry_delay)
            return
        try:
            await self._queue.ack([message])
        except Exception:  # delivered all the same: a redelivery will find every row final
            log.exception("could not acknowledge message %s; it will come back", message.id)
            return
        log.info("delivered chunk %s of %s v%d (%d recipients)", message.id, chunk.id,
                 chunk.version, len(chunk.recipients))

    async def _keep_hidden(self, message: QueuedMessage) -> None:
        while True:
            await asyncio.sleep(self._visibility / 3)
            try:
                await self._queue.extend(message, self._visibility)
            except Exception:
                log.exception("could not extend the visibility of message %s", message.id)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
