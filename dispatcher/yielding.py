"""Work that yields to sends: SES events wait a little while this process is sending.

SES publishes an event for every email sent, so during a bulk the events arrive at about the
sending rate, into the processes that send. Each costs about as much CPU as a send (HTTP,
the SNS signature, the ledger update). Held back while sends are in flight, they leave the
CPU to the sends; they are answered late, never refused, so SNS neither retries nor drops
them.

:class:`Yield` admits one piece of work at a time. While :attr:`busy` says the process is
sending, admissions are spaced at ``rate`` per second (in arrival order); a piece whose turn
would come more than ``max_hold`` seconds from now is admitted at once instead, so no request
waits longer than that (SNS gives an endpoint 15 s) and at most ``rate × max_hold`` requests
are held at any moment. When the process is not sending, admission is immediate. ``rate`` 0
turns it off.

What it bounds is the events' share of the CPU for a sender with a bounded number of
connections, like SNS with a ``throttlePolicy`` or the bench's burst. Events arriving faster
than ``rate`` for longer than ``max_hold`` are admitted as they come: then set SNS's
``throttlePolicy.maxReceivesPerSecond`` on the subscription (README, "SES events: SES → SNS →
this endpoint").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from dispatcher.observability import held_back

__all__ = ["Yield"]


class Yield:
    """Admission of low-priority work while ``busy()`` (see the module's text)."""

    def __init__(self, busy: Callable[[], bool], *, rate: float, max_hold: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._busy = busy
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._max_hold = max_hold
        self._clock = clock
        self._next = -float("inf")  # the earliest time of the next paced admission

    def turn(self) -> float:
        """Seconds to wait before this piece of work may start (0: now); its turn is taken."""
        if not self._interval or not self._busy():
            return 0.0
        now = self._clock()
        start = max(self._next, now)
        if start - now > self._max_hold + 1e-9:
            return 0.0  # the queue is a full hold long: no later than now
        self._next = start + self._interval
        return min(start - now, self._max_hold)

    async def admit(self) -> None:
        """Wait for this piece's turn."""
        wait = self.turn()
        if wait > 0:
            held_back()
            await asyncio.sleep(wait)
