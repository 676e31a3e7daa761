"""Sending deliverable rows, with retries, recording each outcome.

Rows arrive ``pending``. A row is claimed (``sending``) only when its request can start at
once: the process has ``slots`` sends in flight at most (``DISPATCHER_SEND_CONCURRENCY``, and
the HTTP connection pools are sized to match), and a row is claimed only after a slot is
taken for it. Its slot is given back once its outcome is committed, or once it is released
(``pending`` again) to wait for a retry: a row waiting for its backoff, or for a connection,
is never ``sending``; neither is a row waiting for a provider rate limit (``dispatcher.ratelimit``:
its send time comes first, then its slot, then its claim). So what a crash can leave as ``outcome_unknown`` (see
``dispatcher.store.ledger``) is the requests in flight at that moment and the few outcomes
being committed, never rows that were only queued. Within one call, rows are claimed in
batches as room opens in a window of ``window`` rows (when it is half empty), so claims are
batched too. The rows of one call may belong to many notifications.

Outcomes are group-committed (``dispatcher.group_commit``) across every call in progress in
the process: batched writes, and a short wait for each row.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from channels.base import (
    Message,
    PermanentError,
    Provider,
    Receipt,
    TransientError,
    UnregisteredDevice,
)
from dispatcher.group_commit import GroupCommit
from dispatcher.model import Claim, DeliveryStatus, Reason, RowKey, RowState
from dispatcher.observability import rows_recorded
from dispatcher.ratelimit import RateLimits
from dispatcher.retry import RetryPolicy
from dispatcher.store.ledger import LedgerStore

__all__ = ["Outbound", "Sender", "Slots"]

log = logging.getLogger("dispatcher.sending")


@dataclass(frozen=True)
class Outbound:
    """A row to send: its key, the version that may claim it, its provider messages."""

    key: RowKey
    version: int
    messages: Sequence[Message]


@dataclass(frozen=True)
class _Attempt:
    """What one attempt at a (user, channel) came to."""

    outcome: RowState | None       # final, or None: retry the messages in ``retry``
    retry: list[Message]
    retry_after: float | None
    unregistered: list[str]


class Slots:
    """How many more sends this process may start now: every call of every batch shares them.

    ``take_now`` takes what is free without waiting, ``take`` waits for one, ``give`` returns
    them and wakes whoever waits."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self._free = self.total
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def free(self) -> int:
        return self._free

    def take_now(self, n: int) -> int:
        taken = max(min(n, self._free), 0)
        self._free -= taken
        return taken

    async def take(self) -> None:
        while not self._free:
            await self.changed()
        self._free -= 1

    def changed(self) -> asyncio.Future[None]:
        """Done at the next :meth:`give`."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def give(self, n: int = 1) -> None:
        if n <= 0:
            return
        self._free += n
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class Sender:
    def __init__(self, providers: Mapping[str, Provider], ledger: LedgerStore,
                 policy: RetryPolicy, *, window: int, slots: int,
                 deactivate: Callable[[list[str]], Awaitable[None]],
                 limits: RateLimits | None = None) -> None:
        self._providers = providers
        self._ledger = ledger
        self._policy = policy
        self._window = max(window, 1)
        self._slots = Slots(slots)
        self._limits = limits or RateLimits()
        self._claims: GroupCommit[tuple[RowKey, int, str], set[RowKey]] = GroupCommit(self._claim_batch)
        self._deactivate = deactivate
        self._outcomes: GroupCommit[tuple[RowState, str], None] = GroupCommit(ledger.record)

    @property
    def slots(self) -> Slots:
        return self._slots

    def new_claim(self) -> Claim:
        """A claim for the store to take rows under while it opens them (the first window):
        as many rows as there are slots free now, up to the window; those slots are taken.
        Pass it to :meth:`send` (which gives back what the store did not claim), or to
        :meth:`drop_claim` if the rows were never opened."""
        return Claim(uuid.uuid4().hex, self._slots.take_now(self._window),
                     exclude=self._limits.channels)

    def drop_claim(self, claim: Claim) -> None:
        """The store claimed nothing under ``claim`` (its transaction failed): free its slots."""
        self._slots.give(claim.limit)

    async def send(self, sends: Sequence[Outbound], claim: Claim | None = None,
                   claimed: Mapping[RowKey, int] | None = None) -> set[RowKey]:
        """Claim, send and record the ``pending`` rows of ``sends`` (others may take some);
        return the keys whose final outcome this call recorded. ``claimed``: rows already
        claimed under ``claim`` (key -> version), sent at once."""
        finished: set[RowKey] = set()
        token = claim.token if claim is not None else uuid.uuid4().hex
        claimed = claimed or {}
        # The same row twice (a message and its redelivery in one batch): sent once. Other
        # versions of a row stay: only the version the row holds can claim it.
        unique = list({(o.key, o.version): o for o in sends}.values())
        first = [o for o in unique if claimed.get(o.key) == o.version]
        if claim is not None:
            self._slots.give(claim.limit - len(first))  # slots taken for rows not claimed
        active: set[asyncio.Future[RowKey | None]] = {
            asyncio.ensure_future(self._deliver(o, token)) for o in first}
        waiting = [o for o in unique if claimed.get(o.key) != o.version]
        # Rate-limited channels: each row waits for its send time first, then claims. They
        # are not counted in the window, so an unlimited channel never waits behind them.
        limited: set[asyncio.Future[RowKey | None]] = {
            asyncio.ensure_future(self._limited(o, token))
            for o in waiting if o.key.channel in self._limits.channels}
        waiting = [o for o in waiting if o.key.channel not in self._limits.channels]
        slot_freed: asyncio.Future[None] | None = None
        try:
            while waiting or active or limited:
                wait_for: set[asyncio.Future[RowKey | None]] = active | limited
                if waiting and len(active) <= self._window // 2:
                    taken = self._slots.take_now(min(self._window - len(active), len(waiting)))
                    if taken:
                        batch, waiting = waiting[:taken], waiting[taken:]
                        active |= await self._claim_and_start(batch, token, taken)
                        continue
                    slot_freed = self._slots.changed()  # none free: wait for one, or for ours
                    wait_for.add(slot_freed)  # type: ignore[arg-type]
                done, _ = await asyncio.wait(wait_for, return_when=asyncio.FIRST_COMPLETED)
                done_rows = done & (active | limited)
                active -= done_rows
                limited -= done_rows
                finished |= {k for k in (t.result() for t in done_rows) if k is not None}
        finally:
            if slot_freed is not None:
                slot_freed.cancel()
            for task in active | limited:
                task.cancel()
            await asyncio.gather(*active, *limited, return_exceptions=True)
        return finished

    async def _claim_and_start(self, batch: list[Outbound], token: str,
                               taken: int) -> set[asyncio.Future[RowKey | None]]:
        """Claim ``batch`` under the ``taken`` slots; start the rows won, free the other slots."""
        try:
            won = await self._ledger.claim([(o.key, o.version) for o in batch], token)
        except BaseException:
            self._slots.give(taken)
            raise
        start = [o for o in batch if o.key in won]
        self._slots.give(taken - len(start))
        return {asyncio.ensure_future(self._deliver(o, token)) for o in start}

    async def _limited(self, row: Outbound, token: str) -> RowKey | None:
        """A row of a rate-limited channel: its send time, then a slot, then its claim (claims
        of rows whose times come together are made in one statement), then the send."""
        await self._limits.permit(row.key.channel, len(row.messages))
        await self._slots.take()
        try:
            won = await self._claims.submit([(row.key, row.version, token)])
        except BaseException:
            self._slots.give()
            raise
        if row.key not in won:
            self._slots.give()
            return None
        return await self._deliver(row, token)

    async def _claim_batch(self, rows: list[tuple[RowKey, int, str]]) -> set[RowKey]:
        won: set[RowKey] = set()
        for token in dict.fromkeys(t for _, _, t in rows):
            won |= await self._ledger.claim([(k, v) for k, v, t in rows if t == token], token)
        return won

    async def _record(self, outcome: RowState, token: str) -> None:
        await self._outcomes.submit([(outcome, token)])
        rows_recorded([outcome])

    async def _deliver(self, row: Outbound, token: str) -> RowKey | None:
        """Send one claimed row until it is final (return its key) or another worker took it
        (None). The row holds one slot (taken by the caller) while it is claimed."""
        holding = True
        try:
            key, attempts, messages = row.key, 1, list(row.messages)
            while True:
                result = await self._attempt(key, messages)
                if result.unregistered:
                    await self._deactivate(result.unregistered)
                if result.outcome is not None:
                    await self._record(result.outcome, token)
                    return key
                if self._policy.exhausted(attempts):
                    await self._record(RowState(key, DeliveryStatus.FAILED, Reason.RETRIES_EXHAUSTED,
                                                f"{attempts} attempts; last: {result.retry[0].to}"),
                                       token)
                    return key
                # Release the row and its slot while waiting, so a crash now means "send
                # again", not "unknown", and the slot serves a row that can go now.
                await self._record(RowState(key, DeliveryStatus.PENDING,
                                            detail=f"attempt {attempts} failed; retrying"), token)
                self._slots.give()
                holding = False
                await asyncio.sleep(self._policy.delay(attempts, result.retry_after))
                await self._limits.permit(key.channel, len(result.retry))
                await self._slots.take()
                holding = True
                if not await self._ledger.claim([(key, row.version)], token):
                    return None  # another worker took it over meanwhile
                attempts, messages = attempts + 1, result.retry
        finally:
            if holding:
                self._slots.give()

    async def _attempt(self, key: RowKey, messages: list[Message]) -> _Attempt:
        results: list[Receipt | TransientError | PermanentError]
        if len(messages) == 1:  # nearly every row: one address, sent in this task
            results = [await self._send_one(messages[0])]
        else:
            results = await asyncio.gather(*(self._send_one(m) for m in messages))
        receipts = [r for r in results if isinstance(r, Receipt)]
        transient = [(m, r) for m, r in zip(messages, results, strict=True) if isinstance(r, TransientError)]
        permanent = [(m, r) for m, r in zip(messages, results, strict=True) if isinstance(r, PermanentError)]
        unregistered = [m.to for m, r in permanent if isinstance(r, UnregisteredDevice)]
        errors = "; ".join(f"{m.to}: {r}" for m, r in transient + permanent) or None
        if receipts:
            ids = ",".join(r.provider_message_id for r in receipts)
            return _Attempt(RowState(key, DeliveryStatus.SENT, None, errors, ids), [], None,
                            unregistered)
        if transient:
            after = max((r.retry_after or 0.0 for _, r in transient), default=0.0) or None
            return _Attempt(None, [m for m, _ in transient], after, unregistered)
        return _Attempt(RowState(key, DeliveryStatus.FAILED, _reason(permanent[0][1]), errors),
                        [], None, unregistered)

    async def _send_one(self, message: Message) -> Receipt | TransientError | PermanentError:
        provider = self._providers[message.channel]
        try:
            return await provider.send(message)
        except (TransientError, PermanentError) as exc:
            return exc
        except Exception as exc:  # an adapter bug must not lose the row: retry, then fail
            log.exception("provider %s raised an unmapped error", provider.name)
            return TransientError(f"unexpected {type(exc).__name__}: {exc}")


def _reason(error: PermanentError) -> Reason:
    """The adapter's reason as the ledger's; an adapter's unknown reason is a rejection."""
    try:
        return Reason(error.reason)
    except ValueError:
        return Reason.PROVIDER_REJECTED
