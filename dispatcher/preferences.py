"""Whether a user wants a channel for a category: the user's switches, as a value object.

Preferences are ``{"channels": {channel: bool}, "categories": {category: {channel: bool}}}``
on the wire and in the store. The most specific switch wins: a category's switch for a
channel, else the channel's switch, else on. A critical category
(``DISPATCHER_CRITICAL_CATEGORIES``, e.g. security) is always on.

``"quiet_hours": {"start": "22:00", "end": "07:00"}`` (``dispatcher.quiet_hours``) is the
user's own window; ``"quiet_hours": null`` says "none", even when the service has a default
(``DISPATCHER_QUIET_HOURS``); no key at all means the default. ``quiet_explicit`` keeps
that difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatcher.quiet_hours import QuietHours

__all__ = ["Preferences"]


@dataclass(frozen=True)
class Preferences:
    channels: Mapping[str, bool] = field(default_factory=dict)
    categories: Mapping[str, Mapping[str, bool]] = field(default_factory=dict)
    quiet_hours: QuietHours | None = None
    #: The user said something about quiet hours (a window, or null for none).
    quiet_explicit: bool = False

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Preferences:
        """From the stored or requested shape; missing parts are empty. Raises ValueError for
        malformed quiet hours."""
        raw = raw or {}
        quiet = raw.get("quiet_hours")
        return cls(
            channels={str(k): bool(v) for k, v in (raw.get("channels") or {}).items()},
            categories={str(c): {str(k): bool(v) for k, v in (switches or {}).items()}
                        for c, switches in (raw.get("categories") or {}).items()},
            quiet_hours=QuietHours.from_json(quiet) if quiet is not None else None,
            quiet_explicit="quiet_hours" in raw,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"channels": dict(self.channels),
                               "categories": {c: dict(s) for c, s in self.categories.items()}}
        if self.quiet_explicit:
            out["quiet_hours"] = self.quiet_hours.to_json() if self.quiet_hours else None
        return out

    def quiet(self, default: QuietHours | None) -> QuietHours | None:
        """The window that applies: the user's own, else the service's default."""
        return self.quiet_hours if self.quiet_explicit else default

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
        if patch.quiet_explicit:
            return Preferences({**self.channels, **patch.channels}, categories,
                               patch.quiet_hours, True)
        return Preferences({**self.channels, **patch.channels}, categories,
                           self.quiet_hours, self.quiet_explicit)
