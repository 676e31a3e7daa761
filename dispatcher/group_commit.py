"""Group commit: the writes of concurrent callers, committed together.

Used twice where a write sits on every request's or delivery's path: the gateway's headers
and queue messages (``dispatcher.fan_out``), and the sender's outcomes (``dispatcher.sending``).
A caller's item joins the next batch; one writer at a time flushes a batch, then answers every
caller of it. Under load that is one commit for many callers; alone, a caller waits for
nothing but its own write. A caller returns only once its item is committed, or gets the
flush's error; otherwise what the flush returned (the same for every caller of a batch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[R]]) -> None:
        self._flush = flush
        self._pending: list[tuple[Sequence[T], asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[T]) -> R:
        """Return once ``items`` are committed (with whatever else was waiting)."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((items, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await done

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                result = await self._flush([item for items, _ in batch for item in items])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(result)
