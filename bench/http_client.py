"""``python -m bench.http_client``: aiohttp's client against :mod:`transport.pool`, side by side.

The providers' calls (SES, SNS, FCM) are small POSTs on keep-alive connections to one origin.
This sends the same signed-looking SES request (about 1.6 kB) through both clients to a local
aiohttp server in another process (so this process's CPU is the client's alone), on uvloop
as the dispatcher runs, with 4 and then 32 requests in flight; the modes alternate within
every round, and each figure is the median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop

from bench.aws_transport import _serve
from transport.pool import HttpClient

__all__ = ["main"]

PATH = "/v2/email/outbound-emails"
BODY = b'{"FromEmailAddress":"no-reply@example.com","Content":"' + b"a" * 1500 + b'"}'
HEADERS = {
    "Content-Type": "application/json", "X-Amz-Date": "20261130T000000Z",
    "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDBENCH/20261130/us-east-1/ses/aws4_request, "
                     "SignedHeaders=content-type;host;x-amz-date, Signature=" + "0" * 64}
CLIENTS = ("aiohttp", "transport.pool")


async def _measure(client: str, url: str, inflight: int, seconds: float) -> tuple[float, float]:
    """(calls/s, client CPU ms per call)."""
    closers: list[Callable[[], Awaitable[None]]] = []
    call: Callable[[], Awaitable[object]]
    if client == "aiohttp":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight + 16))
        closers.append(session.close)

        async def call() -> object:
            async with session.request("POST", url + PATH, data=BODY,
                                       headers=HEADERS) as response:
                return response.status, await response.read()
    else:
        http = HttpClient(limit=inflight + 16)
        closers.append(http.close)
        origin = http.origin(url)

        async def call() -> object:
            return await origin.request("POST", PATH, HEADERS, BODY, timeout=10)
    try:
        for _ in range(50):
            await call()
        loop = asyncio.get_running_loop()
        calls = 0

        async def worker(deadline: float) -> None:
            nonlocal calls
            while loop.time() < deadline:
                await call()
                calls += 1

        cpu0, t0 = time.process_time(), time.perf_counter()
        deadline = loop.time() + seconds
        await asyncio.gather(*(worker(deadline) for _ in range(inflight)))
        cpu1, t1 = time.process_time(), time.perf_counter()
    finally:
        for close in closers:
            await close()
    return calls / (t1 - t0), 1000 * (cpu1 - cpu0) / max(calls, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inflight", default="4,32", help="requests in flight, comma-separated")
    args = parser.parse_args(argv)
    inflights = [int(n) for n in args.inflight.split(",")]

    here, there = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(there,), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{here.recv()}"
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for round_ in range(1, args.rounds + 1):
            for inflight in inflights:
                for client in CLIENTS:
                    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                        sample = runner.run(_measure(client, url, inflight, args.seconds))
                    results.setdefault((client, inflight), []).append(sample)
                    print(f"round {round_}: {client}, {inflight} in flight: {sample[0]:,.0f} "
                          f"calls/s, {sample[1]:.3f} ms CPU per call", flush=True)
    finally:
        server.terminate()
    command = " ".join(["python -m bench.http_client", *(sys.argv[1:] if argv is None else argv)])
    print(f"\n`{command}`: Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
          f"{os.cpu_count()} CPUs, median of {args.rounds} rounds\n")
    print("| client | in flight | calls/s | client CPU ms per call |")
    print("|---|---|---|---|")
    for (client, inflight), samples in results.items():
        rate = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        print(f"| {client} | {inflight} | {rate:,.0f} | {cpu:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
