"""The Celery peer on the small workload: one task per notification, one per update.

The task is the textbook one for single-recipient traffic, written as a competent team
writes it with Celery 5 + boto3 + pyfcm (the clients, pool and settings of
:mod:`bench.peers.celery_peer`, built once per worker process):

``deliver_notification(notification_id, user_id, data, state, version, channels)``

1. load the user and its active devices (one ``SELECT``);
2. render the in-app entry and the channels to send (``channels``: all three external ones
   for a new notification; the update names ``["push"]``), templates compiled once;
3. in one transaction: the notification's header (version-guarded upsert), the user's inbox
   entry (version-guarded upsert; an update makes it unread again) and its ``in_app`` row.
   In-app goes first because it is what the user sees at once, not after three HTTP calls;
4. send email (boto3 ``sesv2``), SMS (boto3 ``sns``), push (pyfcm), one after another;
5. one multi-row ``INSERT`` of their results, with the version.

The producer is the same open-loop client as the dispatcher's (:mod:`bench.open_loop`):
each offer is one ``send_task`` on a small thread pool (kombu's producer pool is shared by
the threads, so enqueues overlap as HTTP requests do). Its latency is the enqueue's.
End-to-end figures come from the peer's own rows: ``celery_deliveries.created_at``
(``clock_timestamp()`` at insert) for each notification, read by
:class:`bench.completion.Completion` with one query per interval, as for the dispatcher.

What it does not do, as in the bulk peer: claim a row before sending (a redelivered task
sends again), keep arrival order (an update that overtakes its notification is sent, and
the notification's own sends follow with the older state), validate contacts at send time.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psutil  # type: ignore[import-untyped]
import psycopg
from celery import Celery  # type: ignore[import-untyped]

from bench.completion import FinalRow, ReadFinal
from bench.open_loop import Offer, Submit
from bench.peers.celery_peer import (
    DEFAULT_ADMIN_URL,
    DEFAULT_BROKER_URL,
    TEMPLATE,
    Clients,
    PeerRun,
    Recipient,
    Result,
    app,
    clients,
    delete_broker_keys,
    load_users,
    send_email,
    send_push,
    send_sms,
    start_worker,
    stop_worker,
    wait_until_ready,
)
from bench.processes import PidLister, PostgresBackends, redis_server_pid
from dispatcher.rendering import TemplateError

if TYPE_CHECKING:
    from bench.standins import StandIns

__all__ = ["CeleryTarget", "deliver_notification"]

TASK = "celery_peer.deliver_notification"
EXTERNAL = ("email", "sms", "push")
#: Threads that enqueue: enough to overlap broker round trips at 800 offers/s.
ENQUEUE_THREADS = 8

SMALL_SCHEMA = """
ALTER TABLE celery_notifications ADD COLUMN version integer NOT NULL DEFAULT 1;
ALTER TABLE celery_deliveries ADD COLUMN version integer NOT NULL DEFAULT 1;
CREATE TABLE celery_inbox (
    user_id text NOT NULL, notification_id text NOT NULL, version integer NOT NULL,
    title text NOT NULL, body text NOT NULL, state text, read boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (user_id, notification_id));
"""
LOAD_USER = """
SELECT u.email, u.phone, u.locale, coalesce(u.sms_opt_out, false),
       ARRAY(SELECT d.token FROM celery_devices d WHERE d.user_id = u.id AND d.active
             ORDER BY d.token)
FROM celery_users u WHERE u.id = %(user)s
"""
UPSERT_HEADER = """
INSERT INTO celery_notifications (id, template, data, state, version)
VALUES (%(id)s, %(template)s, %(data)s, %(state)s, %(version)s)
ON CONFLICT (id) DO UPDATE SET data = excluded.data, state = excluded.state,
    version = excluded.version
WHERE celery_notifications.version < excluded.version
"""
UPSERT_INBOX = """
INSERT INTO celery_inbox (user_id, notification_id, version, title, body, state)
VALUES (%(user)s, %(id)s, %(version)s, %(title)s, %(body)s, %(state)s)
ON CONFLICT (user_id, notification_id) DO UPDATE SET version = excluded.version,
    title = excluded.title, body = excluded.body, state = excluded.state, read = false,
    updated_at = clock_timestamp()
WHERE celery_inbox.version < excluded.version
"""
ROW = "(%s, %s, %s, %s, %s, %s, %s)"
READ_FINAL = """
SELECT notification_id, channel, version, status, extract(epoch FROM created_at)::float8
FROM celery_deliveries WHERE notification_id = ANY(%s)
"""


# --- the task -----------------------------------------------------------------------------

@app.task(name=TASK)  # type: ignore[untyped-decorator]
def deliver_notification(notification_id: str, user_id: str, data: dict[str, Any], state: str,
                         version: int, channels: list[str] | None = None) -> None:
    """In-app entry first (with the header, one transaction), then the providers, then
    their rows."""
    c = clients()
    recipient = _load(c.db, notification_id, user_id, data, state)
    external = [channel for channel in (channels or EXTERNAL) if channel in EXTERNAL]
    try:
        parts = c.templates.render(TEMPLATE, ["in_app", *external], recipient.context,
                                   locale=recipient.locale)
    except TemplateError:
        _record(c, notification_id, user_id, version,
                [Result(ch, "failed", reason="template_error") for ch in ("in_app", *external)])
        return
    _write_in_app(c, notification_id, user_id, data, state, version, parts["in_app"])
    results = [r for channel in external for r in _send(c, recipient, channel, parts[channel])]
    _record(c, notification_id, user_id, version, results)


def _load(db: psycopg.Connection[tuple[Any, ...]], notification_id: str, user_id: str,
          data: dict[str, Any], state: str) -> Recipient:
    row = db.execute(LOAD_USER, {"user": user_id}).fetchone()
    email, phone, locale, sms_opt_out, tokens = row or (None, None, None, False, [])
    context = {**data, "state": state, "notification_id": notification_id, "locale": locale}
    return Recipient(TEMPLATE, context, email, phone, locale, sms_opt_out, tokens)


def _send(c: Clients, r: Recipient, channel: str, parts: Mapping[str, str]) -> list[Result]:
    if channel == "email":
        return [send_email(c, r.email, parts)]
    if channel == "sms":
        return [send_sms(c, r, parts)]
    return send_push(c, r.tokens, parts)


def _write_in_app(c: Clients, notification_id: str, user_id: str, data: dict[str, Any],
                  state: str, version: int, parts: Mapping[str, str]) -> None:
    with c.db.transaction():
        c.db.execute(UPSERT_HEADER, {"id": notification_id, "template": TEMPLATE,
                                     "data": json.dumps(data), "state": state, "version": version})
        c.db.execute(UPSERT_INBOX, {"user": user_id, "id": notification_id, "version": version,
                                    "title": parts["title"], "body": parts["body"], "state": state})
        _record(c, notification_id, user_id, version, [Result("in_app", "sent")])


def _record(c: Clients, notification_id: str, user_id: str, version: int,
            results: Sequence[Result]) -> None:
    if not results:
        return
    params = [v for r in results for v in
              (notification_id, user_id, r.channel, r.status, r.provider_id, r.reason, version)]
    c.db.execute("INSERT INTO celery_deliveries (notification_id, user_id, channel, status, "
                 f"provider_id, reason, version) VALUES {', '.join([ROW] * len(results))}", params)


# --- the harness's target -------------------------------------------------------------------

class CeleryTarget:
    """A Celery worker (prefork, ``concurrency`` processes) with its own database, queue and
    worker name, fed by the open-loop client: ``with CeleryTarget(...) as target: …``."""

    name = "celery"

    def __init__(self, standins: StandIns, users: Sequence[dict[str, Any]], *,
                 concurrency: int = 2, admin_url: str | None = None,
                 broker_url: str | None = None) -> None:
        self._standins = standins
        self._users = users
        self._concurrency = concurrency
        self._admin_url = admin_url or os.environ.get("DISPATCHER_TEST_POSTGRES_URL",
                                                      DEFAULT_ADMIN_URL)
        self._broker_url = broker_url or os.environ.get("CELERY_PEER_BROKER_URL",
                                                        DEFAULT_BROKER_URL)
        self._folder = tempfile.TemporaryDirectory(prefix="celery-small-")
        self.run = PeerRun(uuid.uuid4().hex[:12], self._admin_url, self._broker_url,
                           Path(self._folder.name))
        self._producer = Celery("celery_small_producer", broker=self._broker_url,
                                set_as_current=False)
        self._producer.conf.update(task_serializer="json", task_ignore_result=True)
        self._pool = ThreadPoolExecutor(ENQUEUE_THREADS, thread_name_prefix="enqueue")
        self._worker: Any = None
        self._readers: list[psycopg.Connection[tuple[Any, ...]]] = []

    def __enter__(self) -> CeleryTarget:
        self.run.ready_dir.mkdir()
        with psycopg.connect(self._admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{self.run.database}"')
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _prepare(self) -> None:
        load_users(self.run.database_url, self._users)
        with psycopg.connect(self.run.database_url, autocommit=True) as db:
            db.execute(SMALL_SCHEMA)
        account = self._standins.write_service_account(self.run.folder / "fcm.json", "bench")
        self._worker = start_worker(self.run, self._standins.url, account, self._concurrency)
        wait_until_ready(self.run, self._worker, self._producer, self._concurrency)

    def close(self) -> None:
        """Stop the worker, drop the database, delete the run's broker keys."""
        if self._worker is not None:
            stop_worker(self._worker)
            self._worker = None
        self._pool.shutdown()
        self._producer.close()
        for reader in self._readers:
            reader.close()
        with psycopg.connect(self._admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.run.database}" WITH (FORCE)')
        delete_broker_keys(self.run)
        self._folder.cleanup()

    @asynccontextmanager
    async def submitter(self) -> AsyncIterator[Submit]:
        loop = asyncio.get_running_loop()

        async def submit(offer: Offer) -> None:
            await loop.run_in_executor(self._pool, self._enqueue, offer)
        yield submit

    def _enqueue(self, offer: Offer) -> None:
        state, version, channels = (("completed", 2, ["push"]) if offer.update
                                    else ("installing", 1, None))
        self._producer.send_task(TASK, (offer.notification_id, offer.user_id, {"app_name": "Bench"},
                                        state, version, channels), queue=self.run.queue)

    def read_final(self) -> ReadFinal:
        state: dict[str, psycopg.Connection[tuple[Any, ...]]] = {}

        def read(ids: Sequence[str]) -> list[FinalRow]:
            if "db" not in state:  # made in the completion thread, used only there
                state["db"] = psycopg.connect(self.run.database_url, autocommit=True)
                self._readers.append(state["db"])
            rows = state["db"].execute(READ_FINAL, (list(ids),)).fetchall()
            return [FinalRow(n, c, int(v), s, float(at)) for n, c, v, s, at in rows]
        return read

    def processes(self) -> tuple[dict[str, int], dict[str, PidLister]]:
        fixed = {"celery-main": self._worker.pid}
        for i, child in enumerate(psutil.Process(self._worker.pid).children(), start=1):
            fixed[f"celery-pool-{i}"] = child.pid
        redis = redis_server_pid(self._broker_url)
        if redis is not None:
            fixed["redis"] = redis
        return fixed, {"postgres": PostgresBackends(self._admin_url, self.run.database)}
