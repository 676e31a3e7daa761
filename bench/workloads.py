"""The dispatcher's workloads, on a stack of real processes against the provider stand-ins.

* **mixed**: N users with email, phone and one device; a few percent opted out of SMS and a
  few with an invalid email; one ``POST /v1/notifications`` per 10,000 recipients with the
  ``app-install`` template; timed from the first request to the last ledger row final.
* **personalised** (mixed, personalised): the same, with ``app-install-personal``
  (``bench/templates/``), which says ``Hi {{ user.name }}`` in every part of email, SMS and
  push, so those parts are rendered per recipient; every user has a name.
* **update**: the same bulk again with ``state: completed, version: 2`` (in-app only).
* **gateway**: many single-recipient requests from a concurrent client: rate, p50/p99; and
  the latency of one 10,000-recipient request.

Stacks: ``embedded`` (``dispatcher serve``: SQLite store and queue, in-process bus) and
``production`` (``dispatcher gateway`` + W ``dispatcher worker`` on PostgreSQL, Redis and SQS
on :mod:`bench.sqs_standin`, or on moto_server with ``--sqs moto``). Both send email, SMS and
push through the SES, SNS and FCM adapters to the stand-ins, so every delivery crosses HTTP
with the real wire protocol. ``gateway-alone``:
``dispatcher gateway`` on the embedded store and queue with no worker (the queue just fills),
for the gateway's own rate (:mod:`bench.sustainable`).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import sqlalchemy as sa

from bench.processes import (
    SQS_SERVERS,
    PidLister,
    Proc,
    ResourceMonitor,
    children_of,
    postgres_admin,
    start_dispatcher,
    start_moto,
    start_sqs_standin,
    stop_all,
)

if TYPE_CHECKING:
    from bench.standins import StandIns

__all__ = ["MixedResult", "PERSONAL_TEMPLATE", "Stack", "GatewayResult", "engine_for", "run_gateway",
           "run_mixed"]

API_KEY = "bench-key"
MAX_PER_REQUEST = 10_000
SMS_OPT_OUT_EVERY = 33      # ~3 % opted out of SMS
BAD_EMAIL_EVERY = 50        # 2 % with an email address that no longer validates
SENDER = "no-reply@example.com"
TEMPLATE = "app-install"
#: The personalised workload's template (bench/templates/), next to the shipped ones.
PERSONAL_TEMPLATE = "app-install-personal"
BENCH_TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass
class Stack:
    name: str                       # "embedded", "split", "production" or "gateway-alone"
    workers: int = 1                # worker processes (production); chunks at once (embedded)
    database_url: str = ""
    processes: list[Proc] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def gateway(self) -> Proc:
        return next(p for p in self.processes if p.name in ("serve", "gateway"))

    def dispatcher_pids(self) -> dict[str, int]:
        """The dispatcher's processes by name, ``serve``'s worker processes (its children,
        started before the stack is ready) as ``serve-worker-1``, ``-2``… (the bulks' peak RSS
        covered ``serve``'s API process alone until 2026-12-02)."""
        pids = {p.name: p.pid for p in self.processes if p.name.startswith(("serve", "gateway", "worker"))}
        if "serve" in pids:
            for i, pid in enumerate(sorted(children_of(pids["serve"])()), 1):
                pids[f"serve-worker-{i}"] = pid
        return pids


def _base_env(standins: StandIns, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "AWS_"))}
    env.update({k[len("BENCH_"):]: v for k, v in os.environ.items() if k.startswith("BENCH_DISPATCHER_")})
    env.update({
        "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_SESV2": standins.url, "AWS_ENDPOINT_URL_SNS": standins.url,
        "DISPATCHER_API_KEYS": f"app:{API_KEY}",
        "DISPATCHER_USER_TOKEN_SECRET": "bench-user-token-secret-of-32-bytes!",
        "DISPATCHER_EMAIL_PROVIDER": "ses", "DISPATCHER_EMAIL_FROM": SENDER,
        "DISPATCHER_SMS_PROVIDER": "sns", "DISPATCHER_PUSH_PROVIDER": "fcm",
        "DISPATCHER_FCM_ENDPOINT": standins.url, "DISPATCHER_FCM_PROJECT_ID": "bench",
        "GOOGLE_APPLICATION_CREDENTIALS": str(standins.write_service_account(folder / "fcm.json")),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def templates_folder(folder: Path) -> Path:
    """The shipped templates plus the benchmark's own (the personalised workload's)."""
    import shutil

    from dispatcher.templates_path import shipped_templates

    target = folder / "templates"
    shutil.copytree(shipped_templates(), target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(BENCH_TEMPLATES, target, dirs_exist_ok=True)
    return target


def start_stack(kind: str, standins: StandIns, folder: Path, *, workers: int,
                postgres_admin_url: str, redis_url: str) -> Stack:
    folder.mkdir(parents=True, exist_ok=True)
    env = _base_env(standins, folder)
    env["DISPATCHER_TEMPLATES_DIR"] = str(templates_folder(folder))
    stack = Stack(kind, workers, env=env)
    try:
        if kind in ("gateway-alone", "split"):
            # The embedded store and queue, the API and the workers apart; the gateway alone
            # has no worker (workers=0): its queue just fills.
            stack.database_url = f"sqlite:///{folder / 'dispatcher.db'}"
            env.update(DISPATCHER_DATABASE_URL=stack.database_url)
            stack.processes.append(start_dispatcher("gateway", env, folder, "gateway"))
            for i in range(workers):
                stack.processes.append(start_dispatcher("worker", env, folder, f"worker-{i + 1}"))
        elif kind == "embedded":
            # ``dispatcher serve`` as shipped: the API and ``workers`` worker processes it
            # starts itself (0: its default, one per CPU).
            stack.database_url = f"sqlite:///{folder / 'dispatcher.db'}"
            env.update(DISPATCHER_DATABASE_URL=stack.database_url)
            if workers:
                env.update(DISPATCHER_WORKER_PROCESSES=str(workers))
            stack.processes.append(start_dispatcher("serve", env, folder, "serve"))
        else:
            _production_env(stack, folder, postgres_admin_url, redis_url)
            stack.processes.append(start_dispatcher("gateway", env, folder, "gateway"))
            for i in range(workers):
                stack.processes.append(start_dispatcher("worker", env, folder, f"worker-{i + 1}"))
    except BaseException:
        stop_all(stack.processes)
        raise
    return stack


#: The production stack's SQS, one of :data:`bench.processes.SQS_SERVERS`;
#: ``python -m bench --sqs moto …`` sets it.
sqs_server = "standin"


def _production_env(stack: Stack, folder: Path, admin_url: str, redis_url: str) -> None:
    import boto3

    if sqs_server not in SQS_SERVERS:
        raise ValueError(f"sqs_server must be one of {SQS_SERVERS}, not {sqs_server!r}")
    queue = start_moto(folder) if sqs_server == "moto" else start_sqs_standin(folder)
    stack.processes.append(queue)
    name = f"dispatcher_bench_{uuid.uuid4().hex[:8]}"
    postgres_admin(admin_url, f'CREATE DATABASE "{name}"')
    stack.database_url = admin_url.rpartition("/")[0] + "/" + name
    sqs = boto3.client("sqs", endpoint_url=queue.url, region_name="us-east-1",
                       aws_access_key_id="bench", aws_secret_access_key="bench")
    dlq_url = sqs.create_queue(QueueName="bench-dlq")["QueueUrl"]
    queue_url = sqs.create_queue(QueueName="bench", Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    stack.env.update(
        DISPATCHER_DATABASE_URL=stack.database_url, DISPATCHER_QUEUE_URL=queue_url,
        DISPATCHER_DEAD_LETTER_QUEUE_URL=dlq_url, DISPATCHER_REDIS_URL=redis_url,
        AWS_ENDPOINT_URL_SQS=queue.url, DISPATCHER_QUEUE_WAIT_SECONDS="1",
        DISPATCHER_QUEUE_VISIBILITY_TIMEOUT="60", DISPATCHER_WORKER_CONCURRENCY="4")


def stop_stack(stack: Stack, postgres_admin_url: str) -> None:
    forget_engine(stack.database_url)
    stop_all(stack.processes)
    if stack.name == "production" and stack.database_url:
        name = stack.database_url.rpartition("/")[2]
        postgres_admin(postgres_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- seeding --------------------------------------------------------------------------------

def users(n: int) -> list[dict[str, Any]]:
    """The recipients every contender gets: the same people, the same opt-outs."""
    return [{"id": f"u{i}", "name": f"User {i}",
             "email": f"user{i}@example" if i % BAD_EMAIL_EVERY == 7 else f"user{i}@example.com",
             "phone": f"+8210{10_000_000 + i % 90_000_000}", "token": f"token-{i}",
             "locale": "ko-KR" if i % 3 == 0 else None, "sms_opt_out": i % SMS_OPT_OUT_EVERY == 5}
            for i in range(n)]


def seed(database_url: str, people: list[dict[str, Any]]) -> None:
    """Write the users straight into the store (a bulk import, not the API under test)."""
    from dispatcher.model import now_us
    from dispatcher.store.schema import devices, metadata
    from dispatcher.store.schema import users as users_table

    engine = sa.create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    now = now_us()
    with engine.begin() as conn:
        metadata.create_all(conn)
        for start in range(0, len(people), 20_000):
            part = people[start:start + 20_000]
            conn.execute(users_table.insert(), [
                {"id": p["id"], "name": p.get("name"), "email": p["email"], "phone": p["phone"],
                 "locale": p["locale"],
                 "timezone": None, "created_at": now, "updated_at": now,
                 "preferences": {"channels": {"sms": False} if p["sms_opt_out"] else {},
                                 "categories": {}}} for p in part])
            conn.execute(devices.insert(), [
                {"token": p["token"], "user_id": p["id"], "platform": "android", "active": True,
                 "created_at": now, "updated_at": now} for p in part])
    engine.dispose()


_ENGINES: dict[str, sa.Engine] = {}


def engine_for(database_url: str) -> sa.Engine:
    """The harness's one engine per database for the whole run: polling must cost the machine
    little (a new engine per poll cost CPU the contenders needed)."""
    engine = _ENGINES.get(database_url)
    if engine is None:
        engine = _ENGINES[database_url] = sa.create_engine(
            database_url.replace("postgresql://", "postgresql+psycopg://"), poolclass=sa.pool.NullPool
            if database_url.startswith("sqlite") else sa.pool.QueuePool)
    return engine


def ledger_progress(database_url: str, nid: str, version: int = 1) -> dict[tuple[str, str], int]:
    """(channel, status) -> rows at this version or later, read straight from the store."""
    with engine_for(database_url).connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT channel, status, count(*) FROM deliveries WHERE notification_id = :n "
            "AND version >= :v GROUP BY channel, status"), {"n": nid, "v": version}).all()
    return {(c, s): int(n) for c, s, n in rows}


def forget_engine(database_url: str) -> None:
    engine = _ENGINES.pop(database_url, None)
    if engine is not None:
        engine.dispose()


# --- mixed and update -----------------------------------------------------------------------

@dataclass
class MixedResult:
    stack: str
    workers: int
    recipients: int
    seconds: float
    accept_seconds: float
    sent: dict[str, int]
    skipped: int
    failed: int
    arrived: dict[str, int]
    cpu_seconds: dict[str, float]
    machine_cpu_seconds: float
    peak_rss_mb: dict[str, float]
    update_seconds: float | None = None

    @property
    def external_per_second(self) -> float:
        return sum(self.sent.get(c, 0) for c in ("email", "sms", "push")) / self.seconds

    def per_second(self, channel: str) -> float:
        return self.sent.get(channel, 0) / self.seconds


def _post_bulk(gateway: str, nid: str, recipients: list[str], version: int, state: str,
               channels: list[str] | None = None, template: str = TEMPLATE) -> float:
    started = time.perf_counter()
    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=120, trust_env=False) as client:
        for start in range(0, len(recipients), MAX_PER_REQUEST):
            body: dict[str, Any] = {
                "id": nid, "recipients": recipients[start:start + MAX_PER_REQUEST],
                "template": template, "data": {"app_name": "Bench"}, "state": state,
                "version": version}
            if channels:
                body["channels"] = channels
            r = client.post("/v1/notifications", json=body)
            r.raise_for_status()
    return time.perf_counter() - started


def _wait_final(database_url: str, nid: str, expected: int, version: int, channels: set[str],
                timeout: float) -> dict[tuple[str, str], int]:
    deadline = time.monotonic() + timeout
    interval = 0.1 if expected < 50_000 else 0.5
    while True:
        progress = ledger_progress(database_url, nid, version)
        final = sum(n for (c, s), n in progress.items()
                    if c in channels and s in ("sent", "failed", "skipped"))
        if final >= expected:
            return progress
        if time.monotonic() > deadline:
            raise TimeoutError(f"{final} of {expected} rows final after {timeout:.0f}s")
        time.sleep(interval)


def run_mixed(stack: Stack, standins: StandIns, people: list[dict[str, Any]], *,
              update: bool = True, timeout: float = 3600,
              only: list[str] | None = None, template: str = TEMPLATE,
              also: dict[str, int] | None = None,
              groups: dict[str, PidLister] | None = None) -> MixedResult:
    """``only``: send just these channels (the per-channel figures); default all four.
    ``template``: :data:`PERSONAL_TEMPLATE` for the personalised workload. ``also``,
    ``groups``: more processes whose CPU to measure (the database's, the queue's)."""
    recipients = [p["id"] for p in people]
    nid = f"app#{uuid.uuid4()}"
    standins.reset()
    channels = set(only or ("in_app", "email", "sms", "push"))
    with ResourceMonitor({**stack.dispatcher_pids(), **(also or {})}, groups=groups or {}) as monitor:
        started = time.perf_counter()
        accept = _post_bulk(stack.gateway.url, nid, recipients, 1, "installing", only, template)
        progress = _wait_final(stack.database_url, nid, len(recipients) * len(channels), 1,
                               channels, timeout)
        seconds = time.perf_counter() - started
    arrived = standins.stats()
    result = MixedResult(
        stack.name, stack.workers, len(recipients), seconds, accept,
        sent={c: progress.get((c, "sent"), 0) for c in channels},
        skipped=sum(n for (c, s), n in progress.items() if s == "skipped"),
        failed=sum(n for (c, s), n in progress.items() if s == "failed"),
        arrived={c: arrived.get(c, 0) for c in ("email", "sms", "push")},
        cpu_seconds=monitor.cpu_seconds, machine_cpu_seconds=monitor.machine_cpu_seconds,
        peak_rss_mb={n: r / 2**20 for n, r in monitor.peak_rss.items()})
    if update and "in_app" in channels:
        started = time.perf_counter()
        _post_bulk(stack.gateway.url, nid, recipients, 2, "completed", template=template)
        _wait_final(stack.database_url, nid, len(recipients), 2, {"in_app"}, timeout)
        result.update_seconds = time.perf_counter() - started
    return result


# --- gateway ----------------------------------------------------------------------------------

@dataclass
class GatewayResult:
    stack: str
    requests: int
    seconds: float
    latencies_ms: list[float]
    bulk_accept_ms: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _single_requests(url: str, count: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(url, connector=connector, headers=headers) as session:
        async def one(i: int) -> None:
            body = {"id": f"app#{uuid.uuid4()}", "recipients": [f"u{i % 1000}"],
                    "template": "app-install", "data": {"app_name": "Bench"}, "state": "installing"}
            t0 = time.perf_counter()
            async with session.post("/v1/notifications", json=body) as r:
                await r.read()
                if r.status != 202:
                    raise RuntimeError(f"gateway answered {r.status}")
            latencies.append((time.perf_counter() - t0) * 1000)

        async def lane(indexes: range) -> None:
            for i in indexes:
                await one(i)

        started = time.perf_counter()
        await asyncio.gather(*(lane(range(k, count, concurrency)) for k in range(concurrency)))
        return time.perf_counter() - started, latencies


def run_gateway(stack: Stack, *, count: int = 4000, concurrency: int = 64) -> GatewayResult:
    asyncio.run(_single_requests(stack.gateway.url, 200, concurrency))  # warm up
    seconds, latencies = asyncio.run(_single_requests(stack.gateway.url, count, concurrency))
    bulk = [f"u{i}" for i in range(MAX_PER_REQUEST)]
    accept = [_post_bulk(stack.gateway.url, f"app#{uuid.uuid4()}", bulk, 1, "installing")
              for _ in range(3)]
    return GatewayResult(stack.name, count, seconds, latencies, statistics.median(accept) * 1000)
