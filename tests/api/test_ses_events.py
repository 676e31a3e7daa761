"""SES events through SNS: signed messages move ledger rows forward (never back) and feed the
suppression list; anything SNS didn't sign for a trusted topic changes nothing.

SNS is played by the test: a generated key and self-signed certificate served over HTTP by a
local server that ``DISPATCHER_SNS_CERT_URL_PATTERN`` points at."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import API_KEYS, USER_SECRET, new_id, path_id, sent_lines, verify_sender

from bench.sns_signing import TOPIC, FakeSns, ses_event
from dispatcher.api import create_app
from dispatcher.config import Settings
from dispatcher.runtime import Runtime

EVENTS = "/v1/providers/ses/events"


@pytest.fixture
def sns() -> Iterator[FakeSns]:
    fake = FakeSns()
    yield fake
    fake.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path, sns: FakeSns) -> Settings:
    return Settings(
        database_url=database_url, api_keys=API_KEYS, user_token_secret=USER_SECRET,
        log_provider_path=tmp_path / "sent.jsonl", retry_base_delay=0.01, retry_max_delay=0.05,
        sns_cert_url_pattern=sns.pattern, sns_topic_arns=frozenset({TOPIC}), soft_bounce_limit=2)


async def send_email(client: httpx.AsyncClient, runtime: Runtime, user: str, email: str) -> dict[str, Any]:
    """Send ``user`` a notification by email; return its email ledger row."""
    assert (await client.put(f"/v1/users/{user}", json={"email": email})).status_code == 200
    nid = new_id()
    r = await client.post("/v1/notifications", json={"id": nid, "recipients": [user], "template": "app-install",
                                                      "data": {"app_name": "Foo"}, "channels": ["email"]})
    assert r.status_code == 202, r.text
    await runtime.worker().drain()
    return await email_row(client, nid)


async def email_row(client: httpx.AsyncClient, nid: str) -> dict[str, Any]:
    items = (await client.get(f"/v1/notifications/{path_id(nid)}/deliveries")).json()["items"]
    [row] = [i | {"notification_id": nid} for i in items if i["channel"] == "email"]
    return row


async def post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post(EVENTS, content=body, headers={"content-type": "text/plain; charset=UTF-8",
                                                            "authorization": ""})


@pytest.mark.parametrize("version", ["1", "2"])
async def test_a_signed_delivery_marks_the_row_delivered_and_counts_it(
        client: httpx.AsyncClient, runtime: Runtime, sns: FakeSns, version: str) -> None:
    row = await send_email(client, runtime, "u1", "u1@example.com")
    assert row["status"] == "sent"
    r = await post(client, sns.notification(ses_event("Delivery", row["provider_message_id"], "u1@example.com"),
                                            version=version))
    assert r.status_code == 200 and r.json()["applied"] is True, r.text
    after = await email_row(client, row["notification_id"])
    assert (after["status"], after["reason"]) == ("delivered", None)
    assert "250 2.0.0 OK" in after["detail"]
    counts = (await client.get(f"/v1/notifications/{path_id(row['notification_id'])}")).json()["counts"]
    assert counts["email"] | {} == {"pending": 0, "sent": 1, "delivered": 1, "bounced": 0, "complained": 0,
                                    "failed": 0, "skipped": 0}


async def test_rows_never_move_backwards_and_duplicates_change_nothing(
        client: httpx.AsyncClient, runtime: Runtime, sns: FakeSns) -> None:
    row = await send_email(client, runtime, "u1", "u1@example.com")
    mid = row["provider_message_id"]
    bounce = sns.notification(ses_event("Bounce", mid, "u1@example.com"))
    assert (await post(client, bounce)).json()["applied"] is True
    assert (await post(client, bounce)).json()["applied"] is False  # SNS redelivered it
    late = await post(client, sns.notification(ses_event("Delivery", mid, "u1@example.com")))
    assert late.status_code == 200 and late.json()["applied"] is False
    after = await email_row(client, row["notification_id"])
    assert (after["status"], after["reason"]) == ("bounced", "hard_bounce")
    assert "550 5.1.1 user unknown" in after["detail"]


async def test_a_hard_bounce_suppresses_the_address_until_it_is_lifted(
        client: httpx.AsyncClient, runtime: Runtime, sns: FakeSns) -> None:
    log = runtime.settings.log_provider_path
    assert log is not None
    row = await send_email(client, runtime, "u1", "Bob@Example.com")
    r = await post(client, sns.notification(ses_event("Bounce", row["provider_message_id"], "Bob@example.com")))
    assert r.json()["suppressed"] == ["Bob@example.com"]
    user = (await client.get("/v1/users/u1")).json()
    assert [(s["address"], s["cause"]) for s in user["suppressions"]] == [("bob@example.com", "hard_bounce")]
    emails_before = len([m for m in sent_lines(log) if m["channel"] == "email"])

    # The next email to that address is skipped, without a provider call; another user
    # sharing the address too (per address, not per user record).
    held = await send_email(client, runtime, "u1", "Bob@Example.com")
    assert (held["status"], held["reason"]) == ("skipped", "suppressed")
    shared = await send_email(client, runtime, "u2", "bob@example.com")
    assert (shared["status"], shared["reason"]) == ("skipped", "suppressed")
    assert len([m for m in sent_lines(log) if m["channel"] == "email"]) == emails_before

    # Another address for the user is not suppressed.
    assert (await send_email(client, runtime, "u1", "bob.new@example.com"))["status"] == "sent"

    assert (await client.get("/v1/suppressions/BOB@example.com")).json()["cause"] == "hard_bounce"
    assert (await client.delete("/v1/suppressions/bob@example.com")).status_code == 204
    assert (await client.delete("/v1/suppressions/bob@example.com")).status_code == 404
    assert (await send_email(client, runtime, "u2", "bob@example.com"))["status"] == "sent"


async def test_a_unit_of_work_that_may_email_asks_the_suppression_list(
        client: httpx.AsyncClient, runtime: Runtime, sns: FakeSns) -> None:
    """The worker asks the list only for units that may email (an in-app notification does
    not): an update naming no channels gives the rows a recipient lacks every channel of the
    template, email included, and those addresses are checked."""
    row = await send_email(client, runtime, "u1", "bob@example.com")
    await post(client, sns.notification(ses_event("Bounce", row["provider_message_id"], "bob@example.com")))
    assert (await client.put("/v1/users/u2", json={"email": "Bob@example.com"})).status_code == 200
    nid = new_id()
    body = {"id": nid, "template": "app-install", "data": {"app_name": "Foo"}}
    first = await client.post("/v1/notifications", json=body | {"recipients": ["u1"], "channels": ["in_app"]})
    assert first.status_code == 202, first.text
    await runtime.worker().drain()
    update = await client.post("/v1/notifications", json=body | {"recipients": ["u1", "u2"], "version": 2})
    assert update.status_code == 202, update.text
    await runtime.worker().drain()
    items = (await client.get(f"/v1/notifications/{path_id(nid)}/deliveries")).json()["items"]
    emails = sorted((i["user_id"], i["status"], i["reason"]) for i in items if i["channel"] == "email")
    assert emails == [("u1", "skipped", "suppressed"), ("u2", "skipped", "suppressed")]


async def test_a_bounce_published_before_the_lift_does_not_suppress_again(
        client: httpx.AsyncClient, runtime: Runtime, sns: FakeSns) -> None:
    """A captured signed bounce replayed after an operator lifted the address (or SNS
    redelivering an old one) changes nothing: its signed Timestamp is older than the lift.
    A bounce published after the lift suppresses as before."""
    row = await send_email(client, runtime, "u1", "bob@example.com")
    old_bounce = sns.notification(ses_event("Bounce", row["provider_message_id"], "bob@example.com"))
    assert (await post(client, old_bounce)).json()["suppressed"] == ["bob@example.com"]
    soft = [sns.notification(ses_event("Bounce", row["provider_message_id"], "bob@example.com",
                                       bounce_type="Transient")) for _ in range(3)]
    await asyncio.sleep(0.002)  # the lift comes strictly after those Timestamps (ms resolution)
    assert (await client.delete("/v1/suppressions/bob@example.com")).status_code == 204

    replayed = await post(client, old_bounce)
    assert replayed.status_code == 200 and replayed.json()["suppressed"] == []
    for body in soft:  # three old soft bounces, over the limit of 3, count for nothing either
        assert (await post(client, body)).json()["suppressed"] == []
    assert (await client.get("/v1/users/u1")).json()["suppressions"] == []
    assert (await send_email(client, runtime, "u1", "bob@example.com"))["status"] == "sent"

    await asyncio.sleep(0.002)
    again = await send_email(client, runtime, "u1", "bob@example.com")
    fresh = await post(client, sns.notification(ses_event("Bounce", again["provider_message_id"],
                                                          "bob@example.com")))
    assert fresh.json()["suppressed"] == ["bob@example.com"]


async def test_a_classic_complaint_notification_suppresses_and_marks_complained(
        client: httpx.AsyncClient, runtime: Runtime, sns: FakeSns) -> None:
    row = await send_email(client, runtime, "u1", "u1@example.com")
    mid = row["provider_message_id"]
    await post(client, sns.notification(ses_event("Delivery", mid, "u1@example.com", classic=True)))
    r = await post(client, sns.notification(ses_event("Complaint", mid, "u1@example.com", classic=True)))
    assert r.json() | {} == {"applied": True, "event": "Complaint", "matched": True, "suppressed": ["u1@example.com"]}
    after = await email_row(client, row["notification_id"])
    assert (after["status"], after["reason"]) == ("complained", "complaint")


async def test_soft_bounces_suppress_after_the_limit_counting_each_event_once(
        client: httpx.AsyncClient, runtime: Runtime, sns: FakeSns) -> None:
    first = await send_email(client, runtime, "u1", "u1@example.com")
    soft = sns.notification(ses_event("Bounce", first["provider_message_id"], "u1@example.com",
                                      bounce_type="Transient"), message_id="soft-1")
    assert (await post(client, soft)).json()["suppressed"] == []
    assert (await post(client, soft)).json()["suppressed"] == []  # the same event again: counted once
    after = await email_row(client, first["notification_id"])
    assert (after["status"], after["reason"]) == ("bounced", "soft_bounce")
    assert (await send_email(client, runtime, "u1", "u1@example.com"))["status"] == "sent"

    second = await send_email(client, runtime, "u1", "u1@example.com")
    r = await post(client, sns.notification(ses_event("Bounce", second["provider_message_id"], "u1@example.com",
                                                      bounce_type="Transient"), message_id="soft-2"))
    assert r.json()["suppressed"] == ["u1@example.com"]
    held = await send_email(client, runtime, "u1", "u1@example.com")
    assert (held["status"], held["reason"]) == ("skipped", "suppressed")


async def test_reject_fails_the_row_and_a_delay_only_explains(
        client: httpx.AsyncClient, runtime: Runtime, sns: FakeSns) -> None:
    delayed = await send_email(client, runtime, "u1", "u1@example.com")
    await post(client, sns.notification(ses_event("DeliveryDelay", delayed["provider_message_id"], "u1@example.com")))
    row = await email_row(client, delayed["notification_id"])
    assert row["status"] == "sent" and "MailboxFull" in row["detail"]
    rejected = await send_email(client, runtime, "u2", "u2@example.com")
    await post(client, sns.notification(ses_event("Reject", rejected["provider_message_id"], "u2@example.com")))
    row = await email_row(client, rejected["notification_id"])
    assert (row["status"], row["reason"]) == ("failed", "provider_rejected")


def _tampered(body: bytes) -> bytes:
    message = json.loads(body)
    message["Message"] = message["Message"].replace("Permanent", "Transient")
    return json.dumps(message).encode()


def _unsigned(body: bytes) -> bytes:
    message = json.loads(body)
    del message["Signature"]
    return json.dumps(message).encode()


@pytest.mark.parametrize("case", ["unsigned", "tampered", "foreign_cert", "other_key", "unknown_topic",
                                  "bad_version"])
async def test_what_sns_did_not_sign_for_us_is_a_403_and_changes_nothing(
        client: httpx.AsyncClient, runtime: Runtime, sns: FakeSns, case: str) -> None:
    row = await send_email(client, runtime, "u1", "u1@example.com")
    event = ses_event("Bounce", row["provider_message_id"], "u1@example.com")
    body = {
        "unsigned": lambda: _unsigned(sns.notification(event)),
        "tampered": lambda: _tampered(sns.notification(event)),
        # a certificate from a URL outside the pattern, even one that would verify
        "foreign_cert": lambda: sns.notification(event, cert="/other.pem"),
        "other_key": lambda: json.dumps(sns.sign(json.loads(sns.notification(event)), key=sns.other_key)).encode(),
        "unknown_topic": lambda: sns.notification(event, topic="arn:aws:sns:us-east-1:666:evil"),
        "bad_version": lambda: json.dumps(json.loads(sns.notification(event)) | {"SignatureVersion": "3"}).encode(),
    }[case]()
    r = await post(client, body)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "untrusted_message"
    assert (await email_row(client, row["notification_id"]))["status"] == "sent"
    assert (await client.get("/v1/users/u1")).json()["suppressions"] == []
    if case == "foreign_cert":
        assert "/other.pem" not in sns.visits


async def test_a_subscription_is_confirmed_only_on_the_certificates_host(
        client: httpx.AsyncClient, sns: FakeSns) -> None:
    r = await post(client, sns.confirmation(f"{sns.base}/?Action=ConfirmSubscription&Token=tok"))
    assert r.status_code == 200 and r.json()["subscription"] == "confirmed"
    assert "/?Action=ConfirmSubscription&Token=tok" in sns.visits
    elsewhere = await post(client, sns.confirmation("http://localhost:9/?Action=ConfirmSubscription"))
    assert elsewhere.status_code == 403


async def test_bad_bodies_are_clear_4xx(client: httpx.AsyncClient, sns: FakeSns) -> None:
    assert (await post(client, b"not json")).status_code == 422
    assert (await post(client, b'{"Type": "Nope"}')).json()["error"]["message"].startswith("Type:")
    assert (await post(client, b"x" * (600 * 1024))).status_code == 413
    not_ses = await post(client, sns.notification({"hello": "world"}))
    assert not_ses.status_code == 422 and "Message" in not_ses.json()["error"]["message"]


async def test_unregistered_devices_are_listed_with_the_users_suppressions(
        client: httpx.AsyncClient, runtime: Runtime) -> None:
    await client.post("/v1/users/u1/devices", json={"token": "tok-1", "platform": "android"})
    await runtime.store.users.deactivate_devices(["tok-1"])
    user = (await client.get("/v1/users/u1")).json()
    assert [(d["token"], d["active"]) for d in user["devices"]] == [("tok-1", False)]
    assert [(s["address"], s["channel"], s["cause"]) for s in user["suppressions"]] == [
        ("tok-1", "push", "unregistered_device")]
    await client.post("/v1/users/u1/devices", json={"token": "tok-1", "platform": "android"})
    assert (await client.get("/v1/users/u1")).json()["suppressions"] == []


async def test_a_concurrent_burst_with_duplicates_is_applied_exactly(
        client: httpx.AsyncClient, runtime: Runtime, sns: FakeSns) -> None:
    for i in range(100):
        await client.put(f"/v1/users/b{i}", json={"email": f"b{i}@example.com"})
    nid = new_id()
    r = await client.post("/v1/notifications", json={"id": nid, "recipients": [f"b{i}" for i in range(100)],
                                                      "template": "app-install", "data": {"app_name": "Foo"},
                                                      "channels": ["email"]})
    assert r.status_code == 202
    await runtime.worker().drain()
    items = (await client.get(f"/v1/notifications/{path_id(nid)}/deliveries", params={"limit": 1000})).json()["items"]
    bodies = []
    for i, row in enumerate(items):
        kind = "Bounce" if i % 10 == 0 else "Delivery"
        body = sns.notification(ses_event(kind, row["provider_message_id"], f"{row['user_id']}@example.com"))
        bodies += [body, body]  # every event delivered twice by SNS
    answers = await asyncio.gather(*(post(client, b) for b in bodies))
    assert {a.status_code for a in answers} == {200}
    assert sum(a.json()["applied"] for a in answers) == 100  # each event moved its row once
    counts = (await client.get(f"/v1/notifications/{path_id(nid)}")).json()["counts"]["email"]
    assert (counts["sent"], counts["delivered"], counts["bounced"]) == (100, 90, 10)


async def test_an_event_about_a_message_sent_through_ses_finds_its_row(
        aws: str, settings: Settings, sns: FakeSns) -> None:
    """Real SES message ids (moto_server's SES v2 over HTTP), matched by the events."""
    verify_sender("noreply@example.com")
    rt = await Runtime.open(settings.model_copy(update={"email_provider": "ses",
                                                        "email_from": "noreply@example.com"}))
    try:
        transport = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher",
                                     headers={"Authorization": "Bearer app-key"}) as client:
            row = await send_email(client, rt, "u1", "u1@example.com")
            assert row["status"] == "sent" and not row["provider_message_id"].startswith("log-")
            r = await post(client, sns.notification(ses_event("Complaint", row["provider_message_id"],
                                                                "u1@example.com")))
            assert r.json()["matched"] is True and r.json()["applied"] is True
            after = await email_row(client, row["notification_id"])
            assert (after["status"], after["reason"]) == ("complained", "complaint")
            held = await send_email(client, rt, "u1", "u1@example.com")
            assert (held["status"], held["reason"]) == ("skipped", "suppressed")
    finally:
        await rt.close()


async def test_events_get_what_every_request_gets(client: httpx.AsyncClient, runtime: Runtime,
                                                  sns: FakeSns) -> None:
    """The events skip the general middleware (``SesEventsLane``): they still carry the caller's
    request id, are counted in the HTTP metrics by route, and a body streamed past the limit
    (no Content-Length) is refused with 413 before it is read whole."""
    async def counted(status: int) -> float:  # the registry is the process's: compare before/after
        text = (await client.get("/metrics")).text
        found = re.search(r'dispatcher_http_requests_total\{method="POST",'
                          rf'route="/v1/providers/ses/events",status="{status}"\}} ([0-9.]+)', text)
        return float(found.group(1)) if found else 0.0

    before = {status: await counted(status) for status in (200, 413)}
    row = await send_email(client, runtime, "u1", "u1@example.com")
    r = await client.post(EVENTS, content=sns.notification(ses_event("Delivery", row["provider_message_id"],
                                                                      "u1@example.com")),
                          headers={"content-type": "text/plain", "x-request-id": "sns-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "sns-42"
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 64 × 64 KiB = 4 MiB offered
            sent += 1
            yield b"x" * 65536

    big = await client.post(EVENTS, content=chunks(), headers={"content-type": "text/plain"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
    assert big.headers["connection"] == "close"  # the rest of the body is never read
    assert sent < 64, "the body was read whole"
    assert big.headers["x-request-id"]
    assert {status: await counted(status) - before[status] for status in (200, 413)} == {200: 1, 413: 1}
