"""kill -9 in the middle of a bulk notification loses nothing and sends nothing twice.

A real ``dispatcher serve`` process works through a bulk to ~3,000 users (email, SMS, one push
device each; 4 ledger rows per user) in small chunks; it is SIGKILLed while part of the ledger
is final, started again on the same files, and left to finish. Then, as a user would see it:
one ledger row per (user, channel), none left open; no message in the providers' log twice;
every row recorded as sent really was sent; only the sends in flight at the kill are
``failed``/``outcome_unknown``; and one feed entry per user.

The ``log`` providers append one JSON line per message handed to the "provider", so
``sent.jsonl`` is what email/SMS/push recipients actually received.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import psutil
from support import sqlite_query

USERS = 3_000            # with email, phone and one device: 4 ledger rows each
NO_CONTACT_USERS = 10    # registered, but no email, phone or device
UNKNOWN_USERS = 10       # no user record at all (still get their in-app entry)
CHANNELS = ("in_app", "email", "sms", "push")
SEND_CONCURRENCY = 16    # sends in flight per process
PROCESSES = 2            # serve's worker processes (the API process delivers nothing)
EXTERNAL = ("email", "sms", "push")
FINAL = ("sent", "failed", "skipped")


def test_kill_9_mid_bulk_loses_nothing_and_sends_nothing_twice(
    tmp_path, dispatcher_env, start_server, wait_until,
):
    env = dispatcher_env | {
        "DISPATCHER_QUEUE_VISIBILITY_TIMEOUT": "2",
        "DISPATCHER_SEND_LEASE_SECONDS": "2",
        "DISPATCHER_CHUNK_SIZE": "100",
        "DISPATCHER_WORKER_CONCURRENCY": "1",
        "DISPATCHER_WORKER_PROCESSES": str(PROCESSES),
        "DISPATCHER_SEND_CONCURRENCY": str(SEND_CONCURRENCY),
    }
    db_path = tmp_path / "dispatcher.db"
    sent_log = tmp_path / "sent.jsonl"

    # Create the schema with a first run, then register the users straight in the store.
    start_server(env).stop()
    with_contacts = [f"user-{i:05d}" for i in range(USERS)]
    no_contact = [f"bare-{i:02d}" for i in range(NO_CONTACT_USERS)]
    unknown = [f"ghost-{i:02d}" for i in range(UNKNOWN_USERS)]
    _register(db_path, with_contacts, no_contact)
    recipients = with_contacts + no_contact + unknown
    total_rows = len(recipients) * len(CHANNELS)

    server = start_server(env)
    nid = f"app#{uuid.uuid4()}"
    with server.client() as client:
        response = client.post("/v1/notifications", json={
            "id": nid, "recipients": recipients, "template": "app-install",
            "data": {"app_name": "Foo"}, "state": "installing"})
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(recipients)

    # Kill it while part of the ledger is final and rows are claimed for sending (their
    # provider requests may be in flight). The claimed state is short-lived with the log
    # provider, so the server and its worker processes are stopped (SIGSTOP) first and the
    # ledger read while nothing moves: rows claimed then are claimed at the kill. When none
    # are, they go on (SIGCONT) and the test looks again.
    kills: list[tuple[int, int]] = []  # (final, claimed) rows when each kill landed
    while not kills:
        wait_until(lambda: _mid_send(db_path, nid, total_rows), timeout=120, interval=0.005,
                   what="ledger rows being sent")
        frozen = _freeze(server.pid)
        final, claimed = _progress(db_path, nid)
        if not claimed:
            for process in frozen:
                process.resume()
            continue
        for process in frozen:
            process.kill()
        server.kill()
        psutil.wait_procs(frozen, timeout=30)
        # What the restart will find, read with nothing running. A commit half done at the
        # freeze (its frames in the WAL, the WAL's index not updated yet) is invisible to the
        # read above and recovered from the WAL by the next connection: a claim, say.
        final, claimed = _progress_recovered(db_path, nid)
        assert 0 < final < total_rows, (
            f"kill {len(kills) + 1} was not mid-bulk: {final} of {total_rows} rows were final "
            f"(make the bulk bigger or slower)")
        kills.append((final, claimed))
        server = start_server(env)

    # Recovery: same files, a new process; every row must become final.
    wait_until(lambda: _progress(db_path, nid)[0] == total_rows, timeout=300,
               what=f"all {total_rows} ledger rows to be final after the restart")

    rows = _ledger(db_path, nid)
    lines = [json.loads(line) for line in sent_log.read_text().splitlines()]

    # One row per (user, channel), none left open.
    per_user = Counter(r["user_id"] for r in rows)
    assert len(rows) == total_rows, f"{len(rows)} ledger rows, expected {total_rows}"
    assert set(per_user) == set(recipients), "some recipients have no ledger rows"
    wrong = {u: n for u, n in per_user.items() if n != len(CHANNELS)}
    assert not wrong, f"users without exactly one row per channel: {list(wrong.items())[:5]}"
    open_rows = [r for r in rows if r["status"] not in FINAL]
    assert not open_rows, f"{len(open_rows)} rows not final, e.g. {open_rows[:3]}"

    # Nothing sent twice.
    twice = [k for k, n in Counter((m["notification_id"], m["user_id"], m["channel"])
                                   for m in lines if m["channel"] in ("email", "sms")).items()
             if n > 1]
    assert not twice, f"{len(twice)} email/SMS messages sent more than once, e.g. {twice[:5]}"
    pushed_twice = [k for k, n in Counter((m["user_id"], m["to"])
                                          for m in lines if m["channel"] == "push").items()
                    if n > 1]
    assert not pushed_twice, (
        f"{len(pushed_twice)} devices got the push more than once, e.g. {pushed_twice[:5]}")
    assert all(m["notification_id"] == nid for m in lines)

    # Every row recorded as sent was sent, with the provider id the provider gave.
    sent_ids = {(m["user_id"], m["channel"]): m["provider_message_id"] for m in lines}
    external = [r for r in rows if r["channel"] in EXTERNAL]
    phantom = [r for r in external if r["status"] == "sent"
               and sent_ids.get((r["user_id"], r["channel"])) != r["provider_message_id"]]
    assert not phantom, (f"{len(phantom)} rows recorded as sent with no matching message in "
                         f"the providers' log, e.g. {phantom[:3]}")

    # Apart from rows whose send an outcome can't be known for, every row is as planned.
    unknown_rows = [r for r in rows if r["reason"] == "outcome_unknown"]
    assert all(r["status"] == "failed" for r in unknown_rows), "outcome_unknown must be failed"
    expected = {}
    for user in with_contacts:
        expected.update({(user, c): ("sent", None) for c in CHANNELS})
    for user in no_contact + unknown:
        expected[(user, "in_app")] = ("sent", None)
        expected.update({(user, c): ("skipped", "no_contact") for c in EXTERNAL})
    unexpected = [r for r in rows if r["reason"] != "outcome_unknown"
                  and (r["status"], r["reason"]) != expected[(r["user_id"], r["channel"])]]
    assert not unexpected, f"{len(unexpected)} rows not as planned, e.g. {unexpected[:3]}"
    # A message the provider has but the ledger doesn't call sent is one of those rows.
    unrecorded = {(r["user_id"], r["channel"]) for r in external
                  if r["status"] != "sent" and (r["user_id"], r["channel"]) in sent_ids}
    assert unrecorded <= {(r["user_id"], r["channel"]) for r in unknown_rows}, (
        "messages in the providers' log whose rows are neither sent nor outcome_unknown: "
        f"{sorted(unrecorded)[:5]}")

    # Every user's feed has exactly one entry for it.
    feed = _feed_counts(db_path, nid)
    assert set(feed) == set(recipients), (
        f"{len(set(recipients) - set(feed))} recipients have no feed entry")
    assert set(feed.values()) == {1}, "some users have more than one feed entry"

    # What the product itself reports.
    with server.client() as client:
        response = client.get(f"/v1/notifications/{quote(nid, safe='')}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["recipients"] == len(recipients)
    for channel in CHANNELS:
        counts = body["counts"][channel]
        assert counts["pending"] == 0, f"{channel}: {counts}"
        assert sum(counts.values()) == len(recipients), f"{channel}: {counts}"
    server.stop()

    # The crash window is the provider requests in flight (DESIGN §4): at most
    # DISPATCHER_SEND_CONCURRENCY rows per process and kill may end with an unknown outcome.
    in_flight = sum(claimed for _, claimed in kills)
    unknown_sent = sum((r["user_id"], r["channel"]) in sent_ids for r in unknown_rows)
    assert len(unknown_rows) <= in_flight, (
        f"{len(unknown_rows)} outcome_unknown rows, more than were claimed at the kills "
        f"(final and claimed rows at each kill: {kills})")
    bound = SEND_CONCURRENCY * PROCESSES
    assert len(unknown_rows) <= bound * len(kills), (
        f"{len(unknown_rows)} rows failed with outcome_unknown after {len(kills)} kill(s) "
        f"(final and claimed rows at each kill: {kills}); only the provider requests in flight "
        f"should be in the crash window, at most {bound} per kill ({SEND_CONCURRENCY} "
        f"(DISPATCHER_SEND_CONCURRENCY) in each of {PROCESSES} processes). Of these rows "
        f"{unknown_sent} were in fact sent (they are in the providers' log) and "
        f"{len(unknown_rows) - unknown_sent} never were.")


def _register(db_path: Path, with_contacts: list[str], no_contact: list[str]) -> None:
    """Write users (and one device each for ``with_contacts``) straight into the store."""
    now = time.time_ns() // 1000
    prefs = json.dumps({"channels": {}, "categories": {}})
    with sqlite3.connect(db_path) as db:
        db.executemany(
            "INSERT INTO users (id, email, phone, locale, timezone, preferences, created_at,"
            " updated_at) VALUES (?, ?, ?, NULL, NULL, ?, ?, ?)",
            [(u, f"{u}@example.com", f"+8210{20_000_000 + i}", prefs, now, now)
             for i, u in enumerate(with_contacts)]
            + [(u, None, None, prefs, now, now) for u in no_contact])
        db.executemany(
            "INSERT INTO devices (token, user_id, platform, active, created_at, updated_at)"
            " VALUES (?, ?, 'android', 1, ?, ?)",
            [(f"device-token-{u}", u, now, now) for u in with_contacts])
    db.close()



def _freeze(pid: int) -> list[psutil.Process]:
    """SIGSTOP a server and its worker processes (children first found, then stopped)."""
    parent = psutil.Process(pid)
    processes = [parent, *parent.children(recursive=True)]
    for process in processes:
        process.suspend()
    return processes


#: (final rows, rows claimed for sending) of a notification's ledger.
_PROGRESS = ("SELECT count(*) FILTER (WHERE status IN ('sent', 'failed', 'skipped')),"
             " count(*) FILTER (WHERE status = 'sending') FROM deliveries WHERE notification_id = ?")


def _progress(db_path: Path, nid: str) -> tuple[int, int]:
    """(final rows, rows claimed for sending) of the notification's ledger."""
    row = sqlite_query(db_path, _PROGRESS, nid)[0]
    return row[0], row[1]


def _progress_recovered(db_path: Path, nid: str) -> tuple[int, int]:
    """:func:`_progress` once every process of the server is dead, by a read-write connection,
    which recovers from the WAL what the crash left there, as the next server will."""
    db = sqlite3.connect(db_path, timeout=60)
    try:
        row = db.execute(_PROGRESS, (nid,)).fetchone()
    finally:
        db.close()
    return row[0], row[1]


def _mid_send(db_path: Path, nid: str, total_rows: int) -> bool:
    """A tenth of the rows final (earlier chunks done) and rows claimed for sending."""
    final, claimed = _progress(db_path, nid)
    assert final < total_rows, "the bulk finished before it could be killed mid-send"
    return final >= total_rows // 10 and claimed > 0


def _ledger(db_path: Path, nid: str) -> list[dict[str, object]]:
    return [dict(r) for r in sqlite_query(
        db_path, "SELECT user_id, channel, status, reason, provider_message_id FROM deliveries"
        " WHERE notification_id = ?", nid)]


def _feed_counts(db_path: Path, nid: str) -> dict[str, int]:
    return {r[0]: r[1] for r in sqlite_query(
        db_path, "SELECT user_id, count(*) FROM inbox WHERE notification_id = ? GROUP BY user_id",
        nid)}
