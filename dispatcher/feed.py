"""In-app notifications: the user's feed entries and their live events.

In-app is core logic, not a provider: an in-app delivery is a feed entry written by the store
in the same transaction as its ledger row (so it happens exactly once), then announced on the
bus to the user's live stream. Nothing here calls out of the process but the bus.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from dispatcher.bus import Bus
from dispatcher.model import FeedEntry

__all__ = ["Feed", "feed_topic"]

log = logging.getLogger("dispatcher.feed")


def feed_topic(user_id: str) -> str:
    """The bus topic of one user's live stream."""
    return f"feed:{user_id}"


class Feed:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    @staticmethod
    def entry(user_id: str, notification_id: str, version: int, parts: Mapping[str, str],
              state: str | None, category: str) -> FeedEntry:
        return FeedEntry(user_id, notification_id, version, parts["title"], parts["body"],
                         state, category)

    async def announce(self, entries: Iterable[FeedEntry]) -> None:
        """Tell live listeners; best effort (the feed itself is already committed)."""
        events = [(feed_topic(e.user_id), _event(e)) for e in entries]
        if not events:
            return
        try:
            await self._bus.publish_many(events)
        except Exception:
            log.exception("live events for %d feed entries were not published", len(events))

    async def tell(self, user_id: str, event: dict[str, Any]) -> None:
        """One event for one user (read marks); best effort, like :meth:`announce`."""
        try:
            await self._bus.publish(feed_topic(user_id), event)
        except Exception:
            log.exception("live event for %s was not published", user_id)


def _event(e: FeedEntry) -> dict[str, Any]:
    return {"type": "notification", "id": e.notification_id, "version": e.version,
            "title": e.title, "body": e.body, "state": e.state, "category": e.category,
            "read": False}
