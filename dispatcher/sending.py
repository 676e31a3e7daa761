"""Sending deliverable rows, with retries, recording each outcome.

Rows arrive ``pending``. They are claimed (``sending``) in batches only as room opens in a
window of ``window`` rows, and a row leaves the window only once its outcome is committed.
So at any moment at most ``window`` rows of a call are claimed without a recorded outcome:
that is all a crash can leave as ``outcome_unknown`` (see ``dispatcher.store.ledger``).
Claims are made when the window is half empty, so that they are batched too. The rows of one
call may belong to many notifications.

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
from dispatcher.retry import RetryPolicy
from dispatcher.store.ledger import LedgerStore

__all__ = ["Outbound", "Sender"]

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


class Sender:
    def __init__(self, providers: Mapping[str, Provider], ledger: LedgerStore,
                 policy: RetryPolicy, *, window: int,
                 deactivate: Callable[[list[str]], Awaitable[None]]) -> None:
        self._providers = providers
        self._ledger = ledger
        self._policy = policy
        self._window = max(window, 1)
        self._deactivate = deactivate
        self._outcomes: GroupCommit[tuple[RowState, str]] = GroupCommit(ledger.record)

    def new_claim(self) -> Claim:
        """A claim for the store to take rows under while it opens them (the first window)."""
        return Claim(uuid.uuid4().hex, self._window)

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
        active: set[asyncio.Task[RowKey | None]] = {
            asyncio.create_task(self._deliver(o, token)) for o in unique
            if claimed.get(o.key) == o.version}
        waiting = [o for o in unique if claimed.get(o.key) != o.version]
        try:
            while waiting or active:
                if waiting and len(active) <= self._window // 2:
                    room = self._window - len(active)
                    batch, waiting = waiting[:room], waiting[room:]
                    won = await self._ledger.claim([(o.key, o.version) for o in batch], token)
                    active |= {asyncio.create_task(self._deliver(o, token))
                               for o in batch if o.key in won}
                    continue
                done, active = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                finished |= {k for k in (t.result() for t in done) if k is not None}
        finally:
            for task in active:
                task.cancel()
            await asyncio.gather(*active, return_exceptions=True)
        return finished

    async def _record(self, outcome: RowState, token: str) -> None:
        await self._outcomes.submit([(outcome, token)])

    async def _deliver(self, row: Outbound, token: str) -> RowKey | None:
        """Send one row until it is final (return its key) or another worker took it (None)."""
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
            # Release the row while waiting, so a crash now means "send again", not "unknown".
            await self._record(RowState(key, DeliveryStatus.PENDING,
                                        detail=f"attempt {attempts} failed; retrying"), token)
            await asyncio.sleep(self._policy.delay(attempts, result.retry_after))
            if not await self._ledger.claim([(key, row.version)], token):
                return None  # another worker took it over meanwhile
            attempts, messages = attempts + 1, result.retry

    async def _attempt(self, key: RowKey, messages: list[Message]) -> _Attempt:
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
