"""The delivery ledger: one row per (notification, user, channel), and the claims on it.

How the ledger turns at-least-once queue delivery into exactly-once sending:

* :meth:`LedgerStore.open_chunk` writes a chunk's rows in one transaction: skipped and failed
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
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.model import DeliveryStatus, Reason
from dispatcher.store.database import Database, now_us
from dispatcher.store.feed import FeedEntry, FeedStore
from dispatcher.store.schema import deliveries

__all__ = ["LedgerStore", "Outcome", "Planned", "Unfinished"]

Key = tuple[str, str]  # (user_id, channel)
_PENDING, _SENDING = DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value


@dataclass(frozen=True)
class Planned:
    """The state a row should take when this chunk wins it."""

    user_id: str
    channel: str
    status: str
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Outcome:
    """The result of one send, recorded by the claim holder."""

    user_id: str
    channel: str
    status: str
    reason: str | None = None
    detail: str | None = None
    provider_message_id: str | None = None


@dataclass(frozen=True)
class Unfinished:
    user_id: str
    channel: str
    status: str
    version: int
    claim_token: str | None
    claimed_at: int | None


class LedgerStore:
    def __init__(self, db: Database, feed: FeedStore) -> None:
        self._db = db
        self._feed = feed

    async def open_chunk(
        self, notification_id: str, version: int, planned: Sequence[Planned], *,
        insert: frozenset[str], reset: frozenset[str], feed: dict[str, FeedEntry],
    ) -> set[Key]:
        """Write the chunk's rows; return the keys this call won.

        ``insert``: channels whose missing rows are created. ``reset``: channels whose rows
        at an older version are taken over by this version. ``feed``: the in-app entry per
        user, written for the in-app rows won, in the same transaction."""
        async with self._db.write() as conn:
            return await self.open_chunk_in(conn, notification_id, version, planned,
                                            insert=insert, reset=reset, feed=feed)

    async def open_chunk_in(
        self, conn: AsyncConnection, notification_id: str, version: int,
        planned: Sequence[Planned], *, insert: frozenset[str], reset: frozenset[str],
        feed: dict[str, FeedEntry],
    ) -> set[Key]:
        """:meth:`open_chunk` inside the caller's write transaction."""
        now = now_us()
        won = await self._insert(conn, notification_id, version, planned, insert, now)
        rest = [p for p in planned if (p.user_id, p.channel) not in won]
        won |= await self._take_over(conn, notification_id, version, rest, reset, now)
        await self._feed.write(conn, [feed[u] for (u, c) in won if c == "in_app" and u in feed])
        return won

    async def _insert(
        self, conn: AsyncConnection, nid: str, version: int, planned: Sequence[Planned],
        channels: frozenset[str], now: int,
    ) -> set[Key]:
        rows = [_row(nid, version, p, now) for p in planned if p.channel in channels]
        if not rows:
            return set()
        stmt = (self._db.insert(deliveries).on_conflict_do_nothing()
                .returning(deliveries.c.user_id, deliveries.c.channel))
        return {(r.user_id, r.channel) for r in await conn.execute(stmt, rows)}

    async def _take_over(
        self, conn: AsyncConnection, nid: str, version: int, planned: Sequence[Planned],
        reset: frozenset[str], now: int,
    ) -> set[Key]:
        groups: dict[tuple[str, str, str | None, str | None], list[str]] = defaultdict(list)
        for p in planned:
            groups[(p.channel, p.status, p.reason, p.detail)].append(p.user_id)
        won: set[Key] = set()
        for (channel, status, reason, detail), user_ids in groups.items():
            takeable = sa.and_(deliveries.c.version == version, deliveries.c.status == _PENDING)
            if channel in reset:
                takeable = sa.or_(takeable, sa.and_(deliveries.c.version < version,
                                                    deliveries.c.status != _SENDING))
            stmt = (
                deliveries.update()
                .where(deliveries.c.notification_id == nid, deliveries.c.channel == channel,
                       deliveries.c.user_id.in_(user_ids), takeable)
                .values(
                    status=status, reason=reason, detail=detail, version=version,
                    attempts=sa.case((deliveries.c.version == version, deliveries.c.attempts),
                                     else_=0),
                    provider_message_id=None, claim_token=None, claimed_at=None, updated_at=now,
                )
                .returning(deliveries.c.user_id)
            )
            won |= {(r.user_id, channel) for r in await conn.execute(stmt)}
        return won

    async def record(self, notification_id: str, outcomes: Sequence[Outcome], token: str) -> None:
        """Record outcomes of sends this token claimed; ``pending`` releases a row for a retry."""
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
            {"b_nid": notification_id, "b_user": o.user_id, "b_channel": o.channel,
             "b_token": token, "b_status": o.status, "b_reason": o.reason,
             "b_detail": _clip(o.detail), "b_provider_id": o.provider_message_id, "b_now": now}
            for o in outcomes
        ]
        async with self._db.write() as conn:
            await conn.execute(stmt, params)

    async def claim(
        self, notification_id: str, version: int, keys: Iterable[Key], token: str,
    ) -> set[Key]:
        """Claim ``pending`` rows of this version for another attempt."""
        by_channel: dict[str, list[str]] = defaultdict(list)
        for user_id, channel in keys:
            by_channel[channel].append(user_id)
        won: set[Key] = set()
        now = now_us()
        async with self._db.write() as conn:
            for channel, user_ids in by_channel.items():
                result = await conn.execute(
                    deliveries.update()
                    .where(deliveries.c.notification_id == notification_id,
                           deliveries.c.channel == channel, deliveries.c.user_id.in_(user_ids),
                           deliveries.c.version == version, deliveries.c.status == _PENDING)
                    .values(status=_SENDING, claim_token=token, claimed_at=now,
                            attempts=deliveries.c.attempts + 1, updated_at=now)
                    .returning(deliveries.c.user_id)
                )
                won |= {(r.user_id, channel) for r in result}
        return won

    async def unfinished(self, notification_id: str, user_ids: Sequence[str]) -> list[Unfinished]:
        """This chunk's rows that are not final yet."""
        async with self._db.read() as conn:
            rows = (await conn.execute(
                sa.select(deliveries.c.user_id, deliveries.c.channel, deliveries.c.status,
                          deliveries.c.version, deliveries.c.claim_token, deliveries.c.claimed_at)
                .where(deliveries.c.notification_id == notification_id,
                       deliveries.c.user_id.in_(list(user_ids)),
                       deliveries.c.status.in_([_PENDING, _SENDING]))
            )).all()
        return [Unfinished(*r) for r in rows]

    async def resolve_stale(
        self, notification_id: str, keys: Iterable[Key], *, older_than: int, resend: bool,
    ) -> int:
        """Settle ``sending`` rows whose claim is older than ``older_than`` (µs since epoch)."""
        if resend:
            values = {"status": _PENDING, "detail": "claim expired; sending again"}
        else:
            values = {"status": DeliveryStatus.FAILED.value, "reason": Reason.OUTCOME_UNKNOWN.value,
                      "detail": "the worker stopped while the provider request was in flight"}
        by_channel: dict[str, list[str]] = defaultdict(list)
        for user_id, channel in keys:
            by_channel[channel].append(user_id)
        settled = 0
        async with self._db.write() as conn:
            for channel, user_ids in by_channel.items():
                result = await conn.execute(
                    deliveries.update()
                    .where(deliveries.c.notification_id == notification_id,
                           deliveries.c.channel == channel, deliveries.c.user_id.in_(user_ids),
                           deliveries.c.status == _SENDING, deliveries.c.claimed_at < older_than)
                    .values(**values, claim_token=None, claimed_at=None, updated_at=now_us())
                )
                settled += result.rowcount
        return settled


def _row(nid: str, version: int, p: Planned, now: int) -> dict[str, object]:
    return {
        "notification_id": nid, "user_id": p.user_id, "channel": p.channel, "version": version,
        "status": p.status, "reason": p.reason, "detail": _clip(p.detail), "attempts": 0,
        "provider_message_id": None, "claim_token": None, "claimed_at": None,
        "created_at": now, "updated_at": now,
    }


def _clip(detail: str | None, limit: int = 1000) -> str | None:
    return detail if detail is None or len(detail) <= limit else detail[: limit - 1] + "…"
