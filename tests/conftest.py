"""Fixtures shared by every test: real databases (SQLite and PostgreSQL), a runtime, a client.

PostgreSQL is the real server (``DISPATCHER_TEST_POSTGRES_URL``, default the local one).
When it is unreachable the PostgreSQL half of the store tests is skipped on a developer's
machine, and fails when ``CI=true``: CI must prove both engines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from servers.aws_errors import AwsProtocolServer
from support import API_KEYS, POSTGRES_ADMIN_URL, USER_SECRET, free_port, point_aws_at, require_server

from dispatcher.api import create_app
from dispatcher.config import Settings
from dispatcher.runtime import Runtime
from transport.pool import HttpClient

MOTO_URL = os.environ.get("DISPATCHER_TEST_MOTO_URL")
REDIS_URL = os.environ.get("DISPATCHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")



@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the real PostgreSQL server, dropped at the end of the session."""
    name = f"dispatcher_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        require_server("PostgreSQL", exc)
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _reset_postgres(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'dispatcher.db'}"
    url: str = request.getfixturevalue("postgres_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url, api_keys=API_KEYS, user_token_secret=USER_SECRET,
        log_provider_path=tmp_path / "sent.jsonl", retry_base_delay=0.01, retry_max_delay=0.05,
        chunk_size=50, queue_visibility_timeout=30,
    )


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(settings)
    yield rt
    await rt.close()


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the real app, in-process; authenticated as service ``app``."""
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher",
                                 headers={"Authorization": "Bearer app-key"}) as c:
        yield c


def _moto_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/moto-api/data.json", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A real ``moto_server`` over HTTP: ``DISPATCHER_TEST_MOTO_URL`` (CI starts one), or one
    this session starts on a free port."""
    if MOTO_URL:
        if not _moto_answers(MOTO_URL):
            require_server("moto_server", ConnectionError(MOTO_URL))
        yield MOTO_URL
        return
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not _moto_answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            require_server("moto_server", RuntimeError("it did not start"))
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS SDK environment pointed at a freshly reset moto_server; returns its URL.

    Only the environment changes (as an operator would set it); boto3 is never patched."""
    httpx.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    point_aws_at(moto_url, monkeypatch)
    return moto_url


@pytest.fixture
def moto_data(aws: str) -> MotoData:
    return MotoData(aws)


class MotoData:
    """What moto_server says was really sent (``GET /moto-api/data.json``)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def dump(self) -> dict[str, object]:
        response = httpx.get(f"{self.url}/moto-api/data.json", timeout=10)
        response.raise_for_status()
        data: dict[str, object] = response.json()
        return data


@pytest.fixture
def redis_url() -> str:
    """A real Redis (``DISPATCHER_TEST_REDIS_URL``, default db 15 of the local one), flushed."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        require_server("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    """One HTTP client, as the adapters get in production."""
    async with HttpClient() as session:
        yield session


@pytest.fixture
async def server() -> AsyncIterator[AwsProtocolServer]:
    """A local server speaking the AWS query/JSON protocols, scripted per test."""
    async with AwsProtocolServer() as s:
        yield s
