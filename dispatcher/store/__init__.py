"""The store port: users, notifications, the delivery ledger and the in-app feed.

One implementation (SQLAlchemy Core) serves both engines: SQLite for the embedded default and
PostgreSQL in production, chosen by ``DISPATCHER_DATABASE_URL``. The core asks for units of
work in its own nouns (``dispatcher.model``); connections and SQL never leave this package
(and ``dispatcher.queue``, whose embedded queue lives in the same database).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

from dispatcher.store.database import Database
from dispatcher.store.feed import FeedStore
from dispatcher.store.ledger import LedgerStore
from dispatcher.store.notifications import NotificationStore
from dispatcher.store.provider_events import ProviderEventStore
from dispatcher.store.resend import ResendStore
from dispatcher.store.schedule import Held, ScheduleStore
from dispatcher.store.suppressions import SuppressionStore
from dispatcher.store.users import UserStore
from dispatcher.store.webhooks import WebhookStore

__all__ = ["STORE_UNAVAILABLE", "Database", "Held", "Store"]

#: What the store raises when its database does not answer (an outage, not a bug): the API
#: answers 503 for these. The driver's errors are the store's own business.
STORE_UNAVAILABLE: tuple[type[Exception], ...] = (DBAPIError,)


@dataclass(frozen=True)
class Store:
    db: Database
    users: UserStore
    notifications: NotificationStore
    ledger: LedgerStore
    feed: FeedStore
    schedule: ScheduleStore
    suppressions: SuppressionStore
    webhooks: WebhookStore
    provider_events: ProviderEventStore
    resend: ResendStore

    @classmethod
    def from_database(cls, db: Database) -> Store:
        feed, notifications, schedule = FeedStore(db), NotificationStore(db), ScheduleStore(db)
        suppressions, webhooks = SuppressionStore(db), WebhookStore(db, notifications)
        ledger = LedgerStore(db, notifications, feed, schedule)
        ledger.events = webhooks  # webhooks written in the ledger's own transactions
        return cls(db, UserStore(db), notifications, ledger, feed, schedule, suppressions, webhooks,
                   ProviderEventStore(db, suppressions, webhooks), ResendStore(db))
