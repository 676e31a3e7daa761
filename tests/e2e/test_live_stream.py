"""An end user's live stream shows a notification as it arrives, its update, and its read mark.

A real ``dispatcher serve`` process; the user's app holds the server-sent-events stream open
with its own JWT while a service posts an install notification ("installing"), then its
version 2 ("completed"), and the user marks it read.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import psutil
import pytest

EVENT_TIMEOUT = 60.0  # seconds for an event to reach the stream on a loaded machine


def test_live_stream_shows_the_notification_its_update_and_read(
    dispatcher_env, start_server, user_token,
):
    server = start_server(dispatcher_env)
    nid = f"app#{uuid.uuid4()}"
    path = f"/v1/users/u1/notifications/{quote(nid, safe='')}"

    with server.client() as service, server.client(user_token("u1")) as app:
        assert service.put("/v1/users/u1", json={"email": "u1@example.com"}).status_code == 200

        with open_stream(app) as stream:
            notify(service, nid, version=1, state="installing")
            first = stream.next_event("notification")
            assert first["id"] == nid
            assert "Foo" in first["title"], first
            assert first["state"] == "installing", first

            notify(service, nid, version=2, state="completed")
            update = stream.next_event("notification")
            assert update["id"] == nid
            assert update["state"] == "completed", update
            assert "Foo" in update["title"], update

            read = app.post(f"{path}/read")
            assert read.status_code == 200, read.text
            assert stream.next_event("read")["id"] == nid

        feed = app.get("/v1/users/u1/notifications").json()
        assert [(e["id"], e["state"], e["read"]) for e in feed["items"]] == [
            (nid, "completed", True)]


def test_a_user_token_cannot_open_another_users_stream(dispatcher_env, start_server, user_token):
    server = start_server(dispatcher_env)
    with server.client(user_token("u2")) as other:
        response = other.get("/v1/users/u1/notifications/stream")
    assert response.status_code == 403, response.text
    assert response.json()["error"]["message"]


def notify(service: httpx.Client, nid: str, *, version: int, state: str) -> None:
    response = service.post("/v1/notifications", json={
        "id": nid, "version": version, "recipients": ["u1"], "template": "app-install",
        "data": {"app_name": "Foo"}, "state": state})
    assert response.status_code == 202, response.text


@contextlib.contextmanager
def open_stream(app: httpx.Client) -> Iterator[SseReader]:
    """u1's live stream, open and connected (``: connected`` read)."""
    # Read timeout above the server's 15 s keepalive, so a silent stream is an error.
    with app.stream("GET", "/v1/users/u1/notifications/stream",
                    timeout=httpx.Timeout(10.0, read=EVENT_TIMEOUT)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = SseReader(response)
        stream.wait_connected()
        yield stream


class SseReader:
    """Reads a ``text/event-stream`` response: comments and ``event:``/``data:`` blocks."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines: Iterator[str] = response.iter_lines()

    def wait_connected(self) -> None:
        line = self._next_line()
        assert line == ": connected", f"the stream did not start with ': connected': {line!r}"

    def next_event(self, kind: str) -> dict:
        """The next event (skipping comments); it must be of ``kind``."""
        deadline = time.monotonic() + EVENT_TIMEOUT
        name, data = None, []
        while time.monotonic() < deadline:
            line = self._next_line()
            if line.startswith(":"):
                continue  # keepalive
            if line.startswith("event:"):
                name = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                data.append(line.partition(":")[2].strip())
            elif line == "" and name is not None:
                assert name == kind, f"expected a {kind!r} event, got {name!r}: {data}"
                return json.loads("\n".join(data))
        pytest.fail(f"no {kind!r} event within {EVENT_TIMEOUT:.0f}s")

    def _next_line(self) -> str:
        try:
            return next(self._lines)
        except httpx.ReadTimeout:
            pytest.fail(f"the stream sent nothing for {EVENT_TIMEOUT:.0f}s")
        except StopIteration:
            pytest.fail("the server closed the stream")


def test_the_stream_carries_what_every_worker_process_delivered(
    dispatcher_env, start_server, user_token,
):
    """``dispatcher serve`` with three processes: whichever process delivers a notification,
    the user's stream on the API process shows it (worker processes send their events up a
    pipe)."""
    server = start_server({**dispatcher_env, "DISPATCHER_WORKER_PROCESSES": "3"})
    ids = [f"app#{uuid.uuid4()}" for _ in range(200)]  # within the 256 events a stream buffers
    with server.client() as service, server.client(user_token("u1")) as app:
        assert service.put("/v1/users/u1", json={"email": "u1@example.com"}).status_code == 200
        with open_stream(app) as stream:
            # Concurrent senders: more work than one worker process takes at once, so the
            # others deliver part of it.
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda nid: notify(service, nid, version=1, state="installing"), ids))
            seen = {stream.next_event("notification")["id"] for _ in ids}
    assert seen == set(ids)


def test_a_worker_process_that_dies_is_started_again_and_its_events_still_arrive(
    dispatcher_env, start_server, user_token, wait_until,
):
    """``kill -9`` of ``serve``'s only worker process: ``serve`` says so in its log and starts
    another, which delivers the next notification, live stream included (a new pipe)."""
    server = start_server({**dispatcher_env, "DISPATCHER_WORKER_PROCESSES": "1"})
    [first] = wait_until(lambda: _workers(server.pid), timeout=60, what="serve's worker process")
    first.kill()
    [second] = wait_until(lambda: [w for w in _workers(server.pid) if w.pid != first.pid],
                          timeout=60, what="another worker process")
    assert f"worker process {first.pid} exited with signal SIGKILL" in server.output()
    nid = f"app#{uuid.uuid4()}"
    with server.client() as service, server.client(user_token("u1")) as app:
        assert service.put("/v1/users/u1", json={"email": "u1@example.com"}).status_code == 200
        with open_stream(app) as stream:
            notify(service, nid, version=1, state="installing")
            assert stream.next_event("notification")["id"] == nid
        path = f"/v1/notifications/{quote(nid, safe='')}"
        wait_until(lambda: service.get(path).json()["counts"]["email"]["sent"] == 1, timeout=60,
                   what="the email sent by the new worker process")
    assert second.is_running() and [w.pid for w in _workers(server.pid)] == [second.pid]


def _workers(pid: int) -> list[psutil.Process]:
    """``serve``'s worker processes (``dispatcher worker --parent-pid``) running now."""
    found = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if "--parent-pid" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found
