"""The store's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Times are integers: microseconds since the epoch (UTC), so that ordering, cursors and
comparisons behave the same on both engines.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["metadata", "users", "devices", "notifications", "deliveries", "inbox",
           "queue_messages", "dead_letters", "scheduled_messages", "rate_limits",
           "frequency_log", "suppressions", "suppression_lifts", "soft_bounces", "webhook_endpoints", "webhook_outbox",
           "add_missing_indexes"]

metadata = sa.MetaData()

ID = sa.String(255)

users = sa.Table(
    "users", metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("email", sa.String(320)),
    sa.Column("phone", sa.String(32)),
    sa.Column("locale", sa.String(35)),
    sa.Column("timezone", sa.String(64)),
    sa.Column("preferences", sa.JSON, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    # Added after the first release (nullable): older databases get them at start-up.
    sa.Column("name", sa.String(200)),
    sa.Column("attributes", sa.JSON),
)

devices = sa.Table(
    "devices", metadata,
    sa.Column("token", sa.String(1024), primary_key=True),
    sa.Column("user_id", ID, nullable=False, index=True),
    sa.Column("platform", sa.String(16), nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

notifications = sa.Table(
    "notifications", metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("template", sa.String(128), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("state", sa.String(64)),
    sa.Column("category", sa.String(64), nullable=False),
    sa.Column("locale", sa.String(35)),
    sa.Column("channels", sa.JSON, nullable=False),
    sa.Column("recipients", sa.Integer, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    # The highest version's send_at (µs), and when the service cancelled the notification.
    sa.Column("send_at", sa.BigInteger),
    sa.Column("cancelled_at", sa.BigInteger),
)

# The delivery ledger: one row per (notification, user, channel).
deliveries = sa.Table(
    "deliveries", metadata,
    sa.Column("notification_id", ID, primary_key=True),
    sa.Column("user_id", ID, primary_key=True),
    sa.Column("channel", sa.String(16), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64)),
    sa.Column("detail", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("provider_message_id", sa.Text),
    sa.Column("claim_token", sa.String(64)),
    sa.Column("claimed_at", sa.BigInteger),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    # SES events name the message by its id: found on email rows only (a push row may join
    # many FCM ids, longer than a PostgreSQL b-tree entry may be).
    sa.Index("ix_deliveries_email_message_id", "provider_message_id",
             sqlite_where=sa.text("channel = 'email'"), postgresql_where=sa.text("channel = 'email'")),
)

# The in-app feed: one entry per (user, notification), updated in place by later versions.
inbox = sa.Table(
    "inbox", metadata,
    sa.Column("user_id", ID, primary_key=True),
    sa.Column("notification_id", ID, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("state", sa.String(64)),
    sa.Column("category", sa.String(64), nullable=False),
    sa.Column("read", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Index("ix_inbox_feed", "user_id", "created_at", "notification_id"),
)

# The database queue (DISPATCHER_QUEUE_URL=database): messages and their dead letters.
queue_messages = sa.Table(
    "queue_messages", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("queue", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("visible_at", sa.BigInteger, nullable=False),
    sa.Column("receive_count", sa.Integer, nullable=False),
    sa.Column("receipt", sa.String(64)),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index("ix_queue_visible", "queue", "visible_at", "id"),
)

dead_letters = sa.Table(
    "dead_letters", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("queue", sa.String(64), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("receive_count", sa.Integer, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# Chunk messages held until their notification's send_at (any queue: SQS delays stop at
# 15 minutes). Released to the queue by the scheduler of every worker process, once: in one
# transaction with the embedded queue; under a lease (``claimed_until``) with SQS.
scheduled_messages = sa.Table(
    "scheduled_messages", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("notification_id", ID, nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("due_at", sa.BigInteger, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("claimed_until", sa.BigInteger),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index("ix_scheduled_due", "due_at", "id"),
)

# Provider rate limits without Redis (dispatcher.ratelimit): per channel, the GCRA's
# theoretical arrival time of the next message (µs).
rate_limits = sa.Table(
    "rate_limits", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("tat", sa.BigInteger, nullable=False),
)

# Frequency caps (dispatcher.frequency): one entry per (notification, user, channel) admitted
# to be sent in a capped category, counted per user, category and channel over a window.
frequency_log = sa.Table(
    "frequency_log", metadata,
    sa.Column("notification_id", ID, primary_key=True),
    sa.Column("user_id", ID, primary_key=True),
    sa.Column("channel", sa.String(16), primary_key=True),
    sa.Column("category", sa.String(64), nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Index("ix_frequency_user", "user_id", "category", "channel", "at"),
)


# Addresses (normalised, lower case) and device tokens not to send to, and why.
suppressions = sa.Table(
    "suppressions", metadata,
    sa.Column("address", sa.String(1024), primary_key=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("cause", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("provider_message_id", sa.Text),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# When an address's suppression was last lifted: an event published before that (an old
# bounce, redelivered or replayed) does not suppress it again.
suppression_lifts = sa.Table(
    "suppression_lifts", metadata,
    sa.Column("address", sa.String(1024), primary_key=True),
    sa.Column("lifted_at", sa.BigInteger, nullable=False),
)

# Soft bounces per address, one row per provider event (a redelivered event counts once).
soft_bounces = sa.Table(
    "soft_bounces", metadata,
    sa.Column("address", sa.String(320), primary_key=True),
    sa.Column("event_id", sa.String(128), primary_key=True),
    sa.Column("at", sa.BigInteger, nullable=False),
)

# One webhook endpoint per service.
webhook_endpoints = sa.Table(
    "webhook_endpoints", metadata,
    sa.Column("service", sa.String(64), primary_key=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("events", sa.JSON, nullable=False),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

# Webhooks to send, written in the transaction of the ledger change that causes them.
# ``dedupe_key`` makes an event that may be noticed twice (a notification completed) one row.
webhook_outbox = sa.Table(
    "webhook_outbox", metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # the webhook-id, kept across attempts
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("dedupe_key", sa.String(512), nullable=False, unique=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Index("ix_webhook_outbox_due", "status", "next_attempt_at"),
    sa.Index("ix_webhook_outbox_service", "service", "status", "created_at"),
)


def add_missing_indexes(conn: sa.Connection) -> None:
    """Create the indexes :data:`metadata` has and an existing table lacks (``create_all``
    creates a missing table with its indexes, but leaves an existing table as it is; columns
    are added by ``database._add_missing_columns``). Nothing is dropped or altered."""
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(conn)
