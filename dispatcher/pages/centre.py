"""The preference centre's grid: one row per category, one switch per channel.

Which categories: those the templates declare, those ``categories.json`` names, those in the
user's feed (received) and those the user already has switches for. Each switch shows what
:meth:`Preferences.wants` decides (the same rule the workers apply), and saving writes only
the switches the user changed, as a category switch, through the same merge as
``PUT /v1/users/{id}/preferences``: a change made here reads back there, and the next send
respects it. A critical category shows every switch on and can't be changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dispatcher.preferences import Preferences

__all__ = ["CHANNELS", "Row", "Switch", "changed_switches", "grid", "parse_switch_values", "switch_value"]

#: The order the channels are shown in.
CHANNELS = ("email", "sms", "push", "in_app")


@dataclass(frozen=True)
class Switch:
    channel: str
    on: bool


@dataclass(frozen=True)
class Row:
    category: str
    critical: bool
    switches: tuple[Switch, ...]


def grid(preferences: Preferences, categories: Iterable[str], critical: frozenset[str]) -> list[Row]:
    return [Row(category, category in critical,
                tuple(Switch(channel, preferences.wants(channel, category, critical)) for channel in CHANNELS))
            for category in categories]


def changed_switches(preferences: Preferences, shown: Iterable[tuple[str, str]],
                     on: frozenset[tuple[str, str]], critical: frozenset[str]) -> Preferences:
    """The patch a submitted form makes: for each (category, channel) switch the page showed,
    on when its box came back ticked; only those that differ from now, none of a critical
    category (an HTML form sends ticked boxes only, so ``shown`` says which were on the page)."""
    patch: dict[str, dict[str, bool]] = {}
    for category, channel in shown:
        if category in critical or channel not in CHANNELS:
            continue
        wanted = (category, channel) in on
        if preferences.wants(channel, category, critical) != wanted:
            patch.setdefault(category, {})[channel] = wanted
    return Preferences(categories=patch)


def switch_value(category: str, channel: str) -> str:
    """A switch's form value: ``category/channel`` (a category name may hold anything but is
    at most 64 characters; a channel name never holds ``/``)."""
    return f"{category}/{channel}"


def parse_switch_values(values: Iterable[str], limit: int) -> list[tuple[str, str]]:
    """Form values back to (category, channel) pairs; malformed ones are dropped."""
    pairs: list[tuple[str, str]] = []
    for value in list(values)[:limit]:
        category, sep, channel = value.rpartition("/")
        if sep and category and len(category) <= 64 and channel in CHANNELS:
            pairs.append((category, channel))
    return pairs

