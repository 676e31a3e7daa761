"""The suppression list: email addresses (and push tokens) not to send to, and why.

Per address, not per user record: an address is stored normalised and lower-cased
(:func:`address_key`), so a user whose email changes to another address is sent to again,
and two users sharing a bounced address are both held back. Device tokens FCM calls
UNREGISTERED are listed here too (channel ``push``), next to the device's ``active = false``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dispatcher.model import Suppression, now_us
from dispatcher.store.database import Database
from dispatcher.store.schema import soft_bounces, suppression_lifts, suppressions

__all__ = ["SuppressionStore", "address_key"]


def address_key(address: str) -> str:
    """How an email address is compared on the list: trimmed and lower-cased (mailbox
    providers treat the local part case-insensitively; SES's own list does too)."""
    return address.strip().lower()


class SuppressionStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._among = db.direct(sa.select(suppressions.c.address).where(
            suppressions.c.address.in_(sa.bindparam("keys", expanding=True))))

    async def among(self, addresses: Iterable[str]) -> frozenset[str]:
        """Which of ``addresses`` (as :func:`address_key` spells them) are suppressed."""
        keys = sorted({address_key(a) for a in addresses})
        if not keys:
            return frozenset()
        found: set[str] = set()
        async with self._db.read(short=True) as conn:  # a chunk's addresses, by their keys
            for start in range(0, len(keys), 2000):
                found |= {r["address"] for r in await self._among.rows(conn, {"keys": keys[start:start + 2000]})}
        return frozenset(found)

    async def get_many(self, emails: Iterable[str], tokens: Iterable[str] = ()) -> list[Suppression]:
        """The suppressions of these email addresses and device tokens."""
        keys = sorted({address_key(a) for a in emails} | set(tokens))
        if not keys:
            return []
        async with self._db.read() as conn:
            rows = (await conn.execute(sa.select(suppressions).where(suppressions.c.address.in_(keys))
                                       .order_by(suppressions.c.created_at))).all()
        return [_suppression(r) for r in rows]

    async def lift(self, address: str) -> bool:
        """Remove ``address`` from the list (and forget its soft bounces); events published
        before now no longer suppress it (:meth:`lifted_after`)."""
        key = address_key(address)
        now = now_us()
        async with self._db.write() as conn:
            result = await conn.execute(suppressions.delete().where(
                suppressions.c.address == key, suppressions.c.channel == "email"))
            await conn.execute(soft_bounces.delete().where(soft_bounces.c.address == key))
            await conn.execute(suppression_lifts.delete().where(suppression_lifts.c.address == key))
            await conn.execute(suppression_lifts.insert().values(address=key, lifted_at=now))
        return bool(result.rowcount)

    async def lifted_after(self, conn: AsyncConnection, addresses: Sequence[str], published_at: int) -> set[str]:
        """Which of ``addresses`` were lifted at or after ``published_at`` (µs): an event
        published then is older than the lift (SNS redelivering it, or someone replaying a
        captured message: its signed timestamp can't be changed) and must not suppress them."""
        keys = sorted({address_key(a) for a in addresses})
        if not keys:
            return set()
        rows = await conn.execute(sa.select(suppression_lifts.c.address).where(
            suppression_lifts.c.address.in_(keys), suppression_lifts.c.lifted_at >= published_at))
        return {r.address for r in rows}

    async def add_in(self, conn: AsyncConnection, addresses: Sequence[str], *, channel: str,
                     cause: str, detail: str | None, provider_message_id: str | None = None) -> None:
        """Suppress ``addresses`` inside the caller's transaction (the first cause is kept)."""
        if not addresses:
            return
        now = now_us()
        keys = dict.fromkeys(address_key(a) if channel == "email" else a for a in addresses)
        await conn.execute(self._db.insert(suppressions).on_conflict_do_nothing(), [
            {"address": k, "channel": channel, "cause": cause, "detail": (detail or "")[:1000],
             "provider_message_id": provider_message_id, "created_at": now} for k in keys])

    async def soft_bounce_in(self, conn: AsyncConnection, addresses: Sequence[str], event_id: str,
                             *, limit: int, window_us: int) -> list[str]:
        """Count a soft bounce of each address (once per event); return the addresses that
        reached ``limit`` soft bounces within the window."""
        now = now_us()
        keys = list(dict.fromkeys(address_key(a) for a in addresses))
        if not keys:
            return []
        await conn.execute(self._db.insert(soft_bounces).on_conflict_do_nothing(),
                           [{"address": k, "event_id": event_id[:128], "at": now} for k in keys])
        await conn.execute(soft_bounces.delete().where(soft_bounces.c.address.in_(keys),
                                                       soft_bounces.c.at < now - window_us))
        rows = await conn.execute(
            sa.select(soft_bounces.c.address, sa.func.count()).where(soft_bounces.c.address.in_(keys))
            .group_by(soft_bounces.c.address))
        return [address for address, n in rows if n >= limit]


def _suppression(row: sa.Row[tuple[object, ...]]) -> Suppression:
    return Suppression(row.address, row.channel, row.cause, row.detail, row.created_at)
