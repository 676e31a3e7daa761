"""Group commit: the writes of concurrent callers, committed together.

Used twice where a write sits on every request's or delivery's path: the gateway's headers
and queue messages (``dispatcher.fan_out``), and the sender's outcomes (``dispatcher.sending``).
A caller's item joins the next batch; one writer at a time flushes a batch, then answers every
caller of it. Under load that is one commit for many callers; alone, a caller waits for
nothing but its own write. A caller returns only once its item is committed, or gets the
flush's error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[None]]) -> None:
        self._flush = flush
        self._pending: list[tuple[Sequence[T], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[T]) -> None:
        """Return once ``items`` are committed (with whatever else was waiting)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((items, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await done

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._flush([item for items, _ in batch for item in items])
            except Exception as exc:
                _answer(batch, exc)
            else:
                _answer(batch, None)


def _answer(batch: list[tuple[Sequence[T], asyncio.Future[None]]], error: Exception | None) -> None:
    for _, done in batch:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
