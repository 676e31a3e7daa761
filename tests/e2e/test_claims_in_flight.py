"""kill -9 during a throttle storm: the rows a crash leaves ``outcome_unknown`` are exactly the
requests the provider had in flight, never rows that were only waiting.

A real ``dispatcher serve`` sends a bulk of emails through SES (the SES v2 wire protocol, from
a local server: moto cannot throttle or hold a request). The server answers the first
requests with a throttling error (Retry-After), then holds every request it receives without
answering, as a provider stuck mid-storm would. Once the dispatcher has filled its send slots
(``DISPATCHER_SEND_CONCURRENCY``), it is SIGKILLed. At that moment the ledger's ``sending``
rows must be the held requests' recipients, one for one: rows waiting for a retry, a slot or
a connection are ``pending``, so that after a restart they are simply sent, and only the
held ones are settled as ``failed``/``outcome_unknown``.

The settings make the old behaviour visible: four batches in progress, each with a window
of 8 rows, would claim 32 rows with a connection pool of 24 and 8 slots.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from servers.holding_ses import HoldingSes
from support import sqlite_query

USERS = 200
SEND_CONCURRENCY = 8
THROTTLED = 30  # the first requests get a throttling error, then every request is held


@pytest.fixture
def ses() -> Iterator[HoldingSes]:
    with HoldingSes(throttle_first=THROTTLED) as server:
        yield server


def test_a_kill_mid_storm_leaves_unknown_only_the_requests_in_flight(
    tmp_path, dispatcher_env, start_server, wait_until, ses,
):
    env = dispatcher_env | {
        "DISPATCHER_EMAIL_PROVIDER": "ses",
        "DISPATCHER_EMAIL_FROM": "noreply@example.com",
        "AWS_ENDPOINT_URL": ses.url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "DISPATCHER_WORKER_PROCESSES": "1",
        "DISPATCHER_WORKER_CONCURRENCY": "4",
        "DISPATCHER_CHUNK_SIZE": "20",
        "DISPATCHER_SEND_CONCURRENCY": str(SEND_CONCURRENCY),
        "DISPATCHER_PROVIDER_TIMEOUT": "120",   # held requests stay held until the kill
        "DISPATCHER_RETRY_MAX_ATTEMPTS": "20",  # the storm never exhausts a row's retries
        "DISPATCHER_SEND_LEASE_SECONDS": "2",
        "DISPATCHER_QUEUE_VISIBILITY_TIMEOUT": "2",
    }
    users = [f"user-{i:04d}" for i in range(USERS)]
    server = start_server(env)
    with server.client() as client:
        for user in users:
            assert client.put(f"/v1/users/{user}", json={"email": f"{user}@example.com"}
                              ).status_code in (200, 201)
        nid = f"app#{uuid.uuid4()}"
        response = client.post("/v1/notifications", json={
            "id": nid, "recipients": users, "template": "app-install", "channels": ["email"],
            "data": {"app_name": "Foo"}, "state": "installing"})
        assert response.status_code == 202, response.text

    wait_until(lambda: ses.held_count() >= SEND_CONCURRENCY, timeout=120,
               what=f"{SEND_CONCURRENCY} requests held at the provider")
    server.kill()
    held = Counter(ses.held)
    sending = {row["user_id"] for row in sqlite_query(
        tmp_path / "dispatcher.db",
        "SELECT user_id FROM deliveries WHERE notification_id = ? AND channel = 'email' "
        "AND status = 'sending'", nid)}

    assert len(ses.throttled) == THROTTLED  # the storm happened before the hold
    assert max(held.values()) == 1, f"a row was on the wire twice: {held.most_common(3)}"
    assert {f"{u}@example.com" for u in sending} == set(held), (
        f"{len(sending)} rows claimed at the kill, {len(held)} requests in flight at the provider")
    assert len(held) <= SEND_CONCURRENCY

    # Restart with the provider answering: everything else is sent; only the held rows are
    # settled as unknown (the default recovery never risks a duplicate).
    ses.accept_from_now_on()
    server = start_server(env)
    with server.client() as client:
        counts = wait_until(lambda: _settled(client, nid), timeout=180,
                            what="every email row final after the restart")
        metrics = client.get("/metrics").text
    # the rows recovery settled are counted like any other final row
    unknown_counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                          if line.startswith("dispatcher_deliveries_total{")
                          and 'reason="outcome_unknown"' in line)
    assert unknown_counted == len(held), metrics
    assert counts == {"sent": USERS - len(held), "failed": len(held)}, counts
    unknown = {row["user_id"] for row in sqlite_query(
        tmp_path / "dispatcher.db",
        "SELECT user_id FROM deliveries WHERE notification_id = ? AND channel = 'email' "
        "AND status = 'failed' AND reason = 'outcome_unknown'", nid)}
    assert unknown == sending
    accepted = Counter(ses.accepted)
    assert set(accepted) == {f"{u}@example.com" for u in users if u not in sending}
    assert max(accepted.values()) == 1, f"sent twice: {accepted.most_common(3)}"
    server.stop()


def _settled(client, nid: str) -> dict[str, int] | None:
    response = client.get(f"/v1/notifications/{quote(nid, safe='')}")
    assert response.status_code == 200, response.text
    email = response.json()["counts"]["email"]
    nonzero = {status: n for status, n in email.items() if n}
    return nonzero if set(nonzero) <= {"sent", "failed", "skipped"} else None

