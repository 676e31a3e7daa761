"""Quiet hours as a clock computes them: overnight and same-day windows, seconds, and the
nights when daylight-saving time starts or ends (America/New_York, 2026)."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from dispatcher.preferences import Preferences
from dispatcher.quiet_hours import QuietHours

NY = ZoneInfo("America/New_York")
SEOUL = ZoneInfo("Asia/Seoul")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(("now", "window", "release"), [
    # overnight 22:00-07:00 in Seoul (UTC+9, no DST)
    ("2026-06-01T23:30:00+09:00", ("22:00", "07:00"), "2026-06-02T07:00:00+09:00"),
    ("2026-06-02T06:59:59+09:00", ("22:00", "07:00"), "2026-06-02T07:00:00+09:00"),
    ("2026-06-02T07:00:00+09:00", ("22:00", "07:00"), None),   # the end is not in the window
    ("2026-06-01T21:59:59+09:00", ("22:00", "07:00"), None),
    ("2026-06-01T22:00:00+09:00", ("22:00", "07:00"), "2026-06-02T07:00:00+09:00"),
    # a same-day window, with seconds
    ("2026-06-01T13:00:00+09:00", ("12:00", "13:00:30"), "2026-06-01T13:00:30+09:00"),
    ("2026-06-01T11:00:00+09:00", ("12:00", "13:00"), None),
    # start == end: no window
    ("2026-06-01T12:00:00+09:00", ("12:00", "12:00"), None),
])
def test_the_window_and_its_end_in_seoul(now: str, window: tuple[str, str],
                                         release: str | None) -> None:
    quiet = QuietHours.from_json({"start": window[0], "end": window[1]})
    got = quiet.release_at(at(now), SEOUL)
    assert got == (at(release) if release else None)


def test_a_night_when_clocks_spring_forward_ends_at_07_00_on_the_new_offset() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT: the night is an hour shorter; 07:00 is 11:00Z, not 12:00Z.
    quiet = QuietHours(time(22), time(7))
    assert quiet.release_at(at("2026-03-07T23:00:00-05:00"), NY) == at("2026-03-08T11:00:00+00:00")


def test_a_night_when_clocks_fall_back_ends_at_07_00_on_the_new_offset() -> None:
    # 2026-11-01 02:00 EDT -> 01:00 EST: the night is an hour longer; 07:00 EST is 12:00Z.
    quiet = QuietHours(time(22), time(7))
    assert quiet.release_at(at("2026-10-31T23:00:00-04:00"), NY) == at("2026-11-01T12:00:00+00:00")


def test_an_end_inside_the_spring_gap_ends_after_the_gap_never_before() -> None:
    # 02:30 does not exist on 2026-03-08 in New York; the window ends at 03:30 EDT (07:30Z).
    quiet = QuietHours(time(1), time(2, 30))
    release = quiet.release_at(at("2026-03-08T01:30:00-05:00"), NY)
    assert release == at("2026-03-08T07:30:00+00:00")
    assert release.astimezone(NY).strftime("%H:%M %Z") == "03:30 EDT"


def test_an_end_that_happens_twice_ends_at_its_first_occurrence() -> None:
    # 01:30 happens twice on 2026-11-01 in New York: first at 05:30Z (EDT).
    quiet = QuietHours(time(0), time(1, 30))
    assert quiet.release_at(at("2026-11-01T00:45:00-04:00"), NY) == at("2026-11-01T05:30:00+00:00")


@pytest.mark.parametrize("raw", [
    {"start": "24:00", "end": "07:00"}, {"start": "7:00", "end": "08:00"}, {"start": "22:00"},
    {"start": "22:00", "end": "07:00", "extra": 1}, {"start": 22, "end": 7}, "22-07",
])
def test_malformed_quiet_hours_are_refused_naming_the_field(raw: object) -> None:
    with pytest.raises(ValueError, match="quiet_hours"):
        QuietHours.from_json(raw)  # type: ignore[arg-type]


def test_preferences_tell_none_from_unset_and_merge_them() -> None:
    default = QuietHours.from_setting("22:00-07:00")
    unset = Preferences.from_json({"channels": {}})
    assert unset.quiet(default) == default and "quiet_hours" not in unset.to_json()
    none = unset.merged(Preferences.from_json({"quiet_hours": None}))
    assert none.quiet(default) is None and none.to_json()["quiet_hours"] is None
    own = none.merged(Preferences.from_json({"quiet_hours": {"start": "23:00", "end": "06:30"}}))
    assert own.quiet(default) == QuietHours(time(23), time(6, 30))
    kept = own.merged(Preferences.from_json({"channels": {"sms": False}}))
    assert kept.quiet_hours == own.quiet_hours and kept.channels == {"sms": False}
    assert Preferences.from_json(kept.to_json()) == kept
