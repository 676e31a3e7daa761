"""Provider rate limits across worker processes: ``dispatcher serve`` with two worker
processes sends a bulk of emails with ``DISPATCHER_EMAIL_RATE_LIMIT``; the rate the provider
saw (the log provider records when each message was handed over) stays within the limit,
with the limit shared through the database (SQLite) or through Redis.

Only the upper bound is asserted: staying under a provider's limit is the promise. How close
to the limit it runs (no capacity wasted) is a benchmark figure (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

USERS = 400
LIMIT = 100.0


@pytest.mark.parametrize("shared_through", ["database", "redis"])
def test_a_bulk_stays_within_the_email_rate_limit(
    shared_through: str, tmp_path: Path, dispatcher_env: dict[str, str],
    start_server: Callable[..., Any], wait_until: Callable[..., Any], request: pytest.FixtureRequest,
) -> None:
    # One chunk of 400 (the default chunk size is 500): the 400 emails waiting for their send
    # times must not hold back the same chunk's 400 SMS.
    env = dispatcher_env | {"DISPATCHER_WORKER_PROCESSES": "2",
                            "DISPATCHER_EMAIL_RATE_LIMIT": str(LIMIT)}
    if shared_through == "redis":
        env["DISPATCHER_REDIS_URL"] = request.getfixturevalue("redis_url")
    users = [f"u{i}" for i in range(USERS)]
    server = start_server(env)
    with server.client() as client:
        for u in users:
            assert client.put(f"/v1/users/{u}", json={"email": f"{u}@example.com",
                                                      "phone": "+821012345678"}).status_code == 200
        nid = f"app#{uuid.uuid4()}"
        assert client.post("/v1/notifications", json={
            "id": nid, "recipients": users, "template": "app-install",
            "channels": ["email", "sms"], "data": {"app_name": "Foo"}}).status_code == 202

        def done() -> dict[str, Any] | None:
            counts = client.get(f"/v1/notifications/{quote(nid, safe='')}").json()["counts"]
            return counts if all(c["pending"] == 0 for c in counts.values()) else None

        counts = wait_until(done, timeout=120, what="the bulk sent")
    server.stop()
    assert counts["email"]["sent"] == USERS and counts["sms"]["sent"] == USERS
    lines = [json.loads(x) for x in (tmp_path / "sent.jsonl").read_text().splitlines()]
    emails = sorted(m["at"] for m in lines if m["channel"] == "email")
    sms = sorted(m["at"] for m in lines if m["channel"] == "sms")
    rate = (len(emails) - 1) / (emails[-1] - emails[0])
    assert rate <= LIMIT * 1.05, f"{rate:.1f} emails/s against a limit of {LIMIT:g}/s"
    print(f"email rate at the provider: {rate:.1f}/s (limit {LIMIT:g}/s, {shared_through})")
    # The unlimited channel was not held back by the limited one: every SMS went before the
    # first half of the emails had.
    assert sms[-1] < emails[len(emails) // 2], (
        f"the last SMS at +{sms[-1] - emails[0]:.2f} s, the median email at "
        f"+{emails[len(emails) // 2] - emails[0]:.2f} s")
