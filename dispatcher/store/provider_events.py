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
from dispatcher.store.suppressions import SuppressionStore
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


class ProviderEventStore:
    def __init__(self, db: Database, suppressions: SuppressionStore, webhooks: WebhookStore) -> None:
        self._db = db
        self._suppressions = suppressions
        self._webhooks = webhooks

    async def apply(self, event: ProviderEvent, soft: SoftBounces) -> Applied:
        [applied] = await self.apply_many([event], soft)
        return applied

    async def apply_many(self, events: Sequence[ProviderEvent], soft: SoftBounces) -> list[Applied]:
        """Apply ``events`` in order, in one transaction (one commit for a burst of them)."""
        async with self._db.write() as conn:
            return [await self._apply_in(conn, event, soft) for event in events]

    async def _apply_in(self, conn: AsyncConnection, event: ProviderEvent, soft: SoftBounces) -> Applied:
        row = (await conn.execute(
            sa.select(deliveries.c.notification_id, deliveries.c.user_id, deliveries.c.channel,
                      deliveries.c.version, deliveries.c.status, deliveries.c.attempts)
            .where(deliveries.c.channel == "email",
                   deliveries.c.provider_message_id == event.provider_message_id)
            .with_for_update())).first()
        key = None if row is None else RowKey(row.notification_id, row.user_id, row.channel)
        moved = False
        if row is not None and key is not None:
            moved = await self._move(conn, key, row.status, event)
            if moved and event.status in _WEBHOOK:
                await self._webhook(conn, key, row.version, row.attempts, event)
        suppressed = await self._suppress(conn, event, soft)
        return Applied(key, moved, tuple(suppressed))

    async def _move(self, conn: AsyncConnection, key: RowKey, status: str, event: ProviderEvent) -> bool:
        current = DeliveryStatus(status)
        if current not in AFTER_SENT:
            return False  # not sent (yet, or at all): a provider event can't concern it
        values: dict[str, object] = {"detail": event.detail[:1000], "updated_at": now_us()}
        if event.status is None:  # a delay: only the detail, and only while nothing else is known
            if current != DeliveryStatus.SENT:
                return False
        elif AFTER_SENT[event.status] > AFTER_SENT[current]:
            values |= {"status": event.status.value,
                       "reason": None if event.reason is None else event.reason.value}
        else:
            return False
        await conn.execute(deliveries.update().where(
            deliveries.c.notification_id == key.notification_id, deliveries.c.user_id == key.user_id,
            deliveries.c.channel == key.channel, deliveries.c.status == status).values(**values))
        return event.status is not None

    async def _webhook(self, conn: AsyncConnection, key: RowKey, version: int, attempts: int,
                       event: ProviderEvent) -> None:
        assert event.status is not None
        name = _WEBHOOK[event.status]
        service = key.notification_id.partition("#")[0]
        if name not in (await self._webhooks.subscribed_in(conn, [service])).get(service, set()):
            return
        delivery = {"user_id": key.user_id, "channel": key.channel, "version": version,
                    "status": event.status.value,
                    "reason": None if event.reason is None else event.reason.value,
                    "detail": event.detail[:1000], "attempts": attempts,
                    "provider_message_id": event.provider_message_id}
        await self._webhooks.add_in(conn, service, name, f"event:{event.event_id}",
                                    {"notification_id": key.notification_id, "deliveries": [delivery]})

    async def _suppress(self, conn: AsyncConnection, event: ProviderEvent, soft: SoftBounces) -> list[str]:
        if event.suppress == Suppress.NOW:
            addresses = list(event.addresses)
            cause = event.cause or "bounce"
        elif event.suppress == Suppress.COUNT:
            addresses = await self._suppressions.soft_bounce_in(
                conn, event.addresses, event.event_id, limit=soft.limit,
                window_us=int(soft.window_seconds * 1e6))
            cause = "soft_bounces"
        else:
            return []
        await self._suppressions.add_in(conn, addresses, channel="email", cause=cause,
                                        detail=event.detail, provider_message_id=event.provider_message_id)
        return addresses
