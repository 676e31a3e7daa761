"""The ceiling of this machine per channel: what stand-ins and loopback take from a minimal client.

For each channel (SES v2 email, SNS SMS, FCM push) one aiohttp session keeps ``concurrency``
requests in flight against :mod:`bench.standins` for ``seconds`` and counts the 200s:
requests/s, the "ceiling" row of the benchmark table. The client does the least a real one
must: the request bodies (the ``app-install`` template rendered once, in the shape our
providers send) and headers are built once, with a constant ``Authorization`` header (no SigV4
signing, no SDK, no parsing of answers); FCM gets one real OAuth2 token first. Any other
status than 200 is an error: a ceiling made of failures would mean nothing.

Each channel is warmed up (connections opened) before its timed part. The stand-in runs in
its own process, so on a 2-core machine client and server each have about one core.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlencode

import aiohttp

from dispatcher.rendering import TemplateRegistry

__all__ = ["measure_ceiling"]

TEMPLATES: Final = Path(__file__).resolve().parents[1] / "templates"
PROJECT: Final = "bench"
SENDER: Final = "no-reply@example.com"
#: A constant stand-in for a SigV4 header: the ceiling client signs nothing.
AWS_AUTHORIZATION: Final = ("AWS4-HMAC-SHA256 Credential=AKIDBENCH/20250101/us-east-1/ses/"
                            "aws4_request, SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)
JWT_BEARER: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Unsigned but well-formed (header.claims.signature): the stand-in verifies no signature.
ASSERTION: Final = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJiZW5jaCJ9.c2lnbmF0dXJl"


@dataclass(frozen=True)
class Request:
    """One channel's request, built once and sent again and again."""

    url: str
    body: bytes
    headers: dict[str, str]


def measure_ceiling(standins_url: str, *, seconds: float = 3.0,
                    concurrency: int = 64) -> dict[str, float]:
    """Requests per second per channel (``email``, ``sms``, ``push``), one channel at a time."""
    return asyncio.run(_measure(standins_url.rstrip("/"), seconds, concurrency))


async def _measure(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        requests = _requests(url, await _fcm_token(session, url))
        return {channel: await _rate(session, request, seconds, concurrency)
                for channel, request in requests.items()}


def _requests(url: str, token: str) -> dict[str, Request]:
    parts = TemplateRegistry(TEMPLATES).render(
        "app-install", ["email", "sms", "push"], {"app_name": "Foo", "state": "installing"})
    email, sms, push = parts["email"], parts["sms"], parts["push"]
    ses = {"FromEmailAddress": SENDER, "Destination": {"ToAddresses": ["u1@example.com"]},
           "Content": {"Simple": {
               "Subject": {"Data": email["subject"], "Charset": "UTF-8"},
               "Body": {"Text": {"Data": email["text"], "Charset": "UTF-8"},
                        "Html": {"Data": email["html"], "Charset": "UTF-8"}}}}}
    sns = {"Action": "Publish", "Version": "2010-03-31", "PhoneNumber": "+821012345678",
           "Message": sms["text"]}
    fcm = {"message": {"token": "tok-1", "notification": push,
                       "android": {"priority": "high"}}}
    aws = {"Authorization": AWS_AUTHORIZATION}
    return {
        "email": Request(f"{url}/v2/email/outbound-emails", json.dumps(ses).encode(),
                         {**aws, "Content-Type": "application/json"}),
        "sms": Request(f"{url}/", urlencode(sns).encode(),
                       {**aws, "Content-Type": "application/x-www-form-urlencoded"}),
        "push": Request(f"{url}/v1/projects/{PROJECT}/messages:send", json.dumps(fcm).encode(),
                        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}),
    }


async def _fcm_token(session: aiohttp.ClientSession, url: str) -> str:
    form = {"grant_type": JWT_BEARER, "assertion": ASSERTION}
    async with session.post(f"{url}/token", data=form) as response:
        response.raise_for_status()
        token: str = (await response.json())["access_token"]
    return token


async def _rate(session: aiohttp.ClientSession, request: Request, seconds: float,
                concurrency: int) -> float:
    await _run(session, request, concurrency, deadline=0.0)  # one request each: warm-up
    loop = asyncio.get_running_loop()
    start = loop.time()
    done = await _run(session, request, concurrency, deadline=start + seconds)
    return done / (loop.time() - start)


async def _run(session: aiohttp.ClientSession, request: Request, concurrency: int, *,
               deadline: float) -> int:
    """``concurrency`` workers, each sending until ``deadline`` (at least once); 200s sent."""
    loop = asyncio.get_running_loop()

    async def worker() -> int:
        sent = 0
        while True:
            async with session.post(request.url, data=request.body,
                                    headers=request.headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{request.url}: HTTP {response.status}")
            sent += 1
            if loop.time() >= deadline:
                return sent

    return sum(await asyncio.gather(*(worker() for _ in range(concurrency))))


if __name__ == "__main__":
    from bench.standins import StandIns

    with StandIns() as standins:
        started = time.perf_counter()
        rates = measure_ceiling(standins.url)
        print(json.dumps({k: round(v) for k, v in rates.items()}),
              f"({time.perf_counter() - started:.1f} s)")
