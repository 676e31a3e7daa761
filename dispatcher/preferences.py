"""Whether a user wants a channel for a category: the user's switches, as a value object.

Preferences are ``{"channels": {channel: bool}, "categories": {category: {channel: bool}}}``
on the wire and in the store. The most specific switch wins: a category's switch for a
channel, else the channel's switch, else on. A critical category
(``DISPATCHER_CRITICAL_CATEGORIES``, e.g. security) is always on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Preferences"]


@dataclass(frozen=True)
class Preferences:
    channels: Mapping[str, bool] = field(default_factory=dict)
    categories: Mapping[str, Mapping[str, bool]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Preferences:
        """From the stored or requested shape; missing parts are empty."""
        raw = raw or {}
        return cls(
            channels={str(k): bool(v) for k, v in (raw.get("channels") or {}).items()},
            categories={str(c): {str(k): bool(v) for k, v in (switches or {}).items()}
                        for c, switches in (raw.get("categories") or {}).items()},
        )

    def to_json(self) -> dict[str, Any]:
        return {"channels": dict(self.channels),
                "categories": {c: dict(s) for c, s in self.categories.items()}}

    def wants(self, channel: str, category: str, critical: frozenset[str]) -> bool:
        if category in critical:
            return True
        by_category = self.categories.get(category) or {}
        if channel in by_category:
            return bool(by_category[channel])
        return bool(self.channels.get(channel, True))

    def merged(self, patch: Preferences) -> Preferences:
        """``PUT`` semantics: switches in ``patch`` replace these; others stay."""
        categories = {c: dict(s) for c, s in self.categories.items()}
        for category, switches in patch.categories.items():
            categories.setdefault(category, {}).update(switches)
        return Preferences({**self.channels, **patch.channels}, categories)
