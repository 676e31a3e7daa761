"""``send_at`` and cancel, through the HTTP API, on SQLite and PostgreSQL (the embedded queue).

Time is real here: ``send_at`` is two seconds ahead, and the test waits until that moment
has passed (a known instant, not a guess) before asking the worker to drain the queue.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from support import channel_counts, new_id, path_id, sent_lines, user_token

from dispatcher.runtime import Runtime

CHANNELS = ("in_app", "email", "sms", "push")


def body(nid: str, recipients: list[str], **extra: Any) -> dict[str, Any]:
    return {"id": nid, "recipients": recipients, "template": "app-install",
            "data": {"app_name": "Foo"}, "state": "installing", **extra}


async def _users(client: httpx.AsyncClient, n: int) -> list[str]:
    users = [f"u{i}" for i in range(n)]
    for u in users:
        r = await client.put(f"/v1/users/{u}", json={"email": f"{u}@example.com",
                                                     "phone": "+821012345678"})
        assert r.status_code == 200, r.text
        r = await client.post(f"/v1/users/{u}/devices", json={"token": f"tok-{u}", "platform": "android"})
        assert r.status_code in (200, 201), r.text
    return users


async def _feed(client: httpx.AsyncClient, user: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/users/{user}/notifications",
                         headers={"Authorization": f"Bearer {user_token(user)}"})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def _sent_to(runtime: Runtime, nid: str) -> list[dict[str, Any]]:
    assert runtime.settings.log_provider_path is not None
    return [m for m in sent_lines(runtime.settings.log_provider_path) if m["notification_id"] == nid]


async def test_send_at_holds_every_channel_until_its_time(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    users = await _users(client, 3)
    nid = new_id()
    at = datetime.now(UTC) + timedelta(seconds=2)
    r = await client.post("/v1/notifications", json=body(
        nid, users, send_at=at.astimezone(datetime.now().astimezone().tzinfo).isoformat()))
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 3 and r.json()["send_at"].startswith(at.strftime("%Y-%m-%dT%H:%M:%S"))

    await runtime.worker().drain()  # before send_at: nothing moves
    assert _sent_to(runtime, nid) == []
    assert await _feed(client, "u0") == []
    got = (await client.get(f"/v1/notifications/{path_id(nid)}")).json()
    assert (got["state"], got["scheduled"], got["cancelled_at"]) == ("installing", True, None)
    assert all(got["counts"][c] == channel_counts(pending=3)
               for c in CHANNELS), got["counts"]

    await asyncio.sleep(max(at.timestamp() - time.time(), 0) + 0.01)
    await runtime.worker().drain()
    sent = _sent_to(runtime, nid)
    assert sorted((m["channel"], m["user_id"]) for m in sent) == sorted(
        (c, u) for c in ("email", "sms", "push") for u in users)
    assert [e["id"] for e in await _feed(client, "u0")] == [nid]
    got = (await client.get(f"/v1/notifications/{path_id(nid)}")).json()
    assert got["scheduled"] is False
    assert all(got["counts"][c]["sent"] == 3 for c in CHANNELS), got["counts"]


@pytest.mark.parametrize(("send_at", "fragment"), [
    ((datetime.now(UTC) + timedelta(days=45)).isoformat(), "days ahead"),
    ("2030-01-01T10:00:00", "timezone"),
    ("tomorrow", "datetime"),
])
async def test_a_bad_send_at_is_a_422_naming_it(client: httpx.AsyncClient, send_at: str,
                                               fragment: str) -> None:
    r = await client.post("/v1/notifications", json=body(new_id(), ["u1"], send_at=send_at))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "send_at" in error["message"] and fragment in error["message"], error


async def test_a_past_send_at_sends_at_once(client: httpx.AsyncClient, runtime: Runtime) -> None:
    await _users(client, 1)
    nid = new_id()
    r = await client.post("/v1/notifications", json=body(nid, ["u0"], send_at="2020-01-01T00:00:00Z"))
    assert r.status_code == 202 and "send_at" not in r.json()
    await runtime.worker().drain()
    assert len(_sent_to(runtime, nid)) == 3


async def test_cancelling_a_scheduled_notification_sends_nothing_ever(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    users = await _users(client, 2)
    nid = new_id()
    at = datetime.now(UTC) + timedelta(seconds=1.5)
    assert (await client.post("/v1/notifications", json=body(nid, users, send_at=at.isoformat()))
            ).status_code == 202
    r = await client.post(f"/v1/notifications/{path_id(nid)}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["cancelled"] == len(users) * len(CHANNELS)
    assert (r.json()["in_flight"], r.json()["already_cancelled"]) == (0, False)

    await asyncio.sleep(max(at.timestamp() - time.time(), 0) + 0.01)
    await runtime.worker().drain()
    assert _sent_to(runtime, nid) == []
    assert await _feed(client, "u0") == []
    got = (await client.get(f"/v1/notifications/{path_id(nid)}")).json()
    assert got["cancelled_at"] and got["scheduled"] is False
    assert all(got["counts"][c] == channel_counts(skipped=2)
               for c in CHANNELS), got["counts"]
    again = await client.post(f"/v1/notifications/{path_id(nid)}/cancel")
    assert again.status_code == 200 and again.json()["already_cancelled"] is True
    assert again.json()["cancelled"] == 0


async def test_a_queued_notification_cancelled_opens_its_rows_as_cancelled(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    users = await _users(client, 3)
    nid = new_id()
    before = await _cancelled_counted(client)
    assert (await client.post("/v1/notifications", json=body(nid, users))).status_code == 202
    r = await client.post(f"/v1/notifications/{path_id(nid)}/cancel")  # before any worker ran
    assert r.json()["cancelled"] == 12
    await runtime.worker().drain()
    assert _sent_to(runtime, nid) == []
    assert await _feed(client, "u1") == []
    rows = (await client.get(f"/v1/notifications/{path_id(nid)}/deliveries")).json()["items"]
    assert len(rows) == 12
    assert {(d["status"], d["reason"]) for d in rows} == {("skipped", "cancelled")}
    # counted in dispatcher_deliveries_total as written: skipped/cancelled, not as planned
    assert await _cancelled_counted(client) - before == 12


async def _cancelled_counted(client: httpx.AsyncClient) -> float:
    """skipped/cancelled rows in ``dispatcher_deliveries_total`` (the process's registry)."""
    text = (await client.get("/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("dispatcher_deliveries_total{")
               and 'reason="cancelled"' in line and 'status="skipped"' in line)


async def test_what_was_sent_stays_sent_and_a_later_version_is_refused(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    users = await _users(client, 2)
    nid = new_id()
    assert (await client.post("/v1/notifications", json=body(nid, users))).status_code == 202
    await runtime.worker().drain()
    r = await client.post(f"/v1/notifications/{path_id(nid)}/cancel")
    assert (r.json()["cancelled"], r.json()["in_flight"]) == (0, 0)
    got = (await client.get(f"/v1/notifications/{path_id(nid)}")).json()
    assert all(got["counts"][c]["sent"] == 2 for c in CHANNELS), got["counts"]
    assert [e["state"] for e in await _feed(client, "u0")] == ["installing"]

    update = await client.post("/v1/notifications", json=body(nid, users, version=2, state="completed"))
    assert update.status_code == 409, update.text
    assert update.json()["error"]["code"] == "cancelled"
    await runtime.worker().drain()
    assert [e["state"] for e in await _feed(client, "u0")] == ["installing"]
    assert len(_sent_to(runtime, nid)) == 6


async def test_only_the_owning_service_cancels(client: httpx.AsyncClient) -> None:
    nid = new_id()
    assert (await client.post("/v1/notifications", json=body(nid, ["u1"]))).status_code == 202
    other = await client.post(f"/v1/notifications/{path_id(nid)}/cancel",
                              headers={"Authorization": "Bearer billing-key"})
    assert other.status_code == 403
    missing = await client.post(f"/v1/notifications/{path_id(new_id())}/cancel")
    assert missing.status_code == 404
