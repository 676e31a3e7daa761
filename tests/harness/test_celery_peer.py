"""The Celery peer of the benchmark runs end to end on a small N, so it cannot rot.

Real parts only: the provider stand-ins (a subprocess speaking SES v2, SNS, OAuth2 and FCM v1),
a real Celery worker subprocess on the real Redis, results in the real PostgreSQL. Without
Redis or PostgreSQL the test is skipped on a developer's machine and fails when ``CI=true``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import POSTGRES_ADMIN_URL, require_redis_and_postgres

from bench.peers.celery_peer import DEFAULT_BROKER_URL, run_celery
from bench.standins import StandIns

BROKER_URL = os.environ.get("CELERY_PEER_BROKER_URL", DEFAULT_BROKER_URL)
DELIVERABLE, OPTED_OUT = 20, 2


@pytest.fixture
def servers() -> None:
    """Redis (the broker) and PostgreSQL answer."""
    require_redis_and_postgres(BROKER_URL)


def _users() -> list[dict[str, Any]]:
    return [{"id": f"u{i}", "email": f"user{i}@example.com", "phone": f"+8210{10_000_000 + i}",
             "token": f"token-{i}", "locale": "ko-KR" if i % 3 == 0 else None,
             "sms_opt_out": i >= DELIVERABLE}
            for i in range(DELIVERABLE + OPTED_OUT)]


def test_the_celery_peer_delivers_every_channel_to_every_user(servers: None,
                                                              tmp_path: Path) -> None:
    users = _users()
    rows: list[tuple[str, str, str, bool, str | None]] = []

    def read_rows(database_url: str) -> None:
        with psycopg.connect(database_url) as db:
            rows.extend(db.execute(
                "SELECT user_id, channel, status, provider_id IS NOT NULL, reason "
                "FROM celery_deliveries").fetchall())

    with StandIns(record=True) as standins:
        account = standins.write_service_account(tmp_path / "service-account.json")
        result = run_celery(standins.url, account, users, database_url=POSTGRES_ADMIN_URL,
                            broker_url=BROKER_URL, timeout=20, inspect=read_rows)
        arrived, recipients = standins.stats(), standins.recipients()

    # 20 users × 3 channels, and email + push for the 2 who opted out of SMS.
    assert result.name == "celery" and result.recipients == len(users)
    assert result.deliveries == DELIVERABLE * 3 + OPTED_OUT * 2
    assert result.errors == 0 and result.seconds > 0 and result.per_second > 0

    # One row per user and channel, in PostgreSQL; sent rows carry the provider's id.
    assert sorted((user, channel) for user, channel, *_ in rows) == sorted(
        (u["id"], channel) for u in users for channel in ("email", "sms", "push"))
    for user, channel, status, has_provider_id, reason in rows:
        if channel == "sms" and int(user[1:]) >= DELIVERABLE:
            assert (status, has_provider_id, reason) == ("skipped", False, "opted_out")
        else:
            assert (status, has_provider_id, reason) == ("sent", True, None)

    # The stand-ins agree: each message arrived exactly once, nothing else did.
    assert {k: arrived[k] for k in ("email", "sms", "push", "other")} == {
        "email": len(users), "sms": DELIVERABLE, "push": len(users), "other": 0}
    assert recipients["email"] == {u["email"]: 1 for u in users}
    assert recipients["sms"] == {u["phone"]: 1 for u in users if not u["sms_opt_out"]}
    assert recipients["push"] == {u["token"]: 1 for u in users}
