"""Resending failed rows: the same rows, made ``pending`` again at the notification's current
version (the worker then claims them as a new attempt: ``attempts`` goes on counting)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from dispatcher.model import DeliveryStatus, RowKey, now_us
from dispatcher.store.database import Database
from dispatcher.store.schema import deliveries

__all__ = ["ResendStore", "Reopened"]


@dataclass(frozen=True)
class Reopened:
    key: RowKey
    reason: str | None
    detail: str | None


class ResendStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def reopen(self, notification_id: str, version: int, *, reasons: Sequence[str] | None,
                     channels: Sequence[str],
                     enqueue_in: Callable[[Any, list[Reopened]], Awaitable[None]] | None = None,
                     ) -> list[Reopened]:
        """Make the notification's ``failed`` rows matching the filter ``pending`` at ``version``;
        ``enqueue_in(conn, rows)``, when given, enqueues their messages in the same transaction."""
        query = (sa.select(deliveries.c.user_id, deliveries.c.channel, deliveries.c.reason, deliveries.c.detail)
                 .where(deliveries.c.notification_id == notification_id,
                        deliveries.c.status == DeliveryStatus.FAILED.value,
                        deliveries.c.channel.in_(list(channels))))
        if reasons:
            query = query.where(deliveries.c.reason.in_(list(reasons)))
        now = now_us()
        async with self._db.write(many_rows=True) as conn:
            rows = (await conn.execute(query.with_for_update())).all()
            if rows:
                await conn.execute(
                    deliveries.update().where(
                        deliveries.c.notification_id == notification_id,
                        deliveries.c.user_id == sa.bindparam("b_user"),
                        deliveries.c.channel == sa.bindparam("b_channel"),
                        deliveries.c.status == DeliveryStatus.FAILED.value)
                    .values(status=DeliveryStatus.PENDING.value, version=version, reason=None,
                            detail="resend requested", claim_token=None, claimed_at=None, updated_at=now),
                    [{"b_user": r.user_id, "b_channel": r.channel} for r in rows])
            reopened = [Reopened(RowKey(notification_id, r.user_id, r.channel), r.reason, r.detail)
                        for r in rows]
            if reopened and enqueue_in is not None:
                await enqueue_in(conn, reopened)
        return reopened
