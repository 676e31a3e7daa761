"""A database made before the users table had ``name`` and ``attributes`` gets them at start-up,
keeping its rows; starting again changes nothing."""

from __future__ import annotations

import sqlalchemy as sa

from dispatcher.store import Database, Store


async def test_an_older_users_table_gains_the_profile_columns(database_url: str) -> None:
    db = Database(database_url)
    try:
        async with db.write() as conn:  # the users table as the first release made it
            await conn.execute(sa.text(
                "CREATE TABLE users (id VARCHAR(255) PRIMARY KEY, email VARCHAR(320), phone VARCHAR(32), "
                "locale VARCHAR(35), timezone VARCHAR(64), preferences JSON NOT NULL, "
                "created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)"))
            await conn.execute(sa.text(
                "INSERT INTO users VALUES ('old', 'old@example.com', NULL, 'ko', NULL, '{}', 1, 1)"))
        await db.create_schema()
        await db.create_schema()  # a second start: nothing left to add
        users = Store.from_database(db).users
        old = await users.get("old")
        assert old is not None and (old.email, old.name, dict(old.attributes)) == ("old@example.com", None, {})
        await users.upsert("old", {"name": "Ann", "attributes": {"plan": "pro"}})
        again = await users.get("old")
        assert again is not None
        assert (again.name, dict(again.attributes), again.locale) == ("Ann", {"plan": "pro"}, "ko")
    finally:
        await db.close()
