"""The ``small`` workload: many single-recipient notifications and their updates, open loop.

The seed's own case, at the rate it arrives: an app-store backend tells each user that their
app is *installing* (one recipient, every channel of ``app-install``: in-app, email, SMS,
push) and 1–3 s later that it *completed* (same id, ``version: 2``, ``channels: ["push"]``;
the in-app entry refreshes by itself, DESIGN §4). Bulk throughput says little about this
traffic: every request is a whole chunk for the workers. So it is offered open loop at a
fixed rate (:mod:`bench.open_loop`) and measured as the sending service and the user see it:

* **accept latency**: from the scheduled send to the 202 (the Celery peer: to the enqueue);
* **end to end**: from the acceptance of v1 to every ledger row of the notification final,
  and from the acceptance of the update to its push row final (:mod:`bench.completion`
  reads the ledger, one query per 200 ms);
* **deliveries/s**: email + SMS + push of v1 and the update's push, from the first send to
  the last row final; **time to settle**: from the last scheduled send to the last row final;
* **CPU per delivery** per process: gateway or ``serve``, each worker, PostgreSQL's backends
  for this run's database, Redis, the SQS server, the stand-ins, and this process (the client
  and the ledger poll).

A *target* is what receives the traffic: :class:`DispatcherTarget` (a stack of real
processes, :mod:`bench.workloads`) or the Celery peer's (:mod:`bench.peers.celery_small`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import aiohttp
import sqlalchemy as sa

from bench.completion import Completion, FinalRow, ReadFinal, Tracked
from bench.open_loop import Attempt, Offer, Submit, drive, run_async, small_plan
from bench.processes import PidLister, PostgresBackends, ResourceMonitor, redis_server_pid
from bench.workloads import API_KEY, Stack, engine_for

if TYPE_CHECKING:
    from bench.standins import StandIns

__all__ = ["DispatcherTarget", "SmallResult", "Target", "percentile", "run_small", "warm_up"]

#: Connections the client keeps to a gateway; more in flight wait for one, and that wait
#: counts in their latency (it is what a service with this pool would see).
CONNECTIONS = 256
EXTERNAL = ("email", "sms", "push")
WARM_UP_NOTIFICATIONS = 10


class Target(Protocol):
    """What receives the small workload and where its outcomes are read."""

    @property
    def name(self) -> str:
        """The contender's name in the report."""

    def submitter(self) -> AbstractAsyncContextManager[Submit]:
        """A client for the whole offer (its connections opened once)."""

    def read_final(self) -> ReadFinal:
        """One query: the final rows of some notifications (the ledger, or the peer's rows)."""

    def processes(self) -> tuple[dict[str, int], dict[str, PidLister]]:
        """Its processes for the CPU figures: fixed ones by name, and groups listed again
        at each sample."""


class Refused(Exception):
    """The gateway answered something other than 202."""


@dataclass
class DispatcherTarget:
    """A dispatcher stack (embedded, production, or the gateway alone) over HTTP."""

    stack: Stack
    postgres_admin_url: str = ""
    redis_url: str = ""

    @property
    def name(self) -> str:
        return (f"{self.stack.name}_{self.stack.workers}" if self.stack.name in ("production", "split")
                else self.stack.name)

    @asynccontextmanager
    async def submitter(self) -> AsyncIterator[Submit]:
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(
                self.stack.gateway.url, headers=headers, timeout=aiohttp.ClientTimeout(total=60),
                connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as session:
            async def submit(offer: Offer) -> None:
                async with session.post("/v1/notifications", data=request_body(offer)) as answer:
                    text = await answer.read()
                    if answer.status != 202:
                        raise Refused(f"HTTP {answer.status}: {text[:200]!r}")
            yield submit

    def read_final(self) -> ReadFinal:
        engine = engine_for(self.stack.database_url)
        query = sa.text(
            "SELECT notification_id, channel, version, status, updated_at FROM deliveries "
            "WHERE notification_id IN :ids AND status IN ('sent', 'failed', 'skipped')"
        ).bindparams(sa.bindparam("ids", expanding=True))

        def read(ids: Sequence[str]) -> list[FinalRow]:
            with engine.connect() as conn:
                return [FinalRow(n, c, int(v), s, u / 1e6)
                        for n, c, v, s, u in conn.execute(query, {"ids": list(ids)})]
        return read

    def processes(self) -> tuple[dict[str, int], dict[str, PidLister]]:
        # serve's worker processes each apart (a fair share?): in dispatcher_pids
        fixed = {**{p.name: p.pid for p in self.stack.processes}, **self.stack.dispatcher_pids()}
        groups: dict[str, PidLister] = {}
        if self.stack.name == "production":
            database = self.stack.database_url.rpartition("/")[2]
            groups["postgres"] = PostgresBackends(self.postgres_admin_url, database)
            redis = redis_server_pid(self.redis_url)
            if redis is not None:
                fixed["redis"] = redis
        return fixed, groups


def request_body(offer: Offer) -> bytes:
    """v1: installing, every channel of the template; the update: completed, push only."""
    body: dict[str, object] = {"id": offer.notification_id, "recipients": [offer.user_id],
                               "template": "app-install", "data": {"app_name": "Bench"}}
    if offer.update:
        body.update(state="completed", version=2, channels=["push"])
    else:
        body.update(state="installing", version=1)
    return json.dumps(body).encode()


# --- one run ------------------------------------------------------------------------------

@dataclass
class SmallResult:
    """One offer at one rate, as the report shows it (latencies in ms, None when empty)."""

    contender: str
    rate: float                       # offered notifications/s (requests/s: about twice)
    notifications: int
    requests: int                     # notifications and updates offered
    offer_seconds: float              # first to last scheduled send
    accepted: int
    errors: int
    accepted_per_second: float        # accepted requests / first send to last answer
    accept_p50_ms: float | None
    accept_p99_ms: float | None
    e2e_p50_ms: float | None          # v1 accepted -> every row final
    e2e_p99_ms: float | None
    update_p50_ms: float | None       # update accepted -> its push row final
    update_p99_ms: float | None
    deliveries: int                   # email + SMS + push sent for v1, push sent for updates
    deliveries_per_second: float      # first send to the last row final
    settle_seconds: float | None      # last scheduled send to the last row final; None: not settled
    unsettled: int                    # notifications not done when the harness stopped waiting
    rows: int                         # final rows seen: four per notification, its update's push
    sent: dict[str, int]              # email, sms, push (v1), update_push
    skipped: int
    failed: int
    superseded_push: int              # v1 push rows an update took over before they were seen
    arrived: dict[str, int]           # what the stand-ins counted: email, sms, push
    cpu_seconds: dict[str, float]
    cpu_ms_per_delivery: dict[str, float]
    machine_cpu_ms_per_delivery: float | None
    #: Cores' worth of CPU the machine spent outside the measured processes during the run:
    #: other developers' work, the kernel, PostgreSQL's background. The noise, in one number.
    unattributed_cores: float
    ledger_queries: int
    first_error: str | None = None
    #: Seconds the harness waited, after the step's figures, for its backlog to drain before
    #: the next step (None: not asked, or not drained in time).
    drained_after: float | None = None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def run_small(target: Target, standins: StandIns, user_ids: Sequence[str], *, rate: float,
              count: int, seed: int, settle_timeout: float | None = None,
              drain_timeout: float = 0.0) -> SmallResult:
    """Offer ``count`` notifications (and their updates) at ``rate``/s; wait until every row
    is final or ``settle_timeout`` seconds after the last scheduled send (default: 30 s plus
    twice the offer). ``drain_timeout``: if the rows are not all final by then, wait up to
    this much longer (outside the step's figures), so that a next step starts with no
    backlog; ``drained_after`` says how long it took."""
    plan = small_plan(user_ids, rate=rate, count=count, seed=seed)
    timeout = settle_timeout if settle_timeout is not None else 30 + 2 * plan[-1].at
    standins.reset()
    fixed, groups = target.processes()
    fixed = {**fixed, "stand-ins": standins.pid, "client": os.getpid()}
    with Completion(target.read_final()) as completion, \
            ResourceMonitor(fixed, groups=groups) as monitor:
        epoch, attempts = run_async(_offer(target, plan, completion))
        for attempt in attempts:
            if not attempt.accepted:  # nothing to wait for: the sender knows it failed
                completion.forget(attempt.offer.notification_id)
        settled = completion.wait(max(0.0, epoch + plan[-1].at + timeout - time.time()))
        stopped = time.time()
    if completion.error is not None:
        raise RuntimeError("reading the ledger failed") from completion.error
    result = _summarise(target.name, rate, plan, epoch, attempts, completion, settled, stopped,
                        standins.stats(), monitor)
    if not settled and drain_timeout > 0:
        with Completion(target.read_final()) as drain:
            for notification_id in completion.still_open():
                drain.watch(notification_id)
            if drain.wait(drain_timeout):
                result.drained_after = time.time() - stopped
    return result


def warm_up(target: Target, standins: StandIns, user_ids: Sequence[str]) -> None:
    """A few notifications first, unmeasured: imports, connection pools and access tokens
    of fresh processes are not what the small workload measures."""
    run_small(target, standins, user_ids, rate=20, count=WARM_UP_NOTIFICATIONS, seed=0,
              settle_timeout=60)


async def _offer(target: Target, plan: list[Offer],
                 completion: Completion) -> tuple[float, list[Attempt]]:
    async with target.submitter() as submit:
        return await drive(plan, submit, on_send=lambda o: completion.watch(o.notification_id))


def _summarise(name: str, rate: float, plan: list[Offer], epoch: float, attempts: list[Attempt],
               completion: Completion, settled: bool, stopped: float,
               arrived: dict[str, int], monitor: ResourceMonitor) -> SmallResult:
    accepted = {(a.offer.notification_id, a.offer.update): a for a in attempts if a.accepted}
    tracked = completion.tracked
    done = {nid: t for nid, t in tracked.items() if t.done(True)}
    e2e = [t.final_at - accepted[(nid, False)].answered_at
           for nid, t in done.items() if (nid, False) in accepted]
    updates = [t.update.at - accepted[(nid, True)].answered_at
               for nid, t in done.items() if t.update is not None and (nid, True) in accepted]
    last_final = max((max(t.final_at, t.update.at if t.update else 0.0) for t in done.values()),
                     default=stopped)
    end = last_final if settled else stopped
    sent, statuses, superseded = _count(tracked.values())
    deliveries = sum(sent.values())
    accept = [a.latency * 1000 for a in attempts if a.accepted]
    answered = max((a.answered_at for a in attempts), default=epoch)
    errors = [a.error for a in attempts if a.error]
    return SmallResult(
        contender=name, rate=rate, notifications=len({o.notification_id for o in plan}),
        requests=len(plan), offer_seconds=plan[-1].at, accepted=len(accept), errors=len(errors),
        accepted_per_second=len(accept) / max(answered - epoch, 1e-9),
        accept_p50_ms=percentile(accept, 0.5), accept_p99_ms=percentile(accept, 0.99),
        e2e_p50_ms=_ms(percentile(e2e, 0.5)), e2e_p99_ms=_ms(percentile(e2e, 0.99)),
        update_p50_ms=_ms(percentile(updates, 0.5)), update_p99_ms=_ms(percentile(updates, 0.99)),
        deliveries=deliveries, deliveries_per_second=deliveries / max(end - epoch, 1e-9),
        settle_seconds=(last_final - (epoch + plan[-1].at)) if settled else None,
        unsettled=len(tracked) - len(done), rows=sum(statuses.values()), sent=sent,
        skipped=statuses["skipped"],
        failed=statuses["failed"], superseded_push=superseded,
        arrived={c: arrived.get(c, 0) for c in EXTERNAL},
        cpu_seconds=monitor.cpu_seconds,
        cpu_ms_per_delivery={n: 1000 * s / deliveries if deliveries else math.nan
                             for n, s in monitor.cpu_seconds.items()},
        machine_cpu_ms_per_delivery=(1000 * monitor.machine_cpu_seconds / deliveries
                                     if deliveries else None),
        unattributed_cores=(monitor.machine_cpu_seconds - sum(monitor.cpu_seconds.values()))
        / max(monitor.seconds, 1e-9),
        ledger_queries=completion.queries, first_error=errors[0] if errors else None)


def _count(tracked: Iterable[Tracked]) -> tuple[dict[str, int], Counter[str], int]:
    """Sent per channel (v1 rows seen at version 1; the updates' push rows), the statuses of
    every row seen, and v1 push rows an update took over before they were seen final."""
    sent = {"email": 0, "sms": 0, "push": 0, "update_push": 0}
    statuses: Counter[str] = Counter()
    superseded = 0
    for t in tracked:
        rows = {*t.channels.values(), *([t.update] if t.update is not None else [])}
        statuses.update(row.status for row in rows)
        for channel in EXTERNAL:
            row = t.channels.get(channel)
            if row is not None and row.version == 1 and row.status == "sent":
                sent[channel] += 1
        push = t.channels.get("push")
        superseded += push is not None and push.version >= 2
        if t.update is not None and t.update.status == "sent":
            sent["update_push"] += 1
    return sent, statuses, superseded


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
