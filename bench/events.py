"""``python -m bench events``: does a burst of SES delivery events slow the sends down?

Side by side in one run, on the embedded stack (``serve``, which runs the API and a worker
and starts a worker process per extra CPU, plus one more ``worker`` process; SQLite),
``--rounds`` times after a warm-up bulk: an email-only bulk of ``--recipients`` alone, and
the same bulk to the same users (a new notification) while ``--events`` SES ``Delivery``
events arrive, signed as SNS signs them (a key and certificate made here,
``bench/sns_signing.py``), about earlier bulks' messages (their real provider message ids,
from the ledger), over ``--concurrency`` connections. The two bulks take turns going first
(ABBA), so neither always runs on a warmer store. The burst comes from a process of its own
(``bench.event_burst``, a light HTTP/1.1 client built before the clock starts), so the load
generator neither shares the timing client's interpreter nor spends CPU that would be
counted as the events' cost. Reported per round: each bulk's time (first request to last
row final), the events' rate and answers, how many were answered while the bulk ran (so a
burst that mostly missed the bulk shows), each dispatcher process's CPU seconds during each
bulk (``serve-workers``: serve's own worker processes), the burst client's CPU per event, and
the ratio burst / alone (the bar: at most 1.10).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.harness import Options
from bench.processes import children_of
from bench.sns_signing import TOPIC, FakeSns, ses_event
from bench.standins import StandIns
from bench.workloads import run_mixed, seed, start_stack, stop_stack, users

__all__ = ["measure"]


def _message_ids(database_url: str) -> list[tuple[str, str]]:
    """(provider message id, address) of every email sent so far."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT d.provider_message_id, u.email FROM deliveries d JOIN users u ON u.id = d.user_id "
                "WHERE d.channel = 'email' AND d.status = 'sent'")).all()
    finally:
        engine.dispose()
    return [(str(r[0]), str(r[1])) for r in rows]


class _Burst:
    """The burst, run by ``bench.event_burst`` in a process of its own."""

    def __init__(self, url: str, bodies: list[bytes], concurrency: int, folder: Path) -> None:
        path = folder / "events.jsonl"
        path.write_bytes(b"\n".join(bodies) + b"\n")
        self._args = [sys.executable, "-m", "bench.event_burst", url, str(path), str(concurrency)]
        self._proc: subprocess.Popen[str] | None = None
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.statuses: dict[str, int] = {}
        self.answered_at: list[float] = []

    def start(self) -> None:
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True,
                                      cwd=Path(__file__).resolve().parent.parent)

    def join(self) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate(timeout=600)
        if self._proc.returncode != 0:
            raise RuntimeError(f"the event burst failed (exit {self._proc.returncode})")
        result = json.loads(out.strip().splitlines()[-1])
        self.seconds, self.cpu_seconds = result["seconds"], result["cpu_seconds"]
        self.statuses = result["statuses"]
        self.answered_at = result["answered_at"]

    def answered_between(self, start: float, end: float) -> int:
        """Events answered within [start, end] (wall-clock seconds)."""
        return sum(start <= t <= end for t in self.answered_at)


def measure(recipients: int, events: int, *, rounds: int = 3, concurrency: int = 32) -> dict[str, Any]:
    opts = Options()
    sns = FakeSns()
    saved = {k: os.environ.get(k) for k in ("BENCH_DISPATCHER_SNS_CERT_URL_PATTERN",
                                            "BENCH_DISPATCHER_SNS_TOPIC_ARNS")}
    os.environ["BENCH_DISPATCHER_SNS_CERT_URL_PATTERN"] = sns.pattern
    os.environ["BENCH_DISPATCHER_SNS_TOPIC_ARNS"] = TOPIC
    out: dict[str, Any] = {"recipients": recipients, "events": events, "rounds": []}
    try:
        with StandIns() as standins, tempfile.TemporaryDirectory(prefix="bench-events-") as folder:
            stack = start_stack("embedded", standins, Path(folder), workers=2,
                                postgres_admin_url=opts.postgres_admin_url, redis_url=opts.redis_url)
            try:
                people = users(recipients)
                seed(stack.database_url, people)
                run_mixed(stack, standins, people, update=False, only=["email"])  # warm-up; ids
                for i in range(rounds):
                    # ABBA: the bulk alone first in even rounds, the bulk during the burst first
                    # in odd ones, so neither always runs on a warmer (or more fragmented) store
                    alone_first = i % 2 == 0
                    # serve's own worker processes (one per extra CPU) count with it
                    groups = {"serve-workers": children_of(stack.gateway.pid)}
                    if alone_first:
                        alone = run_mixed(stack, standins, people, update=False, only=["email"], groups=groups)
                    sent = _message_ids(stack.database_url)
                    bodies = [sns.notification(ses_event("Delivery", mid, address))
                              for mid, address in (sent * (events // max(len(sent), 1) + 1))[:events]]
                    burst = _Burst(stack.gateway.url, bodies, concurrency, Path(folder))
                    burst.start()
                    bulk_start = time.time()
                    during = run_mixed(stack, standins, people, update=False, only=["email"], groups=groups)
                    bulk_end = time.time()
                    burst.join()
                    if not alone_first:
                        alone = run_mixed(stack, standins, people, update=False, only=["email"], groups=groups)
                    overlap = burst.answered_between(bulk_start, bulk_end)
                    row = {"order": "alone, burst" if alone_first else "burst, alone",
                           "alone_seconds": round(alone.seconds, 2), "burst_seconds": round(during.seconds, 2),
                           "ratio": round(during.seconds / alone.seconds, 3),
                           "events_seconds": round(burst.seconds, 2),
                           "events_per_second": round(events / burst.seconds, 1) if burst.seconds else None,
                           "event_answers": burst.statuses,
                           "events_during_bulk": overlap,
                           "events_per_second_during_bulk": round(overlap / (bulk_end - bulk_start), 1),
                           "burst_client_cpu_ms_per_event": round(burst.cpu_seconds * 1000 / events, 3),
                           "cpu_seconds_alone": {k: round(v, 2) for k, v in alone.cpu_seconds.items()},
                           "cpu_seconds_during": {k: round(v, 2) for k, v in during.cpu_seconds.items()},
                           "sent_alone": alone.sent.get("email", 0), "sent_during": during.sent.get("email", 0)}
                    out["rounds"].append(row)
                    print(f"round {i + 1}: {row}", flush=True)
            finally:
                stop_stack(stack, opts.postgres_admin_url)
    finally:
        sns.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    out["median_ratio"] = statistics.median(r["ratio"] for r in out["rounds"])
    return out
