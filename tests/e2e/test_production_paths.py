"""The production adapters wired by configuration, in one process: SQS, SES and SNS on
moto_server over HTTP, FCM on a local HTTP v1 server, PostgreSQL. Each test is a path a user
of the production stack depends on: a bulk to all four channels, the DLQ, a provider
throttling then recovering, an unregistered token, and the one-click unsubscribe link."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers.aws_errors import AwsProtocolServer
from support import API_KEYS, USER_SECRET, channel_counts, create_queues, new_id, path_id, verify_sender

from bench.fcm_server import FcmServer, fcm_error
from dispatcher.api import create_app
from dispatcher.config import Settings
from dispatcher.runtime import Runtime

SENDER = "no-reply@example.com"


@pytest.fixture
def fcm() -> Iterator[FcmServer]:
    with FcmServer() as server:
        yield server


@pytest.fixture
def production(aws: str, postgres_url: str, fcm: FcmServer, tmp_path: Path) -> Settings:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    queue_url, _ = create_queues(max_receives=3)
    verify_sender(SENDER)
    return Settings(
        database_url=postgres_url, queue_url=queue_url, api_keys=API_KEYS,
        user_token_secret=USER_SECRET, email_provider="ses", email_from=SENDER,
        sms_provider="sns", push_provider="fcm", fcm_endpoint=fcm.url,
        google_application_credentials=fcm.write_service_account(tmp_path / "sa.json"),
        chunk_size=25, queue_wait_seconds=0, retry_base_delay=0.01, retry_max_delay=1.5,
        public_url="https://notify.example.com")


@pytest.fixture
async def runtime(production: Settings) -> AsyncIterator[Runtime]:
    """Overrides the shared ``runtime``; the shared ``client`` then talks to this one."""
    rt = await Runtime.open(production)
    yield rt
    await rt.close()


async def register(client: httpx.AsyncClient, n: int) -> None:
    for i in range(n):
        r = await client.put(f"/v1/users/u{i}", json={"email": f"u{i}@example.com",
                                                      "phone": f"+8210{40_000_000 + i}"})
        assert r.status_code == 200, r.text
        await client.post(f"/v1/users/u{i}/devices", json={"token": f"tok-{i}", "platform": "ios"})


async def send(client: httpx.AsyncClient, runtime: Runtime, recipients: list[str],
               **extra: Any) -> str:
    nid = new_id()
    r = await client.post("/v1/notifications", json={
        "id": nid, "recipients": recipients, "template": "app-install",
        "data": {"app_name": "Foo"}, "state": "installing", **extra})
    assert r.status_code == 202, r.text
    await runtime.worker().drain()
    return nid


async def rows(client: httpx.AsyncClient, nid: str) -> dict[tuple[str, str], dict[str, Any]]:
    items = (await client.get(f"/v1/notifications/{path_id(nid)}/deliveries",
                              params={"limit": 1000})).json()["items"]
    return {(r["user_id"], r["channel"]): r for r in items}


async def test_a_bulk_through_sqs_reaches_all_four_channels(
        client: httpx.AsyncClient, runtime: Runtime, fcm: FcmServer, moto_data: Any) -> None:
    await register(client, 60)
    nid = await send(client, runtime, [f"u{i}" for i in range(60)] + ["nobody"])
    counts = (await client.get(f"/v1/notifications/{path_id(nid)}")).json()["counts"]
    assert counts["in_app"] == channel_counts(sent=61)
    for channel in ("email", "sms", "push"):
        assert counts[channel] == channel_counts(sent=60, skipped=1)
    data = moto_data.dump()
    emails = sorted(m["destinations"]["ToAddresses"][0] for m in data["ses"]["Message"])
    assert emails == sorted(f"u{i}@example.com" for i in range(60))
    assert {m["subject"] for m in data["ses"]["Message"]} == {"Installing Foo…"}
    assert sorted(m["phone_number"] for m in data["sns"]["SMS"]) == sorted(
        f"+8210{40_000_000 + i}" for i in range(60))
    assert sorted(m["token"] for m in fcm.received) == sorted(f"tok-{i}" for i in range(60))
    assert {m["notification"]["title"] for m in fcm.received} == {"Installing Foo…"}
    assert await runtime.queue.depth() == 0


async def test_a_poison_message_on_the_queue_lands_in_the_dlq_with_its_reason(
        runtime: Runtime) -> None:
    bad_id = json.dumps({"id": "app#not-a-uuid", "service": "app", "template": "app-install",
                         "recipients": ["u1"]})
    await runtime.queue.send_batch(["{broken", bad_id])
    await runtime.worker().drain()
    letters = {d.body: d.reason for d in await runtime.queue.dead_letters()}
    assert "not JSON" in letters["{broken"]
    assert "does not match" in letters[bad_id]
    assert await runtime.queue.depth() == 0


async def test_a_throttling_provider_is_retried_until_it_recovers(
        client: httpx.AsyncClient, runtime: Runtime, fcm: FcmServer) -> None:
    await register(client, 1)
    fcm.script("tok-0", [fcm_error("QUOTA_EXCEEDED", headers={"Retry-After": "1"}),
                         fcm_error("UNAVAILABLE")])
    nid = await send(client, runtime, ["u0"], channels=["push"])
    row = (await rows(client, nid))[("u0", "push")]
    assert (row["status"], row["attempts"]) == ("sent", 3)
    assert [m["token"] for m in fcm.received] == ["tok-0"]


async def test_an_unregistered_token_fails_and_its_device_is_switched_off(
        client: httpx.AsyncClient, runtime: Runtime, fcm: FcmServer) -> None:
    await register(client, 2)
    fcm.unregister("tok-1")
    nid = await send(client, runtime, ["u0", "u1"], channels=["push"])
    got = await rows(client, nid)
    assert got[("u0", "push")]["status"] == "sent"
    assert (got[("u1", "push")]["status"], got[("u1", "push")]["reason"]) == (
        "failed", "unregistered_device")
    devices = (await client.get("/v1/users/u1")).json()["devices"]
    assert devices == [{"token": "tok-1", "platform": "ios", "active": False}]
    again = await send(client, runtime, ["u1"], channels=["push"])
    assert (await rows(client, again))[("u1", "push")]["reason"] == "no_contact"


async def test_the_unsubscribe_link_in_an_email_switches_that_category_off(
        production: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    async with AwsProtocolServer() as ses:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SESV2", ses.url)  # SES only: record the request
        rt = await Runtime.open(production)
        try:
            transport = httpx.ASGITransport(app=create_app(rt))
            async with httpx.AsyncClient(transport=transport, base_url="https://notify.example.com",
                                         headers={"Authorization": "Bearer app-key"}) as client:
                await client.put("/v1/users/u0", json={"email": "u0@example.com"})
                await send(client, rt, ["u0"], channels=["email"])
                [request] = ses.requests
                headers = {h["Name"]: h["Value"]
                           for h in request.json()["Content"]["Simple"]["Headers"]}
                assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
                link = headers["List-Unsubscribe"].strip("<>")
                public = httpx.AsyncClient(transport=transport)  # no API key: the link is enough
                assert (await public.post(link, data={"List-Unsubscribe": "One-Click"})).status_code == 200
                await public.aclose()
                later = await send(client, rt, ["u0"], channels=["email"])
                assert (await rows(client, later))[("u0", "email")]["reason"] == "opted_out"
                assert len(ses.requests) == 1
        finally:
            await rt.close()
