"""Delivering one chunk message: header, recipients, plan, ledger, sends, settle.

The steps, each batched per chunk (never per recipient):

1. validate against the template (unknown template or channel: poison, to the DLQ);
2. upsert the notification header (version-guarded, order of arrival doesn't matter);
3. load the chunk's users and devices in one go, and plan every (user, channel);
4. write the ledger rows and in-app entries in one transaction, winning the rows to send;
5. send the won rows (``dispatcher.sending``) and record the outcomes;
6. settle: until every row of the chunk is final, take over ``pending`` rows, settle the
   stale claims of crashed workers, and wait for live ones. Only then is the message acked.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

from channels.in_app import InAppChannel
from dispatcher.messages import ChunkMessage, PoisonMessage
from dispatcher.model import DeliveryStatus
from dispatcher.planning import ChannelSets, ChunkPlan, Planner, channel_sets, header_update
from dispatcher.rendering import TemplateInfo, TemplateRegistry, UnknownTemplate
from dispatcher.sending import Sender
from dispatcher.store import HeaderUpdate, Planned, Store
from dispatcher.store.database import now_us
from dispatcher.store.ledger import Unfinished

__all__ = ["ChunkNotSettled", "Deliverer"]

log = logging.getLogger("dispatcher.delivery")
Key = tuple[str, str]


class ChunkNotSettled(RuntimeError):
    """Rows of the chunk stayed claimed by another live worker for too long; retry later."""


@dataclass(frozen=True)
class SettleTimes:
    lease_seconds: float
    poll_seconds: float = 0.25
    give_up_seconds: float = 120.0


class Deliverer:
    def __init__(self, store: Store, templates: TemplateRegistry, planner: Planner,
                 sender: Sender, in_app: InAppChannel, times: SettleTimes, *,
                 resend_stale: bool = False) -> None:
        self._store = store
        self._templates = templates
        self._planner = planner
        self._sender = sender
        self._in_app = in_app
        self._times = times
        self._resend_stale = resend_stale

    async def deliver(self, message: ChunkMessage) -> None:
        template, sets = self._validate(message)
        users = await self._store.users.load_many(message.recipients)
        plan = self._planner.plan(message, template, sets, users)
        await self._settle(message, sets, plan, header_update(message, template, sets))

    def _validate(self, message: ChunkMessage) -> tuple[TemplateInfo, ChannelSets]:
        try:
            template = self._templates.info(message.template)
            return template, channel_sets(message.channels, template)
        except (UnknownTemplate, ValueError) as exc:
            raise PoisonMessage(str(exc)) from None

    async def _settle(self, message: ChunkMessage, sets: ChannelSets, plan: ChunkPlan,
                      header: HeaderUpdate) -> None:
        todo: list[Planned] = plan.planned
        users = list(dict.fromkeys(message.recipients))
        deadline = asyncio.get_running_loop().time() + self._times.give_up_seconds
        older: set[Key] = set()  # rows an older version was still sending: take over when done
        first: HeaderUpdate | None = header  # written with the first round's rows
        while todo:
            if await self._open(message, sets, plan, todo, first):
                return  # every planned row won and made final here: nothing to check
            first = None
            rows = await self._store.ledger.unfinished(message.id, users)
            open_keys = {(r.user_id, r.channel) for r in rows if r.version <= message.version}
            keys = open_keys | (older - {(r.user_id, r.channel) for r in rows})
            older = {(r.user_id, r.channel) for r in rows
                     if r.version < message.version and r.channel in sets.reset}
            todo = [p for p in plan.planned if (p.user_id, p.channel) in keys]
            if not todo:
                return
            if await self._resolve_stale(message, rows):
                continue
            if asyncio.get_running_loop().time() > deadline:
                raise ChunkNotSettled(f"{len(todo)} rows of {message.id} still claimed elsewhere")
            await asyncio.sleep(self._times.poll_seconds)

    async def _open(self, message: ChunkMessage, sets: ChannelSets, plan: ChunkPlan,
                    todo: list[Planned], header: HeaderUpdate | None) -> bool:
        """Write (and take over) the rows of ``todo``, send those won; True when every row of
        ``todo`` was won and is final now."""
        async with self._store.db.write() as conn:
            if header is not None:
                await self._store.notifications.upsert_many_in(conn, [header])
            won = await self._store.ledger.open_chunk_in(
                conn, message.id, message.version, todo, insert=sets.insert, reset=sets.reset,
                feed=plan.feed)
        await self._in_app.announce(plan.feed[u] for (u, c) in won if c == "in_app" and u in plan.feed)
        sends = {key: plan.sends[key] for key in won if key in plan.sends}
        finished = await self._sender.send(message.id, message.version, uuid.uuid4().hex, sends)
        return len(won) == len(todo) and finished == set(sends)

    async def _resolve_stale(self, message: ChunkMessage, rows: list[Unfinished]) -> bool:
        cutoff = now_us() - int(self._times.lease_seconds * 1e6)
        stale = [(r.user_id, r.channel) for r in rows
                 if r.status == DeliveryStatus.SENDING and (r.claimed_at or 0) < cutoff]
        if not stale:
            return False
        settled = await self._store.ledger.resolve_stale(
            message.id, stale, older_than=cutoff, resend=self._resend_stale)
        log.warning("%s: settled %d rows left in flight by a stopped worker (%s)", message.id,
                    settled, "sending again" if self._resend_stale else "outcome unknown")
        return settled > 0

