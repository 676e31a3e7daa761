"""``python -m bench ratelimit``: the provider rate limit's accuracy, measured at the stand-ins.

For each target rate, the embedded stack (``dispatcher serve`` with ``--processes`` worker
processes, SQLite; or the production stack with Redis and two workers, ``--stack
production``) sends one email-only bulk of ``--messages`` with
``DISPATCHER_EMAIL_RATE_LIMIT`` set; a sampler reads the SES stand-in's counter every 50 ms.
Reported per target: the rate the stand-in saw (messages after the first / seconds from the
first to the last arrival), its worst 1-second window, and the same bulk unlimited (the
limiter's overhead when off: it must not be slower than before).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import Options
from bench.standins import StandIns
from bench.workloads import run_mixed, seed, start_stack, stop_stack, users

__all__ = ["measure"]


class _Sampler:
    """Polls the stand-in's email counter; keeps (time, count) whenever it changed."""

    def __init__(self, standins: StandIns, interval: float = 0.05) -> None:
        self._standins = standins
        self._interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        last = -1
        while not self._stop.is_set():
            count = self._standins.stats().get("email", 0)
            if count != last:
                self.samples.append((time.perf_counter(), count))
                last = count
            time.sleep(self._interval)

    def figures(self) -> dict[str, float]:
        moving = [(t, n) for t, n in self.samples if n > 0]
        if len(moving) < 2:
            return {"rate": 0.0, "worst_second": 0.0}
        (t0, n0), (t1, n1) = moving[0], moving[-1]
        worst = 0
        for i, (t, n) in enumerate(moving):
            later = [m for s, m in moving[i:] if s - t <= 1.0]
            worst = max(worst, later[-1] - n)
        return {"rate": (n1 - n0) / (t1 - t0), "worst_second": float(worst)}


def _one(kind: str, standins: StandIns, opts: Options, messages: int, workers: int,
         rate: float | None) -> dict[str, Any]:
    saved = os.environ.get("BENCH_DISPATCHER_EMAIL_RATE_LIMIT")
    if rate is not None:
        os.environ["BENCH_DISPATCHER_EMAIL_RATE_LIMIT"] = str(rate)
    else:
        os.environ.pop("BENCH_DISPATCHER_EMAIL_RATE_LIMIT", None)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ratelimit-") as folder:
            stack = start_stack(kind, standins, Path(folder), workers=workers,
                                postgres_admin_url=opts.postgres_admin_url, redis_url=opts.redis_url)
            try:
                people = users(messages)
                seed(stack.database_url, people)
                standins.reset()  # the sampler must not see the previous run's count
                with _Sampler(standins) as sampler:
                    result = run_mixed(stack, standins, people, update=False, only=["email"],
                                       timeout=max(600.0, 3 * messages / (rate or 1000)))
            finally:
                stop_stack(stack, opts.postgres_admin_url)
    finally:
        if saved is None:
            os.environ.pop("BENCH_DISPATCHER_EMAIL_RATE_LIMIT", None)
        else:
            os.environ["BENCH_DISPATCHER_EMAIL_RATE_LIMIT"] = saved
    figures = sampler.figures()
    return {"target": rate, "messages": messages, "sent": result.sent.get("email", 0),
            "arrived": result.arrived.get("email", 0), "seconds": round(result.seconds, 2),
            "measured_rate": round(figures["rate"], 2),
            "worst_1s_window": figures["worst_second"],
            "ratio": round(figures["rate"] / rate, 3) if rate else None}


def measure(targets: list[float], messages: int, *, kind: str = "embedded", workers: int = 2,
            unlimited: bool = True) -> dict[str, Any]:
    opts = Options()
    out: dict[str, Any] = {"stack": kind, "workers": workers, "runs": []}
    with StandIns() as standins:
        for rate in targets:
            out["runs"].append(_one(kind, standins, opts, messages, workers, rate))
            print(out["runs"][-1], flush=True)
        if unlimited:
            out["runs"].append(_one(kind, standins, opts, messages, workers, None))
            print(out["runs"][-1], flush=True)
    return out
