"""Whether a user wants a channel for a category.

Preferences are ``{"channels": {channel: bool}, "categories": {category: {channel: bool}}}``.
The most specific switch wins: a category's switch for a channel, else the channel's switch,
else on. A critical category (``DISPATCHER_CRITICAL_CATEGORIES``, e.g. security) is always on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["wants"]


def wants(
    preferences: Mapping[str, Any], channel: str, category: str, critical: frozenset[str],
) -> bool:
    if category in critical:
        return True
    by_category = (preferences.get("categories") or {}).get(category) or {}
    if channel in by_category:
        return bool(by_category[channel])
    return bool((preferences.get("channels") or {}).get(channel, True))
