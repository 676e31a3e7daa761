"""User metadata: contact data, devices and channel preferences."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from dispatcher.model import Device, UserRecord, now_us
from dispatcher.preferences import Preferences
from dispatcher.store.database import Database
from dispatcher.store.schema import devices, suppressions, users

__all__ = ["UserStore"]


class UserStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # A unit of work's recipients (load_many), built once and run on the driver.
        ids: sa.BindParameter[str] = sa.bindparam("ids", expanding=True)
        self._users_by_id = db.direct(sa.select(users).where(users.c.id.in_(ids)))
        by_user = sa.select(devices).where(devices.c.user_id.in_(ids))
        self._devices_by_user = {
            True: db.direct(by_user.where(devices.c.active.is_(True)).order_by(devices.c.created_at)),
            False: db.direct(by_user.order_by(devices.c.created_at))}

    async def upsert(self, user_id: str, fields: Mapping[str, Any]) -> UserRecord:
        """Create the user or update the given fields (already validated and normalised)."""
        now = now_us()
        values = {k: fields[k] for k in ("email", "phone", "locale", "timezone", "name", "attributes")
                  if k in fields}
        async with self._db.write() as conn:
            await self._ensure(conn, user_id, now)
            if values:
                await conn.execute(
                    users.update().where(users.c.id == user_id).values(**values, updated_at=now)
                )
        user = await self.get(user_id)
        assert user is not None
        return user

    async def get(self, user_id: str) -> UserRecord | None:
        return (await self.load_many([user_id], active_only=False)).get(user_id)

    async def load_many(self, user_ids: Iterable[str], *, active_only: bool = True) -> dict[str, UserRecord]:
        """Users and their devices for a chunk of recipients, in two queries."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        async with self._db.read(short=True) as conn:  # a chunk's recipients, by their keys
            user_rows = await self._users_by_id.rows(conn, {"ids": ids})
            device_rows = await self._devices_by_user[active_only].rows(conn, {"ids": ids})
        by_user: dict[str, list[Device]] = {}
        for d in device_rows:
            by_user.setdefault(d["user_id"], []).append(Device(d["token"], d["platform"], d["active"]))
        return {
            row["id"]: UserRecord(
                id=row["id"], email=row["email"], phone=row["phone"], locale=row["locale"],
                timezone=row["timezone"], preferences=Preferences.from_json(row["preferences"]),
                devices=tuple(by_user.get(row["id"], ())), name=row["name"],
                attributes=row["attributes"] or {}, created_at=row["created_at"],
                updated_at=row["updated_at"],
            )
            for row in user_rows
        }

    async def merge_preferences(self, user_id: str, patch: Preferences) -> Preferences:
        """Apply ``patch`` (PUT semantics) in one transaction; return the merged switches."""
        now = now_us()
        async with self._db.write() as conn:
            await self._ensure(conn, user_id, now)
            current = (await conn.execute(
                sa.select(users.c.preferences).where(users.c.id == user_id)
            )).scalar_one()
            merged = Preferences.from_json(current).merged(patch)
            await conn.execute(users.update().where(users.c.id == user_id)
                               .values(preferences=merged.to_json(), updated_at=now))
        return merged

    async def add_device(self, user_id: str, token: str, platform: str) -> Device:
        """Register a device; a token seen before moves to this user and becomes active again."""
        now = now_us()
        async with self._db.write() as conn:
            await self._ensure(conn, user_id, now)
            stmt = self._db.insert(devices).values(
                token=token, user_id=user_id, platform=platform, active=True,
                created_at=now, updated_at=now,
            )
            await conn.execute(stmt.on_conflict_do_update(
                index_elements=[devices.c.token],
                set_={"user_id": user_id, "platform": platform, "active": True, "updated_at": now},
            ))
            # Registered again: no longer listed as unregistered.
            await conn.execute(suppressions.delete().where(suppressions.c.address == token,
                                                           suppressions.c.channel == "push"))
        return Device(token, platform, True)

    async def remove_device(self, user_id: str, token: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                devices.delete().where(devices.c.user_id == user_id, devices.c.token == token)
            )
        return bool(result.rowcount)

    async def deactivate_devices(self, tokens: Iterable[str]) -> None:
        """Called when a push provider says a token is no longer registered."""
        tokens = list(tokens)
        if not tokens:
            return
        async with self._db.write() as conn:
            await conn.execute(
                devices.update().where(devices.c.token.in_(tokens))
                .values(active=False, updated_at=now_us())
            )
            # Listed with the suppressions too, so a user's record says why (cause and time).
            await conn.execute(self._db.insert(suppressions).on_conflict_do_nothing(), [
                {"address": t, "channel": "push", "cause": "unregistered_device",
                 "detail": "FCM answered UNREGISTERED; the device is inactive",
                 "provider_message_id": None, "created_at": now_us()} for t in dict.fromkeys(tokens)])

    async def _ensure(self, conn: Any, user_id: str, now: int) -> None:
        stmt = self._db.insert(users).values(
            id=user_id, preferences=Preferences().to_json(), created_at=now, updated_at=now
        )
        await conn.execute(stmt.on_conflict_do_nothing(index_elements=[users.c.id]))
