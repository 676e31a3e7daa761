"""``python -m bench``: measure the dispatcher, and its peers side by side.

Workloads:
  run     the whole table, one command: the dispatcher (embedded: SQLite, `serve` with 2
          processes; production: PostgreSQL + Redis + SQS with 1 and 2 worker
          processes) and its peers (Celery 5 + boto3 + pyfcm; Apprise) on the same provider
          stand-ins (SES, SNS, FCM wire protocols); the mixed workload (N recipients, all four
          channels, a few percent opted out or invalid), the update workload (v2, in-app
          only), the gateway workload (single-recipient requests, and one 10,000-recipient
          request), the in-app fan-out, the ceiling of the stand-ins with a minimal client,
          and the small workload below (a fixed offer, the sustainable-rate search within a
          time budget per contender, the gateway alone). Writes docs/bench-results.json, the table into
          docs/BENCHMARKS.md and the chart
          docs/deliveries.png.
  small   single-recipient notifications and their updates, offered open loop at fixed
          rates: N users each get `installing` (app-install, all four channels) and 1-3 s
          later its update (version 2, completed, push only). Accept latency, end to end
          (ledger rows final), deliveries/s, time to settle, CPU per delivery per process; on
          the embedded stack, the production stack (1 and 2 workers) and the Celery peer.
          --find-rate finds the highest sustainable rate (accept p99 < 50 ms, end-to-end
          p99 < 1 s, settled within 2 s): doubling from 50/s until a step fails, then
          bisecting to within 50/s (or --rates, in order); --gateway-alone measures the
          embedded gateway with no worker.
  smoke   the embedded default in one process with the log providers: one bulk of N.
  memory  peak RSS of each dispatcher process on one big bulk (1,000,000 in-app by default).
  scaleout  CPU per delivery of each process of the production stack with 1 and 2 workers, the
          model of a PostgreSQL's capacity that follows, and a check with pinned CPUs.
  events  SES delivery events in a burst during an email bulk: the bulk's time against the same
          bulk alone, side by side, per round.
  ratelimit  DISPATCHER_EMAIL_RATE_LIMIT's accuracy: target vs the rate the SES stand-in saw
          on an email-only bulk with 2 worker processes, and the same bulk unlimited.
  commit  one gateway commit on the embedded store, in process: CPU, wall time and statements
          per commit of 1 and of 8 requests.
  unit    the worker's ledger work for small traffic, in process, on SQLite or PostgreSQL:
          CPU (the process's and PostgreSQL's), wall time and statements per notification.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.processes import SQS_SERVERS
from bench.smoke import main as smoke


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sqs", choices=SQS_SERVERS, default="standin",
                        help="the production stack's SQS: bench.sqs_standin (default; SQS's JSON "
                             "protocol in memory, cheap) or moto_server (as the tests use it; it "
                             "spends more CPU per message than the dispatcher does)")
    sub = parser.add_subparsers(dest="workload", required=True)
    s = sub.add_parser("smoke", help="embedded default, one bulk, in one process")
    s.add_argument("--recipients", type=int, default=10_000)
    s.add_argument("--workers", type=int, default=4, help="chunks in progress at once")
    s.add_argument("--channels", help="comma-separated (default: all the template has)")
    r = sub.add_parser("run", help="the whole table, peers included, side by side")
    r.add_argument("--recipients", type=int, default=10_000, help="mixed workload size (10,000; "
                   "100,000 and 1,000,000 as options)")
    r.add_argument("--runs", type=int, default=3, help="rounds; figures are medians")
    r.add_argument("--apprise-recipients", type=int, default=2_000)
    r.add_argument("--inapp-recipients", type=int, default=100_000)
    r.add_argument("--big-recipients", type=int, default=0,
                   help="also a run of this size for the memory figure (e.g. 1000000)")
    r.add_argument("--sizes", default="2000", help="extra bulk sizes for the chart, comma-separated")
    r.add_argument("--no-production", action="store_true")
    r.add_argument("--no-personalised", action="store_true",
                   help="skip the personalised mixed workload (user.name in every part)")
    r.add_argument("--no-peers", action="store_true")
    r.add_argument("--small-users", type=int, default=20_000,
                   help="small workload: users seeded (20,000)")
    r.add_argument("--small-rate", type=float, default=50.0,
                   help="small workload: the fixed offered rate, notifications/s (50)")
    r.add_argument("--small-seconds", type=float, default=20.0,
                   help="small workload: seconds of the fixed offer (20)")
    r.add_argument("--small-budget", type=float, default=180.0,
                   help="small workload: seconds per contender for the sustainable-rate search, "
                        "and for the gateway alone (180; 0 skips the search)")
    r.add_argument("--small-step-seconds", type=float, default=10.0,
                   help="small workload: seconds per step of the search (10; the gateway alone "
                        "steps for half as long, at most 5)")
    r.add_argument("--no-small", action="store_true", help="skip the small workload")
    r.add_argument("--out", type=Path, default=Path("docs"))
    _small_parser(sub)
    m = sub.add_parser("memory", help="peak RSS of each dispatcher process on one big bulk")
    m.add_argument("--recipients", type=int, default=1_000_000)
    m.add_argument("--channels", default="in_app", help="comma-separated (default in_app)")
    q = sub.add_parser("ratelimit", help="the email rate limit: target vs measured at the stand-in")
    q.add_argument("--rates", type=_floats, default=[50.0, 500.0], help="targets, messages/s (50,500)")
    q.add_argument("--messages", type=int, default=10_000, help="emails per bulk (10,000)")
    q.add_argument("--stack", default="embedded", choices=["embedded", "production"])
    q.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    q.add_argument("--no-unlimited", action="store_true", help="skip the unlimited run")
    q.add_argument("--out", type=Path, help="write the JSON report here")
    c = sub.add_parser("commit", help="one gateway commit on the embedded store, in process")
    c.add_argument("--commits", type=int, default=1_000, help="sequential commits per size (1,000)")
    c.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8],
                   help="requests per commit, comma-separated (1,8)")
    c.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"],
                   help="SQLite's synchronous, as DISPATCHER_SQLITE_SYNCHRONOUS (FULL)")
    c.add_argument("--out", type=Path, help="write the JSON report here")
    u = sub.add_parser("unit", help="the worker's ledger work for small traffic, in process")
    u.add_argument("--units", type=int, default=300, help="units of work per batch size (300)")
    u.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[1, 16],
                   help="notifications per unit of work, comma-separated (1,16)")
    u.add_argument("--engine", default="postgresql", choices=["postgresql", "sqlite"])
    u.add_argument("--out", type=Path, help="write the JSON report here")
    e = sub.add_parser("events", help="an email bulk alone and during a burst of SES events")
    e.add_argument("--recipients", type=int, default=10_000)
    e.add_argument("--events", type=int, default=10_000)
    e.add_argument("--rounds", type=int, default=3)
    e.add_argument("--concurrency", type=int, default=32)
    e.add_argument("--out", type=Path, help="write the JSON report here")
    o = sub.add_parser("scaleout", help="CPU per delivery per process, 1 and 2 workers, pinned check")
    o.add_argument("--recipients", type=int, default=10_000)
    o.add_argument("--no-pinned", action="store_true", help="skip the pinned run")
    o.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    from bench import workloads

    workloads.sqs_server = args.sqs
    if args.workload == "scaleout":
        from bench.scaleout import measure as scaleout

        return _report(scaleout(args.recipients, pinned=not args.no_pinned), args.out)
    if args.workload == "events":
        return _events(args)
    if args.workload == "ratelimit":
        return _ratelimit(args)
    if args.workload == "unit":
        from bench.harness import Options
        from bench.unit_cost import measure as unit_cost

        return _report(unit_cost(args.units, args.sizes, args.engine, Options().postgres_admin_url),
                       args.out)
    if args.workload == "commit":
        from bench.commit_cost import measure
        return _report(measure(args.commits, args.sizes, args.synchronous), args.out)
    if args.workload == "smoke":
        return _smoke(args)
    if args.workload == "memory":
        return _memory(args)
    if args.workload == "small":
        return _small(args)
    return _run(args)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _small_parser(sub: Any) -> None:
    s = sub.add_parser("small", help="single-recipient notifications and updates, open loop",
                       description="Offer the small workload open loop (see python -m bench "
                                   "--help). Without --rate, --find-rate or --gateway-alone: "
                                   "one offer at 200/s.")
    s.add_argument("--contenders", default="embedded",
                   help="comma-separated: embedded, split_1, split_2 (the gateway and workers "
                        "apart on SQLite), production_1, production_2, celery "
                        "(default embedded); each on a fresh stack, one after another")
    s.add_argument("--users", type=int, default=20_000, help="users seeded (20,000)")
    s.add_argument("--rate", type=_floats, help="offered notifications/s, comma-separated for "
                   "several offers one after another on the same stack (updates come on top: "
                   "about twice as many requests)")
    s.add_argument("--seconds", type=float, help="seconds of each offer (default: every user "
                   "once, i.e. users / rate)")
    s.add_argument("--find-rate", action="store_true",
                   help="step up the rate until a bar is missed; report the highest sustainable")
    s.add_argument("--rates", type=_floats, default=None,
                   help="the steps of --find-rate, in order, stopping at the first that fails "
                   "(default: none; the rate doubles from 50/s until a step fails, then bisects "
                   "to within 50/s)")
    s.add_argument("--step-seconds", type=float, default=10.0, help="offer per step (10)")
    s.add_argument("--budget", type=float, default=180.0,
                   help="seconds per contender for --find-rate (180)")
    s.add_argument("--gateway-alone", action="store_true",
                   help="also the embedded gateway with no worker: highest rate with p99 < 50 ms")
    s.add_argument("--gateway-rates", type=_floats,
                   default=[100.0, 250.0, 500.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0],
                   help="the steps of --gateway-alone (100,250,500,1000,1500,2000,3000,4000)")
    s.add_argument("--gateway-seconds", type=float, default=5.0, help="offer per step (5)")
    s.add_argument("--gateway-keep-going", action="store_true",
                   help="offer every step of --gateway-rates, past the first that misses p99 < 50 ms")
    s.add_argument("--seed", type=int, default=1, help="seeds the users' order and update delays")
    s.add_argument("--out", type=Path, help="write the JSON report here")


def _small(args: argparse.Namespace) -> int:
    from bench.report import small_tables
    from bench.small_suite import SmallOptions, measure_small
    from bench.standins import StandIns

    rates = args.rate if args.rate is not None else (
        [] if args.find_rate or args.gateway_alone else [200.0])
    steps = args.rates
    opts = SmallOptions(contenders=args.contenders.split(","), users=args.users, rates=rates,
                        seconds=args.seconds, find_rate=args.find_rate, search_rates=steps,
                        step_seconds=args.step_seconds, budget=args.budget,
                        gateway_alone=args.gateway_alone, gateway_rates=args.gateway_rates,
                        gateway_seconds=args.gateway_seconds,
                        gateway_keep_going=args.gateway_keep_going, seed=args.seed)
    with StandIns() as standins:
        report = measure_small(opts, standins)
    report["command"] = "python -m bench " + " ".join(sys.argv[1:])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(small_tables(report))
    return 0


def _report(report: dict[str, Any], out: Path | None) -> int:
    """Print a JSON report with the command that made it, and write it to ``out`` if given."""
    report["command"] = "python -m bench " + " ".join(sys.argv[1:])
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def _events(args: argparse.Namespace) -> int:
    from bench.events import measure

    report = measure(args.recipients, args.events, rounds=args.rounds, concurrency=args.concurrency)
    return _report(report, args.out)


def _ratelimit(args: argparse.Namespace) -> int:
    from bench.ratelimit import measure

    report = measure(args.rates, args.messages, kind=args.stack, workers=args.workers,
                     unlimited=not args.no_unlimited)
    return _report(report, args.out)


def _memory(args: argparse.Namespace) -> int:
    """The embedded stack (serve: the API and 2 worker processes) on one bulk of N."""
    from bench.harness import Options, _mixed
    from bench.standins import StandIns

    with StandIns() as standins:
        result = _mixed("embedded", standins, Options(), args.recipients, 2, update=False,
                        only=args.channels.split(","))
    print(json.dumps({"recipients": result.recipients, "seconds": round(result.seconds, 1),
                      "sent": result.sent,
                      "peak_rss_mb": {k: round(v) for k, v in result.peak_rss_mb.items()}}))
    return 0


def _smoke(args: argparse.Namespace) -> int:
    channels = args.channels.split(",") if args.channels else None
    result = smoke(args.recipients, args.workers, channels)
    print(json.dumps({"recipients": result.recipients, "rows": result.rows,
                      "final_rows": result.final_rows,
                      "accept_seconds": round(result.accept_seconds, 3),
                      "deliver_seconds": round(result.deliver_seconds, 3),
                      "rows_per_second": round(result.rows_per_second)}))
    per_recipient = len(channels) if channels else 4
    return 0 if result.final_rows == result.rows == per_recipient * result.recipients else 1


def _run(args: argparse.Namespace) -> int:
    from bench.harness import Options, run, write_json
    from bench.report import chart, rounds_table, small_tables, splice, table

    opts = Options(recipients=args.recipients, runs=args.runs,
                   apprise_recipients=args.apprise_recipients,
                   inapp_recipients=args.inapp_recipients, big_recipients=args.big_recipients,
                   sizes=[int(x) for x in args.sizes.split(",") if x], out=args.out,
                   production=not args.no_production, peers=not args.no_peers,
                   personalised=not args.no_personalised,
                   small=not args.no_small, small_users=args.small_users,
                   small_rate=args.small_rate, small_seconds=args.small_seconds,
                   small_budget=args.small_budget, small_step_seconds=args.small_step_seconds)
    report = run(opts)
    report["sqs"] = args.sqs
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out / "bench-results.json")
    chart(report, args.out / "deliveries.png")
    command = "python -m bench " + " ".join(sys.argv[1:] if argv_is_cli() else ["run"])
    queue = ("" if args.no_production else " The production stack's SQS: "
             + ("moto_server." if args.sqs == "moto" else "the stand-in (`bench/sqs_standin.py`)."))
    generated = (f"Command: `{command.strip()}` — {report['machine']['date']}, "
                 f"{report['machine']['cpus']} CPUs, {report['machine']['memory_gb']} GiB, "
                 f"Python {report['machine']['python']}.{_speed(report['machine'])}{queue}\n\n"
                 f"{table(report)}\n\n"
                 f"Email+SMS+push deliveries/s per round (mixed, {opts.recipients:,} recipients; "
                 f"Apprise {opts.apprise_recipients:,}):\n\n{rounds_table(report)}\n\n"
                 f"Ceiling of the stand-ins with a minimal client (req/s): "
                 + ", ".join(f"{k} {v:,.0f}" for k, v in report["ceiling"].items()) + "\n\n"
                 "![deliveries per second](deliveries.png)"
                 + (f"\n\n### Small traffic\n\n{small_tables(report['small'])}"
                    if "small" in report else ""))
    path = args.out / "BENCHMARKS.md"
    path.write_text(splice(path.read_text() if path.exists() else "# Benchmarks\n", generated))
    print(table(report))
    return 0


def argv_is_cli() -> bool:
    """Called as ``python -m bench [--sqs S] run …`` (not from a test with its own argv)."""
    return "run" in sys.argv[1:4]


def _speed(machine: dict[str, Any]) -> str:
    """The machine's speed during the run (``harness.loop_seconds``), when it was measured."""
    start, end = machine.get("loop_seconds_start"), machine.get("loop_seconds_end")
    if start is None or end is None:
        return ""
    return (f" The machine's speed: a pure-Python loop of 10 million additions took {start:.2f} s "
            f"at the start and {end:.2f} s at the end (best of three; lower is faster).")


sys.exit(cli())
