"""Webhooks out: registered per service, written with the ledger change that causes them,
signed per Standard Webhooks, retried with backoff (same webhook-id), kept as failed, replayed.

The receiver is a real local HTTP server verifying signatures with the ``standardwebhooks``
package; the sender loop runs as it does in a worker process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from support import API_KEYS, USER_SECRET, new_id, path_id, until
from webhook_receiver import Receiver

from bench.sns_signing import TOPIC, FakeSns, ses_event
from channels.base import InvalidRecipient, Message, Receipt
from dispatcher.config import Settings
from dispatcher.runtime import Runtime


class RefusingEmail:
    """Email that the provider refuses for addresses starting with ``bad``."""

    name: ClassVar[str] = "refusing"
    channel: ClassVar[str] = "email"

    async def send(self, message: Message) -> Receipt:
        if message.to.startswith("bad"):
            raise InvalidRecipient(f"{message.to}: no such mailbox")
        return Receipt(f"ses-{message.user_id}-{message.notification_id[-8:]}")

    async def aclose(self) -> None:
        return None


@pytest.fixture
def sns() -> Iterator[FakeSns]:
    fake = FakeSns()
    yield fake
    fake.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path, sns: FakeSns) -> Settings:
    return Settings(
        database_url=database_url, api_keys=API_KEYS, user_token_secret=USER_SECRET,
        log_provider_path=tmp_path / "sent.jsonl", retry_base_delay=0.01, retry_max_delay=0.05,
        chunk_size=50, sns_cert_url_pattern=sns.pattern, sns_topic_arns=frozenset({TOPIC}),
        webhook_allowed_networks=frozenset({"127.0.0.0/8"}), webhook_retry_base_delay=0.05,
        webhook_retry_max_delay=0.2, webhook_retry_period=5.0, webhook_poll_interval=0.05,
        webhook_timeout=5.0)


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(settings, providers={"email": RefusingEmail()})
    stop = asyncio.Event()
    sender = asyncio.create_task(rt.webhook_sender().run(stop))
    yield rt
    stop.set()
    await sender
    await rt.close()


async def register(client: httpx.AsyncClient, receiver: Receiver, **extra: Any) -> dict[str, Any]:
    r = await client.put("/v1/webhooks", json={"url": receiver.url, **extra})
    assert r.status_code == 200, r.text
    receiver.secret = r.json()["secret"]
    return dict(r.json())


async def users(client: httpx.AsyncClient, good: int, bad: int) -> list[str]:
    ids = []
    for i in range(good + bad):
        uid = f"u{i:04d}"
        email = f"{'bad' if i < bad else 'ok'}{i}@example.com"
        assert (await client.put(f"/v1/users/{uid}", json={"email": email})).status_code == 200
        ids.append(uid)
    return ids


async def notify(client: httpx.AsyncClient, runtime: Runtime, recipients: list[str]) -> str:
    nid = new_id()
    r = await client.post("/v1/notifications", json={"id": nid, "recipients": recipients, "template": "app-install",
                                                      "data": {"app_name": "Foo"}, "channels": ["email"]})
    assert r.status_code == 202, r.text
    await runtime.worker().drain()
    return nid


async def test_failures_are_batched_and_completion_is_told_once_with_counts(
        client: httpx.AsyncClient, runtime: Runtime, receiver: Receiver) -> None:
    endpoint = await register(client, receiver)
    assert endpoint["secret"].startswith("whsec_") and set(endpoint["events"]) == {
        "notification.completed", "delivery.failed", "delivery.bounced", "delivery.complained"}
    recipients = await users(client, good=40, bad=260)
    nid = await notify(client, runtime, recipients)

    completed = await until(lambda: receiver.of_type("notification.completed"), "notification.completed")
    failed = await until(lambda: sum(len(p["data"]["deliveries"]) for p in receiver.of_type("delivery.failed"))
                         == 260 and receiver.of_type("delivery.failed"), "every failure told")
    [done] = completed
    assert done["data"]["notification_id"] == nid and done["data"]["version"] == 1
    assert done["data"]["counts"]["email"] | {} == {"pending": 0, "sent": 40, "delivered": 0, "bounced": 0,
                                                    "complained": 0, "failed": 260, "skipped": 0}
    told = [(d["user_id"], d["reason"]) for p in failed for d in p["data"]["deliveries"]]
    assert sorted(told) == [(u, "invalid_contact") for u in recipients[:260]]
    assert len(failed) < 260 / 10, f"{len(failed)} webhooks for 260 failures: not batched"
    assert all(len(p["data"]["deliveries"]) <= 100 and p["data"]["version"] == 1 for p in failed)
    assert receiver.bad_signatures == 0 and receiver.accepted_twice == []


async def test_a_failing_receiver_gets_retries_with_the_same_id_then_it_is_kept_failed_and_replayed(
        client: httpx.AsyncClient, runtime: Runtime, receiver: Receiver) -> None:
    await register(client, receiver, events=["notification.completed"])
    receiver.failing = True
    nid = await notify(client, runtime, await users(client, good=3, bad=0))

    async def failed() -> list[dict[str, Any]]:
        r = await client.get("/v1/webhooks/deliveries", params={"status": "failed"})
        return list(r.json()["items"])

    [kept] = await until(failed, "the webhook to be kept as failed")
    assert kept["payload"]["data"]["notification_id"] == nid and kept["attempts"] >= 3
    assert "HTTP 500" in kept["last_error"]
    assert list(receiver.attempts) == [kept["id"]]  # every attempt carried the same webhook-id
    assert receiver.attempts[kept["id"]] == kept["attempts"]

    receiver.failing = False
    assert (await client.post("/v1/webhooks/deliveries/replay", json={})).json() == {"replayed": 1}
    await until(lambda: kept["id"] in receiver.accepted, "the replayed webhook")

    async def delivered() -> list[str]:  # recorded right after the receiver's answer
        r = await client.get("/v1/webhooks/deliveries", params={"status": "delivered"})
        return [i["id"] for i in r.json()["items"]]

    assert await until(delivered, "the replayed webhook recorded as delivered") == [kept["id"]]


async def test_failed_webhooks_are_listed_and_replayed_from_the_cli(
        client: httpx.AsyncClient, runtime: Runtime, receiver: Receiver, settings: Settings) -> None:
    await register(client, receiver, events=["notification.completed"])
    receiver.failing = True
    await notify(client, runtime, await users(client, good=1, bad=0))
    [kept] = await until(lambda: _failed_ids(client), "the webhook to be kept as failed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env |= {"DISPATCHER_DATABASE_URL": settings.database_url, "DISPATCHER_API_KEYS": API_KEYS}
    cli = [sys.executable, "-m", "dispatcher", "--log-level", "error", "webhooks"]
    listed = subprocess.run([*cli, "failed", "--service", "app"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [kept]
    receiver.failing = False
    replayed = subprocess.run([*cli, "replay", "--id", kept], env=env, capture_output=True, text=True,
                              timeout=120)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout) == {"replayed": 1}
    await until(lambda: kept in receiver.accepted, "the webhook replayed from the CLI")


async def _failed_ids(client: httpx.AsyncClient) -> list[str]:
    r = await client.get("/v1/webhooks/deliveries", params={"status": "failed"})
    return [i["id"] for i in r.json()["items"]]


async def test_a_bounce_is_told_to_the_service(client: httpx.AsyncClient, runtime: Runtime,
                                              receiver: Receiver, sns: FakeSns) -> None:
    await register(client, receiver, events=["delivery.bounced", "delivery.complained"])
    receiver.fail_first = 1
    nid = await notify(client, runtime, await users(client, good=1, bad=0))
    items = (await client.get(f"/v1/notifications/{path_id(nid)}/deliveries")).json()["items"]
    mid = items[0]["provider_message_id"]
    body = sns.notification(ses_event("Bounce", mid, "ok0@example.com"))
    for _ in range(2):  # SNS redelivers: one webhook all the same
        r = await client.post("/v1/providers/ses/events", content=body)
        assert r.status_code == 200
    [bounced] = await until(lambda: receiver.of_type("delivery.bounced"), "delivery.bounced")
    assert (bounced["data"]["notification_id"], bounced["data"]["version"]) == (nid, 1)
    told = bounced["data"]["deliveries"][0]
    assert (told["user_id"], told["status"], told["reason"]) == ("u0000", "bounced", "hard_bounce")
    assert max(receiver.attempts.values()) == 2  # the 500 was retried, same id
    await asyncio.sleep(0.3)
    assert len(receiver.accepted) == 1


@pytest.mark.parametrize(("url", "word"), [
    ("ftp://example.com/hook", "http"),
    ("https://user:pw@example.com/hook", "credentials"),
    ("http://10.1.2.3/hook", "not a public address"),
    ("http://169.254.169.254/latest/meta-data", "not a public address"),
    ("http://[::1]:8080/hook", "not a public address"),
    ("http://no-such-host.invalid/hook", "does not resolve"),
    ("not a url", "http"),
])
async def test_webhook_urls_are_validated_and_private_addresses_refused(
        client: httpx.AsyncClient, url: str, word: str) -> None:
    r = await client.put("/v1/webhooks", json={"url": url})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith("url:") and word in r.json()["error"]["message"]
    assert (await client.get("/v1/webhooks")).status_code == 404


async def test_the_secret_is_kept_on_update_and_rotated_on_request(
        client: httpx.AsyncClient, receiver: Receiver) -> None:
    first = await register(client, receiver)
    second = await register(client, receiver, events=["delivery.failed"])
    assert second["secret"] == first["secret"] and second["events"] == ["delivery.failed"]
    rotated = await register(client, receiver, rotate_secret=True)
    assert rotated["secret"] != first["secret"]
    assert (await client.get("/v1/webhooks")).json()["secret"] == rotated["secret"]
    assert (await client.get("/v1/webhooks", headers={"authorization": "Bearer billing-key"})).status_code == 404
    assert (await client.delete("/v1/webhooks")).status_code == 204
    assert (await client.get("/v1/webhooks")).status_code == 404


async def test_no_endpoint_no_outbox_rows(client: httpx.AsyncClient, runtime: Runtime) -> None:
    await notify(client, runtime, await users(client, good=2, bad=2))
    r = await client.get("/v1/webhooks/deliveries")
    assert r.json()["items"] == []


async def test_a_cancelled_scheduled_notification_is_told_completed_with_its_skips(
        client: httpx.AsyncClient, runtime: Runtime, receiver: Receiver) -> None:
    await register(client, receiver, events=["notification.completed"])
    recipients = await users(client, good=3, bad=0)
    nid = new_id()
    at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = await client.post("/v1/notifications", json={"id": nid, "recipients": recipients, "template": "app-install",
                                                      "data": {"app_name": "Foo"}, "channels": ["email"],
                                                      "send_at": at})
    assert r.status_code == 202, r.text
    await runtime.worker().drain()
    assert (await client.post(f"/v1/notifications/{path_id(nid)}/cancel")).status_code == 200
    [done] = await until(lambda: receiver.of_type("notification.completed"), "notification.completed")
    assert done["data"]["notification_id"] == nid
    assert done["data"]["counts"]["email"]["skipped"] == 3 and done["data"]["counts"]["email"]["pending"] == 0
    resend = await client.post(f"/v1/notifications/{path_id(nid)}/resend", json={})
    assert resend.status_code == 409 and resend.json()["error"]["code"] == "cancelled"


async def test_completion_is_told_again_when_a_resend_is_final(
        client: httpx.AsyncClient, runtime: Runtime, receiver: Receiver) -> None:
    await register(client, receiver, events=["notification.completed"])
    recipients = await users(client, good=1, bad=2)
    nid = await notify(client, runtime, recipients)
    [first] = await until(lambda: receiver.of_type("notification.completed"), "the first completion")
    assert (first["data"]["counts"]["email"]["sent"], first["data"]["counts"]["email"]["failed"]) == (1, 2)

    for uid in recipients[:2]:  # the addresses are fixed; what failed is sent again
        assert (await client.put(f"/v1/users/{uid}", json={"email": f"fixed-{uid}@example.com"})).status_code == 200
    resent = await client.post(f"/v1/notifications/{path_id(nid)}/resend", json={})
    assert resent.json()["resent"] == 2
    await runtime.worker().drain()
    completions = await until(lambda: len(receiver.of_type("notification.completed")) == 2
                              and receiver.of_type("notification.completed"), "the completion after the resend")
    assert completions[1]["data"]["version"] == 1
    assert (completions[1]["data"]["counts"]["email"]["sent"], completions[1]["data"]["counts"]["email"]["failed"]) \
        == (3, 0)
    # nothing more is told once it is final again
    await runtime.worker().drain()
    assert len(receiver.of_type("notification.completed")) == 2 and receiver.accepted_twice == []
