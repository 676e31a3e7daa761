"""The production stack, end to end: a gateway and two worker processes sharing one SQS queue
(moto_server over HTTP) and one PostgreSQL database, sending through SES and SNS (moto) and
FCM (a local server speaking HTTP v1). One bulk to every channel; nothing sent twice."""

from __future__ import annotations

import os
import re
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import create_queues, verify_sender

from bench.fcm_server import FcmServer

USERS = 240


@pytest.fixture
def fcm(tmp_path: Path) -> Any:
    with FcmServer() as server:
        yield server


def test_two_workers_share_one_bulk_to_all_four_channels(
        dispatcher_env: dict[str, str], aws: str, postgres_url: str, fcm: FcmServer,
        moto_data: Any, tmp_path: Path, start_server: Callable[..., Any],
        wait_until: Callable[..., Any]) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    queue_url, _ = create_queues(visibility_timeout=30)
    verify_sender("no-reply@example.com")
    env = {**dispatcher_env, **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
           "DISPATCHER_DATABASE_URL": postgres_url, "DISPATCHER_QUEUE_URL": queue_url,
           "DISPATCHER_QUEUE_WAIT_SECONDS": "1", "DISPATCHER_CHUNK_SIZE": "20",
           "DISPATCHER_EMAIL_PROVIDER": "ses", "DISPATCHER_EMAIL_FROM": "no-reply@example.com",
           "DISPATCHER_SMS_PROVIDER": "sns", "DISPATCHER_PUSH_PROVIDER": "fcm",
           "DISPATCHER_FCM_ENDPOINT": fcm.url, "DISPATCHER_FCM_PROJECT_ID": "test-project",
           "GOOGLE_APPLICATION_CREDENTIALS": str(fcm.write_service_account(tmp_path / "sa.json"))}
    gateway = start_server(env, "gateway")
    workers = [start_server(env, "worker"), start_server(env, "worker")]
    with gateway.client() as client:
        for i in range(USERS):
            r = client.put(f"/v1/users/u{i}", json={"email": f"u{i}@example.com",
                                                    "phone": f"+8210{30_000_000 + i}"})
            assert r.status_code == 200, r.text
            client.post(f"/v1/users/u{i}/devices", json={"token": f"tok-{i}", "platform": "android"})
        nid = f"app#{uuid.uuid4()}"
        r = client.post("/v1/notifications", json={
            "id": nid, "recipients": [f"u{i}" for i in range(USERS)], "template": "app-install",
            "data": {"app_name": "Foo"}, "state": "installing"})
        assert r.status_code == 202, r.text
        path = f"/v1/notifications/{nid.replace('#', '%23')}"

        def done() -> dict[str, Any] | None:
            body = client.get(path).json()
            return body if all(c["pending"] == 0 for c in body["counts"].values()) else None

        body = wait_until(done, timeout=300, what="every delivery to be final")
    for channel in ("in_app", "email", "sms", "push"):
        assert body["counts"][channel] == {"pending": 0, "sent": USERS, "delivered": 0, "bounced": 0,
                                                   "complained": 0, "failed": 0, "skipped": 0}
    data = moto_data.dump()
    emails = Counter(m["destinations"]["ToAddresses"][0] for m in _ses_messages(data))
    assert emails == Counter({f"u{i}@example.com": 1 for i in range(USERS)})
    sms = Counter(m["phone_number"] for m in data["sns"]["SMS"])  # type: ignore[index]
    assert sms == Counter({f"+8210{30_000_000 + i}": 1 for i in range(USERS)})
    pushed = Counter(m["token"] for m in fcm.received)
    assert pushed == Counter({f"tok-{i}": 1 for i in range(USERS)})

    def logged() -> list[int] | None:
        counts = [sum(int(n) for n in re.findall(r"delivered (\d+) chunk", w.output())) for w in workers]
        return counts if sum(counts) >= USERS // 20 else None

    # A worker logs a batch once it is acknowledged, after its rows are final: the last
    # line may come after the counts above say done (CI at 9802b65 read 11 of 12).
    chunks = wait_until(logged, timeout=60, what="every chunk's delivery to be logged")
    assert all(n > 0 for n in chunks), f"both workers must have delivered chunks: {chunks}"
    # Every chunk delivered; one may be delivered twice, and nothing above was sent twice: SQS
    # delivers at least once, and moto_server's ReceiveMessage checks a message visible and
    # marks it received without a lock, so two workers polling at once can both get it (seen
    # once in CI: 13 chunk deliveries for 12 chunks, every provider message still unique).
    assert sum(chunks) >= USERS // 20


def _ses_messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    ses = data["ses"]
    return list(ses.get("Message", [])) + list(ses.get("RawMessage", []))
