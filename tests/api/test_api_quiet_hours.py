"""Quiet hours through the API, with real time: a window that ends two seconds from now.

During it, email, SMS and push of a non-critical category wait (``pending``, reason
``quiet_hours``, until the window's end) while in-app is immediate and a critical category
goes at once; when it ends, the held rows are sent, once.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from support import API_KEYS, USER_SECRET, channel_counts, new_id, path_id, sent_lines, user_token

from dispatcher.config import Settings
from dispatcher.quiet_hours import QuietHours
from dispatcher.runtime import Runtime

ZONE = "America/New_York"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url, api_keys=API_KEYS, user_token_secret=USER_SECRET,
        log_provider_path=tmp_path / "sent.jsonl", retry_base_delay=0.01, retry_max_delay=0.05,
        chunk_size=50, critical_services="app")


def body(nid: str, recipients: list[str], **extra: Any) -> dict[str, Any]:
    return {"id": nid, "recipients": recipients, "template": "app-install",
            "data": {"app_name": "Foo"}, "state": "installing", **extra}


async def _user(client: httpx.AsyncClient, user: str, quiet: dict[str, str] | None) -> None:
    r = await client.put(f"/v1/users/{user}", json={"email": f"{user}@example.com",
                                                    "phone": "+821012345678", "timezone": ZONE})
    assert r.status_code == 200, r.text
    r = await client.post(f"/v1/users/{user}/devices", json={"token": f"tok-{user}", "platform": "ios"})
    assert r.status_code in (200, 201)
    r = await client.put(f"/v1/users/{user}/preferences", json={"quiet_hours": quiet})
    assert r.status_code == 200, r.text
    # Stored as given, written back without seconds when they are :00 (22:00:00 -> 22:00).
    assert r.json()["quiet_hours"] == (QuietHours.from_json(quiet).to_json() if quiet else None)


def _window_ending_in(seconds: float) -> tuple[dict[str, str], float]:
    end = datetime.now(UTC) + timedelta(seconds=seconds)
    local = end.astimezone(ZoneInfo(ZONE))
    if local.microsecond:
        local += timedelta(microseconds=1_000_000 - local.microsecond)  # whole seconds
    start = local - timedelta(hours=1)
    return {"start": start.strftime("%H:%M:%S"), "end": local.strftime("%H:%M:%S")}, local.timestamp()


async def test_quiet_hours_hold_email_sms_push_until_they_end(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    quiet, ends = _window_ending_in(2)
    await _user(client, "night-owl", quiet)
    await _user(client, "awake", None)
    nid = new_id()
    assert (await client.post("/v1/notifications", json=body(nid, ["night-owl", "awake"]))).status_code == 202
    await runtime.worker().drain()

    assert runtime.settings.log_provider_path is not None
    sent = [m for m in sent_lines(runtime.settings.log_provider_path) if m["notification_id"] == nid]
    assert sorted((m["user_id"], m["channel"]) for m in sent) == [
        ("awake", "email"), ("awake", "push"), ("awake", "sms")]
    feed = (await client.get("/v1/users/night-owl/notifications",
                             headers={"Authorization": f"Bearer {user_token('night-owl')}"})).json()
    assert [e["id"] for e in feed["items"]] == [nid]  # in-app is immediate
    rows = (await client.get(f"/v1/notifications/{path_id(nid)}/deliveries")).json()["items"]
    waiting = {d["channel"]: d for d in rows if d["user_id"] == "night-owl" and d["channel"] != "in_app"}
    assert {(c, d["status"], d["reason"]) for c, d in waiting.items()} == {
        (c, "pending", "quiet_hours") for c in ("email", "sms", "push")}
    until = datetime.fromtimestamp(ends, UTC).isoformat().replace("+00:00", "Z")
    assert all(until in d["detail"] for d in waiting.values()), waiting

    await asyncio.sleep(max(ends - time.time(), 0) + 0.01)
    await runtime.worker().drain()
    sent = [m for m in sent_lines(runtime.settings.log_provider_path) if m["notification_id"] == nid]
    assert sorted((m["user_id"], m["channel"]) for m in sent) == sorted(
        [(u, c) for u in ("awake", "night-owl") for c in ("email", "push", "sms")])
    assert all(m["at"] >= ends for m in sent if m["user_id"] == "night-owl")
    counts = (await client.get(f"/v1/notifications/{path_id(nid)}")).json()["counts"]
    assert all(c == channel_counts(sent=2) for c in counts.values()), counts


async def test_a_critical_category_ignores_quiet_hours(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    quiet, _ = _window_ending_in(3600)
    await _user(client, "night-owl", quiet)
    nid = new_id()
    r = await client.post("/v1/notifications", json=body(nid, ["night-owl"], category="security"))
    assert r.status_code == 202, r.text
    await runtime.worker().drain()
    assert runtime.settings.log_provider_path is not None
    sent = [m for m in sent_lines(runtime.settings.log_provider_path) if m["notification_id"] == nid]
    assert sorted(m["channel"] for m in sent) == ["email", "push", "sms"]


@pytest.mark.parametrize("quiet", [{"start": "25:00", "end": "07:00"}, {"start": "22:00"},
                                   {"start": "22:00", "end": "07:00", "tz": "UTC"}])
async def test_bad_quiet_hours_are_a_422_naming_them(client: httpx.AsyncClient, quiet: Any) -> None:
    r = await client.put("/v1/users/u1/preferences", json={"quiet_hours": quiet})
    assert r.status_code == 422, r.text
    assert "quiet_hours" in r.json()["error"]["message"]


async def test_preferences_keep_quiet_hours_until_changed_and_null_clears_them(
        client: httpx.AsyncClient) -> None:
    r = await client.put("/v1/users/u1/preferences", json={"quiet_hours": {"start": "22:00", "end": "07:00"}})
    assert r.json()["quiet_hours"] == {"start": "22:00", "end": "07:00"}
    r = await client.put("/v1/users/u1/preferences", json={"channels": {"sms": False}})
    assert r.json()["quiet_hours"] == {"start": "22:00", "end": "07:00"}
    r = await client.put("/v1/users/u1/preferences", json={"quiet_hours": None})
    assert r.json()["quiet_hours"] is None and r.json()["channels"] == {"sms": False}
