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
* :meth:`cancel` (the service cancels a notification): its ``pending`` rows become
  ``skipped``/``cancelled`` and its held (scheduled) messages are dropped, in one transaction
  that holds the header, so every unit of work touching the notification runs wholly before
  or wholly after it. After it, chunks still on the queue open their rows as cancelled (no
  in-app entry appears), a row released for a retry is cancelled instead of sent, and rows
  in flight finish and are recorded as they really ended: a cancel and a send never both win.
* A crash between the provider accepting a message and :meth:`record` leaves a ``sending``
  row behind: only the rows claimed and not yet recorded, which the sender keeps to a small
  window. :meth:`resolve_stale` settles rows whose claim is older than the lease: as
  ``failed``/``outcome_unknown`` (never a duplicate) or back to ``pending`` (never a loss).
"""


from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.frequency import Cap
from dispatcher.model import (
    CancelSummary,
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
from dispatcher.store.schedule import ScheduleStore
from dispatcher.store.schema import deliveries, frequency_log, notifications

__all__ = ["LedgerEvents", "LedgerStore", "Opened"]

_PENDING, _SENDING = DeliveryStatus.PENDING.value, DeliveryStatus.SENDING.value


@dataclass(frozen=True)
class Opened:
    """What :meth:`LedgerStore.open` did: the keys each chunk won (in the order of the chunks),
    and the won rows it claimed for the caller's first sends."""

    won: list[set[RowKey]]
    claimed: dict[RowKey, int]  # key -> the version claimed
    cancelled: frozenset[str] = frozenset()  # notifications whose rows opened as cancelled
    #: per chunk, its rows as written: a cancel or a frequency cap may have changed what the
    #: caller planned (skipped/cancelled, skipped/rate_limited)
    rows: list[list[RowState]] | None = None
    #: per chunk, the rows of its ``reset`` channels it could not take over because an older
    #: version was sending them: the caller takes them over once that send is recorded
    in_flight: list[set[RowKey]] | None = None


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

    def __init__(self, db: Database, notifications: NotificationStore, feed: FeedStore,
                 schedule: ScheduleStore) -> None:
        self._db = db
        self._notifications = notifications
        self._feed = feed
        self._schedule = schedule
        # The statements of every unit of work, built once: SQLAlchemy then finds each one
        # compiled by its memoised cache key instead of building and keying it again per call
        # (a few hundred µs each, with SQLite's one write lock held).
        # One constant statement whatever the number of rows (on PostgreSQL, from unnest).
        self._insert_rows = db.insert_rows(
            deliveries, [c.name for c in deliveries.columns],
            lambda insert: insert.on_conflict_do_nothing().returning(
                deliveries.c.notification_id, deliveries.c.user_id, deliveries.c.channel))
        # On SQLite, these run straight on its connection (dispatcher.store.direct).
        self._current_rows = db.direct(
            sa.select(deliveries.c.notification_id, deliveries.c.user_id, deliveries.c.channel,
                      deliveries.c.version, deliveries.c.status, deliveries.c.attempts)
            .where(deliveries.c.notification_id.in_(sa.bindparam("nids", expanding=True)),
                   deliveries.c.user_id.in_(sa.bindparam("users", expanding=True)))
            .with_for_update())
        self._take_over_rows = db.direct(
            deliveries.update().where(*_by_key())
            .values(status=sa.bindparam("b_status"), reason=sa.bindparam("b_reason"),
                    detail=sa.bindparam("b_detail"), version=sa.bindparam("b_version"),
                    attempts=sa.bindparam("b_attempts"), provider_message_id=None,
                    claim_token=sa.bindparam("b_token"), claimed_at=sa.bindparam("b_claimed_at"),
                    updated_at=sa.bindparam("b_now")))
        self._claim_rows = db.direct(
            deliveries.update().where(*_by_key(), deliveries.c.status == _PENDING)
            .values(status=_SENDING, claim_token=sa.bindparam("b_token"),
                    claimed_at=sa.bindparam("b_now"), attempts=deliveries.c.attempts + 1,
                    updated_at=sa.bindparam("b_now")))
        # A claim of one notification's rows of one channel at one version.
        self._claim_users = db.direct(
            deliveries.update()
            .where(deliveries.c.notification_id == sa.bindparam("b_nid"),
                   deliveries.c.version == sa.bindparam("b_version"),
                   deliveries.c.channel == sa.bindparam("b_channel"),
                   deliveries.c.user_id.in_(sa.bindparam("b_users", expanding=True)),
                   deliveries.c.status == _PENDING)
            .values(status=_SENDING, claim_token=sa.bindparam("b_token"),
                    claimed_at=sa.bindparam("b_now"), attempts=deliveries.c.attempts + 1,
                    updated_at=sa.bindparam("b_now"))
            .returning(deliveries.c.user_id))
        self._record_rows = db.direct(
            deliveries.update()
            .where(deliveries.c.notification_id == sa.bindparam("b_nid"),
                   deliveries.c.user_id == sa.bindparam("b_user"),
                   deliveries.c.channel == sa.bindparam("b_channel"),
                   deliveries.c.claim_token == sa.bindparam("b_token"),
                   deliveries.c.status == _SENDING)
            .values(status=sa.bindparam("b_status"), reason=sa.bindparam("b_reason"),
                    detail=sa.bindparam("b_detail"),
                    provider_message_id=sa.bindparam("b_provider_id"),
                    claim_token=None, claimed_at=None, updated_at=sa.bindparam("b_now")))

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
            cancelled = await self._notifications.upsert_many_in(conn, headers)
            cancelled |= await self._notifications.lock_cancelled_in(  # those without a header here
                conn, sorted({c.notification_id for c in chunks} - {h.id for h in headers}))
            chunks = [_as_cancelled(c) if c.notification_id in cancelled else c for c in chunks]
            now = now_us()
            chunks = await self._within_caps(conn, chunks, now)
            inserted, claimed = await self._insert(conn, chunks, now, claim)
            current = await self._current(conn, chunks, inserted)
            won, changes, in_flight = _take_over(chunks, inserted, current, claimed)
            if claim is not None:
                claim = replace(claim, limit=claim.limit - len(claimed))
            to_claim = _claimable(chunks, won, current, claim)
            for key in to_claim:
                claimed[key] = current[key].version
            # The rows this call takes over are claimed by the same statement; only rows it
            # inserted pending (see _insert) and claims now need one more.
            _claim_changes(changes, current, to_claim, claim, now)
            await self._apply(conn, changes, now)
            await self._claim_in(conn, [k for k in to_claim if k not in changes], claim, now)
            entries = [chunk.feed[k.user_id] for chunk, keys in zip(chunks, won, strict=True)
                       for k in keys if k.channel == "in_app" and k.user_id in chunk.feed]
            await self._feed.write(conn, entries)
            await self._schedule.add_in(conn, [h for chunk in chunks for h in chunk.held])
            if self.events is not None:
                await self.events.after_rows(conn, [k for keys in won for k in keys], now)
        return Opened(won, claimed, frozenset(cancelled), [list(c.rows) for c in chunks], in_flight)

    async def _within_caps(self, conn: AsyncConnection, chunks: Sequence[ChunkRows],
                           now: int) -> list[ChunkRows]:
        """Frequency caps (``dispatcher.frequency``): rows to send over their cap become
        skipped/rate_limited; the others are admitted (logged). Serialised per user."""
        wanted = {(r.key.user_id, c.category, r.key.channel) for c in chunks for r in c.rows
                  if _cap_of(c, r) is not None}
        if not wanted:
            return list(chunks)
        users = sorted({u for u, _, _ in wanted})
        if self._db.dialect == "postgresql":
            await conn.execute(sa.text(
                "SELECT pg_advisory_xact_lock(hashtext(k)) FROM unnest(CAST(:keys AS text[])) AS k "
                "ORDER BY k"), {"keys": [f"frequency:{u}" for u in users]})
        oldest = now - max(cap.period_us for c in chunks for cap in c.caps)
        seen: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)  # key -> nid -> at
        for start in range(0, len(users), _IN_BATCH):
            entries = await conn.execute(
                sa.select(frequency_log.c.user_id, frequency_log.c.category, frequency_log.c.channel,
                          frequency_log.c.notification_id, frequency_log.c.at)
                .where(frequency_log.c.user_id.in_(users[start:start + _IN_BATCH]),
                       frequency_log.c.at >= oldest))
            for e in entries:
                seen[(e.user_id, e.category, e.channel)][e.notification_id] = e.at
        admitted: list[dict[str, object]] = []
        out: list[ChunkRows] = []
        for chunk in chunks:
            rows: list[RowState] = []
            for r in chunk.rows:
                cap = _cap_of(chunk, r)
                if cap is None:
                    rows.append(r)
                    continue
                log = seen[(r.key.user_id, chunk.category, r.key.channel)]
                others = sum(1 for nid, at in log.items()
                             if nid != chunk.notification_id and at >= now - cap.period_us)
                if chunk.notification_id in log or others < cap.limit:
                    if chunk.notification_id not in log:
                        log[chunk.notification_id] = now
                        admitted.append({"notification_id": chunk.notification_id,
                                         "user_id": r.key.user_id, "channel": r.key.channel,
                                         "category": chunk.category, "at": now})
                    rows.append(r)
                else:
                    rows.append(RowState(r.key, DeliveryStatus.SKIPPED, Reason.RATE_LIMITED,
                                         cap.describe(chunk.category)))
            out.append(replace(chunk, rows=rows))
        if admitted:
            await conn.execute(self._db.insert(frequency_log).on_conflict_do_nothing(), admitted)
        return out

    async def prune_frequency_log(self, older_than: int, *, batch: int = 10_000) -> int:
        """Forget frequency-cap entries admitted before ``older_than`` (µs), ``batch`` per
        transaction (a short hold of SQLite's one writer each); how many were forgotten."""
        key = sa.tuple_(frequency_log.c.notification_id, frequency_log.c.user_id, frequency_log.c.channel)
        total = 0
        while True:
            old = (sa.select(frequency_log.c.notification_id, frequency_log.c.user_id, frequency_log.c.channel)
                   .where(frequency_log.c.at < older_than).limit(batch))
            async with self._db.write(many_rows=True) as conn:
                deleted = int((await conn.execute(frequency_log.delete().where(key.in_(old)))).rowcount)
            total += deleted
            if deleted < batch:
                return total

    async def cancel(self, notification_id: str) -> CancelSummary | None:
        """Cancel a notification (see the module docstring); None if there is no such id."""
        now = now_us()
        async with self._db.write(many_rows=True) as conn:
            header = (await conn.execute(
                sa.select(notifications.c.recipients, notifications.c.channels,
                          notifications.c.cancelled_at)
                .where(notifications.c.id == notification_id).with_for_update())).one_or_none()
            if header is None:
                return None
            first = header.cancelled_at is None
            cancelled_at = now if first else int(header.cancelled_at)
            if first:
                await conn.execute(notifications.update()
                                   .where(notifications.c.id == notification_id)
                                   .values(cancelled_at=now, updated_at=now))
            await self._schedule.cancel_in(conn, notification_id)
            result = await conn.execute(
                deliveries.update()
                .where(deliveries.c.notification_id == notification_id,
                       deliveries.c.status == _PENDING)
                .values(status=_SKIPPED, reason=Reason.CANCELLED.value, detail=_CANCELLED_DETAIL,
                        claim_token=None, claimed_at=None, updated_at=now)
                .returning(deliveries.c.channel))
            made_skipped: dict[str, int] = defaultdict(int)
            for (channel,) in result.all():
                made_skipped[channel] += 1
            if self.events is not None:  # the cancel may finish the notification
                await self.events.after_rows(conn, [RowKey(notification_id, "", "")], None)
            by_status: dict[str, int] = {status: int(n) for status, n in (await conn.execute(
                sa.select(deliveries.c.status, sa.func.count())
                .where(deliveries.c.notification_id == notification_id)
                .group_by(deliveries.c.status))).all()}
        made = sum(by_status.values())
        never_made = max(header.recipients * len(header.channels) - made, 0) if first else 0
        in_flight = int(by_status.get(_SENDING, 0))
        return CancelSummary(notification_id, cancelled_at, first,
                             cancelled=sum(made_skipped.values()) + never_made,
                             in_flight=in_flight, made_skipped=dict(made_skipped))

    async def _insert(self, conn: AsyncConnection, chunks: Sequence[ChunkRows], now: int,
                      claim: Claim | None) -> tuple[dict[RowKey, int], dict[RowKey, int]]:
        """Insert the missing rows of the chunks' ``insert`` channels in one statement;
        return each inserted key with the index of the chunk that inserted it, and the
        inserted rows claimed (key -> version).

        With ``claim``, a row to send that no other chunk of the call names is inserted
        already claimed (``sending``, the claim's token, one attempt), up to the claim's
        limit: what :meth:`_claim_in` would have done to it right after, without a second
        statement. A row another chunk names is inserted ``pending``, since that chunk may
        take it over; :func:`_claimable` decides for it as for any other row."""
        first: dict[RowKey, tuple[int, dict[str, object]]] = {}
        named: dict[RowKey, int] = defaultdict(int)
        for index, chunk in enumerate(chunks):
            for r in chunk.rows:
                named[r.key] += 1
                if r.key.channel in chunk.insert and r.key not in first:
                    first[r.key] = (index, _row(chunk.version, r, now))
        if not first:
            return {}, {}
        claiming: dict[RowKey, int] = {}
        if claim is not None and claim.limit > 0:
            for key, (index, values) in first.items():
                if (named[key] == 1 and values["status"] == _PENDING and values["reason"] is None
                        and key.channel not in claim.exclude):
                    values.update(status=_SENDING, claim_token=claim.token, claimed_at=now, attempts=1)
                    claiming[key] = chunks[index].version
                    if len(claiming) >= claim.limit:
                        break
        rows = await self._insert_rows.returned(conn, [values for _, values in first.values()])
        inserted = {key: first[key][0] for key in
                    (RowKey(r["notification_id"], r["user_id"], r["channel"]) for r in rows)}
        return inserted, {key: v for key, v in claiming.items() if key in inserted}

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
            rows = await self._current_rows.rows(conn, {"nids": nids, "users": users[start:start + _IN_BATCH]})
            for r in rows:
                key = RowKey(r["notification_id"], r["user_id"], r["channel"])
                if key in keys:
                    current[key] = _Current(r["version"], r["status"], r["attempts"])
        return current

    async def _apply(self, conn: AsyncConnection, changes: dict[RowKey, dict[str, object]],
                     now: int) -> None:
        if not changes:
            return
        await self._take_over_rows.many(conn, [{**_key_params(k), **v, "b_now": now}
                                               for k, v in changes.items()])

    async def _claim_in(self, conn: AsyncConnection, keys: list[RowKey], claim: Claim | None,
                        now: int) -> None:
        """Claim rows this transaction holds ``pending``: no one else can have them."""
        if claim is None or not keys:
            return
        await self._claim_rows.many(conn, [{**_key_params(k), "b_token": claim.token, "b_now": now}
                                           for k in keys])

    async def record(self, outcomes: Sequence[tuple[RowState, str]]) -> None:
        """Record outcomes of sends, each with the token that claimed its row; ``pending``
        releases a row for a retry. Rows of any notifications, in one transaction."""
        if not outcomes:
            return
        now = now_us()
        params = [
            {"b_nid": o.key.notification_id, "b_user": o.key.user_id, "b_channel": o.key.channel,
             "b_token": token, "b_status": o.status.value, "b_reason": _str(o.reason),
             "b_detail": _clip(o.detail), "b_provider_id": o.provider_message_id, "b_now": now}
            for o, token in outcomes
        ]
        released = sorted({o.key.notification_id for o, _ in outcomes
                            if o.status == DeliveryStatus.PENDING})
        async with self._db.write() as conn:
            await self._record_rows.many(conn, params)
            await _cancel_released_in(conn, released, now)
            if self.events is not None:
                await self.events.after_rows(conn, [o.key for o, _ in outcomes], now)

    async def claim(self, rows: Iterable[tuple[RowKey, int]], token: str) -> set[RowKey]:
        """Claim ``pending`` rows at the given versions for a send; return those won."""
        groups: dict[tuple[str, int, str], list[str]] = defaultdict(list)
        for key, version in dict.fromkeys(rows):
            groups[(key.notification_id, version, key.channel)].append(key.user_id)
        if not groups:
            return set()
        now = now_us()
        won: set[RowKey] = set()
        # Per (notification, version, channel) its users, on the primary key: one prepared
        # statement, run once per group (a bulk's batch is one group; a unit's, a few).
        async with self._db.write() as conn:
            for (nid, version, channel), users in groups.items():
                claimed = await self._claim_users.rows(conn, {
                    "b_nid": nid, "b_version": version, "b_channel": channel, "b_users": users,
                    "b_token": token, "b_now": now})
                won.update(RowKey(nid, r["user_id"], channel) for r in claimed)
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

    async def resolve_stale(self, keys: Iterable[RowKey], *, older_than: int,
                            resend: bool) -> dict[str, int]:
        """Settle ``sending`` rows whose claim is older than ``older_than`` (µs since epoch);
        how many, per channel."""
        if resend:
            values = {"status": _PENDING, "detail": "claim expired; sending again"}
        else:
            values = {"status": DeliveryStatus.FAILED.value, "reason": Reason.OUTCOME_UNKNOWN.value,
                      "detail": "the worker stopped while the provider request was in flight"}
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for key in keys:
            groups[(key.notification_id, key.channel)].append(key.user_id)
        settled: dict[str, int] = defaultdict(int)
        now = now_us()
        async with self._db.write(many_rows=True) as conn:
            for (nid, channel), user_ids in groups.items():
                result = await conn.execute(
                    deliveries.update()
                    .where(deliveries.c.notification_id == nid,
                           deliveries.c.channel == channel, deliveries.c.user_id.in_(user_ids),
                           deliveries.c.status == _SENDING, deliveries.c.claimed_at < older_than)
                    .values(**values, claim_token=None, claimed_at=None, updated_at=now)
                )
                settled[channel] += result.rowcount
            if resend:
                await _cancel_released_in(conn, sorted({nid for nid, _ in groups}), now)
            if self.events is not None:
                await self.events.after_rows(
                    conn, [RowKey(n, u, c) for (n, c), us in groups.items() for u in us], now)
        return dict(settled)


_SKIPPED = DeliveryStatus.SKIPPED.value
_CANCELLED_DETAIL = "the service cancelled the notification before this was sent"


def _cap_of(chunk: ChunkRows, row: RowState) -> Cap | None:
    """The frequency cap a row to send falls under, if any."""
    if row.status != DeliveryStatus.PENDING or row.reason is not None:
        return None
    return next((cap for cap in chunk.caps if cap.channel == row.key.channel), None)


def _as_cancelled(chunk: ChunkRows) -> ChunkRows:
    """A chunk of a cancelled notification: its rows open as skipped/cancelled, no feed entry,
    and it takes over nothing of an older version (what was sent stays sent)."""
    rows = [RowState(r.key, DeliveryStatus.SKIPPED, Reason.CANCELLED, _CANCELLED_DETAIL)
            for r in chunk.rows]
    return ChunkRows(chunk.notification_id, chunk.version, rows, chunk.insert, frozenset(), {})


async def _cancel_released_in(conn: AsyncConnection, notification_ids: Sequence[str], now: int) -> None:
    """Rows just released (``pending``, for a retry) of cancelled notifications are cancelled."""
    if not notification_ids:
        return
    cancelled = (sa.select(notifications.c.id)
                 .where(notifications.c.id.in_(list(notification_ids)),
                        notifications.c.cancelled_at.is_not(None)))
    await conn.execute(
        deliveries.update()
        .where(deliveries.c.notification_id.in_(cancelled.scalar_subquery()),
               deliveries.c.status == _PENDING)
        .values(status=_SKIPPED, reason=Reason.CANCELLED.value, detail=_CANCELLED_DETAIL,
                claim_token=None, claimed_at=None, updated_at=now))


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
               current: dict[RowKey, _Current], claimed: dict[RowKey, int],
               ) -> tuple[list[set[RowKey]], dict[RowKey, dict[str, object]], list[set[RowKey]]]:
    """Which rows each chunk wins, in order, the final values of the rows taken over, and
    per chunk the rows of its ``reset`` channels an older version is sending (in flight).

    A chunk wins a row it inserted, or a row that is ``pending`` at its version, or (for its
    ``reset`` channels) a row at an older version that is not in flight. ``current`` holds
    the inserted rows first (``claimed``: inserted ``sending``), then is updated as the
    chunks win rows."""
    for index, chunk in enumerate(chunks):
        for r in chunk.rows:
            if inserted.get(r.key) == index:
                current[r.key] = (_Current(chunk.version, _SENDING, 1) if r.key in claimed
                                  else _Current(chunk.version, r.status.value, 0))
    won: list[set[RowKey]] = []
    in_flight: list[set[RowKey]] = []
    changes: dict[RowKey, dict[str, object]] = {}
    for index, chunk in enumerate(chunks):
        keys: set[RowKey] = set()
        busy: set[RowKey] = set()
        in_flight.append(busy)
        for r in chunk.rows:
            if inserted.get(r.key) == index:
                keys.add(r.key)
                continue
            cur = current.get(r.key)
            if cur is None:
                continue
            if not _takeable(cur, chunk, r.key.channel):
                if (r.key.channel in chunk.reset and cur.version < chunk.version
                        and cur.status == _SENDING):
                    busy.add(r.key)
                continue
            attempts = cur.attempts if cur.version == chunk.version else 0
            current[r.key] = _Current(chunk.version, r.status.value, attempts)
            changes[r.key] = {"b_status": r.status.value, "b_reason": _str(r.reason),
                              "b_detail": _clip(r.detail), "b_version": chunk.version,
                              "b_attempts": attempts, "b_token": None, "b_claimed_at": None}
            keys.add(r.key)
        won.append(keys)
    return won, changes, in_flight


def _claim_changes(changes: dict[RowKey, dict[str, object]], current: dict[RowKey, _Current],
                   keys: Sequence[RowKey], claim: Claim | None, now: int) -> None:
    """Make the take-over of each of ``keys`` also its claim (as :meth:`LedgerStore._claim_in`
    would: ``sending``, the claim's token, one more attempt than the row as taken over)."""
    if claim is None:
        return
    for key in keys:
        change = changes.get(key)
        if change is not None:
            change.update(b_status=_SENDING, b_token=claim.token, b_claimed_at=now,
                          b_attempts=current[key].attempts + 1)


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
            if (r.key in chunk_won and r.status == DeliveryStatus.PENDING and r.reason is None
                    and r.key.channel not in claim.exclude and cur is not None
                    and cur.version == chunk.version and cur.status == _PENDING
                    and r.key not in keys):
                keys.append(r.key)
                if len(keys) >= claim.limit:
                    return keys
    return keys
