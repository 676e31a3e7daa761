"""A database made before suppressions and webhooks gains their tables, columns and indexes at start."""

from __future__ import annotations

import sqlalchemy as sa

from dispatcher.store import Database


async def test_an_older_database_is_upgraded_additively(database_url: str) -> None:
    db = Database(database_url)
    try:
        await db.create_schema()
        async with db.write() as conn:  # as an older release left it
            await conn.execute(sa.text("DROP INDEX ix_deliveries_email_message_id"))
            await conn.execute(sa.text("DROP TABLE suppressions"))
            await conn.execute(sa.text("ALTER TABLE webhook_outbox DROP COLUMN last_error"))
            await conn.execute(sa.text(
                "INSERT INTO deliveries (notification_id, user_id, channel, version, status, attempts, "
                "created_at, updated_at) VALUES ('app#x', 'u1', 'email', 1, 'sent', 1, 0, 0)"))
        await db.create_schema()
        async with db.read() as conn:
            def look(sync: sa.Connection) -> tuple[set[str], set[str], set[str]]:
                inspector = sa.inspect(sync)
                return ({i["name"] for i in inspector.get_indexes("deliveries")},
                        set(inspector.get_table_names()),
                        {c["name"] for c in inspector.get_columns("webhook_outbox")})
            indexes, tables, columns = await conn.run_sync(look)
            kept = (await conn.execute(sa.text("SELECT count(*) FROM deliveries"))).scalar_one()
        assert "ix_deliveries_email_message_id" in indexes
        assert "suppressions" in tables and "last_error" in columns
        assert kept == 1
    finally:
        await db.close()
