"""The scheduler: moves held messages to the queue when they are due (a notification's
``send_at``, or the end of a recipient's quiet hours: ``dispatcher.delivery``).

Every worker process runs one, next to its worker loop; they share the work through the store
(see ``dispatcher.queue.enqueue`` for how each kind of queue gets a due message exactly once,
or at least once with a harmless duplicate). It polls the store every ``poll_interval``
seconds, and at once again while it finds full batches, so a backlog after a restart drains at
queue speed. An unreachable store is logged and retried; nothing is lost, since a held message
leaves the store only once it is on the queue.

Once a minute it also runs the store's ``prune`` (the frequency-cap entries too old to count,
``dispatcher.frequency``), so what only a window needs does not grow for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from dispatcher.queue.enqueue import Releaser

__all__ = ["Scheduler"]

log = logging.getLogger("dispatcher.scheduler")


class Scheduler:
    def __init__(self, release: Releaser, *, poll_interval: float, batch: int = 500,
                 prune: Callable[[], Awaitable[int]] | None = None, prune_every: float = 60) -> None:
        self._release = release
        self._poll = poll_interval
        self._batch = batch
        self._prune = prune
        self._prune_every = prune_every
        self._next_prune = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._prune_due()
            try:
                moved = await self._release(self._batch)
            except Exception as exc:  # the store or the queue away: try again later
                log.warning("releasing scheduled messages failed (%s); retrying", exc)
                moved = 0
            if moved:
                log.info("released %d scheduled messages to the queue", moved)
            if moved >= self._batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll)

    async def _prune_due(self) -> None:
        if self._prune is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self._prune_every
        try:
            pruned = await self._prune()
        except Exception as exc:  # the store away: next time
            log.warning("pruning the store failed (%s); retrying later", exc)
            return
        if pruned:
            log.info("pruned %d frequency-cap entries too old to count", pruned)

    async def release_due(self) -> int:
        """Release everything due now (tests and ``drain``)."""
        total = 0
        while (moved := await self._release(self._batch)) > 0:
            total += moved
            if moved < self._batch:
                break
        return total
