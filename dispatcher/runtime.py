"""Wiring: build every component from :class:`~dispatcher.config.Settings`, once, at start.

The one place that knows which adapter serves which port; everything else receives what it
needs. ``Runtime.open`` creates the schema when it is missing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from channels.base import Provider
from channels.log import LogProvider
from dispatcher.bus import Bus
from dispatcher.bus.local import LocalBus
from dispatcher.config import Settings
from dispatcher.delivery import Deliverer, SettleTimes
from dispatcher.errors import ConfigurationError
from dispatcher.fan_out import FanOut
from dispatcher.feed import Feed
from dispatcher.model import now_us
from dispatcher.observability.metrics import timed_providers
from dispatcher.planning import Planner
from dispatcher.queue import Queue
from dispatcher.queue.enqueue import (
    Enqueuer,
    HeadersThenMessages,
    InOneTransaction,
    ReleaseInOneTransaction,
    Releaser,
    ReleaseUnderLease,
)
from dispatcher.queue.local import LocalQueue
from dispatcher.ratelimit import RateGate, RateLimits, Reserver
from dispatcher.render_budget import RenderBudget
from dispatcher.rendering import TemplateRegistry
from dispatcher.resend import Resender
from dispatcher.retry import RetryPolicy
from dispatcher.scheduler import Scheduler
from dispatcher.scoped_tokens import ScopedTokens
from dispatcher.sending import Sender
from dispatcher.sns_messages import SnsVerifier
from dispatcher.store import Database, Store
from dispatcher.unsubscribe import UnsubscribeLinks
from dispatcher.webhooks import AddressGuard, Backoff, WebhookSender
from dispatcher.worker import Batching, Worker
from transport.pool import HttpClient

if TYPE_CHECKING:
    from transport.aws import AwsClient

#: The HTTP clients a runtime made and closes: the AWS APIs' and the SNS certificate fetcher's.
_Owned = HttpClient | aiohttp.ClientSession

__all__ = ["Runtime"]


@dataclass
class Runtime:
    settings: Settings
    store: Store
    queue: Queue
    bus: Bus
    feed: Feed
    templates: TemplateRegistry
    providers: dict[str, Provider]
    fan_out: FanOut
    deliverer: Deliverer
    links: UnsubscribeLinks | None
    release: Releaser
    owned: list[_Owned] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    sns: SnsVerifier | None = None
    resender: Resender | None = None

    @classmethod
    async def open(cls, settings: Settings, providers: dict[str, Provider] | None = None, *,
                   writes_first: bool = False) -> Runtime:
        """Build everything; ``providers`` replaces the configured email/SMS/push adapters;
        ``writes_first``: this process's database writes go ahead of other processes' (the
        API process, whose callers wait for them; see :class:`~dispatcher.store.database.Database`)."""
        templates = TemplateRegistry(settings.templates_dir, RenderBudget(
            settings.render_timeout, settings.render_max_chars))
        links = _links(settings)
        db = await _database(settings, writes_first=writes_first)
        store = Store.from_database(db)
        http = _aws_http(settings)
        owned: list[_Owned] = [http] if http else []
        try:
            queue, enqueue, release = _queue(settings, store, http)
            built = {**await _providers(settings, http), **(providers or {})}
        except BaseException:
            await _close_sessions(owned)
            await db.close()
            raise
        bus = _bus(settings)
        feed = Feed(bus)
        planner = Planner(templates, critical=settings.critical_categories,
                          phone_region=settings.default_phone_region, links=links,
                          quiet_default=settings.quiet_hours_default(),
                          default_timezone=settings.default_timezone,
                          caps=settings.frequency_caps_parsed())
        limits, closers = _rate_limits(settings, store)
        sender = Sender(timed_providers(built), store.ledger, RetryPolicy(
            settings.retry_max_attempts, settings.retry_base_delay, settings.retry_max_delay),
            window=max(settings.send_concurrency // settings.worker_concurrency, 8),
            slots=settings.send_concurrency,
            deactivate=store.users.deactivate_devices, limits=limits)
        deliverer = Deliverer(store, templates, planner, sender, feed,
                              SettleTimes(lease_seconds=settings.send_lease_seconds),
                              resend_stale=settings.recovery == "resend")
        fan_out = FanOut(enqueue, templates, settings.chunk_size,
                         queue.max_message_bytes)
        runtime = cls(settings, store, queue, bus, feed, templates, built, fan_out, deliverer, links,
                      release, owned, closers)
        runtime.sns = _sns_verifier(settings, owned)
        runtime.resender = (Resender(store, settings.chunk_size, enqueue_in=queue.send_batch_in)
                            if isinstance(queue, LocalQueue) else
                            Resender(store, settings.chunk_size, release=release))
        return runtime

    def webhook_sender(self) -> WebhookSender:
        """The loop sending the outbox's webhooks (run by each worker process)."""
        s = self.settings
        return WebhookSender(self.store.webhooks, AddressGuard(s.webhook_allowed_networks),
                             Backoff(s.webhook_retry_base_delay, s.webhook_retry_max_delay,
                                     s.webhook_retry_period),
                             concurrency=s.webhook_concurrency, timeout=s.webhook_timeout,
                             poll_interval=s.webhook_poll_interval, retention=s.webhook_retention)

    def worker(self, *, schedule: bool = True) -> Worker:
        """A worker loop; with ``schedule``, with the scheduler beside it (one per process is
        enough: the release is one transaction, whoever runs it)."""
        return Worker(self.queue, self.deliverer, concurrency=self.settings.worker_concurrency,
                      visibility_timeout=self.settings.queue_visibility_timeout,
                      wait_seconds=self.settings.queue_wait_seconds,
                      known_services=frozenset(self.settings.service_keys().values()),
                      batching=Batching(self.settings.worker_batch_messages, self.settings.chunk_size,
                                        self.settings.worker_batch_linger),
                      scheduler=Scheduler(self.release,
                                          poll_interval=self.settings.scheduler_poll_interval,
                                          prune=self.prune) if schedule else None)

    async def prune(self) -> int:
        """Forget what no window needs any more: frequency-cap entries older than the longest
        cap (at least a day)."""
        retention = self.settings.frequency_caps_parsed().retention_us()
        return await self.store.ledger.prune_frequency_log(now_us() - retention)

    async def ready(self) -> None:
        """Raise when the store, the queue or the bus is unreachable."""
        await self.store.db.ping()
        await self.queue.depth()
        await self.bus.ping()

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
        await self.queue.close()
        await self.bus.close()
        for close in self.closers:
            await close()
        await _close_sessions(self.owned)
        await self.store.db.close()


def _sns_verifier(settings: Settings, owned: list[_Owned]) -> SnsVerifier:
    """Its own small pool: fetching SNS certificates never waits behind provider sends."""
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8))
    owned.append(http)
    return SnsVerifier(http, cert_url_pattern=settings.sns_cert_url_pattern,
                       topics=settings.sns_topic_arns)


async def _database(settings: Settings, *, writes_first: bool = False) -> Database:
    """The store's database, its schema created; closed again when that fails."""
    db = Database(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous,
                  writes_first=writes_first)
    try:
        await db.create_schema()
    except BaseException:
        await db.close()
        raise
    return db


@asynccontextmanager
async def open_queue(settings: Settings) -> AsyncIterator[Queue]:
    """The queue alone, for operators (``dispatcher dlq``): no templates, providers or bus;
    on SQS no database either."""
    if not settings.uses_sqs():
        db = await _database(settings)
        try:
            yield LocalQueue(db, visibility_timeout=settings.queue_visibility_timeout,
                             max_receives=settings.queue_max_receives,
                             poll_interval=settings.queue_poll_interval)
        finally:
            await db.close()
        return
    http = _aws_http(settings)
    assert http is not None
    try:
        yield _sqs(settings, http)
    finally:
        await http.close()


def _links(settings: Settings) -> UnsubscribeLinks | None:
    if not settings.public_url:
        return None
    key = settings.unsubscribe_key()
    if not key:
        raise ConfigurationError("DISPATCHER_PUBLIC_URL is set, so email carries unsubscribe "
                                 "links: set DISPATCHER_UNSUBSCRIBE_SECRET (or "
                                 "DISPATCHER_USER_TOKEN_SECRET), the same in every process")
    preferences = (ScopedTokens(settings.user_token_secret, "preferences",
                                settings.preference_link_lifetime)
                   if settings.user_token_secret else None)
    return UnsubscribeLinks(settings.public_url, key, preferences)


def _aws_http(settings: Settings) -> HttpClient | None:
    """One HTTP client for every AWS API this process calls (a pool per endpoint)."""
    if not (settings.uses_sqs() or settings.email_provider == "ses" or settings.sms_provider == "sns"):
        return None
    return HttpClient(limit=settings.send_concurrency + 16)


def _queue(settings: Settings, store: Store,
           http: HttpClient | None) -> tuple[Queue, Enqueuer, Releaser]:
    """The queue, how the gateway commits to it, and how held messages reach it: in one
    transaction with the store when the queue lives in the store's database; headers first,
    and held messages under a lease, otherwise."""
    if not settings.uses_sqs():
        local = LocalQueue(store.db, visibility_timeout=settings.queue_visibility_timeout,
                           max_receives=settings.queue_max_receives,
                           poll_interval=settings.queue_poll_interval)
        return local, InOneTransaction(store, local), ReleaseInOneTransaction(store, local)
    assert http is not None
    sqs = _sqs(settings, http)
    return (sqs, HeadersThenMessages(store, sqs),
            ReleaseUnderLease(store, sqs, lease_seconds=settings.queue_visibility_timeout))


def _rate_limits(settings: Settings,
                 store: Store) -> tuple[RateLimits, list[Callable[[], Awaitable[None]]]]:
    """The provider rate limits, shared through Redis when it is configured, else the store."""
    rates = settings.rate_limits()
    if not rates:
        return RateLimits(), []
    closers: list[Callable[[], Awaitable[None]]] = []
    reserver: Reserver
    if settings.redis_url:
        from dispatcher.ratelimit.redis import RedisReserver

        redis_reserver = RedisReserver.from_url(settings.redis_url)
        reserver, closers = redis_reserver, [redis_reserver.close]
    else:
        from dispatcher.store.rate_limits import DatabaseReserver

        reserver = DatabaseReserver(store.db)
    return RateLimits({c: RateGate(c, rate, reserver) for c, rate in rates.items()}), closers


def _sqs(settings: Settings, http: HttpClient) -> Queue:
    from dispatcher.queue.sqs import SqsQueue

    client = _aws_client(http, "sqs", settings.queue_wait_seconds + 10)
    return SqsQueue(client, settings.queue_url, visibility_timeout=settings.queue_visibility_timeout,
                    dead_letter_url=settings.dead_letter_queue_url)


def _aws_client(http: HttpClient, service: str, timeout: float) -> AwsClient:
    """An AWS client from the environment; its configuration error in the core's words."""
    from transport.aws import AwsClient, AwsConfigurationError

    try:
        return AwsClient.from_environment(http, service, timeout=timeout)
    except AwsConfigurationError as exc:
        raise ConfigurationError(str(exc)) from exc


def _bus(settings: Settings) -> Bus:
    if settings.redis_url:
        from dispatcher.bus.redis import RedisBus

        return RedisBus.from_url(settings.redis_url)
    if settings.bus_fd is not None:
        from dispatcher.bus.pipe import PipeBus

        return PipeBus(settings.bus_fd)
    return LocalBus()


async def _providers(settings: Settings, http: HttpClient | None) -> dict[str, Provider]:
    providers: dict[str, Provider] = {
        channel: LogProvider(channel, settings.log_provider_path)
        for channel in ("email", "sms", "push")}
    if settings.email_provider == "ses":
        providers["email"] = _ses(settings, http)
    if settings.sms_provider == "sns":
        providers["sms"] = _sns(settings, http)
    if settings.push_provider == "fcm":
        providers["push"] = await _fcm(settings)
    return providers


def _ses(settings: Settings, http: HttpClient | None) -> Provider:
    from channels.ses import SesProvider

    if not settings.email_from:
        raise ConfigurationError("DISPATCHER_EMAIL_PROVIDER=ses needs DISPATCHER_EMAIL_FROM")
    assert http is not None
    client = _aws_client(http, "sesv2", settings.provider_timeout)
    return SesProvider(client, sender=settings.email_from,
                       configuration_set=settings.ses_configuration_set)


def _sns(settings: Settings, http: HttpClient | None) -> Provider:
    from channels.sns import SnsProvider

    assert http is not None
    client = _aws_client(http, "sns", settings.provider_timeout)
    return SnsProvider(client, sender_id=settings.sms_sender_id,
                       promotional_categories=settings.sms_promotional_categories)


async def _fcm(settings: Settings) -> Provider:
    from channels.fcm import FcmProvider

    if settings.google_application_credentials is None:
        raise ConfigurationError("DISPATCHER_PUSH_PROVIDER=fcm needs GOOGLE_APPLICATION_CREDENTIALS "
                                 "(the service-account file)")
    return await FcmProvider.from_service_account(
        settings.google_application_credentials, project_id=settings.fcm_project_id,
        endpoint=settings.fcm_endpoint, timeout=settings.provider_timeout,
        pool_size=settings.send_concurrency + 16)


async def _close_sessions(sessions: list[_Owned]) -> None:
    for session in sessions:
        await session.close()
