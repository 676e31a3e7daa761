"""FCM transports side by side, in one run: our FcmProvider against pyfcm's own transports.

``python -m bench.fcm_transport`` starts the local FCM-compatible server
(``bench/fcm_server.py``: real OAuth2 JWT flow, real ``messages:send``) in a child process,
so the CPU measured here is the client's alone, and sends the same push message through:

  provider        ``channels.fcm.FcmProvider``: one shared HTTP client (``transport.pool``;
                  until 2026-11-30 an aiohttp session), N coroutines
  pyfcm-threads   pyfcm ``FCMNotification.notify()`` (requests) in N threads, and in 8 threads
  pyfcm-async     pyfcm ``async_notify_multiple_devices()`` in batches of N

Each transport is warmed up first (tokens fetched, connections opened), then timed over
``--messages`` sends; the rounds are interleaved and the median of ``--repeat`` is printed,
as msg/s, client CPU ms per message (this process, all threads), server CPU ms per message
and the token requests the server saw during the timed part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.fcm_server import FcmServer
from channels.base import Message
from channels.fcm import FcmProvider

__all__ = ["Figures", "main"]

PROJECT = "bench-project"
MESSAGE = Message("push", "bench-device-token", {"title": "Installing", "body": "Maps is installing"},
                  "app#3f1c2b7e-0000-4000-8000-000000000001", "u1", "app-install",
                  {"state": "installing", "notification_id": "app#3f1c2b7e"})


@dataclass(frozen=True)
class Figures:
    transport: str
    messages: int
    seconds: float
    client_cpu: float
    server_cpu: float
    token_requests: int

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds

    def row(self) -> dict[str, Any]:
        return {"transport": self.transport, "msg_per_s": round(self.per_second),
                "client_cpu_ms_per_msg": round(1000 * self.client_cpu / self.messages, 3),
                "server_cpu_ms_per_msg": round(1000 * self.server_cpu / self.messages, 3),
                "token_requests": self.token_requests}


# -- the server, in its own process ---------------------------------------------------------

def _serve(conn: Connection) -> None:
    with tempfile.TemporaryDirectory() as tmp, FcmServer(keep_messages=False) as server:
        account = server.write_service_account(Path(tmp) / "sa.json", PROJECT)
        conn.send((server.url, str(account)))
        while conn.recv() == "stats":
            conn.send((time.process_time(), server.token_requests, server.send_requests))


class ServerProcess:
    def __init__(self) -> None:
        self._conn, child = multiprocessing.get_context("spawn").Pipe()
        self._process = multiprocessing.get_context("spawn").Process(target=_serve, args=(child,))
        self._process.start()
        child.close()  # so that a crashed server is an EOFError here, not a hang
        url, account = self._conn.recv()
        self.url: str = url
        self.account = Path(account)

    def stats(self) -> tuple[float, int, int]:
        self._conn.send("stats")
        cpu, tokens, sends = self._conn.recv()
        return float(cpu), int(tokens), int(sends)

    def close(self) -> None:
        self._conn.send("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()


class Stopwatch:
    """Wall time, this process's CPU, and the server's CPU and counters, over one timed part."""

    def __init__(self, name: str, server: ServerProcess, messages: int) -> None:
        self._name, self._server, self._messages = name, server, messages
        self._server0 = server.stats()
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> Figures:
        wall, cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu
        (cpu0, tokens0, sends0), (cpu1, tokens1, sends1) = self._server0, self._server.stats()
        if sends1 - sends0 != self._messages:  # every send must have reached the server
            raise RuntimeError(f"{self._name}: {sends1 - sends0} sends, expected {self._messages}")
        return Figures(self._name, self._messages, wall, cpu, cpu1 - cpu0, tokens1 - tokens0)


def _timed(name: str, server: ServerProcess, messages: int, run: Callable[[], None]) -> Figures:
    watch = Stopwatch(name, server, messages)
    run()
    return watch.stop()


# -- (a) FcmProvider: one shared HTTP client ----------------------------------------------------

def bench_provider(server: ServerProcess, messages: int, concurrency: int) -> Figures:
    async def run() -> Figures:
        provider = await FcmProvider.from_service_account(
            server.account, project_id=None, endpoint=server.url, timeout=30.0,
            pool_size=concurrency)
        try:
            await _provider_round(provider, concurrency, concurrency)  # token + connections
            watch = Stopwatch("provider", server, messages)
            await _provider_round(provider, messages, concurrency)
            return watch.stop()
        finally:
            await provider.aclose()
    return asyncio.run(run())


async def _provider_round(provider: FcmProvider, messages: int, concurrency: int) -> None:
    remaining = iter(range(messages))

    async def worker() -> None:
        for _ in remaining:  # the workers share one iterator: each message is sent once
            await provider.send(MESSAGE)
    await asyncio.gather(*(worker() for _ in range(concurrency)))


# -- (b) pyfcm notify() in threads -------------------------------------------------------------

def _pyfcm(server: ServerProcess) -> Any:
    from pyfcm import FCMNotification  # type: ignore[import-untyped]

    fcm = FCMNotification(service_account_file=str(server.account), project_id=PROJECT)
    fcm.FCM_END_POINT_BASE = f"{server.url}/v1/projects"  # the local server, not Google
    return fcm


def _notify(fcm: Any) -> None:
    fcm.notify(fcm_token=MESSAGE.to, notification_title=MESSAGE.parts["title"],
               notification_body=MESSAGE.parts["body"], data_payload=dict(MESSAGE.data),
               android_config={"priority": "high"},
               apns_config={"headers": {"apns-priority": "10"}}, timeout=30)


def bench_pyfcm_threads(server: ServerProcess, messages: int, threads: int) -> Figures:
    fcm = _pyfcm(server)
    remaining = iter(range(messages))
    lock = threading.Lock()
    warmed = threading.Barrier(threads + 1, timeout=60)
    go = threading.Event()

    def worker() -> None:
        # pyfcm opens a session and fetches a token per thread, and its lazy set-up is not
        # thread-safe (concurrent first calls fail with a None token), so warm up one by one.
        with lock:
            _notify(fcm)
        warmed.wait()
        go.wait()
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
            _notify(fcm)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    warmed.wait()

    def run() -> None:
        go.set()
        for t in pool:
            t.join()
    return _timed(f"pyfcm-threads-{threads}", server, messages, run)


# -- (c) pyfcm's async helper ------------------------------------------------------------------

def bench_pyfcm_async(server: ServerProcess, messages: int, batch: int) -> Figures:
    fcm = _pyfcm(server)
    params = {"fcm_token": MESSAGE.to, "notification_title": MESSAGE.parts["title"],
              "notification_body": MESSAGE.parts["body"], "data_payload": dict(MESSAGE.data)}
    fcm.async_notify_multiple_devices([params] * batch, timeout=30)  # warm-up

    def run() -> None:
        for start in range(0, messages, batch):
            answers = fcm.async_notify_multiple_devices(
                [params] * min(batch, messages - start), timeout=30)
            if any("name" not in a for a in answers):
                raise RuntimeError(f"pyfcm-async: failed sends: {answers[:3]}")
    return _timed(f"pyfcm-async-{batch}", server, messages, run)


# -- the run -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench.fcm_transport", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=4000, help="timed sends per transport")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    # pyfcm's async helper never closes the event loop it makes per call
    warnings.simplefilter("ignore", ResourceWarning)
    server = ServerProcess()
    runs: dict[str, list[Figures]] = {}
    try:
        for _ in range(args.repeat):
            for figures in _round(server, args.messages, args.concurrency):
                runs.setdefault(figures.transport, []).append(figures)
                print(json.dumps({"run": figures.row()}), flush=True)
    finally:
        server.close()
    medians = [_median(name, figures) for name, figures in runs.items()]
    for row in medians:
        print(json.dumps({"median": row}))
    return medians


def _round(server: ServerProcess, messages: int, concurrency: int) -> list[Figures]:
    return [bench_provider(server, messages, concurrency),
            bench_pyfcm_threads(server, messages, concurrency),
            bench_pyfcm_threads(server, messages, 8),
            bench_pyfcm_async(server, messages, concurrency)]


def _median(name: str, figures: list[Figures]) -> dict[str, Any]:
    rows = [f.row() for f in figures]
    return {"transport": name, **{k: statistics.median(r[k] for r in rows)
                                  for k in rows[0] if k != "transport"}}


if __name__ == "__main__":
    main()
