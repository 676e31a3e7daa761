"""SES events yield to sends: while ``dispatcher serve`` has sends in flight, events are
admitted at ``DISPATCHER_SES_EVENTS_RATE_WHILE_SENDING`` per second, each answered late but
never refused; with nothing in flight they are answered at once.

A real ``serve`` sends a bulk of emails to an SES v2 endpoint that holds every request (the
sends stay in flight for as long as the test needs). SNS is played by the test: messages
signed with a generated key whose certificate a local server serves. Only lower bounds of
time are asserted (a held event cannot be answered before its turn); the count of held
events is read from ``/metrics``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from servers.holding_ses import HoldingSes
from support import sqlite_query

from bench.sns_signing import TOPIC, FakeSns, ses_event

USERS = 20
RATE = 4.0  # events per second while sending
EVENTS = 8  # posted at once: admitted at 0, 0.25, ..., 1.75 s


@pytest.fixture
def sns() -> Iterator[FakeSns]:
    fake = FakeSns()
    yield fake
    fake.close()


@pytest.fixture
def ses() -> Iterator[HoldingSes]:
    with HoldingSes() as server:
        yield server


def _held_total(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    found = re.search(r"^dispatcher_ses_events_held_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _post_at_once(url: str, bodies: list[bytes]) -> list[tuple[int, float]]:
    """Post every body at the same moment; (status, seconds until its answer) for each."""
    def post(body: bytes) -> tuple[int, float]:
        started = time.monotonic()
        answer = httpx.post(f"{url}/v1/providers/ses/events", content=body, timeout=30, trust_env=False,
                            headers={"content-type": "text/plain; charset=UTF-8"})
        return answer.status_code, time.monotonic() - started
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def test_events_wait_their_turn_while_sends_are_in_flight_and_not_otherwise(
    tmp_path, dispatcher_env, start_server, wait_until, ses, sns,
):
    env = dispatcher_env | {
        "DISPATCHER_EMAIL_PROVIDER": "ses",
        "DISPATCHER_EMAIL_FROM": "noreply@example.com",
        "AWS_ENDPOINT_URL": ses.url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "DISPATCHER_WORKER_PROCESSES": "1",
        "DISPATCHER_SEND_CONCURRENCY": "8",
        "DISPATCHER_PROVIDER_TIMEOUT": "120",  # held sends stay in flight until released
        "DISPATCHER_SNS_CERT_URL_PATTERN": sns.pattern,
        "DISPATCHER_SNS_TOPIC_ARNS": TOPIC,
        "DISPATCHER_SES_EVENTS_RATE_WHILE_SENDING": str(RATE),
        "DISPATCHER_SES_EVENTS_MAX_HOLD": "5",
    }
    server = start_server(env)
    users = [f"user-{i:02d}" for i in range(USERS)]
    with server.client() as client:
        for user in users:
            assert client.put(f"/v1/users/{user}", json={"email": f"{user}@example.com"}
                              ).status_code in (200, 201)

        # Idle: events about messages nobody knows are answered at once, none held.
        idle = _post_at_once(server.url, [sns.notification(ses_event(
            "Delivery", f"unknown-{i}", "someone@example.com")) for i in range(EVENTS)])
        assert [status for status, _ in idle] == [200] * EVENTS
        assert _held_total(client) == 0

        nid = f"app#{uuid.uuid4()}"
        response = client.post("/v1/notifications", json={
            "id": nid, "recipients": users, "template": "app-install", "channels": ["email"],
            "data": {"app_name": "Foo"}})
        assert response.status_code == 202, response.text
        wait_until(lambda: ses.held_count() >= 8, timeout=60, what="8 sends in flight at the provider")

        # Sending: the same events wait for their turns, one every 1/RATE s, and all are answered.
        busy = _post_at_once(server.url, [sns.notification(ses_event(
            "Delivery", f"unknown-{i}", "someone@example.com")) for i in range(EVENTS)])
        assert [status for status, _ in busy] == [200] * EVENTS
        slowest = max(seconds for _, seconds in busy)
        assert slowest >= (EVENTS - 1) / RATE - 0.05, busy  # the last turn comes 1.75 s after the first
        assert _held_total(client) >= EVENTS - 1  # the first may find its turn free

        # Once the provider answers, the bulk is sent and nothing was lost to the events.
        ses.accept_from_now_on()
        wait_until(lambda: sqlite_query(
            tmp_path / "dispatcher.db",
            "SELECT count(*) AS n FROM deliveries WHERE notification_id = ? AND status = 'sent'",
            nid)[0]["n"] == USERS, timeout=60, what="every email sent")
