"""Notification headers (one row per id, carrying the latest version) and their ledger views."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.model import CHANNELS, DeliveryStatus, HeaderUpdate, NotificationHeader, now_us
from dispatcher.pagination import decode_cursor, encode_cursor
from dispatcher.store.database import Database
from dispatcher.store.schema import deliveries, notifications

__all__ = ["NotificationStore"]


class NotificationStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Built once: every gateway commit runs these two (SQLAlchemy then finds them compiled
        # by their memoised cache key instead of building and keying new statements each time).
        self._insert_new = db.insert_rows(
            notifications, _INSERTED, lambda insert: insert.on_conflict_do_nothing(
                index_elements=[notifications.c.id]).returning(notifications.c.id))
        # Only the columns folding needs (``_changes``): not the data, which can be large and
        # which a newer version replaces whole.
        self._lock_headers = db.direct(_locking(*(notifications.c[c] for c in _DECIDING)))
        self._cancelled_of = db.direct(_locking(notifications.c.id, notifications.c.cancelled_at))
        # The headers a commit changes: a newer version rewrites every column an update can
        # change (all known from the updates folded); an older or equal one only widens.
        self._replace_headers = db.direct(_update(_FOLDED))
        self._widen_headers = db.direct(_update(_WIDENED))

    async def upsert(self, update: HeaderUpdate) -> None:
        await self.upsert_many([update])

    async def upsert_many(self, updates: Sequence[HeaderUpdate]) -> None:
        """Apply ``updates`` in one transaction: a higher version replaces state and data; any
        version widens the channel set and the recipient count. Order of arrival does not
        matter, within the batch or across batches."""
        if not updates:
            return
        async with self._db.write() as conn:
            await self.upsert_many_in(conn, updates)

    async def upsert_many_in(self, conn: AsyncConnection,
                             updates: Sequence[HeaderUpdate]) -> set[str]:
        """:meth:`upsert_many` inside the caller's write transaction; the headers stay locked
        (PostgreSQL) until it ends. Returns the ids already cancelled: those are not changed.

        The headers are read (locked) first, then the missing ones inserted from their first
        update: a worker's headers, which the gateway wrote, cost one read; a gateway's new
        ones a read that finds nothing and the insert. One inserted meanwhile by another
        transaction (PostgreSQL) is read again, after its insert waited for it."""
        if not updates:
            return set()
        now = now_us()
        by_id: dict[str, list[HeaderUpdate]] = defaultdict(list)
        for u in updates:
            by_id[u.id].append(u)
        rows = await self._lock_in(conn, list(by_id))
        missing = {nid: _insert_values(by_id[nid][0], now) for nid in sorted(by_id) if nid not in rows}
        if missing:
            made = {row["id"] for row in await self._insert_new.returned(conn, list(missing.values()))}
            for nid in made:
                rows[nid] = _deciding(missing[nid])
                by_id[nid] = by_id[nid][1:]
            rows.update(await self._lock_in(conn, [nid for nid in missing if nid not in made]))
        cancelled = {nid for nid in by_id if rows[nid]["cancelled_at"] is not None}
        replaced: list[dict[str, Any]] = []
        widened: list[dict[str, Any]] = []
        for nid, of_id in by_id.items():
            if nid in cancelled:
                continue
            row = rows[nid]
            version = row["version"]
            if not _folded(row, of_id):
                continue
            newer = row["version"] > version
            (replaced if newer else widened).append(
                {"b_id": nid, "b_now": now, **{f"b_{c}": row[c] for c in (_FOLDED if newer else _WIDENED)}})
        await self._replace_headers.many(conn, replaced)
        await self._widen_headers.many(conn, widened)
        return cancelled

    async def _lock_in(self, conn: AsyncConnection, ids: list[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        return {r["id"]: r for r in await self._lock_headers.rows(conn, {"ids": ids})}

    async def lock_cancelled_in(self, conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
        """Lock the headers of ``ids`` (PostgreSQL; SQLite has one writer) for the caller's
        transaction, so a cancel waits for it or it for the cancel; return the cancelled ones."""
        if not ids:
            return set()
        rows = await self._cancelled_of.rows(conn, {"ids": sorted(set(ids))})
        return {r["id"] for r in rows if r["cancelled_at"] is not None}

    async def get(self, notification_id: str) -> NotificationHeader | None:
        async with self._db.read() as conn:
            row = (await conn.execute(
                sa.select(notifications).where(notifications.c.id == notification_id)
            )).one_or_none()
        return None if row is None else _header(row, {})

    async def counts(self, header: NotificationHeader) -> dict[str, dict[str, int]]:
        """Per channel: pending (including not yet fanned out), sent, failed, skipped; and
        what the provider told after ``sent``: delivered, bounced, complained. ``sent``
        counts every row the provider accepted, those three included (they are sub-states
        of sent), so pending + sent + failed + skipped is the number of recipients. Once
        the notification is cancelled, the rows never made count as skipped: only the sends
        in flight at the cancel are still pending."""
        async with self._db.read() as conn:
            return await self.counts_in(conn, header)

    async def counts_in(self, conn: AsyncConnection, header: NotificationHeader) -> dict[str, dict[str, int]]:
        """:meth:`counts` inside the caller's transaction."""
        rows = (await conn.execute(
            sa.select(deliveries.c.channel, deliveries.c.status, sa.func.count())
            .where(deliveries.c.notification_id == header.id)
            .group_by(deliveries.c.channel, deliveries.c.status)
        )).all()
        counts = {c: _empty_counts() for c in CHANNELS if c in header.channels}
        open_rows: dict[str, int] = {}
        for channel, status, n in rows:
            bucket = counts.setdefault(channel, _empty_counts())
            if status in _AFTER_SENT:
                bucket[status] += n
                bucket["sent"] += n
            elif status in (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED):
                bucket[status] += n
            else:
                open_rows[channel] = open_rows.get(channel, 0) + n
        for channel, bucket in counts.items():
            final = bucket["sent"] + bucket["failed"] + bucket["skipped"]
            bucket["pending"] = max(header.recipients - final, 0)
            if header.cancelled_at is not None:
                in_flight = min(open_rows.get(channel, 0), bucket["pending"])
                bucket["skipped"] += bucket["pending"] - in_flight
                bucket["pending"] = in_flight
        return counts

    async def get_in(self, conn: AsyncConnection, notification_id: str) -> NotificationHeader | None:
        """:meth:`get` inside the caller's transaction."""
        row = (await conn.execute(
            sa.select(notifications).where(notifications.c.id == notification_id)
        )).one_or_none()
        return None if row is None else _header(row, {})

    async def deliveries(
        self, notification_id: str, *, limit: int, cursor: str | None = None,
        status: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Ledger rows ordered by (user, channel), ``limit`` at a time."""
        query = sa.select(deliveries).where(deliveries.c.notification_id == notification_id)
        if status is not None:
            query = query.where(deliveries.c.status == status)
        if cursor:
            user_id, channel = decode_cursor(cursor, 2)
            query = query.where(sa.or_(
                deliveries.c.user_id > user_id,
                sa.and_(deliveries.c.user_id == user_id, deliveries.c.channel > channel),
            ))
        query = query.order_by(deliveries.c.user_id, deliveries.c.channel).limit(limit + 1)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
        page = [dict(r._mapping) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = encode_cursor(page[-1]["user_id"], page[-1]["channel"])
        return page, next_cursor


_AFTER_SENT = (DeliveryStatus.DELIVERED, DeliveryStatus.BOUNCED, DeliveryStatus.COMPLAINED)


def _empty_counts() -> dict[str, int]:
    return {"pending": 0, "sent": 0, "delivered": 0, "bounced": 0, "complained": 0, "failed": 0,
            "skipped": 0}


def _insert_values(u: HeaderUpdate, now: int) -> dict[str, Any]:
    return {"id": u.id, "service": u.service, "version": u.version, "template": u.template,
            "data": u.data, "state": u.state, "category": u.category, "locale": u.locale,
            "channels": _union((), u.channels), "recipients": u.recipients, "created_at": now,
            "updated_at": now, "send_at": u.send_at}


#: The columns a header is inserted with (``_insert_values``).
_INSERTED = ("id", "service", "version", "template", "data", "state", "category", "locale",
             "channels", "recipients", "created_at", "updated_at", "send_at")
#: The header columns an update can change (``_changes``).
_FOLDED = ("channels", "recipients", "version", "template", "data", "state", "category",
           "locale", "send_at")
#: Those an update of an older or the same version can change.
_WIDENED = ("channels", "recipients")
#: The columns that decide what an update changes.
_DECIDING = ("id", "version", "channels", "recipients", "cancelled_at")


def _deciding(values: dict[str, Any]) -> dict[str, Any]:
    return {c: values.get(c) for c in _DECIDING}


def _update(columns: Sequence[str]) -> sa.Update:
    return (notifications.update().where(notifications.c.id == sa.bindparam("b_id"))
            .values({**{c: sa.bindparam(f"b_{c}") for c in columns}, "updated_at": sa.bindparam("b_now")}))


def _locking(*columns: Any) -> sa.Select[Any]:
    """``columns`` of the headers ``ids``, locked (PostgreSQL) in id order for the caller's
    transaction."""
    return (sa.select(*columns).where(notifications.c.id.in_(sa.bindparam("ids", expanding=True)))
            .order_by(notifications.c.id).with_for_update())


def _folded(row: dict[str, Any], updates: list[HeaderUpdate]) -> bool:
    """Apply ``updates`` to ``row`` one after another; whether any changed it."""
    changed = False
    for update in updates:
        step = _changes(row, update)
        row.update(step)
        changed = changed or bool(step)
    return changed


def _changes(row: dict[str, Any], update: HeaderUpdate) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    channels = _union(row["channels"], update.channels)
    if channels != list(row["channels"]):
        changes["channels"] = channels
    if update.recipients > row["recipients"]:
        changes["recipients"] = update.recipients
    if update.version > row["version"]:
        changes.update(version=update.version, template=update.template, data=update.data,
                       state=update.state, category=update.category, locale=update.locale,
                       send_at=update.send_at)
    return changes


def _union(current: Iterable[str], more: Iterable[str]) -> list[str]:
    present = set(current) | set(more)
    return [c for c in CHANNELS if c in present]


def _header(row: Any, changes: dict[str, Any]) -> NotificationHeader:
    values = {**row._mapping, **changes}
    values["channels"] = tuple(values["channels"])
    return NotificationHeader(**values)
