"""Delivering chunk messages: plan, open, send, settle; many messages in one unit of work.

The steps, each batched per unit of work (never per recipient, never per notification):

1. validate each message against its template (unknown template or channel: poison, to the
   DLQ; the other messages of the batch go on);
2. load every recipient's user and devices in one go, and plan every (user, channel);
3. open: in one transaction, upsert the notifications' headers (version-guarded, order of
   arrival doesn't matter), write every chunk's ledger rows and in-app entries, winning the
   rows to send; then send the won rows of all the chunks together (``dispatcher.sending``)
   and record the outcomes;
4. settle, per chunk, only where the first round left something open: check which rows are
   still open, take over ``pending`` ones, settle the stale claims of crashed workers, and
   wait for live ones. Only then is the message acked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from channels.base import Message
from dispatcher.errors import ChannelNotInTemplate, ChunkNotSettled, PoisonMessage, UnknownTemplate
from dispatcher.feed import Feed
from dispatcher.messages import ChunkMessage, encode_chunk
from dispatcher.model import (
    Channel,
    DeliveryStatus,
    HeaderUpdate,
    Held,
    Reason,
    RowKey,
    RowState,
    Unfinished,
    now_us,
)
from dispatcher.observability import rows_recorded, rows_settled
from dispatcher.planning import ChannelSets, ChunkPlan, Planner, channel_sets, header_update
from dispatcher.rendering import TemplateInfo, TemplateRegistry
from dispatcher.sending import Outbound, Sender
from dispatcher.store import Store

__all__ = ["Deliverer", "SettleTimes"]

log = logging.getLogger("dispatcher.delivery")


@dataclass(frozen=True)
class SettleTimes:
    lease_seconds: float
    poll_seconds: float = 0.25
    give_up_seconds: float = 120.0


class Deliverer:
    def __init__(self, store: Store, templates: TemplateRegistry, planner: Planner,
                 sender: Sender, feed: Feed, times: SettleTimes, *,
                 resend_stale: bool = False) -> None:
        self._store = store
        self._templates = templates
        self._planner = planner
        self._sender = sender
        self._feed = feed
        self._times = times
        self._resend_stale = resend_stale

    async def deliver(self, message: ChunkMessage) -> None:
        """Deliver one message (raises what :meth:`deliver_many` would return for it)."""
        [result] = await self.deliver_many([message])
        if result is not None:
            raise result

    async def deliver_many(self, messages: Sequence[ChunkMessage]) -> list[Exception | None]:
        """Deliver ``messages`` as one unit of work; per message, None when every row is final,
        or the error that stopped it (:class:`PoisonMessage`: to the DLQ; anything else:
        retry later). An error of the unit of work itself (the store unreachable) is raised."""
        results: list[Exception | None] = [None] * len(messages)
        resolved: list[tuple[int, ChunkMessage, TemplateInfo, ChannelSets]] = []
        for i, message in enumerate(messages):
            try:
                resolved.append((i, message, *self._resolve(message)))
            except PoisonMessage as exc:
                results[i] = exc
        users = await self._store.users.load_many(
            dict.fromkeys(r for _, m, _, _ in resolved for r in m.recipients))
        # The suppression list holds email addresses: asked only when this unit may email
        # (an update of push and in-app rows asks nothing: a read transaction saved).
        emailed = {user.email for _, m, _, sets in resolved if Channel.EMAIL.value in sets.all
                   for r in m.recipients if (user := users.get(r)) is not None and user.email}
        suppressed = await self._store.suppressions.among(emailed) if emailed else frozenset()
        planned: list[tuple[int, ChunkPlan, HeaderUpdate]] = []
        for i, message, template, sets in resolved:
            try:
                plan = self._planner.plan(message, template, sets, users, suppressed)
            except PoisonMessage as exc:
                results[i] = exc
                continue
            planned.append((i, plan, header_update(message, template, sets)))
        if not planned:
            return results
        plans = [plan for _, plan, _ in planned]
        opened = await self._open(plans, [h for _, _, h in planned])
        settled = await asyncio.gather(*(self._settle(p, done, older)
                                         for p, (done, older) in zip(plans, opened, strict=True)),
                                       return_exceptions=True)
        for (i, _, _), outcome in zip(planned, settled, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancellation: not a delivery error
            results[i] = outcome
        return results

    def _resolve(self, message: ChunkMessage) -> tuple[TemplateInfo, ChannelSets]:
        """``message``'s template and channels (:class:`PoisonMessage` when it can't have them)."""
        try:
            template = self._templates.info(message.template)
            return template, channel_sets(message.channels, template)
        except (UnknownTemplate, ChannelNotInTemplate) as exc:
            raise PoisonMessage(str(exc)) from None

    async def _open(self, plans: Sequence[ChunkPlan], headers: list[HeaderUpdate],
                    todo: Sequence[list[RowState]] | None = None) -> list[tuple[bool, set[RowKey]]]:
        """Write (and take over) the rows (``todo``, default all) of every plan in one unit of
        work, announce the in-app entries won, send the rows won; per plan, whether every row
        it opened was won and is final now, and the rows it would have taken over but for an
        older version sending them."""
        rows = todo or [plan.rows for plan in plans]
        chunks = [plan.chunk_rows(r, _held(plan) if todo is None else ())
                  for plan, r in zip(plans, rows, strict=True)]
        claim = self._sender.new_claim()
        try:
            opened = await self._store.ledger.open(headers, chunks, claim)
        except BaseException:
            self._sender.drop_claim(claim)
            raise
        won = opened.won
        written = opened.rows if opened.rows is not None else rows
        rows_recorded(r for keys, chunk in zip(won, written, strict=True) for r in chunk if r.key in keys)
        await self._feed.announce(plan.feed[k.user_id] for plan, keys in zip(plans, won, strict=True)
                                  for k in sorted(keys)
                                  if k.channel == "in_app" and k.user_id in plan.feed)
        sends = [_outbound(plan.message.version, plan.sends, keys)
                 if plan.message.id not in opened.cancelled else []
                 for plan, keys in zip(plans, won, strict=True)]
        finished = await self._sender.send([o for per_plan in sends for o in per_plan], claim,
                                           opened.claimed)
        in_flight = opened.in_flight if opened.in_flight is not None else [set() for _ in plans]
        return [(len(keys) == len(r) and {o.key for o in s} <= finished, busy)
                for keys, r, s, busy in zip(won, rows, sends, in_flight, strict=True)]

    async def _settle(self, plan: ChunkPlan, complete: bool, in_flight: set[RowKey]) -> None:
        """After the first round: check -> resolve stale -> wait -> open, until no row of the
        chunk is open. ``in_flight``: rows the first round found an older version sending."""
        if complete:
            return  # every row won and made final in the first round: nothing to check
        # Rows an older version was still sending: take over when done. Seeded from the first
        # round: that send may be recorded before the first check below reads the rows, and
        # then nothing unfinished would say the update still has to send them.
        older: set[RowKey] = set(in_flight)
        deadline = asyncio.get_running_loop().time() + self._times.give_up_seconds
        while True:
            rows = await self._store.ledger.unfinished(plan.message.id, plan.users)
            todo, older = _still_open(plan, rows, older)
            if not todo:
                return
            if not await self._resolve_stale(rows):
                if asyncio.get_running_loop().time() > deadline:
                    raise ChunkNotSettled(f"{len(todo)} rows of {plan.message.id} still claimed elsewhere")
                await asyncio.sleep(self._times.poll_seconds)
            [(complete, in_flight)] = await self._open([plan], [], [todo])
            if complete:
                return
            older |= in_flight

    async def _resolve_stale(self, rows: list[Unfinished]) -> bool:
        cutoff = now_us() - int(self._times.lease_seconds * 1e6)
        stale = [r.key for r in rows
                 if r.status == DeliveryStatus.SENDING and (r.claimed_at or 0) < cutoff]
        if not stale:
            return False
        settled = await self._store.ledger.resolve_stale(
            stale, older_than=cutoff, resend=self._resend_stale)
        log.warning("%s: settled %d rows left in flight by a stopped worker (%s)",
                    stale[0].notification_id, sum(settled.values()),
                    "sending again" if self._resend_stale else "outcome unknown")
        if not self._resend_stale:
            rows_settled(settled, DeliveryStatus.FAILED, Reason.OUTCOME_UNKNOWN)
        return sum(settled.values()) > 0


def _still_open(plan: ChunkPlan, rows: list[Unfinished],
                older: set[RowKey]) -> tuple[list[RowState], set[RowKey]]:
    """The chunk's rows to open again, and the rows an older version is sending now.

    Open again: rows not final at this version or below, and rows an older version was
    sending last round that have finished since (this version takes them over)."""
    version = plan.message.version
    deferred = plan.deferred_keys  # waiting for quiet hours: a held copy of the chunk sends them
    rows = [r for r in rows if r.key not in deferred]
    unfinished = {r.key for r in rows}
    keys = {r.key for r in rows if r.version <= version} | (older - unfinished)
    sending_older = {r.key for r in rows if r.version < version and r.key.channel in plan.sets.reset}
    return [r for r in plan.rows if r.key in keys], sending_older


def _held(plan: ChunkPlan) -> list[Held]:
    """The chunk again, for the recipients and channels waiting for quiet hours to end: one
    message per release time, held until then."""
    return [Held(plan.message.id, plan.message.version, release, encode_chunk(plan.message.model_copy(
                update={"recipients": tuple(sorted(users)),
                        "channels": tuple(sorted(set().union(*users.values())))})))
            for release, users in sorted(plan.deferred.items())]


def _outbound(version: int, sends: Mapping[RowKey, list[Message]],
              won: set[RowKey]) -> list[Outbound]:
    return [Outbound(key, version, messages) for key, messages in sends.items() if key in won]
