"""Delivering one chunk message: header, recipients, plan, ledger, sends, settle.

The steps, each batched per chunk (never per recipient):

1. validate against the template (unknown template or channel: poison, to the DLQ);
2. load the chunk's users and devices in one go, and plan every (user, channel);
3. open: in one unit of work, upsert the notification header (version-guarded, order of
   arrival doesn't matter), write the ledger rows and in-app entries, winning the rows to
   send; then send the won rows (``dispatcher.sending``) and record the outcomes;
4. settle: until every row of the chunk is final, check which rows are still open, take
   over ``pending`` ones, settle the stale claims of crashed workers, and wait for live
   ones. Only then is the message acked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from channels.base import Message
from dispatcher.errors import ChannelNotInTemplate, ChunkNotSettled, PoisonMessage, UnknownTemplate
from dispatcher.feed import Feed
from dispatcher.messages import ChunkMessage
from dispatcher.model import DeliveryStatus, HeaderUpdate, RowKey, RowState, Unfinished, now_us
from dispatcher.planning import ChunkPlan, Planner, channel_sets, header_update
from dispatcher.rendering import TemplateRegistry
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
        plan, header = await self._plan(message)
        await self._settle(plan, header)

    async def _plan(self, message: ChunkMessage) -> tuple[ChunkPlan, HeaderUpdate]:
        try:
            template = self._templates.info(message.template)
            sets = channel_sets(message.channels, template)
        except (UnknownTemplate, ChannelNotInTemplate) as exc:
            raise PoisonMessage(str(exc)) from None
        users = await self._store.users.load_many(message.recipients)
        plan = self._planner.plan(message, template, sets, users)
        return plan, header_update(message, template, sets)

    async def _settle(self, plan: ChunkPlan, header: HeaderUpdate) -> None:
        """open -> check -> resolve stale -> wait, until no row of the chunk is open."""
        todo, headers = plan.rows, [header]  # the header is written with the first round's rows
        older: set[RowKey] = set()  # rows an older version was still sending: take over when done
        deadline = asyncio.get_running_loop().time() + self._times.give_up_seconds
        while True:
            if await self._open(plan, todo, headers):
                return  # every row won and made final here: nothing to check
            headers = []
            rows = await self._store.ledger.unfinished(plan.message.id, plan.users)
            todo, older = _still_open(plan, rows, older)
            if not todo:
                return
            if await self._resolve_stale(rows):
                continue
            if asyncio.get_running_loop().time() > deadline:
                raise ChunkNotSettled(f"{len(todo)} rows of {plan.message.id} still claimed elsewhere")
            await asyncio.sleep(self._times.poll_seconds)

    async def _open(self, plan: ChunkPlan, todo: list[RowState],
                    headers: list[HeaderUpdate]) -> bool:
        """Write (and take over) the rows of ``todo``, send those won; True when every row of
        ``todo`` was won and is final now."""
        [won] = await self._store.ledger.open(headers, [plan.chunk_rows(todo)])
        await self._feed.announce(plan.feed[k.user_id] for k in sorted(won)
                                  if k.channel == "in_app" and k.user_id in plan.feed)
        sends = _outbound(plan.message.version, plan.sends, won)
        finished = await self._sender.send(sends)
        return len(won) == len(todo) and finished == {o.key for o in sends}

    async def _resolve_stale(self, rows: list[Unfinished]) -> bool:
        cutoff = now_us() - int(self._times.lease_seconds * 1e6)
        stale = [r.key for r in rows
                 if r.status == DeliveryStatus.SENDING and (r.claimed_at or 0) < cutoff]
        if not stale:
            return False
        settled = await self._store.ledger.resolve_stale(
            stale, older_than=cutoff, resend=self._resend_stale)
        log.warning("%s: settled %d rows left in flight by a stopped worker (%s)",
                    stale[0].notification_id, settled,
                    "sending again" if self._resend_stale else "outcome unknown")
        return settled > 0


def _still_open(plan: ChunkPlan, rows: list[Unfinished],
                older: set[RowKey]) -> tuple[list[RowState], set[RowKey]]:
    """The chunk's rows to open again, and the rows an older version is sending now.

    Open again: rows not final at this version or below, and rows an older version was
    sending last round that have finished since (this version takes them over)."""
    version = plan.message.version
    unfinished = {r.key for r in rows}
    keys = {r.key for r in rows if r.version <= version} | (older - unfinished)
    sending_older = {r.key for r in rows if r.version < version and r.key.channel in plan.sets.reset}
    return [r for r in plan.rows if r.key in keys], sending_older


def _outbound(version: int, sends: Mapping[RowKey, list[Message]],
              won: set[RowKey]) -> list[Outbound]:
    return [Outbound(key, version, messages) for key, messages in sends.items() if key in won]
