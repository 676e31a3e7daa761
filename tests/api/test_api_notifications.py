"""Sending notifications through the HTTP API, as a service would."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from support import channel_counts, new_id, path_id, sent_lines, user_token

from dispatcher.api import create_app
from dispatcher.runtime import Runtime


def body(nid: str, recipients: list[str], **extra: Any) -> dict[str, Any]:
    return {"id": nid, "recipients": recipients, "template": "app-install",
            "data": {"app_name": "Foo"}, "state": "installing", **extra}


async def deliver(runtime: Runtime) -> None:
    await runtime.worker().drain()


async def test_a_bulk_is_accepted_and_every_recipient_gets_one_row_per_channel(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    for i in range(120):
        r = await client.put(f"/v1/users/u{i}", json={"email": f"u{i}@example.com",
                                                      "phone": "+821012345678"})
        assert r.status_code == 200
    nid = new_id()
    r = await client.post("/v1/notifications", json=body(nid, [f"u{i}" for i in range(130)]))
    assert r.status_code == 202 and r.json() == {"id": nid, "accepted": 130}
    await deliver(runtime)
    r = await client.get(f"/v1/notifications/{path_id(nid)}")
    assert r.status_code == 200
    got = r.json()
    assert (got["state"], got["version"], got["recipients"]) == ("installing", 1, 130)
    assert got["counts"] == {
        "in_app": channel_counts(sent=130),
        "email": channel_counts(sent=120, skipped=10),
        "sms": channel_counts(sent=120, skipped=10),
        "push": channel_counts(skipped=130),
    }
    emails = [line for line in sent_lines(runtime.settings.log_provider_path)
              if line["channel"] == "email"]
    assert len(emails) == 120 and emails[0]["parts"]["subject"] == "Installing Foo…"


async def test_duplicate_recipients_count_once(client: httpx.AsyncClient, runtime: Runtime) -> None:
    nid = new_id()
    r = await client.post("/v1/notifications", json=body(nid, ["a", "b", "a"]))
    assert r.json()["accepted"] == 2
    await deliver(runtime)
    rows = (await client.get(f"/v1/notifications/{path_id(nid)}/deliveries")).json()["items"]
    assert sorted((d["user_id"], d["channel"]) for d in rows if d["channel"] == "in_app") == [
        ("a", "in_app"), ("b", "in_app")]


@pytest.mark.parametrize(("nid", "message"), [
    ("not-an-id", "does not match"),
    ("app#1234", "does not match"),
    ("app#zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz", "does not match"),
    (f"billing#{new_id().split('#')[1]}", "belongs to service 'billing'"),
])
async def test_an_id_outside_the_policy_is_a_400(client: httpx.AsyncClient, nid: str, message: str) -> None:
    r = await client.post("/v1/notifications", json=body(nid, ["u1"]))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_id" and message in r.json()["error"]["message"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic abc"}])
async def test_a_missing_or_wrong_key_is_a_401(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    client.headers.pop("Authorization")
    r = await client.post("/v1/notifications", json=body(new_id(), ["u1"]), headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("change", "field"), [
    ({"template": "no-such-template"}, "template"),
    ({"channels": ["fax"]}, "channels"),
    ({"channels": []}, "channels"),
    ({"recipients": []}, "recipients"),
    ({"recipients": [f"u{i}" for i in range(10_001)]}, "recipients"),
    ({"data": {}}, "app_name"),
    ({"version": 0}, "version"),
    ({"surprise": 1}, "surprise"),
])
async def test_a_bad_request_is_a_422_naming_the_field(
        client: httpx.AsyncClient, runtime: Runtime, change: dict[str, Any], field: str) -> None:
    r = await client.post("/v1/notifications", json={**body(new_id(), ["u1"]), **change})
    assert r.status_code == 422
    assert field in r.json()["error"]["message"]
    assert await runtime.queue.depth() == 0


async def test_ten_thousand_recipients_are_accepted_in_chunks(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    r = await client.post("/v1/notifications", json=body(new_id(), [f"u{i}" for i in range(10_000)]))
    assert r.status_code == 202 and r.json()["accepted"] == 10_000
    assert await runtime.queue.depth() == 10_000 // runtime.settings.chunk_size


async def test_another_services_notification_cannot_be_read(client: httpx.AsyncClient) -> None:
    nid = new_id()
    assert (await client.post("/v1/notifications", json=body(nid, ["u1"]))).status_code == 202
    r = await client.get(f"/v1/notifications/{path_id(nid)}",
                         headers={"Authorization": "Bearer billing-key"})
    assert r.status_code == 403
    r = await client.get(f"/v1/notifications/{path_id(new_id())}")
    assert r.status_code == 404


async def test_deliveries_page_through_every_row_and_filter_by_status(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    await client.put("/v1/users/u0", json={"email": "u0@example.com"})
    nid = new_id()
    await client.post("/v1/notifications", json=body(nid, [f"u{i}" for i in range(5)]))
    await deliver(runtime)
    rows, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(f"/v1/notifications/{path_id(nid)}/deliveries", params=params)).json()
        rows += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(rows) == 20 and len({(r["user_id"], r["channel"]) for r in rows}) == 20
    sent = (await client.get(f"/v1/notifications/{path_id(nid)}/deliveries",
                             params={"status": "sent"})).json()["items"]
    assert sorted((r["user_id"], r["channel"]) for r in sent) == [
        ("u0", "email")] + [(f"u{i}", "in_app") for i in range(5)]
    bad = await client.get(f"/v1/notifications/{path_id(nid)}/deliveries", params={"cursor": "nope"})
    assert bad.status_code == 400


async def test_a_user_token_cannot_send(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/notifications", json=body(new_id(), ["u1"]),
                          headers={"Authorization": f"Bearer {user_token('u1')}"})
    assert r.status_code == 403


async def test_templates_are_listed_and_previewed(client: httpx.AsyncClient) -> None:
    listed = (await client.get("/v1/templates")).json()["items"]
    assert [t["name"] for t in listed] == ["app-install"]
    assert listed[0]["channels"] == ["email", "in_app", "push", "sms"]
    r = await client.post("/v1/templates/app-install/preview",
                          json={"data": {"app_name": "<b>Foo</b>"}, "state": "completed", "locale": "ko-KR"})
    assert r.status_code == 200
    channels = r.json()["channels"]
    assert "<b>Foo</b>" in channels["in_app"]["title"]
    assert "&lt;b&gt;Foo&lt;/b&gt;" in channels["email"]["html"]
    missing = await client.post("/v1/templates/app-install/preview", json={"data": {}})
    assert missing.status_code == 422 and "app_name" in missing.json()["error"]["message"]
    assert (await client.post("/v1/templates/nope/preview", json={})).status_code == 404


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_an_unreachable_store_is_a_503_not_a_500(postgres_url: str) -> None:
    """The database goes away under a running gateway (dropped, connections killed)."""
    import psycopg
    from support import API_KEYS, POSTGRES_ADMIN_URL

    from dispatcher.api import create_app
    from dispatcher.config import Settings

    name = f"dispatcher_gone_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        rt = await Runtime.open(Settings(
            database_url=postgres_url.rpartition("/")[0] + "/" + name, api_keys=API_KEYS))
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    try:
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://d",
                                     headers={"Authorization": "Bearer app-key"}) as client:
            ready = await client.get("/readyz")
            sent = await client.post("/v1/notifications", json=body(new_id(), ["u1"]))
            feed = await client.get("/v1/users/u1/notifications")
    finally:
        await rt.close()
    assert ready.status_code == 503
    for r in (sent, feed):
        assert r.status_code == 503, r.text
        assert r.json()["error"] == {"code": "unavailable",
                                     "message": "the store is unavailable; retry later"}


@pytest.mark.parametrize("spelling", [
    lambda u: u.upper(), lambda u: u.replace("-", ""), lambda u: u[:9] + u[9:].replace("-", "", 1) + "-",
    lambda u: u + "\n", lambda u: " " + u, lambda u: "{" + u + "}",
])
async def test_one_uuid_is_one_notification_only_its_canonical_spelling_is_accepted(
        client: httpx.AsyncClient, spelling: Any) -> None:
    canonical = str(uuid.uuid4())
    body = {"recipients": ["u1"], "template": "app-install", "data": {"app_name": "Foo"}}
    assert (await client.post("/v1/notifications", json={"id": f"app#{canonical}", **body})).status_code == 202
    r = await client.post("/v1/notifications", json={"id": f"app#{spelling(canonical)}", **body})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_id" and "canonical" in r.json()["error"]["message"]


async def test_a_send_the_lane_takes_answers_as_the_app_would(client: httpx.AsyncClient) -> None:
    """A well-formed send is answered in front of the app (dispatcher.api.notifications.SendLane):
    the caller still gets its request id, and operators its access metric by route."""
    async def accepted_so_far() -> float:  # the counter lives as long as the test process
        found = re.search(r'dispatcher_http_requests_total\{method="POST",route="/v1/notifications",'
                          r'status="202"\} ([0-9.e+]+)', (await client.get("/metrics")).text)
        return float(found.group(1)) if found else 0.0

    before = await accepted_so_far()
    nid = new_id()
    r = await client.post("/v1/notifications", json=body(nid, ["u1"]), headers={"X-Request-ID": "send-1"})
    assert (r.status_code, r.json(), r.headers["x-request-id"]) == (202, {"id": nid, "accepted": 1}, "send-1")
    assert r.headers["content-type"] == "application/json"
    again = await client.post("/v1/notifications", json=body(nid, ["u1"]))
    assert again.status_code == 202 and again.headers["x-request-id"] != "send-1"
    assert await accepted_so_far() == before + 2


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize(("content", "headers", "status", "says"), [
    (b'{"id": ', {"Content-Type": "application/json"}, 422, "JSON"),
    (b"", {"Content-Type": "application/json"}, 422, "body"),
    (b'["not", "an", "object"]', {"Content-Type": "application/json"}, 422, "body"),
    (b"\xff\xfe", {"Content-Type": "application/json"}, 422, ""),
    (None, {"Content-Type": "text/plain"}, 422, "body"),
    (None, {"Content-Type": "application/json", "Authorization": "Bearer not-a-key"}, 401,
     "not a valid API key"),
    (None, {"Content-Type": "application/json", "Authorization": "Bearer <u1's user token>"}, 403,
     "service API key"),
], ids=["broken JSON", "empty", "not an object", "not UTF-8", "not JSON", "wrong key", "user token"])
async def test_a_send_the_lane_hands_on_gets_the_apps_own_answer(
        client: httpx.AsyncClient, runtime: Runtime, content: bytes | None, headers: dict[str, str],
        status: int, says: str) -> None:
    payload = json.dumps(body(new_id(), ["u1"])).encode() if content is None else content
    # minted now, not when the module is collected: a token made then may have expired
    headers = {k: v.replace("<u1's user token>", user_token("u1")) for k, v in headers.items()}
    r = await client.post("/v1/notifications", content=payload, headers=headers)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]["message"] and r.headers["x-request-id"]
    assert await runtime.queue.depth() == 0


async def test_a_streamed_send_is_read_whole_and_one_past_the_limit_is_a_413(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    nid = new_id()
    raw = json.dumps(body(nid, ["u1", "u2"])).encode()
    pieces = [raw[i:i + 7] for i in range(0, len(raw), 7)]
    r = await client.post("/v1/notifications", content=_chunks(pieces),
                          headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()) == (202, {"id": nid, "accepted": 2})
    limit = runtime.settings.max_body_bytes
    big = json.dumps(body(new_id(), ["u1"], data={"app_name": "x" * limit})).encode()
    r = await client.post("/v1/notifications", content=_chunks([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                          headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert await runtime.queue.depth() == 1  # the first send's one chunk only


async def test_a_browsers_send_keeps_the_cors_answer(runtime: Runtime) -> None:
    allowed = dataclasses.replace(runtime, settings=runtime.settings.model_copy(
        update={"cors_origins": frozenset({"https://app.example"})}))
    transport = httpx.ASGITransport(app=create_app(allowed))
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher",
                                 headers={"Authorization": "Bearer app-key"}) as client:
        nid = new_id()
        r = await client.post("/v1/notifications", json=body(nid, ["u1"]),
                              headers={"Origin": "https://app.example"})
        assert r.status_code == 202 and r.headers["access-control-allow-origin"] == "https://app.example"
