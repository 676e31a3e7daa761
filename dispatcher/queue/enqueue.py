"""How the gateway commits an accepted request: its notification header and its chunk messages.

Chosen once, in ``dispatcher.runtime``, by which queue serves:

* :class:`InOneTransaction`: the embedded queue lives in the store's database, so headers and
  messages commit together (a request is either wholly accepted or not at all).
* :class:`HeadersThenMessages`: any other queue (SQS). Headers commit first, then the
  messages are sent; a failure between the two leaves a header with no messages yet, which
  the caller sees as an error and retries with the same id (idempotent).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from dispatcher.model import HeaderUpdate
from dispatcher.queue import Queue
from dispatcher.queue.local import LocalQueue
from dispatcher.store import Store

__all__ = ["Enqueuer", "HeadersThenMessages", "InOneTransaction"]


class Enqueuer(Protocol):
    async def __call__(self, headers: Sequence[HeaderUpdate], bodies: Sequence[str]) -> None:
        """Durably record ``headers`` and enqueue ``bodies``, or raise."""


class InOneTransaction:
    def __init__(self, store: Store, queue: LocalQueue) -> None:
        if not queue.shares(store.db):
            raise ValueError("the embedded queue must live in the store's database")
        self._store = store
        self._queue = queue

    async def __call__(self, headers: Sequence[HeaderUpdate], bodies: Sequence[str]) -> None:
        async with self._store.db.write() as conn:
            await self._store.notifications.upsert_many_in(conn, headers)
            await self._queue.send_batch_in(conn, bodies)


class HeadersThenMessages:
    def __init__(self, store: Store, queue: Queue) -> None:
        self._store = store
        self._queue = queue

    async def __call__(self, headers: Sequence[HeaderUpdate], bodies: Sequence[str]) -> None:
        await self._store.notifications.upsert_many(headers)
        await self._queue.send_batch(bodies)
