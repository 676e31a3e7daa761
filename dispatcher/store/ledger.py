"""The delivery ledger: one row per (notification, user, channel), and the claims on it.

How the ledger turns at-least-once queue delivery into exactly-once sending:

* :meth:`LedgerStore.open` writes the rows of one or many chunks (of one or many
  notifications) in one transaction, with their notifications' headers: skipped and failed
  rows final, in-app rows ``sent`` together with their feed entry, rows to send ``pending``.
  A row is *won* when the call inserted it, moved it from an older version (an update that
  re-sends), or found it ``pending`` at this version.
* :meth:`claim` turns ``pending`` rows into ``sending`` with the caller's token, right before
  the caller sends them; only one caller wins each row. The claim holder records the outcome
  right after (:meth:`record`), so a redelivered chunk finds the row final and sends nothing.
* A crash between the provider accepting a message and :meth:`record` leaves a ``sending``
  row behind: only the rows claimed and not yet recorded, which the sender keeps to a small
  window. :meth:`resolve_stale` settles rows whose claim is older than the lease: as
  ``failed``/``outcome_unknown`` (never a duplicate) or back to ``pending`` (never a loss).
"""


from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.model import (
    ChunkRows,
    DeliveryStatus,
    HeaderUpdate,
    Reason,
    RowKey,
    RowState,
    Unfinished,
    now_us,
)
from dispatcher.store.database import Database
from dispatcher.store.feed import FeedStore
from dispatcher.store.notifications import NotificationStore
from dispatcher.store.schema import deliveries

__all__ = ["LedgerStore"]

_PENDING, _SENDING = DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value


class LedgerStore:
    def __init__(self, db: Database, notifications: NotificationStore, feed: FeedStore) -> None:
        self._db = db
        self._notifications = notifications
        self._feed = feed

    async def open(self, headers: Sequence[HeaderUpdate],
                   chunks: Sequence[ChunkRows]) -> list[set[RowKey]]:
        """One unit of work: upsert ``headers``, write every chunk's rows and the feed entries
        of the in-app rows won, in one transaction. Returns the keys each chunk won, in the
        order of ``chunks``."""
        async with self._db.write() as conn:
            await self._notifications.upsert_many_in(conn, headers)
            now = now_us()
            won = [await self._open_chunk(conn, chunk, now) for chunk in chunks]
            entries = [chunk.feed[k.user_id] for chunk, keys in zip(chunks, won, strict=True) for k in keys
                       if k.channel == "in_app" and k.user_id in chunk.feed]
            await self._feed.write(conn, entries)
        return won

    async def _open_chunk(self, conn: AsyncConnection, chunk: ChunkRows, now: int) -> set[RowKey]:
        won = await self._insert(conn, chunk, now)
        rest = [r for r in chunk.rows if r.key not in won]
        return won | await self._take_over(conn, chunk, rest, now)

    async def _insert(self, conn: AsyncConnection, chunk: ChunkRows, now: int) -> set[RowKey]:
        rows = [_row(chunk.version, r, now) for r in chunk.rows if r.key.channel in chunk.insert]
        if not rows:
            return set()
        stmt = (self._db.insert(deliveries).on_conflict_do_nothing()
                .returning(deliveries.c.user_id, deliveries.c.channel))
        nid = chunk.notification_id
        return {RowKey(nid, r.user_id, r.channel) for r in await conn.execute(stmt, rows)}

    async def _take_over(self, conn: AsyncConnection, chunk: ChunkRows,
                         rows: Sequence[RowState], now: int) -> set[RowKey]:
        """Rows that exist already: won when ``pending`` at this version, or (for channels in
        ``reset``) at an older version and not in flight."""
        groups: dict[tuple[str, str, str | None, str | None], list[str]] = defaultdict(list)
        for r in rows:
            groups[(r.key.channel, r.status.value, _str(r.reason), r.detail)].append(r.key.user_id)
        won: set[RowKey] = set()
        nid, version = chunk.notification_id, chunk.version
        for (channel, status, reason, detail), user_ids in groups.items():
            takeable = sa.and_(deliveries.c.version == version, deliveries.c.status == _PENDING)
            if channel in chunk.reset:
                takeable = sa.or_(takeable, sa.and_(deliveries.c.version < version,
                                                    deliveries.c.status != _SENDING))
            stmt = (
                deliveries.update()
                .where(deliveries.c.notification_id == nid, deliveries.c.channel == channel,
                       deliveries.c.user_id.in_(user_ids), takeable)
                .values(
                    status=status, reason=reason, detail=_clip(detail), version=version,
                    attempts=sa.case((deliveries.c.version == version, deliveries.c.attempts),
                                     else_=0),
                    provider_message_id=None, claim_token=None, claimed_at=None, updated_at=now,
                )
                .returning(deliveries.c.user_id)
            )
            won |= {RowKey(nid, r.user_id, channel) for r in await conn.execute(stmt)}
        return won

    async def record(self, outcomes: Sequence[tuple[RowState, str]]) -> None:
        """Record outcomes of sends, each with the token that claimed its row; ``pending``
        releases a row for a retry. Rows of any notifications, in one transaction."""
        if not outcomes:
            return
        stmt = (
            deliveries.update()
            .where(deliveries.c.notification_id == sa.bindparam("b_nid"),
                   deliveries.c.user_id == sa.bindparam("b_user"),
                   deliveries.c.channel == sa.bindparam("b_channel"),
                   deliveries.c.claim_token == sa.bindparam("b_token"),
                   deliveries.c.status == _SENDING)
            .values(status=sa.bindparam("b_status"), reason=sa.bindparam("b_reason"),
                    detail=sa.bindparam("b_detail"),
                    provider_message_id=sa.bindparam("b_provider_id"),
                    claim_token=None, claimed_at=None, updated_at=sa.bindparam("b_now"))
        )
        now = now_us()
        params = [
            {"b_nid": o.key.notification_id, "b_user": o.key.user_id, "b_channel": o.key.channel,
             "b_token": token, "b_status": o.status.value, "b_reason": _str(o.reason),
             "b_detail": _clip(o.detail), "b_provider_id": o.provider_message_id, "b_now": now}
            for o, token in outcomes
        ]
        async with self._db.write() as conn:
            await conn.execute(stmt, params)

    async def claim(self, rows: Iterable[tuple[RowKey, int]], token: str) -> set[RowKey]:
        """Claim ``pending`` rows at the given versions for a send; return those won."""
        groups: dict[tuple[str, int, str], list[str]] = defaultdict(list)
        for key, version in rows:
            groups[(key.notification_id, version, key.channel)].append(key.user_id)
        won: set[RowKey] = set()
        now = now_us()
        async with self._db.write() as conn:
            for (nid, version, channel), user_ids in groups.items():
                result = await conn.execute(
                    deliveries.update()
                    .where(deliveries.c.notification_id == nid,
                           deliveries.c.channel == channel, deliveries.c.user_id.in_(user_ids),
                           deliveries.c.version == version, deliveries.c.status == _PENDING)
                    .values(status=_SENDING, claim_token=token, claimed_at=now,
                            attempts=deliveries.c.attempts + 1, updated_at=now)
                    .returning(deliveries.c.user_id)
                )
                won |= {RowKey(nid, r.user_id, channel) for r in result}
        return won

    async def unfinished(self, notification_id: str, user_ids: Sequence[str]) -> list[Unfinished]:
        """These users' rows of the notification that are not final yet."""
        async with self._db.read() as conn:
            rows = (await conn.execute(
                sa.select(deliveries.c.user_id, deliveries.c.channel, deliveries.c.status,
                          deliveries.c.version, deliveries.c.claimed_at)
                .where(deliveries.c.notification_id == notification_id,
                       deliveries.c.user_id.in_(list(user_ids)),
                       deliveries.c.status.in_([_PENDING, _SENDING]))
            )).all()
        return [Unfinished(RowKey(notification_id, r.user_id, r.channel),
                           DeliveryStatus(r.status), r.version, r.claimed_at) for r in rows]

    async def resolve_stale(self, keys: Iterable[RowKey], *, older_than: int, resend: bool) -> int:
        """Settle ``sending`` rows whose claim is older than ``older_than`` (µs since epoch)."""
        if resend:
            values = {"status": _PENDING, "detail": "claim expired; sending again"}
        else:
            values = {"status": DeliveryStatus.FAILED.value, "reason": Reason.OUTCOME_UNKNOWN.value,
                      "detail": "the worker stopped while the provider request was in flight"}
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for key in keys:
            groups[(key.notification_id, key.channel)].append(key.user_id)
        settled = 0
        async with self._db.write() as conn:
            for (nid, channel), user_ids in groups.items():
                result = await conn.execute(
                    deliveries.update()
                    .where(deliveries.c.notification_id == nid,
                           deliveries.c.channel == channel, deliveries.c.user_id.in_(user_ids),
                           deliveries.c.status == _SENDING, deliveries.c.claimed_at < older_than)
                    .values(**values, claim_token=None, claimed_at=None, updated_at=now_us())
                )
                settled += result.rowcount
        return settled


def _row(version: int, r: RowState, now: int) -> dict[str, object]:
    return {
        "notification_id": r.key.notification_id, "user_id": r.key.user_id,
        "channel": r.key.channel, "version": version, "status": r.status.value,
        "reason": _str(r.reason), "detail": _clip(r.detail), "attempts": 0,
        "provider_message_id": None, "claim_token": None, "claimed_at": None,
        "created_at": now, "updated_at": now,
    }


def _str(reason: Reason | None) -> str | None:
    return None if reason is None else str(reason)


def _clip(detail: str | None, limit: int = 1000) -> str | None:
    return detail if detail is None or len(detail) <= limit else detail[: limit - 1] + "…"
