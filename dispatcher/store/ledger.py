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
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.model import (
    ChunkRows,
    Claim,
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

__all__ = ["LedgerEvents", "LedgerStore", "Opened"]

_PENDING, _SENDING = DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value


@dataclass(frozen=True)
class Opened:
    """What :meth:`LedgerStore.open` did: the keys each chunk won (in the order of the chunks),
    and the won rows it claimed for the caller's first sends."""

    won: list[set[RowKey]]
    claimed: dict[RowKey, int]  # key -> the version claimed


@dataclass
class _Current:
    version: int
    status: str
    attempts: int


class LedgerEvents(Protocol):
    """Told of each ledger change inside its transaction (the webhook outbox)."""

    async def after_rows(self, conn: AsyncConnection, keys: Sequence[RowKey],
                         changed_at: int | None) -> None: ...


class LedgerStore:
    """Every method is a fixed number of statements, whatever the number of rows or
    notifications: a unit of work of 64 small notifications holds the write lock for a few
    statements, not a few hundred (measured: SQLite's one writer was what small traffic
    queued on)."""

    def __init__(self, db: Database, notifications: NotificationStore, feed: FeedStore) -> None:
        self._db = db
        self._notifications = notifications
        self._feed = feed

    #: Set by the store: webhooks caused by a change are written in its transaction.
    events: LedgerEvents | None = None

    async def open(self, headers: Sequence[HeaderUpdate], chunks: Sequence[ChunkRows],
                   claim: Claim | None = None) -> Opened:
        """One unit of work: upsert ``headers``, write every chunk's rows and the feed entries
        of the in-app rows won, in one transaction; with ``claim``, also claim (``sending``)
        up to ``claim.limit`` of the won rows to send, for ``claim.token``.

        Every chunk's missing rows are inserted first (one statement); then the chunks take
        over rows in order, each seeing what the inserts and the earlier chunks did: an update
        in the same batch as its notification takes over the notification's new rows."""
        async with self._db.write() as conn:
            await self._notifications.upsert_many_in(conn, headers)
            now = now_us()
            inserted = await self._insert(conn, chunks, now)
            current = await self._current(conn, chunks, inserted)
            won, changes = _take_over(chunks, inserted, current)
            await self._apply(conn, changes, now)
            to_claim = _claimable(chunks, won, current, claim)
            await self._claim_in(conn, to_claim, claim, now)
            claimed = {key: current[key].version for key in to_claim}
            entries = [chunk.feed[k.user_id] for chunk, keys in zip(chunks, won, strict=True)
                       for k in keys if k.channel == "in_app" and k.user_id in chunk.feed]
            await self._feed.write(conn, entries)
            if self.events is not None:
                await self.events.after_rows(conn, [k for keys in won for k in keys], now)
        return Opened(won, claimed)

    async def _insert(self, conn: AsyncConnection, chunks: Sequence[ChunkRows],
                      now: int) -> dict[RowKey, int]:
        """Insert the missing rows of the chunks' ``insert`` channels in one statement;
        return each inserted key with the index of the chunk that inserted it."""
        first: dict[RowKey, tuple[int, dict[str, object]]] = {}
        for index, chunk in enumerate(chunks):
            for r in chunk.rows:
                if r.key.channel in chunk.insert and r.key not in first:
                    first[r.key] = (index, _row(chunk.version, r, now))
        if not first:
            return {}
        stmt = (self._db.insert(deliveries).on_conflict_do_nothing()
                .returning(deliveries.c.notification_id, deliveries.c.user_id, deliveries.c.channel))
        rows = await conn.execute(stmt, [values for _, values in first.values()])
        return {key: first[key][0] for key in (RowKey(*r) for r in rows)}

    async def _current(self, conn: AsyncConnection, chunks: Sequence[ChunkRows],
                       inserted: dict[RowKey, int]) -> dict[RowKey, _Current]:
        """The rows the chunks may take over, as they stand (locked on PostgreSQL; SQLite's
        writer holds the whole file)."""
        keys = {r.key for c in chunks for r in c.rows if r.key not in inserted}
        current: dict[RowKey, _Current] = {}
        if not keys:
            return current
        # By notification and user, not by (notification, user, channel) tuples: both engines
        # walk the primary key for this, where a long list of row values made PostgreSQL plan
        # thousands of ORs (an update of a 10,000-recipient bulk took 47 s instead of 6).
        # Rows of other (notification, user) pairs of the batch are read and left out here.
        nids = sorted({k.notification_id for k in keys})
        users = sorted({k.user_id for k in keys})
        for start in range(0, len(users), _IN_BATCH):
            rows = await conn.execute(
                sa.select(deliveries.c.notification_id, deliveries.c.user_id, deliveries.c.channel,
                          deliveries.c.version, deliveries.c.status, deliveries.c.attempts)
                .where(deliveries.c.notification_id.in_(nids),
                       deliveries.c.user_id.in_(users[start:start + _IN_BATCH]))
                .with_for_update())
            for r in rows:
                key = RowKey(r.notification_id, r.user_id, r.channel)
                if key in keys:
                    current[key] = _Current(r.version, r.status, r.attempts)
        return current

    async def _apply(self, conn: AsyncConnection, changes: dict[RowKey, dict[str, object]],
                     now: int) -> None:
        if not changes:
            return
        stmt = (deliveries.update().where(*_by_key())
                .values(status=sa.bindparam("b_status"), reason=sa.bindparam("b_reason"),
                        detail=sa.bindparam("b_detail"), version=sa.bindparam("b_version"),
                        attempts=sa.bindparam("b_attempts"), provider_message_id=None,
                        claim_token=None, claimed_at=None, updated_at=now))
        await conn.execute(stmt, [{**_key_params(k), **v} for k, v in changes.items()])

    async def _claim_in(self, conn: AsyncConnection, keys: list[RowKey], claim: Claim | None,
                        now: int) -> None:
        """Claim rows this transaction holds ``pending``: no one else can have them."""
        if claim is None or not keys:
            return
        stmt = (deliveries.update().where(*_by_key(), deliveries.c.status == _PENDING)
                .values(status=_SENDING, claim_token=claim.token, claimed_at=now,
                        attempts=deliveries.c.attempts + 1, updated_at=now))
        await conn.execute(stmt, [_key_params(k) for k in keys])

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
            if self.events is not None:
                await self.events.after_rows(conn, [o.key for o, _ in outcomes], now)

    async def claim(self, rows: Iterable[tuple[RowKey, int]], token: str) -> set[RowKey]:
        """Claim ``pending`` rows at the given versions for a send; return those won."""
        groups: dict[tuple[str, int, str], list[str]] = defaultdict(list)
        for key, version in dict.fromkeys(rows):
            groups[(key.notification_id, version, key.channel)].append(key.user_id)
        if not groups:
            return set()
        # One statement: per (notification, version, channel) the users, on the primary key.
        matches = [sa.and_(deliveries.c.notification_id == nid, deliveries.c.version == version,
                           deliveries.c.channel == channel, deliveries.c.user_id.in_(users))
                   for (nid, version, channel), users in groups.items()]
        now = now_us()
        async with self._db.write() as conn:
            result = await conn.execute(
                deliveries.update()
                .where(sa.or_(*matches), deliveries.c.status == _PENDING)
                .values(status=_SENDING, claim_token=token, claimed_at=now,
                        attempts=deliveries.c.attempts + 1, updated_at=now)
                .returning(deliveries.c.notification_id, deliveries.c.user_id, deliveries.c.channel))
            return {RowKey(*r) for r in result}

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
        settled, now = 0, now_us()
        async with self._db.write() as conn:
            for (nid, channel), user_ids in groups.items():
                result = await conn.execute(
                    deliveries.update()
                    .where(deliveries.c.notification_id == nid,
                           deliveries.c.channel == channel, deliveries.c.user_id.in_(user_ids),
                           deliveries.c.status == _SENDING, deliveries.c.claimed_at < older_than)
                    .values(**values, claim_token=None, claimed_at=None, updated_at=now)
                )
                settled += result.rowcount
            if self.events is not None:
                await self.events.after_rows(
                    conn, [RowKey(n, u, c) for (n, c), us in groups.items() for u in us], now)
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


#: Keys per ``IN (…)`` list: well under SQLite's 32,766 variables at four per key.
_IN_BATCH = 2000


def _by_key() -> tuple[sa.ColumnElement[bool], ...]:
    return (deliveries.c.notification_id == sa.bindparam("b_nid"),
            deliveries.c.user_id == sa.bindparam("b_user"),
            deliveries.c.channel == sa.bindparam("b_channel"))


def _key_params(key: RowKey) -> dict[str, object]:
    return {"b_nid": key.notification_id, "b_user": key.user_id, "b_channel": key.channel}


def _take_over(chunks: Sequence[ChunkRows], inserted: dict[RowKey, int],
               current: dict[RowKey, _Current]) -> tuple[list[set[RowKey]], dict[RowKey, dict[str, object]]]:
    """Which rows each chunk wins, in order, and the final values of the rows taken over.

    A chunk wins a row it inserted, or a row that is ``pending`` at its version, or (for its
    ``reset`` channels) a row at an older version that is not in flight. ``current`` holds
    the inserted rows first, then is updated as the chunks win rows."""
    for index, chunk in enumerate(chunks):
        for r in chunk.rows:
            if inserted.get(r.key) == index:
                current[r.key] = _Current(chunk.version, r.status.value, 0)
    won: list[set[RowKey]] = []
    changes: dict[RowKey, dict[str, object]] = {}
    for index, chunk in enumerate(chunks):
        keys: set[RowKey] = set()
        for r in chunk.rows:
            if inserted.get(r.key) == index:
                keys.add(r.key)
                continue
            cur = current.get(r.key)
            if cur is None or not _takeable(cur, chunk, r.key.channel):
                continue
            attempts = cur.attempts if cur.version == chunk.version else 0
            current[r.key] = _Current(chunk.version, r.status.value, attempts)
            changes[r.key] = {"b_status": r.status.value, "b_reason": _str(r.reason),
                              "b_detail": _clip(r.detail), "b_version": chunk.version,
                              "b_attempts": attempts}
            keys.add(r.key)
        won.append(keys)
    return won, changes


def _takeable(cur: _Current, chunk: ChunkRows, channel: str) -> bool:
    if cur.version == chunk.version and cur.status == _PENDING:
        return True
    return channel in chunk.reset and cur.version < chunk.version and cur.status != _SENDING


def _claimable(chunks: Sequence[ChunkRows], won: list[set[RowKey]],
               current: dict[RowKey, _Current], claim: Claim | None) -> list[RowKey]:
    """The won rows still ``pending`` at their chunk's version after every chunk applied,
    in order, up to the claim's limit (0: none, the sender has no slot free)."""
    if claim is None or claim.limit <= 0:
        return []
    keys: list[RowKey] = []
    for chunk, chunk_won in zip(chunks, won, strict=True):
        for r in chunk.rows:
            cur = current.get(r.key)
            if (r.key in chunk_won and r.status == DeliveryStatus.PENDING and cur is not None
                    and cur.version == chunk.version and cur.status == _PENDING
                    and r.key not in keys):
                keys.append(r.key)
                if len(keys) >= claim.limit:
                    return keys
    return keys
