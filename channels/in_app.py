"""The in-app channel: the user's feed in the store, plus a live event on the bus.

Unlike the other channels it has no provider to call: an in-app delivery is a feed entry,
written in the same transaction as its ledger row (so it happens exactly once), and then
announced to the user's live stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import logging

from dispatcher.bus import Bus
from dispatcher.store import FeedEntry

__all__ = ["InAppChannel", "feed_topic"]


log = logging.getLogger("dispatcher.channels.in_app")


def feed_topic(user_id: str) -> str:
    return f"feed:{user_id}"


class InAppChannel:
    channel = "in_app"

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    def entry(self, user_id: str, notification_id: str, version: int, parts: Mapping[str, str],
              state: str | None, category: str) -> FeedEntry:
        return FeedEntry(user_id, notification_id, version, parts["title"], parts["body"],
                         state, category)

    async def announce(self, entries: Iterable[FeedEntry]) -> None:
        """Tell live listeners; best effort (the feed itself is already committed)."""
        events = [(feed_topic(e.user_id), {
            "type": "notification", "id": e.notification_id, "version": e.version,
            "title": e.title, "body": e.body, "state": e.state, "category": e.category,
            "read": False,
        }) for e in entries]
        try:
            await self._bus.publish_many(events)
        except Exception:
            log.exception("live events for %d feed entries were not published", len(events))
