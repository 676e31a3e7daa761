"""``python -m bench small``: the small workload on each contender, and what ``bench run`` keeps.

Contenders: ``embedded`` (``dispatcher serve`` on SQLite, as shipped: the API in its process and
a worker process per CPU), ``production_1`` / ``production_2`` (``dispatcher gateway`` + 1 or 2 ``dispatcher
worker`` on PostgreSQL, Redis and SQS on the stand-in or moto_server), ``split_1`` / ``split_2``
(``dispatcher gateway`` + 1 or 2 ``dispatcher worker`` on serve's SQLite store and queue,
started apart: what ``serve`` does, with the worker count chosen), ``celery`` (the Celery 5 + boto3 +
pyfcm peer, prefork 2). Each gets a fresh stack with the same N users (:func:`users`), a
warm-up of a few unmeasured notifications, then in order: the fixed-rate offers (``rates``,
each ``seconds`` long, or every user once), and the sustainable-rate search. The gateway
alone is measured once, on its own stack.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.small import DispatcherTarget, SmallResult, Target, run_small, warm_up
from bench.sustainable import (
    GATEWAY_RATES,
    GatewayAlone,
    RateSearch,
    find_sustainable,
    gateway_alone,
    sustainable,
)
from bench.workloads import seed, start_stack, stop_stack, users

if TYPE_CHECKING:
    from bench.standins import StandIns

__all__ = ["CONTENDERS", "SmallOptions", "measure_small"]

CONTENDERS = ("embedded", "split_1", "split_2", "production_1", "production_2", "celery")
WARM_UP_USERS = 10


@dataclass
class SmallOptions:
    contenders: list[str] = field(default_factory=lambda: ["embedded"])
    users: int = 20_000
    rates: list[float] = field(default_factory=lambda: [200.0])   # fixed-rate offers
    seconds: float | None = None          # per fixed rate; None: every user once
    find_rate: bool = False
    search_rates: list[float] | None = None   # None: doubling, then bisecting (bench.sustainable)
    step_seconds: float = 10.0
    budget: float = 180.0                 # per contender, for the search
    gateway_alone: bool = False
    gateway_rates: list[float] = field(default_factory=lambda: [float(r) for r in GATEWAY_RATES])
    gateway_seconds: float = 5.0
    gateway_budget: float = 90.0
    gateway_keep_going: bool = False
    seed: int = 1
    postgres_admin_url: str = os.environ.get(
        "DISPATCHER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url: str = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")

    def count(self, rate: float) -> int:
        return self.users if self.seconds is None else max(1, round(rate * self.seconds))


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def measure_small(opts: SmallOptions, standins: StandIns) -> dict[str, Any]:
    """Every contender in turn, then the gateway alone; a JSON-ready report."""
    report: dict[str, Any] = {"options": {k: v for k, v in asdict(opts).items()
                                          if not k.endswith("_url")}, "contenders": {}}
    for contender in opts.contenders if opts.rates or opts.find_rate else []:
        report["contenders"][contender] = _contender(contender, standins, opts)
    if opts.gateway_alone:
        report["gateway_alone"] = _gateway_alone_json(_measure_gateway_alone(standins, opts))
    return report


def _contender(contender: str, standins: StandIns, opts: SmallOptions) -> dict[str, Any]:
    people = users(opts.users + WARM_UP_USERS)
    ids = [str(p["id"]) for p in people]
    plan_ids, warm_ids = ids[:opts.users], ids[opts.users:]
    out: dict[str, Any] = {"runs": []}
    with open_target(contender, standins, people, opts) as target:
        warm_up(target, standins, warm_ids)
        for i, rate in enumerate(opts.rates):
            result = run_small(target, standins, plan_ids, rate=rate, count=opts.count(rate),
                               seed=opts.seed + 100 * i)
            _log(describe(result))
            out["runs"].append(small_json(result))
        if opts.find_rate:
            search = find_sustainable(target, standins, plan_ids, rates=opts.search_rates,
                                      window=opts.step_seconds, budget=opts.budget,
                                      seed=opts.seed + 1000)
            for step in search.steps:
                _log("step " + describe(step))
            out["search"] = search_json(search)
            best = search.best
            _log(f"{contender}: sustainable rate {best.rate:g}/s" if best else
                 f"{contender}: no step sustainable ({search.stopped})")
    return out


@contextmanager
def open_target(contender: str, standins: StandIns, people: list[dict[str, Any]],
                opts: SmallOptions) -> Iterator[Target]:
    """A fresh stack (or Celery worker) with ``people`` seeded, stopped at the end."""
    if contender == "celery":
        from bench.peers.celery_small import CeleryTarget

        with CeleryTarget(standins, people, admin_url=opts.postgres_admin_url) as celery:
            yield celery
        return
    kind, _, workers = contender.partition("_")
    if kind not in ("embedded", "split", "production"):
        raise ValueError(f"unknown contender {contender!r}; one of {', '.join(CONTENDERS)}")
    with tempfile.TemporaryDirectory(prefix=f"bench-small-{contender}-") as folder:
        # embedded: ``serve`` alone, which starts a worker process per CPU itself
        stack = start_stack(kind, standins, Path(folder), workers=int(workers or 0),
                            postgres_admin_url=opts.postgres_admin_url, redis_url=opts.redis_url)
        try:
            seed(stack.database_url, people)
            yield DispatcherTarget(stack, opts.postgres_admin_url, opts.redis_url)
        finally:
            stop_stack(stack, opts.postgres_admin_url)


def _measure_gateway_alone(standins: StandIns, opts: SmallOptions) -> GatewayAlone:
    with tempfile.TemporaryDirectory(prefix="bench-gateway-alone-") as folder:
        stack = start_stack("gateway-alone", standins, Path(folder), workers=0,
                            postgres_admin_url=opts.postgres_admin_url, redis_url=opts.redis_url)
        try:
            result = gateway_alone(DispatcherTarget(stack), rates=opts.gateway_rates,
                                   window=opts.gateway_seconds,
                                   budget=float("inf") if opts.gateway_keep_going else opts.gateway_budget,
                                   keep_going=opts.gateway_keep_going)
        finally:
            stop_stack(stack, opts.postgres_admin_url)
    for step in result.steps:
        _log(f"gateway alone {step.rate:g}/s: {step.accepted_per_second:,.0f}/s accepted, "
             f"p50 {_f(step.p50_ms)} ms, p99 {_f(step.p99_ms)} ms, {step.errors} errors, "
             f"gateway CPU {step.cpu_ms_per_request['gateway']:.2f} ms/request")
    return result


def describe(r: SmallResult) -> str:
    """One log line: what a reader checks first."""
    settle = f"{r.settle_seconds:.2f} s" if r.settle_seconds is not None else f"not ({r.unsettled} open)"
    return (f"{r.contender} {r.rate:g}/s x {r.notifications}: accepted {r.accepted_per_second:,.0f} "
            f"req/s, accept p50/p99 {_f(r.accept_p50_ms)}/{_f(r.accept_p99_ms)} ms, e2e "
            f"{_f(r.e2e_p50_ms)}/{_f(r.e2e_p99_ms)} ms, update {_f(r.update_p50_ms)}/"
            f"{_f(r.update_p99_ms)} ms, {r.deliveries_per_second:,.0f} deliveries/s, settled "
            f"{settle}, {r.errors} errors")


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def small_json(r: SmallResult) -> dict[str, Any]:
    return {**asdict(r), "sustainable": sustainable(r)}


def search_json(s: RateSearch) -> dict[str, Any]:
    best = s.best
    return {"window_seconds": s.window_seconds, "budget_seconds": s.budget_seconds,
            "stopped": s.stopped, "sustainable_rate": best.rate if best else None,
            "steps": [small_json(step) for step in s.steps]}


def _gateway_alone_json(g: GatewayAlone) -> dict[str, Any]:
    best = g.best
    return {"window_seconds": g.window_seconds, "steps": [asdict(s) | {"passed": s.passed}
                                                          for s in g.steps],
            "best": asdict(best) if best else None}
