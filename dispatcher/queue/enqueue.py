"""How the gateway commits an accepted request, and how held (scheduled) messages reach the
queue when they are due.

Chosen once, in ``dispatcher.runtime``, by which queue serves:

* :class:`InOneTransaction` / :class:`ReleaseInOneTransaction`: the embedded queue lives in
  the store's database, so headers, messages and held messages commit together (a request is
  either wholly accepted or not at all), and a due message moves from the schedule to the
  queue in one transaction: exactly once.
* :class:`HeadersThenMessages` / :class:`ReleaseUnderLease`: any other queue (SQS). Headers
  and held messages commit first, then the messages are sent; a failure between the two
  leaves a header with no messages yet, which the caller sees as an error and retries with
  the same id (idempotent). A due message is leased to one worker, sent, then deleted; a
  crash in between sends it again after the lease (the ledger makes the duplicate harmless).

Both refuse a new version of a notification that was cancelled: the ids refused are returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dispatcher.model import HeaderUpdate, now_us
from dispatcher.queue import Queue
from dispatcher.queue.local import LocalQueue
from dispatcher.store import Held, Store

__all__ = ["Enqueuer", "HeadersThenMessages", "InOneTransaction", "Intake", "ReleaseInOneTransaction",
           "ReleaseUnderLease", "Releaser"]


@dataclass(frozen=True)
class Intake:
    """One accepted request: its header and its chunk messages, held until ``header.send_at``
    when that is set."""

    header: HeaderUpdate
    bodies: Sequence[str]

    def held(self) -> list[Held]:
        due = self.header.send_at
        assert due is not None
        return [Held(self.header.id, self.header.version, due, b) for b in self.bodies]


class Enqueuer(Protocol):
    async def __call__(self, intakes: Sequence[Intake]) -> set[str]:
        """Durably record the headers and enqueue (or hold) the messages, or raise; return
        the ids refused because their notification was cancelled (nothing of theirs kept)."""


class Releaser(Protocol):
    async def __call__(self, limit: int) -> int:
        """Move up to ``limit`` due held messages to the queue; how many moved."""


def _split(intakes: Sequence[Intake], refused: set[str]) -> tuple[list[str], list[Held]]:
    now: list[str] = []
    held: list[Held] = []
    for intake in intakes:
        if intake.header.id in refused:
            continue
        if intake.header.send_at is None:
            now.extend(intake.bodies)
        else:
            held.extend(intake.held())
    return now, held


class InOneTransaction:
    def __init__(self, store: Store, queue: LocalQueue) -> None:
        if not queue.shares(store.db):
            raise ValueError("the embedded queue must live in the store's database")
        self._store = store
        self._queue = queue

    async def __call__(self, intakes: Sequence[Intake]) -> set[str]:
        async with self._store.db.write() as conn:
            refused = await self._store.notifications.upsert_many_in(conn, [i.header for i in intakes])
            now, held = _split(intakes, refused)
            await self._queue.send_batch_in(conn, now)
            await self._store.schedule.add_in(conn, held)
        return refused


class HeadersThenMessages:
    def __init__(self, store: Store, queue: Queue) -> None:
        self._store = store
        self._queue = queue

    async def __call__(self, intakes: Sequence[Intake]) -> set[str]:
        async with self._store.db.write() as conn:
            refused = await self._store.notifications.upsert_many_in(conn, [i.header for i in intakes])
            now, held = _split(intakes, refused)
            await self._store.schedule.add_in(conn, held)
        if now:
            await self._queue.send_batch(now)
        return refused


class ReleaseInOneTransaction:
    def __init__(self, store: Store, queue: LocalQueue) -> None:
        self._store = store
        self._queue = queue

    async def __call__(self, limit: int) -> int:
        async with self._store.db.write() as conn:
            due = await self._store.schedule.due_in(conn, now_us(), limit)
            await self._queue.send_batch_in(conn, [body for _, body in due])
            await self._store.schedule.delete_in(conn, [i for i, _ in due])
        return len(due)


class ReleaseUnderLease:
    def __init__(self, store: Store, queue: Queue, lease_seconds: float) -> None:
        self._store = store
        self._queue = queue
        self._lease_us = int(lease_seconds * 1e6)

    async def __call__(self, limit: int) -> int:
        due = await self._store.schedule.claim_due(now_us(), limit, self._lease_us)
        if due:
            await self._queue.send_batch([body for _, body in due])
            await self._store.schedule.delete([i for i, _ in due])
        return len(due)
