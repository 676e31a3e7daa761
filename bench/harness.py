"""``python -m bench run``: the dispatcher and its peers, side by side, in one run.

Order per round (rounds interleave contenders so the machine's noise spreads evenly):
dispatcher embedded, the same personalised (``Hi {{ user.name }}`` in every part of email, SMS
and push: rendered per recipient), dispatcher production with 1 and 2 worker processes, the Celery peer,
the Apprise peer. Then, once: the ceiling, the gateway workload on both stacks, the in-app
fan-out, the small workload (:mod:`bench.small_suite`: a fixed open-loop offer and the
sustainable-rate search per contender, the gateway alone), and optionally a large run for
memory. Every figure reported is the median of the
rounds; ratios are taken from medians measured in this same run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import workloads
from bench.ceiling import measure_ceiling
from bench.standins import StandIns
from bench.workloads import (
    PERSONAL_TEMPLATE,
    TEMPLATE,
    GatewayResult,
    MixedResult,
    run_gateway,
    run_mixed,
    seed,
    start_stack,
    stop_stack,
    users,
)

__all__ = ["Options", "run"]


@dataclass
class Options:
    recipients: int = 10_000
    runs: int = 3
    apprise_recipients: int = 2_000
    inapp_recipients: int = 100_000
    big_recipients: int = 0            # e.g. 1,000,000 for the memory comparison; 0 skips it
    sizes: list[int] = field(default_factory=lambda: [2_000])   # extra points for the chart
    production: bool = True
    personalised: bool = True          # the personalised mixed workload, next to the mixed one
    peers: bool = True
    out: Path = Path("docs")
    small: bool = True                 # the small workload (bench.small_suite)
    small_users: int = 20_000
    small_rate: float = 50.0           # the fixed offer, notifications/s
    small_seconds: float = 20.0
    small_budget: float = 180.0        # per contender, for the sustainable-rate search
    small_step_seconds: float = 10.0   # per step of the search
    postgres_admin_url: str = os.environ.get(
        "DISPATCHER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url: str = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _mixed(kind: str, standins: StandIns, opts: Options, n: int, workers: int,
           update: bool = True, only: list[str] | None = None, template: str = TEMPLATE) -> MixedResult:
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as folder:
        stack = start_stack(kind, standins, Path(folder), workers=workers,
                            postgres_admin_url=opts.postgres_admin_url, redis_url=opts.redis_url)
        try:
            people = users(n)
            seed(stack.database_url, people)
            result = run_mixed(stack, standins, people, update=update, only=only, template=template)
        finally:
            stop_stack(stack, opts.postgres_admin_url)
    _log(f"{kind} x{workers} n={n} {only or 'all'} {template}: {result.external_per_second:,.0f} email+sms+push/s "
         f"({result.seconds:.1f}s), update {result.update_seconds or 0:.2f}s")
    return result


def _celery(standins: StandIns, opts: Options, n: int) -> dict[str, Any]:
    from bench.peers.celery_peer import run_celery

    with tempfile.TemporaryDirectory(prefix="bench-celery-") as folder:
        account = standins.write_service_account(Path(folder) / "fcm.json", "bench")
        result = run_celery(standins.url, account, users(n), concurrency=2,
                            database_url=opts.postgres_admin_url)
    _log(f"celery n={n}: {result.per_second:,.0f}/s ({result.seconds:.1f}s, {result.errors} errors)")
    return {"recipients": n, "deliveries": result.deliveries, "seconds": result.seconds,
            "per_second": result.per_second, "errors": result.errors}


def _apprise(standins: StandIns, n: int) -> dict[str, Any]:
    from bench.peers.apprise_peer import run_apprise

    result = run_apprise(standins, users(n), workers=2)
    _log(f"apprise n={n}: {result.per_second:,.0f}/s ({result.seconds:.1f}s)")
    return {"recipients": n, "deliveries": result.deliveries, "seconds": result.seconds,
            "per_second": result.per_second, "errors": result.errors}


def _gateway(kind: str, standins: StandIns, opts: Options) -> GatewayResult:
    # moto_server's SQS takes each request's message slowly: fewer requests there.
    count = 4000 if kind == "embedded" or workloads.sqs_server != "moto" else 1000
    with tempfile.TemporaryDirectory(prefix=f"bench-gw-{kind}-") as folder:
        # embedded: ``serve`` as shipped (a worker process per CPU); production: one worker
        stack = start_stack(kind, standins, Path(folder), workers=0 if kind == "embedded" else 1,
                            postgres_admin_url=opts.postgres_admin_url, redis_url=opts.redis_url)
        try:
            seed(stack.database_url, users(1_000))
            result = run_gateway(stack, count=count)
        finally:
            stop_stack(stack, opts.postgres_admin_url)
    _log(f"gateway {kind}: {result.per_second:,.0f} req/s p50 {result.percentile(0.5):.1f} ms "
         f"p99 {result.percentile(0.99):.1f} ms; 10,000 recipients accepted in {result.bulk_accept_ms:.0f} ms")
    return result


def _inapp(standins: StandIns, opts: Options) -> MixedResult:
    """In-app fan-out: one notification to N recipients, in-app only, accepted to all final."""
    return _mixed("embedded", standins, opts, opts.inapp_recipients, 2, update=False,
                  only=["in_app"])


def run(opts: Options) -> dict[str, Any]:
    report: dict[str, Any] = {"options": {k: str(v) for k, v in asdict(opts).items()},
                              "machine": _machine(), "rounds": []}
    with StandIns() as standins:
        report["ceiling"] = measure_ceiling(standins.url, seconds=3.0)
        _log(f"ceiling: {report['ceiling']}")
        for round_ in range(opts.runs):
            _log(f"round {round_ + 1} of {opts.runs}")
            report["rounds"].append(_round(standins, opts))
        report["sizes"] = {n: _sizes(standins, opts, n) for n in opts.sizes}
        report["gateway"] = {k: _gateway_json(_gateway(k, standins, opts))
                             for k in (["embedded", "production"] if opts.production else ["embedded"])}
        report["inapp"] = _mixed_json(_inapp(standins, opts))
        if opts.small:
            report["small"] = _small(standins, opts)
        if opts.big_recipients:
            report["big"] = _mixed_json(_mixed("embedded", standins, opts, opts.big_recipients, 2,
                                               update=False))
    report["machine"]["loop_seconds_end"] = loop_seconds()
    report["summary"] = summarise(report)
    return report


def _small(standins: StandIns, opts: Options) -> dict[str, Any]:
    """The small workload on every contender: one fixed offer, the sustainable-rate search
    within ``small_budget`` seconds each, and the gateway alone."""
    from bench.small_suite import SmallOptions, measure_small

    contenders = ["embedded"] + (["production_1", "production_2"] if opts.production else [])
    contenders += ["celery"] if opts.peers else []
    return measure_small(SmallOptions(
        contenders=contenders, users=opts.small_users, rates=[opts.small_rate],
        seconds=opts.small_seconds, find_rate=opts.small_budget > 0, budget=opts.small_budget,
        step_seconds=opts.small_step_seconds, gateway_alone=True,
        gateway_seconds=min(5.0, opts.small_step_seconds / 2), gateway_budget=opts.small_budget,
        postgres_admin_url=opts.postgres_admin_url, redis_url=opts.redis_url), standins)


def _round(standins: StandIns, opts: Options) -> dict[str, Any]:
    n = opts.recipients
    out: dict[str, Any] = {"embedded": _mixed_json(_mixed("embedded", standins, opts, n, 2))}
    if opts.personalised:
        out["personalised"] = _mixed_json(_mixed("embedded", standins, opts, n, 2,
                                                 template=PERSONAL_TEMPLATE))
    for channel in ("email", "sms", "push"):  # each channel alone: its own rate
        out[f"only_{channel}"] = _mixed_json(_mixed("embedded", standins, opts, n, 2,
                                                    update=False, only=[channel]))
    if opts.production:
        for workers in (1, 2):
            out[f"production_{workers}"] = _mixed_json(_mixed("production", standins, opts, n, workers))
    if opts.peers:
        out["celery"] = _celery(standins, opts, n)
        out["apprise"] = _apprise(standins, opts.apprise_recipients)
    return out


def _sizes(standins: StandIns, opts: Options, n: int) -> dict[str, Any]:
    point: dict[str, Any] = {"embedded": _mixed_json(_mixed("embedded", standins, opts, n, 2,
                                                            update=False))}
    if opts.peers:
        point["celery"] = _celery(standins, opts, n)
        point["apprise"] = _apprise(standins, min(n, opts.apprise_recipients))
    return point


def _mixed_json(r: MixedResult) -> dict[str, Any]:
    return {**asdict(r), "external_per_second": r.external_per_second,
            "push_per_second": r.per_second("push"), "email_per_second": r.per_second("email"),
            "sms_per_second": r.per_second("sms"), "in_app_per_second": r.per_second("in_app")}


def _gateway_json(r: GatewayResult) -> dict[str, Any]:
    return {"requests": r.requests, "seconds": r.seconds, "per_second": r.per_second,
            "p50_ms": r.percentile(0.5), "p99_ms": r.percentile(0.99),
            "bulk_accept_ms": r.bulk_accept_ms}


def _machine() -> dict[str, Any]:
    import psutil

    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "loop_seconds_start": loop_seconds()}


def loop_seconds() -> float:
    """The machine's speed at the moment: seconds of a pure-Python loop of 10 million
    additions, the best of three. A shared host's speed changes from hour to hour (0.73 to
    1.36 s within one hour on this one), so figures from different runs compare only with
    this beside them; side by side in one run, they compare as they are."""
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(10_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def _median(rounds: list[dict[str, Any]], contender: str, key: str) -> float | None:
    values = [r[contender][key] for r in rounds if contender in r]
    return statistics.median(values) if values else None


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    rounds = report["rounds"]
    s: dict[str, Any] = {}
    for contender in ("embedded", "personalised", "production_1", "production_2"):
        for key in ("external_per_second", "email_per_second", "sms_per_second",
                    "push_per_second", "update_seconds"):
            s[f"{contender}.{key}"] = _median(rounds, contender, key)
    for channel in ("email", "sms", "push"):
        s[f"only_{channel}.per_second"] = _median(rounds, f"only_{channel}", f"{channel}_per_second")
    for peer in ("celery", "apprise"):
        s[f"{peer}.per_second"] = _median(rounds, peer, "per_second")
    s["ceiling"] = report["ceiling"]
    return s


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, default=str))
