"""Webhook endpoints (one per service) and the outbox of webhooks to send.

A webhook is written to the outbox *in the transaction of the ledger change that causes it*
(:meth:`WebhookStore.after_rows`, :meth:`add_in`), so a crash neither loses one (the change
and its webhook commit together) nor invents one (neither does). Its ``id`` is the
``webhook-id`` of every attempt, so a receiver dedupes redeliveries by it. Services without
an endpoint (or not subscribed to an event) get no outbox rows: the ledger pays one primary-key
read of ``webhook_endpoints`` per transaction for the feature.

``delivery.failed`` is batched: the rows of one notification that fail in one transaction
(the sender group-commits outcomes) make one webhook of up to :data:`FAILED_BATCH` deliveries,
so a bulk with 1,000 failures makes tens of webhooks, not 1,000.

``notification.completed`` is noticed by whichever transaction makes the last row final.
On PostgreSQL the check takes a transaction-scoped advisory lock per notification after the
transaction's own updates, so two transactions finishing the last rows at once take turns and
the second (reading committed data afresh) sees the first's rows. Not the header's row lock:
``open`` locks headers before rows, and a check locking the header after its rows could
deadlock with it; the advisory lock is taken by checks only, which wait for nothing else
while holding it. A notice twice is one row anyway (``dedupe_key``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.model import DeliveryStatus, OutboxEntry, RowKey, WebhookEndpoint, now_us
from dispatcher.store.database import Database
from dispatcher.store.notifications import NotificationStore
from dispatcher.store.schema import deliveries, webhook_endpoints, webhook_outbox

__all__ = ["EVENTS", "FAILED_BATCH", "WebhookStore"]

EVENTS = ("notification.completed", "delivery.failed", "delivery.bounced", "delivery.complained")
FAILED_BATCH = 100
_OPEN = (DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value)


class WebhookStore:
    def __init__(self, db: Database, notifications: NotificationStore) -> None:
        self._db = db
        self._notifications = notifications
        # In every ledger transaction (after_rows): built once; on SQLite, run straight on its
        # connection (dispatcher.store.direct).
        self._subscriptions = db.direct(
            sa.select(webhook_endpoints.c.service, webhook_endpoints.c.events)
            .where(webhook_endpoints.c.service.in_(sa.bindparam("services", expanding=True))))

    # -- endpoints ---------------------------------------------------------------------

    async def put_endpoint(self, service: str, url: str, events: Sequence[str],
                           new_secret: str, *, rotate: bool = False) -> WebhookEndpoint:
        """Create or update the service's endpoint; the secret is kept on update unless
        ``rotate``."""
        now = now_us()
        async with self._db.write() as conn:
            await conn.execute(self._db.insert(webhook_endpoints).values(
                service=service, url=url, events=list(events), secret=new_secret,
                created_at=now, updated_at=now).on_conflict_do_update(
                index_elements=[webhook_endpoints.c.service],
                set_={"url": url, "events": list(events), "updated_at": now,
                      **({"secret": new_secret} if rotate else {})}))
        endpoint = await self.endpoint(service)
        assert endpoint is not None
        return endpoint

    async def endpoint(self, service: str) -> WebhookEndpoint | None:
        async with self._db.read() as conn:
            row = (await conn.execute(sa.select(webhook_endpoints)
                                      .where(webhook_endpoints.c.service == service))).one_or_none()
        return None if row is None else _endpoint(row)

    async def delete_endpoint(self, service: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(webhook_endpoints.delete()
                                        .where(webhook_endpoints.c.service == service))
        return bool(result.rowcount)

    # -- writing the outbox, inside the caller's transaction ----------------------------

    async def subscribed_in(self, conn: AsyncConnection, services: Sequence[str]) -> dict[str, set[str]]:
        """Per service with an endpoint: the events it takes."""
        if not services:
            return {}
        rows = await self._subscriptions.rows(conn, {"services": sorted(set(services))})
        return {r["service"]: set(r["events"]) for r in rows}

    async def add_in(self, conn: AsyncConnection, service: str, event: str, dedupe_key: str,
                     data: dict[str, Any]) -> None:
        now = now_us()
        payload = json.dumps({"type": event, "timestamp": _iso(now), "data": data},
                             separators=(",", ":"), ensure_ascii=False)
        await conn.execute(self._db.insert(webhook_outbox).on_conflict_do_nothing(), [{
            "id": f"msg_{uuid.uuid4().hex}", "service": service, "event": event,
            "dedupe_key": dedupe_key[:512], "payload": payload, "status": "pending", "attempts": 0,
            "next_attempt_at": now, "last_error": None, "created_at": now, "updated_at": now}])

    async def after_rows(self, conn: AsyncConnection, keys: Sequence[RowKey], changed_at: int | None) -> None:
        """After a ledger change of ``keys`` in this transaction: a ``delivery.failed`` for the
        rows it made ``failed`` (those updated at ``changed_at``), and ``notification.completed``
        for the notifications it finished."""
        by_nid: dict[str, list[RowKey]] = defaultdict(list)
        for key in keys:
            by_nid[key.notification_id].append(key)
        wanted = await self.subscribed_in(conn, [_service(n) for n in by_nid])
        if not wanted:
            return
        for nid in sorted(by_nid):
            events = wanted.get(_service(nid), set())
            if "delivery.failed" in events and changed_at is not None:
                await self._failed(conn, nid, by_nid[nid], changed_at)
            if "notification.completed" in events:
                await self._completed(conn, nid)

    async def _failed(self, conn: AsyncConnection, nid: str, keys: list[RowKey], changed_at: int) -> None:
        users = sorted({k.user_id for k in keys})
        wanted = set(keys)
        rows = [r for r in (await conn.execute(
            sa.select(deliveries.c.user_id, deliveries.c.channel, deliveries.c.version,
                      deliveries.c.reason, deliveries.c.detail, deliveries.c.attempts)
            .where(deliveries.c.notification_id == nid, deliveries.c.user_id.in_(users),
                   deliveries.c.status == DeliveryStatus.FAILED.value,
                   deliveries.c.updated_at == changed_at))).all()
            if RowKey(nid, r.user_id, r.channel) in wanted]
        rows.sort(key=lambda r: (r.version, r.user_id, r.channel))
        by_version: dict[int, list[Any]] = defaultdict(list)
        for r in rows:
            by_version[r.version].append(r)
        for version, of_version in sorted(by_version.items()):
            for start in range(0, len(of_version), FAILED_BATCH):
                items = [{"user_id": r.user_id, "channel": r.channel, "version": r.version,
                          "status": "failed", "reason": r.reason, "detail": r.detail,
                          "attempts": r.attempts} for r in of_version[start:start + FAILED_BATCH]]
                key = "failed:" + nid + ":" + uuid.uuid4().hex  # one per transaction and batch
                await self.add_in(conn, _service(nid), "delivery.failed", key,
                                  {"notification_id": nid, "version": version, "deliveries": items})

    async def _completed(self, conn: AsyncConnection, nid: str) -> None:
        if self._db.dialect == "postgresql":
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(nid)})
        header = await self._notifications.get_in(conn, nid)
        if header is None:
            return
        # Cheap first: any row still open (the usual answer mid-bulk) ends the check.
        still_open = (await conn.execute(sa.select(
            sa.exists().where(deliveries.c.notification_id == nid, deliveries.c.status.in_(_OPEN))
        ))).scalar_one()
        if still_open:
            return
        counts = await self._notifications.counts_in(conn, header)
        if any(bucket["pending"] for bucket in counts.values()):
            return  # rows of chunks not opened yet
        # Once per version, and once more each time a resend's rows are final again: their
        # attempts are the only thing that grows once every row is final.
        attempts = (await conn.execute(sa.select(sa.func.coalesce(sa.func.sum(deliveries.c.attempts), 0))
                                       .where(deliveries.c.notification_id == nid))).scalar_one()
        await self.add_in(conn, header.service, "notification.completed",
                          f"completed:{nid}:{header.version}:{int(attempts)}",
                          {"notification_id": nid, "version": header.version, "counts": counts})

    # -- the sender's side ---------------------------------------------------------------

    async def claim_due(self, limit: int, lease_us: int) -> list[tuple[OutboxEntry, WebhookEndpoint | None]]:
        """Take up to ``limit`` due webhooks for ``lease_us``: another process takes them only
        after the lease (this one crashed mid-request: the webhook is sent again, same id)."""
        now = now_us()
        async with self._db.write() as conn:
            ids = [r.id for r in await conn.execute(
                sa.select(webhook_outbox.c.id)
                .where(webhook_outbox.c.status == "pending", webhook_outbox.c.next_attempt_at <= now)
                .order_by(webhook_outbox.c.next_attempt_at).limit(limit))]
            if not ids:
                return []
            taken = [r.id for r in await conn.execute(
                webhook_outbox.update()
                .where(webhook_outbox.c.id.in_(ids), webhook_outbox.c.status == "pending",
                       webhook_outbox.c.next_attempt_at <= now)
                .values(next_attempt_at=now + lease_us).returning(webhook_outbox.c.id))]
            if not taken:
                return []
            rows = (await conn.execute(
                sa.select(webhook_outbox, webhook_endpoints.c.url, webhook_endpoints.c.events.label("ep_events"),
                          webhook_endpoints.c.secret, webhook_endpoints.c.created_at.label("ep_created"),
                          webhook_endpoints.c.updated_at.label("ep_updated"))
                .select_from(webhook_outbox.outerjoin(
                    webhook_endpoints, webhook_endpoints.c.service == webhook_outbox.c.service))
                .where(webhook_outbox.c.id.in_(taken)))).all()
        return [(_entry(r), None if r.url is None else WebhookEndpoint(
            r.service, r.url, tuple(r.ep_events), r.secret, r.ep_created, r.ep_updated)) for r in rows]

    async def settle(self, entry_id: str, *, status: str, attempts: int, next_attempt_at: int,
                     error: str | None) -> None:
        async with self._db.write() as conn:
            await conn.execute(webhook_outbox.update().where(webhook_outbox.c.id == entry_id).values(
                status=status, attempts=attempts, next_attempt_at=next_attempt_at,
                last_error=None if error is None else error[:1000], updated_at=now_us()))

    async def entries(self, service: str, *, status: str | None, limit: int,
                      before: int | None = None) -> list[OutboxEntry]:
        """The service's webhooks, newest first (``before``: older than this ``created_at``)."""
        query = sa.select(webhook_outbox).where(webhook_outbox.c.service == service)
        if status is not None:
            query = query.where(webhook_outbox.c.status == status)
        if before is not None:
            query = query.where(webhook_outbox.c.created_at < before)
        async with self._db.read() as conn:
            rows = (await conn.execute(query.order_by(webhook_outbox.c.created_at.desc())
                                       .limit(limit))).all()
        return [_entry(r) for r in rows]

    async def prune(self, older_than: int) -> int:
        """Forget delivered and failed webhooks last touched before ``older_than`` (µs)."""
        async with self._db.write(many_rows=True) as conn:
            result = await conn.execute(webhook_outbox.delete().where(
                webhook_outbox.c.status.in_(["delivered", "failed"]),
                webhook_outbox.c.updated_at < older_than))
        return int(result.rowcount)

    async def replay(self, service: str | None, entry_id: str | None = None) -> int:
        """Send failed webhooks again (one by id, or all of a service's, or all): same ids,
        attempts counted from 0, due now."""
        query = webhook_outbox.update().where(webhook_outbox.c.status == "failed")
        if service is not None:
            query = query.where(webhook_outbox.c.service == service)
        if entry_id is not None:
            query = query.where(webhook_outbox.c.id == entry_id)
        now = now_us()
        async with self._db.write() as conn:
            result = await conn.execute(query.values(status="pending", attempts=0, next_attempt_at=now,
                                                     updated_at=now))
        return int(result.rowcount)


def _lock_key(notification_id: str) -> int:
    """A signed 64-bit advisory-lock key for the notification's completion check."""
    return int.from_bytes(hashlib.sha256(b"completed:" + notification_id.encode()).digest()[:8], "big",
                          signed=True)


def _service(notification_id: str) -> str:
    return notification_id.partition("#")[0]


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _endpoint(row: Any) -> WebhookEndpoint:
    return WebhookEndpoint(row.service, row.url, tuple(row.events), row.secret, row.created_at,
                           row.updated_at)


def _entry(row: Any) -> OutboxEntry:
    return OutboxEntry(row.id, row.service, row.event, row.payload, row.status, row.attempts,
                       row.next_attempt_at, row.last_error, row.created_at, row.updated_at)
