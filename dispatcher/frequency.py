"""Per-user frequency caps per category and channel (``DISPATCHER_FREQUENCY_CAPS``).

``marketing:push=3/1d, marketing:email=1/7d`` means: at most 3 ``marketing`` pushes per user
in any rolling day, at most 1 ``marketing`` email per user in any rolling week. A row over its
cap is ``skipped``/``rate_limited`` (the detail names the cap) without a provider call.
Critical categories are never capped (a cap naming one is refused at start-up).

What counts: every row of another notification admitted to be sent in the window (sent, or
still pending/sending), once per (notification, user, channel), so a redelivered chunk or an
update of the same notification does not count twice. The check and the admission happen in
the ledger's transaction (``dispatcher.store.ledger``), serialised per user on PostgreSQL, so
concurrent workers cannot both admit the last allowed message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dispatcher.model import CHANNELS

__all__ = ["Cap", "FrequencyCaps"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_ENTRY = re.compile(r"^\s*([A-Za-z0-9_.-]{1,64}):([a-z_]+)=(\d{1,6})/(\d{1,5})([smhd])\s*$")


@dataclass(frozen=True)
class Cap:
    channel: str
    limit: int
    period_us: int

    def describe(self, category: str) -> str:
        seconds = self.period_us // 1_000_000
        for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
            if seconds % size == 0:
                return f"at most {self.limit} {category} {self.channel} per {seconds // size}{unit}"
        raise AssertionError("unreachable")


class FrequencyCaps:
    def __init__(self, caps: dict[str, tuple[Cap, ...]] | None = None) -> None:
        self._caps = caps or {}

    @classmethod
    def parse(cls, text: str | None, critical: frozenset[str] = frozenset()) -> FrequencyCaps:
        """Raises ValueError naming the entry at fault."""
        caps: dict[str, list[Cap]] = {}
        for entry in (text or "").split(","):
            if not entry.strip():
                continue
            match = _ENTRY.match(entry)
            if match is None:
                raise ValueError(f"frequency cap {entry.strip()!r} must look like marketing:push=3/1d")
            category, channel, limit, amount, unit = match.groups()
            if channel not in CHANNELS or channel == "in_app":
                raise ValueError(f"frequency cap {entry.strip()!r}: channel must be email, sms or push")
            if category in critical:
                raise ValueError(f"frequency cap {entry.strip()!r}: {category} is a critical category, "
                                 "which is never capped")
            if int(limit) < 1 or int(amount) < 1:
                raise ValueError(f"frequency cap {entry.strip()!r}: the count and the period must be positive")
            caps.setdefault(category, []).append(
                Cap(channel, int(limit), int(amount) * _UNITS[unit] * 1_000_000))
        return cls({c: tuple(v) for c, v in caps.items()})

    def for_category(self, category: str) -> tuple[Cap, ...]:
        return self._caps.get(category, ())

    def retention_us(self) -> int:
        """How long an admitted entry can still count: the longest period, and at least a
        day (what a restart with a changed cap can still see)."""
        return max([86_400_000_000, *(c.period_us for caps in self._caps.values() for c in caps)])
