"""Peer 1: the notification sender most teams build, with Celery 5, boto3 and pyfcm.

The same workload as the dispatcher's (the ``app-install`` template to N users by email, SMS
and push, through the same provider stand-ins, with the results in PostgreSQL), written the
way a competent team writes it with these tools, not as a strawman:

* **One Celery task per recipient**, ``notify_recipient(notification_id, user_id)``: the
  textbook fan-out. The producer enqueues one message per user (one pooled broker connection
  for the whole loop); a worker loads the user, renders, sends, records.
* **Redis broker, no result backend** (``task_ignore_result``): nobody reads task results,
  the outcome lives in PostgreSQL. **JSON** serializer only.
* **``task_acks_late=True``**: a message is acknowledged after its task ran, so the tasks of a
  killed worker come back (at-least-once). **Prefetch multiplier 8**: tasks take a few
  milliseconds, so each process keeps a few reserved to hide the broker round trip without
  hoarding work.
* **Prefork pool, one process per core** (``--concurrency=2`` here): boto3, botocore and
  Jinja2 are CPU-bound Python that the GIL would serialise in threads; processes use both
  cores. Gossip and mingle are off (the usual advice: they only add start-up time and broker
  chatter); rate limits are disabled (none are used).
* **Clients built once per worker process**, after the fork (``worker_process_init``): boto3
  ``sesv2`` and ``sns`` clients (botocore's standard retry mode, its own retries for
  throttling and 5xx: no second retry policy stacked on it), one pyfcm ``FCMNotification``
  (its requests session and OAuth2 access token are reused), one psycopg connection
  (autocommit; psycopg prepares statements after five uses) and the templates compiled once
  with the dispatcher's own :class:`~dispatcher.rendering.TemplateRegistry` (same files, same
  sandboxed Jinja2), so rendering costs the same on both sides.
* **One query in, one statement out** per task: the notification, the user and its active
  devices in one ``SELECT``; the channels' results in one multi-row ``INSERT``.
* Provider errors become ``failed`` rows with the provider's error code (an unregistered FCM
  token also deactivates the device); an SMS opt-out or a missing contact is ``skipped``.

What it does not do, like most such builds: claim a ledger row before sending (a redelivered
task sends again), validate contact data at send time, per-category preferences, batch
anything across recipients.

The provider endpoints come from the environment, as operators set them: boto3's own chain
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_REGION``, ...), the FCM service account in
``GOOGLE_APPLICATION_CREDENTIALS`` (its ``token_uri`` is where google-auth gets tokens) and the
FCM base URL in ``CELERY_PEER_FCM_ENDPOINT``. pyfcm 2.1.1 has no endpoint option: it builds its
URL from the ``FCM_END_POINT_BASE`` attribute, which the worker sets on its instance.

:func:`run_celery` is the benchmark harness's driver: a fresh database, a worker subprocess,
one enqueue per recipient, timed from the first enqueue to the last result row. Each run has
its own queue, worker name and database, so runs (a benchmark and a test at the same time)
never share state; it deletes its Redis keys and drops its database at the end rather than
flushing a Redis database others may be using.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import boto3  # type: ignore[import-untyped]
import psycopg
import redis
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]
from celery import Celery, signals  # type: ignore[import-untyped]
from pyfcm import FCMNotification  # type: ignore[import-untyped]
from pyfcm.errors import FCMError, FCMNotRegisteredError  # type: ignore[import-untyped]
from requests import RequestException

from bench.peers import PeerResult
from dispatcher.rendering import TemplateError, TemplateRegistry

__all__ = ["Clients", "PeerResult", "PeerRun", "Recipient", "Result", "app", "clients",
           "delete_broker_keys", "load_users", "notify_recipient", "run_celery", "send_email",
           "send_push", "send_sms", "start_worker", "stop_worker", "wait_until_ready"]

ROOT = Path(__file__).resolve().parents[2]
TASK_NAME = "celery_peer.notify_recipient"
CHANNELS = ("email", "sms", "push")
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/11"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SENDER = "no-reply@example.com"
TEMPLATE, DATA, STATE = "app-install", {"app_name": "Bench"}, "installing"
SMS_TYPE = {"AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"}}

# --- the Celery app -----------------------------------------------------------------------

# ``include``: the worker also registers the small workload's task (bench.peers.celery_small).
app = Celery("celery_peer", broker=os.environ.get("CELERY_PEER_BROKER_URL", DEFAULT_BROKER_URL),
             include=["bench.peers.celery_small"])
app.conf.update(
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=8,
    task_serializer="json",
    accept_content=["json"],
    worker_disable_rate_limits=True,
    broker_connection_retry_on_startup=True,
)


@dataclass(frozen=True)
class Clients:
    """What a worker process builds once and reuses for every task."""

    ses: Any
    sns: Any
    fcm: FCMNotification
    db: psycopg.Connection[tuple[Any, ...]]
    templates: TemplateRegistry
    sender: str


_clients: Clients | None = None


def _fcm_client() -> FCMNotification:
    account = os.environ["GOOGLE_APPLICATION_CREDENTIALS"]
    project_id = json.loads(Path(account).read_text())["project_id"]
    fcm = FCMNotification(service_account_file=account, project_id=project_id)
    endpoint = os.environ.get("CELERY_PEER_FCM_ENDPOINT", "https://fcm.googleapis.com")
    fcm.FCM_END_POINT_BASE = f"{endpoint.rstrip('/')}/v1/projects"
    return fcm


def _build_clients() -> Clients:
    session = boto3.session.Session()  # endpoint, keys and region from the environment
    config = Config(retries={"mode": "standard", "max_attempts": 3},
                    connect_timeout=5, read_timeout=10)
    return Clients(
        ses=session.client("sesv2", config=config),
        sns=session.client("sns", config=config),
        fcm=_fcm_client(),
        db=psycopg.connect(os.environ["CELERY_PEER_DATABASE_URL"], autocommit=True),
        templates=TemplateRegistry(ROOT / "templates"),
        sender=os.environ.get("CELERY_PEER_EMAIL_FROM", SENDER),
    )


def clients() -> Clients:
    """This process's clients (built on first use outside a prefork child, e.g. ``--pool=solo``)."""
    global _clients
    if _clients is None:
        _clients = _build_clients()
    return _clients


@signals.worker_process_init.connect  # type: ignore[untyped-decorator]  # celery is untyped
def _init_worker_process(**_: object) -> None:
    ready_dir = os.environ.get("CELERY_PEER_READY_DIR")
    try:
        clients()
    except Exception:  # Celery only logs a failing signal handler: tell the harness too
        if ready_dir:
            (Path(ready_dir) / f"{os.getpid()}.error").write_text(traceback.format_exc())
        raise
    if ready_dir:  # tells the harness this pool process is up
        (Path(ready_dir) / str(os.getpid())).touch()


# --- the task -----------------------------------------------------------------------------

class Recipient(NamedTuple):
    template: str
    context: dict[str, Any]
    email: str | None
    phone: str | None
    locale: str | None
    sms_opt_out: bool
    tokens: list[str]


class Result(NamedTuple):
    channel: str
    status: str  # sent | failed | skipped
    provider_id: str | None = None
    reason: str | None = None


LOAD = """
SELECT n.template, n.data, n.state, u.email, u.phone, u.locale, coalesce(u.sms_opt_out, false),
       ARRAY(SELECT d.token FROM celery_devices d WHERE d.user_id = u.id AND d.active
             ORDER BY d.token)
FROM celery_notifications n LEFT JOIN celery_users u ON u.id = %(user)s
WHERE n.id = %(notification)s
"""
RECORD_ROW = "(%s, %s, %s, %s, %s, %s)"


@app.task(name=TASK_NAME)  # type: ignore[untyped-decorator]
def notify_recipient(notification_id: str, user_id: str) -> None:
    """Load the user, render, send email, SMS and push, record one row per send."""
    c = clients()
    recipient = _load(c.db, notification_id, user_id)
    _record(c.db, notification_id, user_id, _deliver(c, notification_id, recipient))


def _load(db: psycopg.Connection[tuple[Any, ...]], notification_id: str, user_id: str) -> Recipient:
    row = db.execute(LOAD, {"user": user_id, "notification": notification_id}).fetchone()
    if row is None:
        raise LookupError(f"no notification {notification_id!r}")
    template, data, state, email, phone, locale, sms_opt_out, tokens = row
    context = {**data, "state": state, "notification_id": notification_id, "locale": locale}
    return Recipient(template, context, email, phone, locale, sms_opt_out, tokens)


def _deliver(c: Clients, notification_id: str, r: Recipient) -> list[Result]:
    try:
        parts = c.templates.render(r.template, CHANNELS, r.context, locale=r.locale)
    except TemplateError:
        return [Result(channel, "failed", reason="template_error") for channel in CHANNELS]
    return [send_email(c, r.email, parts["email"]), send_sms(c, r, parts["sms"]),
            *send_push(c, r.tokens, parts["push"])]


def send_email(c: Clients, to: str | None, parts: Mapping[str, str]) -> Result:
    if not to:
        return Result("email", "skipped", reason="no_contact")
    try:
        answer = c.ses.send_email(
            FromEmailAddress=c.sender, Destination={"ToAddresses": [to]},
            Content={"Simple": {
                "Subject": {"Data": parts["subject"], "Charset": "UTF-8"},
                "Body": {"Text": {"Data": parts["text"], "Charset": "UTF-8"},
                         "Html": {"Data": parts["html"], "Charset": "UTF-8"}}}})
    except (ClientError, BotoCoreError) as exc:
        return Result("email", "failed", reason=_aws_reason(exc))
    return Result("email", "sent", answer["MessageId"])


def send_sms(c: Clients, r: Recipient, parts: Mapping[str, str]) -> Result:
    if r.sms_opt_out:
        return Result("sms", "skipped", reason="opted_out")
    if not r.phone:
        return Result("sms", "skipped", reason="no_contact")
    try:
        answer = c.sns.publish(PhoneNumber=r.phone, Message=parts["text"],
                               MessageAttributes=SMS_TYPE)
    except (ClientError, BotoCoreError) as exc:
        return Result("sms", "failed", reason=_aws_reason(exc))
    return Result("sms", "sent", answer["MessageId"])


def send_push(c: Clients, tokens: Sequence[str], parts: Mapping[str, str]) -> list[Result]:
    if not tokens:
        return [Result("push", "skipped", reason="no_contact")]
    return [_push_one(c, token, parts) for token in tokens]


def _push_one(c: Clients, token: str, parts: Mapping[str, str]) -> Result:
    try:
        answer = c.fcm.notify(fcm_token=token, notification_title=parts["title"],
                              notification_body=parts["body"], timeout=10)
    except FCMNotRegisteredError:
        c.db.execute("UPDATE celery_devices SET active = false WHERE token = %s", (token,))
        return Result("push", "failed", reason="unregistered_device")
    except (FCMError, RequestException) as exc:
        return Result("push", "failed", reason=type(exc).__name__)
    return Result("push", "sent", answer["name"])


def _aws_reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


def _record(db: psycopg.Connection[tuple[Any, ...]], notification_id: str, user_id: str,
            results: Sequence[Result]) -> None:
    values = ", ".join([RECORD_ROW] * len(results))
    params = [v for r in results
              for v in (notification_id, user_id, r.channel, r.status, r.provider_id, r.reason)]
    db.execute("INSERT INTO celery_deliveries (notification_id, user_id, channel, status, "
               f"provider_id, reason) VALUES {values}", params)


# --- the harness's driver -----------------------------------------------------------------

SCHEMA = """
CREATE TABLE celery_users (
    id text PRIMARY KEY, email text, phone text, locale text,
    sms_opt_out boolean NOT NULL DEFAULT false);
CREATE TABLE celery_devices (
    token text PRIMARY KEY, user_id text NOT NULL REFERENCES celery_users (id),
    active boolean NOT NULL DEFAULT true);
CREATE INDEX celery_devices_user ON celery_devices (user_id);
CREATE TABLE celery_notifications (
    id text PRIMARY KEY, template text NOT NULL, data jsonb NOT NULL, state text);
CREATE TABLE celery_deliveries (
    id bigserial PRIMARY KEY, notification_id text NOT NULL, user_id text NOT NULL,
    channel text NOT NULL, status text NOT NULL, provider_id text, reason text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX celery_deliveries_notification ON celery_deliveries (notification_id, user_id);
"""


@dataclass(frozen=True)
class PeerRun:
    """One run's names: its database, queue and worker, unique so runs never collide."""

    token: str
    admin_url: str
    broker_url: str
    folder: Path

    @property
    def database(self) -> str:
        return f"celery_peer_{self.token}"

    @property
    def database_url(self) -> str:
        return f"{self.admin_url.rpartition('/')[0]}/{self.database}"

    @property
    def queue(self) -> str:
        return f"celery-peer-{self.token}"

    @property
    def hostname(self) -> str:
        return f"celery-peer-{self.token}@localhost"

    @property
    def ready_dir(self) -> Path:
        return self.folder / "ready"

    @property
    def log(self) -> Path:
        return self.folder / "worker.log"


def run_celery(standins_url: str, service_account: Path, users: list[dict[str, Any]], *,
               concurrency: int = 2, database_url: str | None = None,
               broker_url: str | None = None, timeout: float | None = None,
               on_start: Callable[[], None] | None = None,
               inspect: Callable[[str], None] | None = None) -> PeerResult:
    """Deliver the ``app-install`` template to ``users`` through a Celery worker subprocess.

    ``database_url`` is the PostgreSQL server's admin URL (default ``DISPATCHER_TEST_POSTGRES_URL``
    or the local server); the run creates a database of its own there and drops it at the end.
    ``broker_url`` is the Redis database for the broker (default db 11); the run uses a queue
    of its own and deletes its keys at the end. ``users`` items: ``{"id", "email", "phone",
    "token", "locale", "sms_opt_out"}``. Timed from the first enqueue to the last result row;
    ``timeout`` (seconds) bounds that. ``on_start``, if given, is called just before the first
    enqueue (to start measuring CPU over the same window); ``inspect`` with the run's database
    URL once every row is in, before the database is dropped (tests read the rows with it).
    """
    admin_url = database_url or os.environ.get("DISPATCHER_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL)
    with tempfile.TemporaryDirectory(prefix="celery-peer-") as tmp:
        run = PeerRun(uuid.uuid4().hex[:12], admin_url,
                      broker_url or os.environ.get("CELERY_PEER_BROKER_URL", DEFAULT_BROKER_URL),
                      Path(tmp))
        run.ready_dir.mkdir()
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{run.database}"')
        try:
            result = _run(run, standins_url, service_account, users, concurrency,
                          timeout if timeout is not None else 60 + len(users) / 50, on_start)
            if inspect is not None:
                inspect(run.database_url)
            return result
        finally:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{run.database}" WITH (FORCE)')
            delete_broker_keys(run)


def _run(run: PeerRun, standins_url: str, service_account: Path, users: list[dict[str, Any]],
         concurrency: int, timeout: float, on_start: Callable[[], None] | None) -> PeerResult:
    notification_id = f"app#{uuid.uuid4()}"
    load_users(run.database_url, users)
    with psycopg.connect(run.database_url, autocommit=True) as db:
        db.execute("INSERT INTO celery_notifications (id, template, data, state) "
                   "VALUES (%s, %s, %s, %s)", (notification_id, TEMPLATE, json.dumps(DATA), STATE))
    expected = 3 * len(users)  # one row per channel: each user has at most one device
    producer = Celery("celery_peer_producer", broker=run.broker_url, set_as_current=False)
    producer.conf.update(task_serializer="json", task_ignore_result=True)
    worker = start_worker(run, standins_url, service_account, concurrency)
    try:
        wait_until_ready(run, worker, producer, concurrency)
        if on_start is not None:
            on_start()
        started = time.time()
        _enqueue(producer, run.queue, notification_id, [str(u["id"]) for u in users])
        rows, sent, failed, last = _wait_for_rows(run, worker, expected, started + timeout)
    finally:
        stop_worker(worker)
        producer.close()
    return PeerResult("celery", len(users), sent, max(last - started, 1e-9), failed)


def load_users(database_url: str, users: Sequence[dict[str, Any]]) -> None:
    """The schema, then the users and their devices (COPY: a bulk import, not the workload)."""
    with psycopg.connect(database_url, autocommit=True) as db:
        db.execute(SCHEMA)
        with db.transaction():
            with db.cursor().copy("COPY celery_users (id, email, phone, locale, sms_opt_out) "
                                  "FROM STDIN") as copy:
                for u in users:
                    copy.write_row((u["id"], u.get("email"), u.get("phone"), u.get("locale"),
                                    bool(u.get("sms_opt_out"))))
            with db.cursor().copy("COPY celery_devices (token, user_id) FROM STDIN") as copy:
                for u in users:
                    if u.get("token"):
                        copy.write_row((u["token"], u["id"]))
        db.execute("ANALYZE")


def _worker_env(run: PeerRun, standins_url: str, service_account: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "CELERY_PEER_")) and k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        "CELERY_PEER_BROKER_URL": run.broker_url,
        "CELERY_PEER_DATABASE_URL": run.database_url,
        "CELERY_PEER_READY_DIR": str(run.ready_dir),
        "CELERY_PEER_FCM_ENDPOINT": standins_url,
        "GOOGLE_APPLICATION_CREDENTIALS": str(service_account),
        "AWS_ENDPOINT_URL": standins_url,
        "AWS_ACCESS_KEY_ID": "AKIDBENCH", "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    return env


def start_worker(run: PeerRun, standins_url: str, service_account: Path,
                 concurrency: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "celery", "-A", "bench.peers.celery_peer", "worker",
            "--pool=prefork", f"--concurrency={concurrency}", "--loglevel=warning",
            f"--queues={run.queue}", f"--hostname={run.hostname}",
            "--without-gossip", "--without-mingle"]
    with run.log.open("wb") as out:
        # Its own session: the pool processes share its process group, stopped as one.
        return subprocess.Popen(argv, cwd=ROOT, env=_worker_env(run, standins_url, service_account),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def worker_log(run: PeerRun) -> str:
    return run.log.read_text(errors="replace")[-3000:] if run.log.exists() else ""


def wait_until_ready(run: PeerRun, worker: subprocess.Popen[bytes], producer: Celery,
                     concurrency: int, timeout: float = 60) -> None:
    """Every pool process has built its clients and the worker answers a ping."""
    deadline = time.monotonic() + timeout
    while True:
        if worker.poll() is not None:
            raise RuntimeError(f"celery worker exited ({worker.returncode}):\n{worker_log(run)}")
        markers = list(run.ready_dir.iterdir())
        failures = [m.read_text() for m in markers if m.suffix == ".error"]
        if failures:
            raise RuntimeError(f"a celery pool process failed to start:\n{failures[0]}")
        if (len(markers) >= concurrency
                and producer.control.ping(destination=[run.hostname], timeout=0.5)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"celery worker not ready after {timeout} s:\n{worker_log(run)}")
        time.sleep(0.1)


def _enqueue(producer: Celery, queue: str, notification_id: str, user_ids: Iterable[str]) -> None:
    """One message per recipient over one broker connection, as a producer service would."""
    with producer.producer_or_acquire() as connection:
        for user_id in user_ids:
            producer.send_task(TASK_NAME, (notification_id, user_id), queue=queue,
                               producer=connection)


COUNT = """
SELECT count(*), count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status = 'failed'),
       extract(epoch FROM max(created_at))::float8
FROM celery_deliveries
"""


def _wait_for_rows(run: PeerRun, worker: subprocess.Popen[bytes], expected: int,
                   deadline: float) -> tuple[int, int, int, float]:
    """(rows, sent, failed, epoch of the last row) once ``expected`` rows exist."""
    with psycopg.connect(run.database_url, autocommit=True) as db:
        while True:
            row = db.execute(COUNT).fetchone()
            assert row is not None
            rows, sent, failed, last = row
            if rows >= expected:
                return rows, sent, failed, float(last)
            if worker.poll() is not None:
                raise RuntimeError(f"celery worker exited ({worker.returncode}) after {rows} of "
                                   f"{expected} rows:\n{worker_log(run)}")
            if time.time() > deadline:
                raise TimeoutError(f"{rows} of {expected} result rows before the deadline:\n"
                                   f"{worker_log(run)}")
            time.sleep(0.2)


def stop_worker(worker: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Warm shutdown (SIGTERM), then SIGKILL to the worker's process group if it lingers."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:  # the group is the worker's own session: pool processes that outlived it
        os.killpg(worker.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    worker.wait(5)


def delete_broker_keys(run: PeerRun) -> None:
    """The run's queue, its bindings and its worker's control queue."""
    client = redis.Redis.from_url(run.broker_url, socket_connect_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"*{run.token}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
