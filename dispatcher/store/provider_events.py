"""Applying one provider event (an SES event) to the store, in one transaction.

The row whose ``provider_message_id`` the event names moves up (never down) the ranks of
:data:`~dispatcher.model.AFTER_SENT`; its addresses are suppressed or their soft bounces
counted; and the webhook it causes (``delivery.bounced``, ``delivery.complained``,
``delivery.failed``) is written to the outbox, all together. SNS delivers at least once and
in any order: a duplicate or a lower-ranked late event finds the row already there and changes
nothing (a soft bounce counts once per event id). Concurrent events are group-committed by the
caller (:meth:`ProviderEventStore.apply_many`): a burst of thousands is a few hundred commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.model import AFTER_SENT, DeliveryStatus, RowKey, now_us
from dispatcher.ses_events import ProviderEvent, Suppress
from dispatcher.store.database import Database
from dispatcher.store.schema import deliveries
from dispatcher.store.suppressions import SuppressionStore, address_key
from dispatcher.store.webhooks import WebhookStore

__all__ = ["Applied", "ProviderEventStore", "SoftBounces"]

_WEBHOOK = {DeliveryStatus.BOUNCED: "delivery.bounced", DeliveryStatus.COMPLAINED: "delivery.complained",
            DeliveryStatus.FAILED: "delivery.failed"}


@dataclass(frozen=True)
class SoftBounces:
    """Soft bounces suppress an address after ``limit`` of them within ``window_seconds``."""

    limit: int
    window_seconds: float


@dataclass(frozen=True)
class Applied:
    row: RowKey | None          # the ledger row the event names (None: not one of ours)
    moved: bool                 # whether the row's status changed
    suppressed: tuple[str, ...]  # addresses suppressed by this event


@dataclass
class _Row:
    """A ledger row as a batch of events sees it (``changed``: to be written)."""

    key: RowKey
    version: int
    status: str
    reason: str | None
    detail: str | None
    attempts: int
    changed: bool = False


def _move(row: _Row, event: ProviderEvent) -> bool:
    """Apply ``event`` to ``row`` in memory; whether its status moved. Only up the ranks of
    ``AFTER_SENT``; a delay only explains a row still ``sent``."""
    current = DeliveryStatus(row.status)
    if current not in AFTER_SENT:
        return False  # not sent (yet, or at all): a provider event can't concern it
    if event.status is None:
        if current == DeliveryStatus.SENT:
            row.detail, row.changed = event.detail[:1000], True
        return False
    if AFTER_SENT[event.status] <= AFTER_SENT[current]:
        return False
    row.status, row.detail, row.changed = event.status.value, event.detail[:1000], True
    row.reason = None if event.reason is None else event.reason.value
    return True


class ProviderEventStore:
    def __init__(self, db: Database, suppressions: SuppressionStore, webhooks: WebhookStore) -> None:
        self._db = db
        self._suppressions = suppressions
        self._webhooks = webhooks

    async def apply(self, event: ProviderEvent, soft: SoftBounces) -> Applied:
        [applied] = await self.apply_many([event], soft)
        return applied

    async def apply_many(self, events: Sequence[ProviderEvent], soft: SoftBounces) -> list[Applied]:
        """Apply ``events`` in order, in one transaction and a fixed number of statements (one
        read of their rows, one batched update), plus the suppressions and webhooks they cause."""
        async with self._db.write() as conn:
            rows = await self._rows_in(conn, {e.provider_message_id for e in events})
            results: list[Applied] = []
            told: list[tuple[_Row, ProviderEvent]] = []
            for event in events:
                row = rows.get(event.provider_message_id)
                moved = row is not None and _move(row, event)
                if row is not None and moved and event.status in _WEBHOOK:
                    told.append((row, event))
                suppressed = await self._suppress(conn, event, soft)
                results.append(Applied(None if row is None else row.key, moved, tuple(suppressed)))
            await self._update(conn, [r for r in rows.values() if r.changed])
            await self._webhooks_in(conn, told)
        return results

    async def _rows_in(self, conn: AsyncConnection, message_ids: set[str]) -> dict[str, _Row]:
        result = await conn.execute(
            sa.select(deliveries.c.notification_id, deliveries.c.user_id, deliveries.c.channel,
                      deliveries.c.version, deliveries.c.status, deliveries.c.reason, deliveries.c.detail,
                      deliveries.c.attempts, deliveries.c.provider_message_id)
            # 'email' as a literal, not a parameter: only then may the planner use the partial
            # index (its WHERE must be implied by the query's; a bound value proves nothing).
            .where(deliveries.c.channel == sa.literal_column("'email'"),
                   deliveries.c.provider_message_id.in_(sorted(message_ids)))
            .with_for_update())
        return {r.provider_message_id: _Row(RowKey(r.notification_id, r.user_id, r.channel), r.version,
                                            r.status, r.reason, r.detail, r.attempts) for r in result}

    async def _update(self, conn: AsyncConnection, rows: list[_Row]) -> None:
        if not rows:
            return
        now = now_us()
        await conn.execute(
            deliveries.update().where(
                deliveries.c.notification_id == sa.bindparam("b_nid"),
                deliveries.c.user_id == sa.bindparam("b_user"), deliveries.c.channel == sa.bindparam("b_channel"))
            .values(status=sa.bindparam("b_status"), reason=sa.bindparam("b_reason"),
                    detail=sa.bindparam("b_detail"), updated_at=now),
            [{"b_nid": r.key.notification_id, "b_user": r.key.user_id, "b_channel": r.key.channel,
              "b_status": r.status, "b_reason": r.reason, "b_detail": r.detail} for r in rows])

    async def _webhooks_in(self, conn: AsyncConnection, told: list[tuple[_Row, ProviderEvent]]) -> None:
        if not told:
            return
        wanted = await self._webhooks.subscribed_in(
            conn, sorted({r.key.notification_id.partition("#")[0] for r, _ in told}))
        for row, event in told:
            assert event.status is not None
            service = row.key.notification_id.partition("#")[0]
            if _WEBHOOK[event.status] in wanted.get(service, set()):
                await self._webhook(conn, row.key, row.version, row.attempts, event)

    async def _webhook(self, conn: AsyncConnection, key: RowKey, version: int, attempts: int,
                       event: ProviderEvent) -> None:
        assert event.status is not None
        name = _WEBHOOK[event.status]
        service = key.notification_id.partition("#")[0]
        delivery = {"user_id": key.user_id, "channel": key.channel, "version": version,
                    "status": event.status.value,
                    "reason": None if event.reason is None else event.reason.value,
                    "detail": event.detail[:1000], "attempts": attempts,
                    "provider_message_id": event.provider_message_id}
        await self._webhooks.add_in(conn, service, name, f"event:{event.event_id}",
                                    {"notification_id": key.notification_id, "version": version,
                                     "deliveries": [delivery]})

    async def _suppress(self, conn: AsyncConnection, event: ProviderEvent, soft: SoftBounces) -> list[str]:
        if event.suppress is None:
            return []
        candidates = list(event.addresses)
        if event.published_at is not None and candidates:
            lifted = await self._suppressions.lifted_after(conn, candidates, event.published_at)
            candidates = [a for a in candidates if address_key(a) not in lifted]
        if event.suppress == Suppress.NOW:
            addresses = candidates
            cause = event.cause or "bounce"
        elif event.suppress == Suppress.COUNT:
            addresses = await self._suppressions.soft_bounce_in(
                conn, candidates, event.event_id, limit=soft.limit,
                window_us=int(soft.window_seconds * 1e6))
            cause = "soft_bounces"
        else:
            return []
        await self._suppressions.add_in(conn, addresses, channel="email", cause=cause,
                                        detail=event.detail, provider_message_id=event.provider_message_id)
        return addresses
