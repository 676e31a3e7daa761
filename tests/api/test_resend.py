"""Resend only what failed: the same rows, a new attempt, nothing that was sent."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import ClassVar

import httpx
import pytest
from support import new_id, path_id

from channels.base import InvalidRecipient, Message, Receipt
from dispatcher.api import create_app
from dispatcher.config import Settings
from dispatcher.runtime import Runtime


class FlakyEmail:
    """Refuses ``bad…`` addresses while ``refusing``; records every call."""

    name: ClassVar[str] = "flaky"
    channel: ClassVar[str] = "email"

    def __init__(self) -> None:
        self.refusing = True
        self.calls: Counter[str] = Counter()

    async def send(self, message: Message) -> Receipt:
        self.calls[message.to] += 1
        if self.refusing and message.to.startswith("bad"):
            raise InvalidRecipient(f"{message.to}: mailbox unavailable")
        return Receipt(f"id-{message.to}-{self.calls[message.to]}")

    async def aclose(self) -> None:
        return None


@pytest.fixture
def email() -> FlakyEmail:
    return FlakyEmail()


@pytest.fixture
async def runtime(settings: Settings, email: FlakyEmail) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(settings, providers={"email": email})
    yield rt
    await rt.close()


async def rows(client: httpx.AsyncClient, nid: str) -> dict[str, dict[str, object]]:
    items = (await client.get(f"/v1/notifications/{path_id(nid)}/deliveries", params={"limit": 1000})).json()["items"]
    return {i["user_id"]: i for i in items if i["channel"] == "email"}


async def test_only_failed_rows_are_sent_again_as_a_new_attempt(
        client: httpx.AsyncClient, runtime: Runtime, email: FlakyEmail) -> None:
    for i in range(5):
        await client.put(f"/v1/users/u{i}", json={"email": f"{'bad' if i < 3 else 'ok'}{i}@example.com"})
    nid = new_id()
    r = await client.post("/v1/notifications", json={"id": nid, "recipients": [f"u{i}" for i in range(5)],
                                                      "template": "app-install", "data": {"app_name": "Foo"}})
    assert r.status_code == 202
    await runtime.worker().drain()
    before = await rows(client, nid)
    assert sorted(u for u, row in before.items() if row["status"] == "failed") == ["u0", "u1", "u2"]

    email.refusing = False
    none = await client.post(f"/v1/notifications/{path_id(nid)}/resend", json={"reasons": ["retries_exhausted"]})
    assert none.status_code == 200 and none.json()["resent"] == 0
    r = await client.post(f"/v1/notifications/{path_id(nid)}/resend", json={"status": "failed", "channels": ["email"]})
    assert r.status_code == 200 and r.json() == {"id": nid, "version": 1, "resent": 3}
    await runtime.worker().drain()

    after = await rows(client, nid)
    assert len(after) == 5  # the same rows, no second one
    assert {u: (row["status"], row["attempts"]) for u, row in after.items()} == {
        "u0": ("sent", 2), "u1": ("sent", 2), "u2": ("sent", 2), "u3": ("sent", 1), "u4": ("sent", 1)}
    assert email.calls == Counter({"bad0@example.com": 2, "bad1@example.com": 2, "bad2@example.com": 2,
                                   "ok3@example.com": 1, "ok4@example.com": 1})
    counts = (await client.get(f"/v1/notifications/{path_id(nid)}")).json()["counts"]["email"]
    assert (counts["sent"], counts["failed"], counts["pending"]) == (5, 0, 0)
    again = await client.post(f"/v1/notifications/{path_id(nid)}/resend", json={})
    assert again.json()["resent"] == 0


async def test_resend_refuses_what_it_cannot_do(client: httpx.AsyncClient) -> None:
    nid = new_id()
    assert (await client.post(f"/v1/notifications/{path_id(nid)}/resend", json={})).status_code == 404
    for body in ({"status": "sent"}, {"channels": ["in_app"]}, {"reasons": ["nope"]}, {"extra": 1}):
        r = await client.post(f"/v1/notifications/{path_id(nid)}/resend", json=body)
        assert r.status_code == 422, body
    other = await client.post(f"/v1/notifications/{path_id(new_id('billing'))}/resend", json={})
    assert other.status_code == 403


@pytest.fixture
async def sqs_runtime(settings: Settings, email: FlakyEmail, aws: str) -> AsyncIterator[Runtime]:
    """The same service with SQS (moto_server) as its queue: the rows and the messages of a
    resend can't commit in one transaction there."""
    from support import create_queues

    queue_url, _ = create_queues(f"resend-{new_id().split('#')[1][:8]}")
    rt = await Runtime.open(settings.model_copy(update={"queue_url": queue_url, "queue_wait_seconds": 0}),
                            providers={"email": email})
    yield rt
    await rt.close()


async def test_a_resend_on_sqs_survives_a_gateway_lost_before_the_enqueue(
        sqs_runtime: Runtime, email: FlakyEmail) -> None:
    """The resend's messages are held (due now) in the transaction that reopens the rows. A
    gateway that dies right after that commit leaves them held, not lost: a worker's scheduler
    sends them. With the gateway alive they go to SQS at once."""
    from dispatcher.resend import Resender

    rt = sqs_runtime
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher",
                                 headers={"Authorization": "Bearer app-key"}) as client:
        for i in range(4):
            await client.put(f"/v1/users/u{i}", json={"email": f"bad{i}@example.com"})
        nid = new_id()
        r = await client.post("/v1/notifications", json={"id": nid, "recipients": [f"u{i}" for i in range(4)],
                                                          "template": "app-install", "data": {"app_name": "Foo"},
                                                          "channels": ["email"]})
        assert r.status_code == 202
        await rt.worker().drain()
        assert {row["status"] for row in (await rows(client, nid)).values()} == {"failed"}
        email.refusing = False

        # The gateway commits the resend and dies before releasing it (no release at all).
        header = await rt.store.notifications.get(nid)
        assert header is not None
        lost = Resender(rt.store, rt.settings.chunk_size, release=None)
        assert await lost.resend(header, reasons=None, channels=["email"]) == 4
        assert await rt.queue.depth() == 0  # nothing reached SQS
        assert {row["status"] for row in (await rows(client, nid)).values()} == {"pending"}
        await rt.worker().drain()  # a worker: its scheduler releases what is due, then works
        after = await rows(client, nid)
        assert {u: (row["status"], row["attempts"]) for u, row in after.items()} == {
            f"u{i}": ("sent", 2) for i in range(4)}

        # Through the API, with the gateway alive: released to SQS before the answer.
        email.refusing = True
        other = new_id()
        r = await client.post("/v1/notifications", json={"id": other, "recipients": ["u0"],
                                                          "template": "app-install", "data": {"app_name": "Foo"},
                                                          "channels": ["email"]})
        await rt.worker().drain()
        email.refusing = False
        resent = await client.post(f"/v1/notifications/{path_id(other)}/resend", json={})
        assert resent.status_code == 200 and resent.json()["resent"] == 1
        assert await rt.queue.depth() >= 1  # on SQS already
        await rt.worker().drain()
        assert (await rows(client, other))["u0"]["status"] == "sent"
