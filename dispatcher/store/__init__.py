"""The store port: users, notifications, the delivery ledger and the in-app feed.

One implementation (SQLAlchemy Core) serves both engines: SQLite for the embedded default and
PostgreSQL in production, chosen by ``DISPATCHER_DATABASE_URL``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.store.database import Database
from dispatcher.store.feed import FeedEntry, FeedStore
from dispatcher.store.ledger import LedgerStore, Outcome, Planned
from dispatcher.store.notifications import HeaderUpdate, NotificationHeader, NotificationStore
from dispatcher.store.users import Device, UserRecord, UserStore

__all__ = ["Database", "Device", "FeedEntry", "HeaderUpdate", "NotificationHeader", "Outcome",
           "Planned", "Store", "UserRecord"]


@dataclass(frozen=True)
class Store:
    db: Database
    users: UserStore
    notifications: NotificationStore
    ledger: LedgerStore
    feed: FeedStore

    @classmethod
    def from_database(cls, db: Database) -> Store:
        feed = FeedStore(db)
        return cls(db, UserStore(db), NotificationStore(db), LedgerStore(db, feed), feed)
