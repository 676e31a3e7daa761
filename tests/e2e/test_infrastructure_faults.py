"""Infrastructure faults with the real servers stopped: the API answers what it can, truthfully.

* The queue unreachable (SQS's endpoint refuses connections): ``POST /v1/notifications`` is a
  503 with ``Retry-After``, never a 202 for what was not enqueued, never a 500; the same
  request succeeds once the queue is back.
* Redis down: delivery and the API go on (live events are best effort), ``/readyz`` says
  503; once a Redis answers on that port again, a new live stream gets events.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from support import API_KEYS, USER_SECRET, create_queues, free_port, new_id, require_server

from dispatcher.api import create_app
from dispatcher.config import Settings
from dispatcher.runtime import Runtime


@pytest.fixture
async def sqs_settings(aws: str, tmp_path: Path) -> Settings:
    queue_url, _ = create_queues(max_receives=3)
    return Settings(database_url=f"sqlite:///{tmp_path / 'd.db'}", queue_url=queue_url,
                    api_keys=API_KEYS, user_token_secret=USER_SECRET, queue_wait_seconds=0,
                    log_provider_path=tmp_path / "sent.jsonl")


async def _client(runtime: Runtime) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(runtime)),
                             base_url="http://dispatcher", headers={"Authorization": "Bearer app-key"})


async def test_an_unreachable_queue_is_a_503_with_retry_after_and_the_retry_succeeds(
        sqs_settings: Settings, aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"id": new_id(), "recipients": ["u1"], "template": "app-install",
            "data": {"app_name": "Foo"}, "state": "installing"}
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", f"http://127.0.0.1:{free_port()}")  # nothing listens
    down = await Runtime.open(sqs_settings)
    try:
        async with await _client(down) as client:
            r = await client.post("/v1/notifications", json=body)
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"].isdigit()
        assert r.json()["error"]["code"] == "unavailable" and "SQS" in r.json()["error"]["message"]
    finally:
        await down.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", aws)  # the queue is back
    up = await Runtime.open(sqs_settings)
    try:
        async with await _client(up) as client:
            assert (await client.post("/v1/notifications", json=body)).status_code == 202
        await up.worker().drain()
        rows, _ = await up.store.notifications.deliveries(body["id"], limit=10)
        assert {r["channel"]: r["status"] for r in rows}["in_app"] == "sent"  # once, not twice
        assert len(rows) == 4
    finally:
        await up.close()


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    """The port of a Redis this test starts and stops itself (the machine's own is untouched)."""
    if shutil.which("redis-server") is None:
        require_server("redis-server (binary)", FileNotFoundError("redis-server"))
    yield free_port()


def _start_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(port=port, socket_connect_timeout=1).ping()
            return proc
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the test's redis-server did not start")
            time.sleep(0.05)


@pytest.fixture
async def redis_runtime(redis_port: int, tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(Settings(
        database_url=f"sqlite:///{tmp_path / 'd.db'}", api_keys=API_KEYS,
        user_token_secret=USER_SECRET, redis_url=f"redis://127.0.0.1:{redis_port}/0",
        log_provider_path=tmp_path / "sent.jsonl"))
    yield rt
    await rt.close()


async def test_with_redis_down_delivery_goes_on_and_live_events_come_back_with_it(
        redis_runtime: Runtime, redis_port: int, tmp_path: Path) -> None:
    async with await _client(redis_runtime) as client:
        assert (await client.put("/v1/users/u1", json={"email": "u1@example.com"})).status_code == 200
        nid = new_id()
        r = await client.post("/v1/notifications", json={
            "id": nid, "recipients": ["u1"], "template": "app-install",
            "data": {"app_name": "Foo"}, "state": "installing"})
        assert r.status_code == 202, r.text
        await redis_runtime.worker().drain()
        rows, _ = await redis_runtime.store.notifications.deliveries(nid, limit=10)
        statuses = {x["channel"]: x["status"] for x in rows}
        assert (statuses["in_app"], statuses["email"]) == ("sent", "sent")
        feed = (await client.get("/v1/users/u1/notifications")).json()
        assert [item["id"] for item in feed["items"]] == [nid]
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "Retry-After" in ready.headers

        redis_server = _start_redis(redis_port, tmp_path)  # Redis is back
        try:
            assert (await client.get("/readyz")).status_code == 200
            async with redis_runtime.bus.subscribe("feed:u1") as events:
                again = new_id()
                await client.post("/v1/notifications", json={
                    "id": again, "recipients": ["u1"], "template": "app-install",
                    "data": {"app_name": "Foo"}, "state": "installing"})
                await redis_runtime.worker().drain()
                event = await asyncio.wait_for(anext(aiter(events)), 10)
            assert event["id"] == again
        finally:
            redis_server.terminate()
            redis_server.wait(10)
