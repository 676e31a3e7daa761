"""The in-app feed: newest first, cursors, unread, read marks, and updates by version."""

from __future__ import annotations

from typing import Any

import httpx
from support import new_id, sent_lines, user_token

from dispatcher.runtime import Runtime

ME = {"Authorization": f"Bearer {user_token('u1', ttl=24 * 3600)}"}  # lives as long as the test run


async def send(client: httpx.AsyncClient, runtime: Runtime, nid: str, *, version: int = 1,
               state: str = "installing", app: str = "Foo", **extra: Any) -> None:
    r = await client.post("/v1/notifications", json={
        "id": nid, "recipients": ["u1"], "template": "app-install", "data": {"app_name": app},
        "state": state, "version": version, **extra})
    assert r.status_code == 202, r.text
    await runtime.worker().drain()


async def feed(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await client.get("/v1/users/u1/notifications", params=params, headers=ME)
    assert r.status_code == 200, r.text
    return r.json()


async def test_feed_is_newest_first_with_cursor_pages(client: httpx.AsyncClient, runtime: Runtime) -> None:
    ids = [new_id() for _ in range(5)]
    for i, nid in enumerate(ids):
        await send(client, runtime, nid, app=f"App{i}")
    first = await feed(client, limit=2)
    assert [item["id"] for item in first["items"]] == [ids[4], ids[3]]
    assert first["unread_count"] == 5
    second = await feed(client, limit=2, cursor=first["next_cursor"])
    third = await feed(client, limit=2, cursor=second["next_cursor"])
    assert [i["id"] for i in second["items"] + third["items"]] == [ids[2], ids[1], ids[0]]
    assert third["next_cursor"] is None


async def test_reading_marks_entries_and_the_unread_filter_follows(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    a, b = new_id(), new_id()
    await send(client, runtime, a)
    await send(client, runtime, b)
    r = await client.post(f"/v1/users/u1/notifications/{a}/read".replace("#", "%23"), headers=ME)
    assert r.json() == {"id": a, "read": True, "unread_count": 1}
    unread = await feed(client, unread="true")
    assert [i["id"] for i in unread["items"]] == [b]
    assert (await client.post("/v1/users/u1/notifications/read-all", headers=ME)).json()["marked"] == 1
    assert (await feed(client))["unread_count"] == 0
    missing = await client.post(f"/v1/users/u1/notifications/{new_id()}/read".replace("#", "%23"), headers=ME)
    assert missing.status_code == 404


async def test_a_higher_version_updates_the_entry_in_place_and_unreads_it(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    nid = new_id()
    await send(client, runtime, nid)
    await client.post("/v1/users/u1/notifications/read-all", headers=ME)
    await send(client, runtime, nid, version=2, state="completed")
    [item] = (await feed(client))["items"]
    assert (item["state"], item["title"], item["read"], item["version"]) == (
        "completed", "Foo installed", False, 2)


async def test_an_equal_or_lower_version_is_accepted_and_changes_nothing(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    nid = new_id()
    await send(client, runtime, nid, version=2, state="completed")
    await send(client, runtime, nid, version=1, state="installing")
    await send(client, runtime, nid, version=2, state="failed")
    [item] = (await feed(client))["items"]
    assert (item["state"], item["version"]) == ("completed", 2)
    header = (await client.get(f"/v1/notifications/{nid.replace('#', '%23')}")).json()
    assert (header["state"], header["version"]) == ("completed", 2)


async def test_updates_arriving_out_of_order_end_at_the_highest_version(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    nid = new_id()
    base = {"id": nid, "recipients": ["u1"], "template": "app-install", "data": {"app_name": "Foo"}}
    for version, state in [(3, "failed"), (1, "installing"), (2, "completed")]:
        await client.post("/v1/notifications", json={**base, "version": version, "state": state})
    await runtime.worker().drain()
    [item] = (await feed(client))["items"]
    assert (item["state"], item["version"]) == ("failed", 3)


async def test_an_update_resends_only_the_channels_it_names(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    await client.put("/v1/users/u1", json={"email": "u1@example.com", "phone": "+821012345678"})
    nid = new_id()
    await send(client, runtime, nid)
    await send(client, runtime, nid, version=2, state="completed")
    await send(client, runtime, nid, version=3, state="failed", channels=["sms"])
    lines = sent_lines(runtime.settings.log_provider_path)
    emails = [x["parts"]["subject"] for x in lines if x["channel"] == "email"]
    sms = [x["parts"]["text"] for x in lines if x["channel"] == "sms"]
    assert emails == ["Installing Foo…"]
    assert len(sms) == 2 and "installing" in sms[0].lower() and "failed" in sms[1].lower()
    [item] = (await feed(client))["items"]
    assert item["state"] == "failed"
