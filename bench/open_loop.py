"""Open-loop load: requests are sent when the clock says, never when an earlier one answered.

A closed-loop client (N lanes, each waiting for its answer before sending again) slows down
when the server does, so it hides queueing: the server sets the pace and its latency looks
flat. Here every request has a send time fixed in advance; the scheduler starts it at that
time whether or not earlier ones were answered, so requests pile up in flight when the
server falls behind. Each latency runs from the *scheduled* time, so waiting for a free
connection in the client, or for a busy event loop, counts too (the "coordinated omission"
correction): a figure measured here is what the sending service would see.

The plan of the ``small`` workload (:func:`small_plan`): notification ``i`` (installing,
version 1, every channel) to one user at ``i / rate`` seconds, and its update (completed,
version 2, push only) 1 to 3 seconds later, random with a seed. The same plan and driver
feed every contender: the dispatcher's gateway over HTTP, the Celery peer's broker.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Attempt", "Offer", "Submit", "drive", "run_async", "small_plan"]

#: Seconds between a notification and its update: the app's install takes this long.
UPDATE_DELAY = (1.0, 3.0)
#: Later than this, a send is not worth a sleep: the loop's timers are about this coarse.
SLEEP_GRANULARITY = 0.001

T = TypeVar("T")


@dataclass(frozen=True)
class Offer:
    """One request of the plan: the notification (v1) or its update (v2)."""

    at: float                # seconds after the start of the offer
    notification_id: str
    user_id: str
    update: bool             # False: v1 installing, every channel; True: v2 completed, push


@dataclass(frozen=True)
class Attempt:
    """What the client saw of one offer."""

    offer: Offer
    latency: float           # seconds from the scheduled send time to the answer
    answered_at: float       # epoch seconds
    error: str | None        # None: accepted

    @property
    def accepted(self) -> bool:
        return self.error is None


#: Sends one offer; returns when it is accepted, raises when it is refused or fails.
Submit = Callable[[Offer], Awaitable[None]]


def small_plan(users: Sequence[str], *, rate: float, count: int, seed: int,
               updates: bool = True) -> list[Offer]:
    """``count`` notifications at ``rate`` per second, each to one user (every user once
    before any user twice, in a seeded order), each followed by its update."""
    rng = random.Random(seed)
    order: list[str] = []
    while len(order) < count:
        order += rng.sample(list(users), len(users))
    offers = []
    for i, user in enumerate(order[:count]):
        nid = f"app#{uuid.uuid4()}"
        offers.append(Offer(i / rate, nid, user, False))
        if updates:
            offers.append(Offer(i / rate + rng.uniform(*UPDATE_DELAY), nid, user, True))
    return sorted(offers, key=lambda offer: offer.at)


async def drive(offers: Sequence[Offer], submit: Submit,
                on_send: Callable[[Offer], None] | None = None) -> tuple[float, list[Attempt]]:
    """Send each offer at its time (``on_send`` just before); return the epoch of the start
    and every attempt, once all are answered.

    Python's garbage collector is off while the offer runs (collected once before): its full
    collections took 31-57 ms in this process, and a send or an answer that waits for one
    counts the client's pause as the contender's latency (``gc.callbacks``, 2026-11-29)."""
    gc.collect()
    gc.disable()
    try:
        return await _drive(offers, submit, on_send)
    finally:
        gc.enable()


async def _drive(offers: Sequence[Offer], submit: Submit,
                 on_send: Callable[[Offer], None] | None) -> tuple[float, list[Attempt]]:
    # Not loop.time(): uvloop's clock has millisecond steps and is read once per loop turn.
    loop = asyncio.get_running_loop()
    start, epoch = time.perf_counter(), time.time()
    attempts: list[Attempt] = []

    async def one(offer: Offer) -> None:
        error = None
        try:
            await submit(offer)
        except Exception as exc:  # noqa: BLE001  every failure is a result, not a crash
            error = f"{type(exc).__name__}: {exc}"[:300]
        now = time.perf_counter()
        attempts.append(Attempt(offer, now - (start + offer.at), epoch + (now - start), error))

    in_flight: set[asyncio.Task[None]] = set()
    for offer in offers:
        delay = start + offer.at - time.perf_counter()
        if delay > SLEEP_GRANULARITY:
            await asyncio.sleep(delay)
        if on_send is not None:
            on_send(offer)
        task = loop.create_task(one(offer))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    return epoch, attempts


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run the client on uvloop where installed, as the dispatcher runs: the client's own
    overhead is part of every latency, so it is kept as low as the server's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
