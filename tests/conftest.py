"""Fixtures shared by every test: real databases (SQLite and PostgreSQL), a runtime, a client.

PostgreSQL is the real server (``DISPATCHER_TEST_POSTGRES_URL``, default the local one).
When it is unreachable the PostgreSQL half of the store tests is skipped on a developer's
machine, and fails when ``CI=true``: CI must prove both engines.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from dispatcher.api import create_app
from dispatcher.config import Settings
from dispatcher.runtime import Runtime
from support import API_KEYS, POSTGRES_ADMIN_URL, USER_SECRET

IN_CI = os.environ.get("CI") == "true"


def require_server(name: str, error: Exception) -> None:
    message = f"{name} is not reachable ({error})"
    if IN_CI:
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip")
    pytest.skip(message)


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
