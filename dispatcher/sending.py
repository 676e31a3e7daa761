"""Sending a chunk's deliverable rows, with retries, recording each outcome.

Rows arrive ``pending``. They are claimed (``sending``) in batches only as room opens in a
window of ``window`` rows, and a row leaves the window only once its outcome is committed.
So at any moment at most ``window`` rows of a chunk are claimed without a recorded outcome:
that is all a crash can leave as ``outcome_unknown`` (see ``dispatcher.store.ledger``).
Claims are made when the window is half empty, so that they are batched too.

Outcomes are written by a :class:`Recorder` that commits whatever has finished as soon as its
previous commit is done (group commit): batched writes, and a short wait for each row.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from channels.base import (
    Message, PermanentError, Provider, Receipt, TransientError, UnregisteredDevice,
)
from dispatcher.model import DeliveryStatus, Reason
from dispatcher.retry import RetryPolicy
from dispatcher.store.ledger import LedgerStore, Outcome

__all__ = ["Recorder", "Sender"]

log = logging.getLogger("dispatcher.sending")
Key = tuple[str, str]


class Recorder:
    """Group-commits outcomes; :meth:`write` returns once its outcome is committed."""

    def __init__(self, ledger: LedgerStore, notification_id: str, token: str) -> None:
        self._ledger = ledger
        self._nid = notification_id
        self._token = token
        self._buffer: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._ready = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run())

    async def write(self, outcome: Outcome) -> None:
        if self._task.done():
            self._task.result()  # the writer failed: raise its error here too
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer.append((outcome, done))
        self._ready.set()
        await done

    async def close(self) -> None:
        self._closing = True
        self._ready.set()
        await self._task

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._buffer = self._buffer, []
            if batch:
                await self._commit(batch)
            if self._closing and not self._buffer:
                return

    async def _commit(self, batch: list[tuple[Outcome, asyncio.Future[None]]]) -> None:
        try:
            await self._ledger.record(self._nid, [o for o, _ in batch], self._token)
        except BaseException as exc:
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            raise
        for _, done in batch:
            if not done.done():
                done.set_result(None)


@dataclass(frozen=True)
class _Attempt:
    """What one attempt at a (user, channel) came to."""

    outcome: Outcome | None        # final, or None: retry the messages in ``retry``
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

    async def send(self, notification_id: str, version: int, token: str,
                   sends: Mapping[Key, Sequence[Message]]) -> set[Key]:
        """Claim, send and record the ``pending`` rows in ``sends`` (others may take some);
        return the keys whose final outcome this call recorded."""
        finished: set[Key] = set()
        if not sends:
            return finished
        recorder = Recorder(self._ledger, notification_id, token)
        waiting = list(sends)
        active: set[asyncio.Task[Key | None]] = set()
        try:
            while waiting or active:
                if waiting and len(active) <= self._window // 2:
                    room = self._window - len(active)
                    batch, waiting = waiting[:room], waiting[room:]
                    for key in await self._ledger.claim(notification_id, version, batch, token):
                        active.add(asyncio.create_task(self._deliver(
                            notification_id, version, token, key, list(sends[key]), recorder)))
                    continue
                done, active = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                finished |= {k for k in (t.result() for t in done) if k is not None}
        finally:
            for task in active:
                task.cancel()
            await asyncio.gather(*active, return_exceptions=True)
            await recorder.close()
        return finished

    async def _deliver(self, nid: str, version: int, token: str, key: Key,
                       messages: list[Message], recorder: Recorder) -> Key | None:
        """Send one row until it is final (return its key) or another worker took it (None)."""
        attempts = 1
        while True:
            result = await self._attempt(key, messages)
            if result.unregistered:
                await self._deactivate(result.unregistered)
            if result.outcome is not None:
                await recorder.write(result.outcome)
                return key
            if self._policy.exhausted(attempts):
                await recorder.write(Outcome(*key, DeliveryStatus.FAILED.value,
                                             Reason.RETRIES_EXHAUSTED,
                                             f"{attempts} attempts; last: {result.retry[0].to}"))
                return key
            # Release the row while waiting, so a crash now means "send again", not "unknown".
            await recorder.write(Outcome(*key, DeliveryStatus.PENDING.value,
                                         detail=f"attempt {attempts} failed; retrying"))
            await asyncio.sleep(self._policy.delay(attempts, result.retry_after))
            if not await self._ledger.claim(nid, version, [key], token):
                return None  # another worker took it over meanwhile
            attempts, messages = attempts + 1, result.retry

    async def _attempt(self, key: Key, messages: list[Message]) -> _Attempt:
        results = await asyncio.gather(*(self._send_one(m) for m in messages))
        receipts = [r for r in results if isinstance(r, Receipt)]
        transient = [(m, r) for m, r in zip(messages, results) if isinstance(r, TransientError)]
        permanent = [(m, r) for m, r in zip(messages, results) if isinstance(r, PermanentError)]
        unregistered = [m.to for m, r in permanent if isinstance(r, UnregisteredDevice)]
        errors = "; ".join(f"{m.to}: {r}" for m, r in transient + permanent) or None
        if receipts:
            ids = ",".join(r.provider_message_id for r in receipts)
            return _Attempt(Outcome(*key, DeliveryStatus.SENT.value, None, errors, ids), [], None,
                            unregistered)
        if transient:
            after = max((r.retry_after or 0.0 for _, r in transient), default=0.0) or None
            return _Attempt(None, [m for m, _ in transient], after, unregistered)
        reason = permanent[0][1].reason
        return _Attempt(Outcome(*key, DeliveryStatus.FAILED.value, reason, errors), [], None,
                        unregistered)

    async def _send_one(self, message: Message) -> Receipt | TransientError | PermanentError:
        provider = self._providers[message.channel]
        try:
            return await provider.send(message)
        except (TransientError, PermanentError) as exc:
            return exc
        except Exception as exc:  # an adapter bug must not lose the row: retry, then fail
            log.exception("provider %s raised an unmapped error", provider.name)
            return TransientError(f"unexpected {type(exc).__name__}: {exc}")
