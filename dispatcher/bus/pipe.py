"""The embedded bus across ``dispatcher serve``'s process tree: worker processes' live events
reach the API process through a pipe.

``dispatcher serve`` runs the API in one process and the workers in processes of their own
(:mod:`dispatcher.worker_processes`). The in-process bus of the API process would carry none
of their events, so a user's live stream would miss what they delivered. Each worker
process gets one end of a pipe (``DISPATCHER_BUS_FD``) and writes its events there as JSON
lines; the API process reads every pipe and publishes what it reads on its in-process bus.
With ``DISPATCHER_REDIS_URL`` set, Redis carries the events instead and no pipe is made.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from dispatcher.bus import Bus

__all__ = ["PipeBus", "forward"]

log = logging.getLogger("dispatcher.bus.pipe")

#: A longer line is not an event of ours (a feed entry is a few KB): it is dropped.
MAX_LINE_BYTES = 1 << 20
#: Events waiting for the API process to read them, at most; past it new ones are dropped
#: (live events are best effort: the feed itself is in the store).
MAX_BUFFER_BYTES = 8 << 20


class PipeBus:
    """A worker process's bus: events go to the parent; nothing is subscribed here."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._transport: asyncio.WriteTransport | None = None

    async def _writer(self) -> asyncio.WriteTransport:
        if self._transport is None or self._transport.is_closing():
            loop = asyncio.get_running_loop()
            self._transport, _ = await loop.connect_write_pipe(
                asyncio.Protocol, os.fdopen(self._fd, "wb", buffering=0, closefd=False))
        return self._transport

    async def publish(self, topic: str, event: dict[str, Any]) -> None:
        await self.publish_many([(topic, event)])

    async def publish_many(self, events: Sequence[tuple[str, dict[str, Any]]]) -> None:
        if not events:
            return
        writer = await self._writer()
        if writer.get_write_buffer_size() > MAX_BUFFER_BYTES:  # the API process is not reading
            log.warning("dropped %d live events: the API process is not reading them", len(events))
            return
        writer.write(b"".join(json.dumps([t, e], ensure_ascii=False).encode() + b"\n"
                              for t, e in events))

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        raise RuntimeError("a worker process serves no live stream; the API process does")
        yield  # pragma: no cover

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def forward(fd: int, bus: Bus) -> None:
    """Read a worker process's events from ``fd`` until it closes; publish them on ``bus``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
    try:
        while line := await _line(reader):
            try:
                topic, event = json.loads(line)
                await bus.publish(str(topic), event)
            except (ValueError, TypeError):
                log.warning("dropped a malformed live event from a worker process")
    finally:
        transport.close()


async def _line(reader: asyncio.StreamReader) -> bytes:
    while True:
        try:
            return await reader.readline()
        except ValueError:  # longer than MAX_LINE_BYTES: skip it, keep the stream
            log.warning("dropped a live event over %d bytes from a worker process", MAX_LINE_BYTES)
