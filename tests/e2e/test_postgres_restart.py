"""PostgreSQL restarted in the middle of a bulk: the gateway and the workers recover by
themselves, nothing is lost, nothing is sent twice.

The test starts a PostgreSQL cluster of its own (``initdb`` in a temporary directory, its own
port), so the machine's server is untouched, and runs ``dispatcher serve`` with two worker
processes on it (the database-backed queue, the ledger, everything in that PostgreSQL). While
the bulk is being sent, PostgreSQL is stopped the hard way (``pg_ctl stop -m immediate``: no
checkpoint, every connection cut, as in a crash of the database host), the API is asked to
accept a notification while it is down (503 with ``Retry-After``, never a 202 or a 500),
and PostgreSQL is started again. Then, as a user would see it: every ledger row final, no
message in the providers' log twice, every row recorded ``sent`` really sent, the rows that
can be ``failed``/``outcome_unknown`` at most the sends in flight at the stop, and the
notification refused during the outage accepted and delivered once resent.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest
from support import free_port, require_server

USERS = 3_000
CHANNELS = ("in_app", "email", "sms")
SEND_CONCURRENCY = 16
WORKER_PROCESSES = 2


@dataclass
class OwnPostgres:
    """A PostgreSQL cluster in ``data`` on ``port``, run as ``user`` (PostgreSQL refuses root)."""

    bindir: Path
    data: Path
    port: int
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-w",
                  "-t", "60", "-o",
                  f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c max_connections=100", "start")

    def crash(self) -> None:
        """Stop without a checkpoint, cutting every connection (as a crashed host would)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


def _bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        candidates = [out.stdout.strip()]
    except (OSError, subprocess.CalledProcessError):
        candidates = []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    return None


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    bindir = _bindir()
    if bindir is None:
        require_server("PostgreSQL's initdb and pg_ctl", FileNotFoundError("no PostgreSQL bindir"))
    assert bindir is not None
    user = "postgres" if os.geteuid() == 0 else None
    data = Path(tempfile.mkdtemp(prefix="dispatcher-pg-"))
    if user:
        shutil.chown(data, user, user)
    cluster = OwnPostgres(bindir, data / "data", free_port(), user)
    if user:
        data.chmod(0o755)
    try:
        cluster.init()
        cluster.start()
    except subprocess.CalledProcessError as exc:
        require_server("a PostgreSQL cluster of the test's own", RuntimeError(exc.stderr))
    try:
        yield cluster
    finally:
        try:
            cluster.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(data, ignore_errors=True)


def test_postgres_restart_mid_bulk_loses_nothing_and_sends_nothing_twice(
    tmp_path, dispatcher_env, start_server, wait_until, own_postgres,
):
    env = dispatcher_env | {
        "DISPATCHER_DATABASE_URL": own_postgres.url,
        "DISPATCHER_WORKER_PROCESSES": str(WORKER_PROCESSES),
        "DISPATCHER_CHUNK_SIZE": "50",
        "DISPATCHER_SEND_CONCURRENCY": str(SEND_CONCURRENCY),
        "DISPATCHER_QUEUE_VISIBILITY_TIMEOUT": "3",
        "DISPATCHER_SEND_LEASE_SECONDS": "3",
    }
    sent_log = tmp_path / "sent.jsonl"
    start_server(env).stop()  # creates the schema
    users = [f"user-{i:05d}" for i in range(USERS)]
    _register(own_postgres.url, users)

    server = start_server(env)
    nid = f"app#{uuid.uuid4()}"
    total = len(users) * len(CHANNELS)
    with server.client() as client:
        response = client.post("/v1/notifications", json={
            "id": nid, "recipients": users, "template": "app-install",
            "channels": list(CHANNELS), "data": {"app_name": "Foo"}, "state": "installing"})
        assert response.status_code == 202, response.text

        wait_until(lambda: 0.1 * total < _final(own_postgres.url, nid) < 0.6 * total,
                   timeout=120, interval=0.01, what="the bulk partly sent")
        own_postgres.crash()
        final_at_crash = _sent_lines(sent_log)
        down = client.post("/v1/notifications", json={
            "id": f"app#{uuid.uuid4()}", "recipients": ["user-00000"], "template": "app-install",
            "channels": ["in_app"], "data": {"app_name": "Bar"}, "state": "installing"})
        assert down.status_code == 503, down.text
        assert down.headers.get("Retry-After"), down.headers
        assert down.json()["error"]["code"]
        assert server.process.poll() is None, "the server died with its database"
        own_postgres.start()

        again = f"app#{uuid.uuid4()}"
        retried = wait_until(lambda: _post_ok(client, again), timeout=60,
                             what="the gateway accepting again after PostgreSQL came back")
        assert retried.status_code == 202, retried.text
        counts = wait_until(lambda: _settled(client, nid), timeout=240,
                            what="every row of the bulk final after the restart")
        wait_until(lambda: _settled(client, again), timeout=60, what="the later notification")

    assert server.process.poll() is None
    server.stop()

    lines = [json.loads(line) for line in sent_log.read_text().splitlines()]
    per_message = Counter((m["notification_id"], m["channel"], m["to"]) for m in lines)
    twice = [k for k, n in per_message.items() if n > 1]
    assert not twice, f"{len(twice)} messages sent twice, e.g. {twice[:3]}"
    with psycopg.connect(own_postgres.url) as conn:
        rows = conn.execute(
            "SELECT channel, status, reason, user_id FROM deliveries WHERE notification_id = %s",
            (nid,)).fetchall()
    assert len(rows) == total
    by_state = Counter((channel, status, reason) for channel, status, reason, _ in rows)
    assert not [k for k in by_state if k[1] not in ("sent", "failed")], by_state
    unknown = sum(n for (_, status, reason), n in by_state.items()
                  if (status, reason) == ("failed", "outcome_unknown"))
    assert not [k for k in by_state if k[1] == "failed" and k[2] != "outcome_unknown"], by_state
    # A row is outcome_unknown only if its send may have been in flight when the database went
    # away: at most the send slots of each worker process.
    assert unknown <= SEND_CONCURRENCY * WORKER_PROCESSES, by_state
    sent_rows = {(user, channel) for channel, status, _, user in rows
                 if status == "sent" and channel != "in_app"}
    logged = {(m["user_id"], m["channel"]) for m in lines if m["notification_id"] == nid}
    assert sent_rows <= logged, f"{len(sent_rows - logged)} rows recorded sent were never sent"
    assert len(logged - sent_rows) <= unknown  # sent, outcome not recorded: the unknown ones
    assert counts["in_app"] == {"sent": len(users)}
    assert final_at_crash < len(lines)  # the bulk really went on after the restart


def _register(url: str, users: list[str]) -> None:
    now = time.time_ns() // 1000
    prefs = json.dumps({"channels": {}, "categories": {}})
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO users (id, email, phone, locale, timezone, preferences, created_at,"
            " updated_at) VALUES (%s, %s, %s, NULL, NULL, %s, %s, %s)",
            [(u, f"{u}@example.com", f"+8210{20_000_000 + i}", prefs, now, now)
             for i, u in enumerate(users)])


def _final(url: str, nid: str) -> int:
    with psycopg.connect(url) as conn:
        [(n,)] = conn.execute(
            "SELECT count(*) FROM deliveries WHERE notification_id = %s "
            "AND status IN ('sent', 'failed', 'skipped')", (nid,)).fetchall()
    return int(n)


def _sent_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _post_ok(client: httpx.Client, nid: str) -> httpx.Response | None:
    response = client.post("/v1/notifications", json={
        "id": nid, "recipients": ["user-00001"], "template": "app-install",
        "channels": ["in_app", "email"], "data": {"app_name": "Bar"}, "state": "installing"})
    if response.status_code == 503:
        return None
    return response


def _settled(client: httpx.Client, nid: str) -> dict[str, dict[str, int]] | None:
    try:
        response = client.get(f"/v1/notifications/{quote(nid, safe='')}")
    except httpx.TransportError:
        return None
    if response.status_code == 503:
        return None
    assert response.status_code == 200, response.text
    counts = {channel: {s: n for s, n in per.items() if n}
              for channel, per in response.json()["counts"].items()}
    done = all(set(per) <= {"sent", "failed", "skipped"} for per in counts.values())
    return counts if done else None
