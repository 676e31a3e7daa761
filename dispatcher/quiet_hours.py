"""Quiet hours: a daily window, in the user's time zone, when email, SMS and push wait.

``{"start": "22:00", "end": "07:00"}`` (``HH:MM`` or ``HH:MM:SS``, wall-clock time in the
user's ``timezone``). ``start`` after ``end`` spans midnight; ``start`` equal to ``end`` is
no window at all. The window holds from ``start`` (included) to ``end`` (excluded).

Daylight-saving time: the window is read on the wall clock of the day in question. When the
end falls in a gap (clocks jump from 02:00 to 03:00 and the end is 02:30), the window ends at
the first instant after the gap with the same offset arithmetic as ``zoneinfo`` (03:30
local): later, never earlier, than the user asked. When the end occurs twice (clocks fall
back), the window ends at its first occurrence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["QuietHours"]

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")


def _parse_clock(value: object, name: str) -> time:
    match = _CLOCK.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"quiet_hours.{name} must be HH:MM or HH:MM:SS (24-hour), not {value!r}")
    hours, minutes, seconds = match.groups()
    return time(int(hours), int(minutes), int(seconds or 0))


def _format(value: time) -> str:
    return value.strftime("%H:%M:%S" if value.second else "%H:%M")


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> QuietHours:
        """Raises ValueError naming the field for a bad shape or clock time."""
        if not isinstance(raw, Mapping) or set(raw) != {"start", "end"}:
            raise ValueError('quiet_hours must be {"start": "HH:MM", "end": "HH:MM"}')
        return cls(_parse_clock(raw["start"], "start"), _parse_clock(raw["end"], "end"))

    @classmethod
    def from_setting(cls, value: str) -> QuietHours:
        """``"22:00-07:00"`` (``DISPATCHER_QUIET_HOURS``)."""
        start, sep, end = value.partition("-")
        if not sep:
            raise ValueError(f"quiet hours must look like 22:00-07:00, not {value!r}")
        return cls(_parse_clock(start.strip(), "start"), _parse_clock(end.strip(), "end"))

    def to_json(self) -> dict[str, str]:
        return {"start": _format(self.start), "end": _format(self.end)}

    def release_at(self, now: datetime, zone: ZoneInfo) -> datetime | None:
        """None when ``now`` (aware) is outside the window; else when the window ends (UTC)."""
        if self.start == self.end:
            return None
        local = now.astimezone(zone)
        clock = local.time().replace(tzinfo=None)
        if self.start < self.end:
            inside = self.start <= clock < self.end
        else:
            inside = clock >= self.start or clock < self.end
        if not inside:
            return None
        day = local.date() if clock < self.end else local.date() + timedelta(days=1)
        end = datetime.combine(day, self.end, tzinfo=zone).astimezone(UTC)
        if end <= now:  # a gap or a fold put the wall-clock end behind us: the next instant
            end = now.astimezone(UTC) + timedelta(microseconds=1)
        return end
