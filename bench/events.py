"""``python -m bench events``: does a burst of SES delivery events slow the sends down?

Side by side in one run, on the embedded stack (``serve`` plus a worker process, SQLite),
``--rounds`` times: an email-only bulk of ``--recipients`` alone, then the same bulk to the
same users (a new notification) while a client posts ``--events`` SES ``Delivery`` events,
signed as SNS signs them (a key and certificate made here, ``bench/sns_signing.py``), about
the previous bulk's messages (their real provider message ids, from the ledger), from
``--concurrency`` connections. Reported: each bulk's time (first request to last row final),
the events' rate and answers, and the ratio burst / alone per round (the bar: at most 1.10).
The signing happens before the clock starts.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.harness import Options
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


class _Burst(threading.Thread):
    def __init__(self, url: str, bodies: list[bytes], concurrency: int) -> None:
        super().__init__(daemon=True)
        self._url = url
        self._bodies = bodies
        self._concurrency = concurrency
        self.seconds = 0.0
        self.statuses: dict[int, int] = {}

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        queue = list(reversed(self._bodies))
        started = time.perf_counter()
        async with httpx.AsyncClient(base_url=self._url, timeout=60, trust_env=False) as client:
            async def lane() -> None:
                while queue:
                    body = queue.pop()
                    r = await client.post("/v1/providers/ses/events", content=body,
                                          headers={"Content-Type": "text/plain; charset=UTF-8",
                                                   "x-amz-sns-message-type": "Notification"})
                    self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
            await asyncio.gather(*(lane() for _ in range(self._concurrency)))
        self.seconds = time.perf_counter() - started


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
                for i in range(rounds):
                    alone = run_mixed(stack, standins, people, update=False, only=["email"])
                    sent = _message_ids(stack.database_url)
                    bodies = [sns.notification(ses_event("Delivery", mid, address))
                              for mid, address in (sent * (events // max(len(sent), 1) + 1))[:events]]
                    burst = _Burst(stack.gateway.url, bodies, concurrency)
                    burst.start()
                    during = run_mixed(stack, standins, people, update=False, only=["email"])
                    burst.join()
                    row = {"alone_seconds": round(alone.seconds, 2), "burst_seconds": round(during.seconds, 2),
                           "ratio": round(during.seconds / alone.seconds, 3),
                           "events_seconds": round(burst.seconds, 2),
                           "events_per_second": round(events / burst.seconds, 1) if burst.seconds else None,
                           "event_answers": burst.statuses,
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
