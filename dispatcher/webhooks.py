"""Webhooks out: Standard Webhooks signing, the URL rules, and the sender loop.

**Signing** (https://www.standardwebhooks.com): each attempt carries ``webhook-id`` (the
outbox id, the same on every attempt: receivers dedupe by it), ``webhook-timestamp`` (seconds,
of this attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``
keyed with the base64 part of the endpoint's ``whsec_<base64>`` secret.

**Where webhooks may go (SSRF).** A URL is ``http`` or ``https`` with a host, no credentials,
at most 2,048 characters. Every address its host resolves to must be public
(``ipaddress``'s ``is_global``): private, loopback, link-local (cloud metadata at
169.254.169.254), shared, multicast and reserved addresses are refused, unless they are inside
``DISPATCHER_WEBHOOK_ALLOWED_NETWORKS``. The check runs when the endpoint is registered (a
422) and again on every connection the sender opens (its resolver drops refused addresses),
so a name re-pointed at an internal address later (DNS rebinding) reaches nothing. Redirects
are not followed.

**Sending.** Each worker process runs one :class:`WebhookSender` beside its delivery loops,
with its own connection pool and at most ``concurrency`` requests in flight: a slow or dead
receiver holds those and nothing else (delivery never waits for a webhook; the ledger only
writes the outbox rows). A webhook is taken with a lease (the request timeout plus a margin),
so a process killed mid-request leaves it to be sent again, same id, by whoever runs next.
A non-2xx answer or no answer is retried after ``base * 2**(attempt-1)`` seconds (at most
``max_delay``) while the backoff schedule stays within ``period``; then the webhook is kept
as ``failed`` (``GET /v1/webhooks/deliveries?status=failed``), and can be replayed
(``POST /v1/webhooks/deliveries/replay``, ``dispatcher webhooks replay``). Delivered and
failed webhooks are forgotten ``DISPATCHER_WEBHOOK_RETENTION`` seconds after their last attempt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from dispatcher.errors import InvalidRequest
from dispatcher.model import OutboxEntry, WebhookEndpoint, now_us
from dispatcher.store.webhooks import EVENTS, WebhookStore

__all__ = ["EVENTS", "AddressGuard", "Backoff", "WebhookSender", "new_secret", "sign"]

log = logging.getLogger("dispatcher.webhooks")

_MAX_URL = 2048
_DNS_TIMEOUT = 5.0
_ANSWER_BYTES = 4096  # of a receiver's answer kept (in last_error)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header value."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class AddressGuard:
    """Which IP addresses webhooks may reach: public ones, and the allowed networks."""

    def __init__(self, allowed: frozenset[str] = frozenset()) -> None:
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in sorted(allowed)]

    def allows(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        return ip.is_global or any(ip in network for network in self._allowed)

    async def check_url(self, url: str) -> None:
        """Raise :class:`InvalidRequest` (field ``url``) for a URL webhooks may not use."""
        host = _host(url)
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM), _DNS_TIMEOUT)
        except TimeoutError:
            raise InvalidRequest("url", f"host {host!r} did not resolve within {_DNS_TIMEOUT:g} s") from None
        except OSError as exc:
            raise InvalidRequest("url", f"host {host!r} does not resolve ({exc.strerror or exc})") from None
        refused = sorted({str(i[4][0]) for i in infos if not self.allows(str(i[4][0]))})
        if refused:
            raise InvalidRequest("url", f"host {host!r} resolves to {', '.join(refused)}, which is not a "
                                        "public address; allow its network in "
                                        "DISPATCHER_WEBHOOK_ALLOWED_NETWORKS to use it")


def _host(url: str) -> str:
    if len(url) > _MAX_URL:
        raise InvalidRequest("url", f"longer than {_MAX_URL} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as exc:
        raise InvalidRequest("url", f"is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("url", "must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("url", "must not carry credentials (user:password@)")
    if parts.fragment:
        raise InvalidRequest("url", "must not have a #fragment")
    return parts.hostname


class _GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default, then drops the addresses the guard refuses."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = [r for r in await self._inner.resolve(host, port, family) if self._guard.allows(r["host"])]
        if not results:
            raise OSError(f"{host} resolves to no address webhooks may reach")
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class Backoff:
    base: float
    max_delay: float
    period: float

    def delay(self, attempts: int) -> float:
        """Seconds before the attempt after ``attempts`` failed ones."""
        return float(min(self.base * 2 ** max(attempts - 1, 0), self.max_delay))

    def gives_up(self, attempts: int) -> bool:
        """Whether the schedule would run past ``period`` with one more wait."""
        return sum(self.delay(n) for n in range(1, attempts + 1)) > self.period


class WebhookSender:
    def __init__(self, store: WebhookStore, guard: AddressGuard, backoff: Backoff, *,
                 concurrency: int, timeout: float, poll_interval: float,
                 retention: float = 7 * 86400) -> None:
        self._store = store
        self._guard = guard
        self._backoff = backoff
        self._concurrency = concurrency
        self._timeout = timeout
        self._poll = poll_interval
        self._lease_us = int((timeout + 10) * 1e6)  # the request, then its settle
        self._retention_us = int(retention * 1e6)
        self._next_prune = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Send due webhooks until ``stop`` is set."""
        connector = aiohttp.TCPConnector(limit=self._concurrency, resolver=_GuardedResolver(self._guard))
        async with aiohttp.ClientSession(connector=connector) as http:
            tasks: set[asyncio.Task[None]] = set()
            while not stop.is_set():
                await self._prune()
                free = self._concurrency - len(tasks)
                taken = []
                if free > 0:
                    try:
                        taken = await self._store.claim_due(free, self._lease_us)
                    except Exception:
                        log.exception("could not read the webhook outbox; retrying")
                for entry, endpoint in taken:
                    task = asyncio.create_task(self._deliver(http, entry, endpoint))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if not taken:
                    await _sleep_or_stop(stop, self._poll, tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _prune(self) -> None:
        """Once a minute: forget settled webhooks older than the retention."""
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + 60
        try:
            await self._store.prune(now_us() - self._retention_us)
        except Exception:
            log.exception("could not prune the webhook outbox")

    async def _deliver(self, http: aiohttp.ClientSession, entry: OutboxEntry,
                       endpoint: WebhookEndpoint | None) -> None:
        attempts = entry.attempts + 1
        if endpoint is None or entry.event not in endpoint.events:
            await self._store.settle(entry.id, status="failed", attempts=entry.attempts,
                                     next_attempt_at=now_us(), error="the endpoint was deleted or "
                                     "no longer takes this event")
            return
        error = await self._post(http, entry, endpoint)
        if error is None:
            await self._store.settle(entry.id, status="delivered", attempts=attempts,
                                     next_attempt_at=now_us(), error=None)
            return
        if self._backoff.gives_up(attempts):
            log.warning("webhook %s to %s failed %d times; kept as failed: %s", entry.id,
                        endpoint.url, attempts, error)
            await self._store.settle(entry.id, status="failed", attempts=attempts,
                                     next_attempt_at=now_us(), error=error)
            return
        due = now_us() + int(self._backoff.delay(attempts) * 1e6)
        await self._store.settle(entry.id, status="pending", attempts=attempts, next_attempt_at=due,
                                 error=error)

    async def _post(self, http: aiohttp.ClientSession, entry: OutboxEntry,
                    endpoint: WebhookEndpoint) -> str | None:
        """Send one attempt; None when the receiver took it (2xx), else what went wrong."""
        host = urlsplit(endpoint.url).hostname or ""
        if _is_ip(host) and not self._guard.allows(host):
            return f"{host} is not an address webhooks may reach"
        stamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": entry.id,
                   "webhook-timestamp": str(stamp),
                   "webhook-signature": sign(endpoint.secret, entry.id, stamp, entry.payload),
                   "user-agent": "notification-dispatcher-webhooks/1"}
        try:
            async with http.post(endpoint.url, data=entry.payload.encode(), headers=headers,
                                 allow_redirects=False,
                                 timeout=aiohttp.ClientTimeout(total=self._timeout)) as response:
                answer = await response.content.read(_ANSWER_BYTES)
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}: {answer.decode(errors='replace')[:500]}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _sleep_or_stop(stop: asyncio.Event, seconds: float, tasks: set[asyncio.Task[Any]]) -> None:
    waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waiters | tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
