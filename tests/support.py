"""Small helpers for tests: ids, user tokens, reading what the log providers sent."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import jwt
import pytest

__all__ = ["API_KEYS", "POSTGRES_ADMIN_URL", "USER_SECRET", "channel_counts", "new_id", "path_id",
           "point_aws_at", "require_server", "sent_lines", "user_token"]

API_KEYS = "app:app-key,billing:billing-key"
POSTGRES_ADMIN_URL = os.environ.get(
    "DISPATCHER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
USER_SECRET = "test-user-secret-of-at-least-32-bytes"


def channel_counts(**nonzero: int) -> dict[str, int]:
    """One channel's ``counts`` as the API answers them: every bucket, 0 unless given."""
    buckets = ("pending", "sent", "delivered", "bounced", "complained", "failed", "skipped")
    return dict.fromkeys(buckets, 0) | nonzero


def point_aws_at(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the AWS SDK environment at ``url`` for every service, with test credentials.

    Only the environment changes (as an operator would set it); boto3 is never patched."""
    for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_SES",
                 "AWS_ENDPOINT_URL_SESV2", "AWS_ENDPOINT_URL_SNS", "AWS_ENDPOINT_URL_SQS"):
        monkeypatch.delenv(name, raising=False)


def new_id(service: str = "app") -> str:
    return f"{service}#{uuid.uuid4()}"


def path_id(notification_id: str) -> str:
    """A notification id as it goes in a URL path (``#`` is ``%23``)."""
    return quote(notification_id, safe="")


def user_token(user_id: str, *, ttl: int = 300, secret: str = USER_SECRET) -> str:
    return jwt.encode({"sub": user_id, "exp": int(time.time()) + ttl}, secret, algorithm="HS256")


def sent_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def create_queues(name: str = "chunks", max_receives: int = 3,
                  visibility_timeout: int = 30) -> tuple[str, str]:
    """An SQS queue with a redrive policy to its DLQ (through boto3 and the environment's
    AWS_ENDPOINT_URL, as an operator would); returns (queue URL, DLQ URL)."""
    import boto3

    sqs = boto3.client("sqs")
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(QueueName=name, Attributes={
        "VisibilityTimeout": str(visibility_timeout),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": str(max_receives)})})["QueueUrl"]
    return queue, dlq


def verify_sender(address: str) -> None:
    import boto3

    boto3.client("sesv2").create_email_identity(EmailIdentity=address)


def require_server(name: str, error: Exception) -> None:
    """A server a test needs is unreachable: skip on a developer's machine, fail in CI."""
    import pytest

    message = f"{name} is not reachable ({error})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip")
    pytest.skip(message)


def require_redis_and_postgres(redis_url: str) -> None:
    """The Celery peer's servers answer: its Redis broker and PostgreSQL."""
    import psycopg
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        require_server("Redis", exc)
    finally:
        client.close()
    try:
        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        require_server("PostgreSQL", exc)


def free_port() -> int:
    """A local TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sqlite_query(db_path: Path, sql: str, *params: object) -> list[Any]:
    """A read-only query of a server's SQLite file, safe while the server writes (WAL)."""
    import sqlite3

    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=60)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


T = TypeVar("T")


def wait_until(check: Callable[[], T], *, timeout: float, what: str,
               interval: float = 0.1) -> T:
    """Call ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    import pytest

    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {result!r})")
        time.sleep(interval)


async def until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """:func:`wait_until` for a test on an event loop: ``check`` (or the coroutine it returns)
    until truthy, sleeping on the loop in between so the code under test runs."""
    import asyncio

    import pytest

    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what} (last: {result!r})")
        await asyncio.sleep(0.05)
