"""``python -m bench.aws_transport``: boto3 against :class:`transport.aws.AwsClient`, side by side.

One run measures SES v2 ``SendEmail`` and SNS ``Publish`` against a minimal local aiohttp server
that answers both with their success responses. The server runs in another process, so
``time.process_time()`` of this process is the client's CPU alone; the server reports its own
CPU, to show when it (not the client) was the limit. Clients:

* boto3, 1 thread, and boto3, 8 threads sharing one client (boto3's usual ways);
* the SES and SNS providers over ``AwsClient`` (one ``transport.pool.HttpClient``; until
  2026-11-30 an aiohttp session) with 1, then N requests
  in flight on one event loop.

Both send the same request (the provider's payload; boto3 adds its validation, serialisation,
event hooks and parsing). Every mode runs once per round, for several rounds, interleaved so
that the machine's noise spreads evenly; the median round is reported. It also measures what
building an email costs: the SES v2 ``Simple`` JSON the provider sends against a MIME message
built with Python's ``email`` package (what ``Content.Raw`` would need).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import platform
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from multiprocessing.connection import Connection
from typing import Any, cast

import aiohttp
import boto3  # type: ignore[import-untyped]
import botocore  # type: ignore[import-untyped]
from aiohttp import web
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]

from channels.base import Message
from channels.ses import SesProvider
from channels.sns import SnsProvider
from transport.aws import AwsClient
from transport.pool import HttpClient

__all__ = ["main"]

REGION = "us-east-1"
KEY, SECRET = "AKIDBENCH", "bench-secret"
SENDER = "no-reply@example.com"
SES_ANSWER = json.dumps({"MessageId": "0100018c5e1d2f3a-bench-000000"}).encode()
SNS_ANSWER = (b'<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><PublishResult>'
              b"<MessageId>94f20ce6-13c5-43a0-9a9e-ca52d816e90b</MessageId></PublishResult>"
              b"<ResponseMetadata><RequestId>f187a3c1-376f-11df-8963-01868b7c937a</RequestId>"
              b"</ResponseMetadata></PublishResponse>")
EMAIL = Message(
    channel="email", to="ada@example.org", notification_id="app#3f1c", user_id="u1",
    category="app-install", unsubscribe_url="https://notify.example.com/v1/unsubscribe?t=abc.123",
    parts={"subject": "Your app Foo is installing",
           "text": "Hello Ada,\n\nFoo is being installed on your phone.\n" * 6,
           "html": "<p>Hello <b>Ada</b>,</p><p>Foo is being installed on your phone.</p>" * 6})
SMS = Message(channel="sms", to="+15555550100", parts={"text": "Foo is installed. " * 6},
              notification_id="app#3f1c", user_id="u1", category="app-install")


# --- the server, in its own process -------------------------------------------------------

def _serve(port_out: Connection) -> None:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if request.path.startswith("/v2/"):
            return web.Response(body=SES_ANSWER, content_type="application/json")
        return web.Response(body=SNS_ANSWER, content_type="text/xml")

    async def cpu(_: web.Request) -> web.Response:
        return web.Response(text=repr(time.process_time()))

    async def run() -> None:
        app = web.Application()
        app.router.add_get("/_cpu", cpu)
        app.router.add_route("POST", "/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
        port_out.send(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(run())


def _server_cpu(url: str) -> float:
    with urllib.request.urlopen(f"{url}/_cpu") as response:
        return float(response.read())


# --- measuring ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    calls: int
    seconds: float
    cpu: float  # this process (the client), seconds
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu / self.calls


def _timed(url: str, run: Callable[[], int]) -> Sample:
    server0, cpu0, t0 = _server_cpu(url), time.process_time(), time.perf_counter()
    calls = run()
    t1, cpu1 = time.perf_counter(), time.process_time()
    return Sample(calls, t1 - t0, cpu1 - cpu0, _server_cpu(url) - server0)


def _boto3_call(service: str, url: str, threads: int) -> Callable[[], object]:
    client = boto3.session.Session().client(
        "sesv2" if service == "ses" else "sns", endpoint_url=url, region_name=REGION,
        aws_access_key_id=KEY, aws_secret_access_key=SECRET,
        config=Config(max_pool_connections=max(10, threads)))
    if service == "ses":
        # payload() does not touch the client: the very request the provider sends.
        payload = SesProvider(cast(AwsClient, None), sender=SENDER).payload(EMAIL)
        return lambda: client.send_email(**payload)
    attributes = {"AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"}}
    return lambda: client.publish(PhoneNumber=SMS.to, Message=SMS.parts["text"],
                                  MessageAttributes=attributes)


def measure_boto3(service: str, url: str, threads: int, seconds: float) -> Sample:
    call = _boto3_call(service, url, threads)
    for _ in range(20):  # connections, caches, lazy imports
        call()
    counts = [0] * threads

    def worker(index: int, deadline: float) -> None:
        n = 0
        while time.perf_counter() < deadline:
            call()
            n += 1
        counts[index] = n

    def run() -> int:
        deadline = time.perf_counter() + seconds
        pool = [threading.Thread(target=worker, args=(i, deadline)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return sum(counts)

    return _timed(url, run)


def _provider(service: str, session: HttpClient, url: str) -> SesProvider | SnsProvider:
    credentials = Credentials(KEY, SECRET)
    if service == "ses":
        return SesProvider(AwsClient(session, service="sesv2", signing_name="ses", endpoint_url=url,
                                     region=REGION, credentials=credentials), sender=SENDER)
    return SnsProvider(AwsClient(session, service="sns", endpoint_url=url, region=REGION,
                                 credentials=credentials))


async def _measure_aws(service: str, url: str, inflight: int, seconds: float) -> Sample:
    async with HttpClient(limit=inflight + 16) as session:
        provider = _provider(service, session, url)
        message = EMAIL if service == "ses" else SMS
        for _ in range(20):
            await provider.send(message)
        loop = asyncio.get_running_loop()

        async def worker(deadline: float) -> int:
            n = 0
            while loop.time() < deadline:
                await provider.send(message)
                n += 1
            return n

        async def run() -> int:
            deadline = loop.time() + seconds
            return sum(await asyncio.gather(*(worker(deadline) for _ in range(inflight))))

        server0, cpu0, t0 = _server_cpu(url), time.process_time(), time.perf_counter()
        calls = await run()
        t1, cpu1 = time.perf_counter(), time.process_time()
        return Sample(calls, t1 - t0, cpu1 - cpu0, _server_cpu(url) - server0)


def measure_aws(service: str, url: str, inflight: int, seconds: float) -> Sample:
    return asyncio.run(_measure_aws(service, url, inflight, seconds))


# --- building an email ----------------------------------------------------------------------

def _simple_json() -> bytes:
    return json.dumps(SesProvider(cast(AwsClient, None), sender=SENDER).payload(EMAIL),
                      separators=(",", ":")).encode()


def _raw(message: EmailMessage | MIMEMultipart) -> bytes:
    data = base64.b64encode(message.as_bytes()).decode()  # Raw.Data travels base64 in JSON
    return json.dumps({"FromEmailAddress": SENDER, "Content": {"Raw": {"Data": data}}}).encode()


def _raw_email_message() -> bytes:
    m = EmailMessage(policy=policy.SMTP)
    m["Subject"], m["From"], m["To"] = EMAIL.parts["subject"], SENDER, EMAIL.to
    m["List-Unsubscribe"] = f"<{EMAIL.unsubscribe_url}>"
    m["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    m.set_content(EMAIL.parts["text"])
    m.add_alternative(EMAIL.parts["html"], subtype="html")
    return _raw(m)


def _raw_email_mime() -> bytes:
    m = MIMEMultipart("alternative")
    m["Subject"], m["From"], m["To"] = EMAIL.parts["subject"], SENDER, EMAIL.to
    m["List-Unsubscribe"] = f"<{EMAIL.unsubscribe_url}>"
    m["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    m.attach(MIMEText(EMAIL.parts["text"], "plain", "utf-8"))
    m.attach(MIMEText(EMAIL.parts["html"], "html", "utf-8"))
    return _raw(m)


def email_encoding(iterations: int = 1000) -> dict[str, float]:
    """CPU microseconds per email body, by how it is built."""
    results = {}
    for name, build in (("SES v2 Simple JSON (what SesProvider sends)", _simple_json),
                        ("Raw MIME, email.mime (compat32)", _raw_email_mime),
                        ("Raw MIME, email.message.EmailMessage", _raw_email_message)):
        build()
        start = time.process_time()
        for _ in range(iterations):
            build()
        results[name] = 1e6 * (time.process_time() - start) / iterations
    return results


# --- the run ------------------------------------------------------------------------------

def _modes(threads: int, inflight: int) -> list[tuple[str, Callable[[str, str, float], Sample]]]:
    return [
        ("boto3, 1 thread", lambda s, u, t: measure_boto3(s, u, 1, t)),
        (f"boto3, {threads} threads", lambda s, u, t: measure_boto3(s, u, threads, t)),
        ("AwsClient, 1 in flight", lambda s, u, t: measure_aws(s, u, 1, t)),
        (f"AwsClient, {inflight} in flight", lambda s, u, t: measure_aws(s, u, inflight, t)),
    ]


def _row(call: str, mode: str, samples: list[Sample]) -> str:
    median = sorted(samples, key=lambda s: s.cpu_ms)[len(samples) // 2]
    rates = ", ".join(f"{s.rate:,.0f}" for s in samples)
    cpu = ", ".join(f"{s.cpu_ms:.3f}" for s in samples)
    return (f"| {call} | {mode} | {statistics.median(s.rate for s in samples):,.0f} | "
            f"**{statistics.median(s.cpu_ms for s in samples):.3f}** | "
            f"{median.cpu / median.seconds:.2f} | {median.server_cpu / median.seconds:.2f} | "
            f"{rates} | {cpu} |")


def _start_server() -> tuple[Any, str]:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_serve, args=(send,), daemon=True)
    process.start()
    if not receive.poll(30):
        process.kill()
        raise RuntimeError("the local server did not start")
    return process, f"http://127.0.0.1:{receive.recv()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.aws_transport", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.5, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8, help="boto3 threads")
    parser.add_argument("--inflight", type=int, default=64, help="AwsClient requests in flight")
    args = parser.parse_args(argv)
    process, url = _start_server()
    try:
        results = _run(url, args)
    finally:
        process.kill()
        process.join()
    _report(results, args)
    return 0


def _run(url: str, args: argparse.Namespace) -> dict[tuple[str, str], list[Sample]]:
    results: dict[tuple[str, str], list[Sample]] = {}
    modes = _modes(args.threads, args.inflight)
    for _ in range(args.rounds):
        for service, call in (("ses", "SES SendEmail"), ("sns", "SNS Publish")):
            for mode, measure in modes:
                results.setdefault((call, mode), []).append(measure(service, url, args.seconds))
    return results


def _report(results: dict[tuple[str, str], list[Sample]], args: argparse.Namespace) -> None:
    print(f"python -m bench.aws_transport --seconds {args.seconds} --rounds {args.rounds} "
          f"--threads {args.threads} --inflight {args.inflight}")
    print(f"Python {platform.python_version()}, boto3 {boto3.__version__}, botocore "
          f"{botocore.__version__}, aiohttp {aiohttp.__version__}, {os.cpu_count()} CPUs\n")
    print("| call | client | calls/s | client CPU ms/call | client cores | server cores "
          "| calls/s per round | CPU ms/call per round |")
    print("|---|---|---|---|---|---|---|---|")
    for (call, mode), samples in results.items():
        print(_row(call, mode, samples))
    print("\n| building one email body | CPU µs |\n|---|---|")
    for name, micros in email_encoding().items():
        print(f"| {name} | {micros:.0f} |")


if __name__ == "__main__":
    raise SystemExit(main())
