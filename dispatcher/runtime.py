"""Wiring: build every component from :class:`~dispatcher.config.Settings`, once, at start.

The one place that knows which adapter serves which port; everything else receives what it
needs. ``Runtime.open`` creates the schema when it is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from channels.base import Provider
from channels.in_app import InAppChannel
from channels.log import LogProvider
from dispatcher.bus import Bus
from dispatcher.bus.local import LocalBus
from dispatcher.config import Settings
from dispatcher.delivery import Deliverer, SettleTimes
from dispatcher.fan_out import FanOut
from dispatcher.planning import Planner
from dispatcher.queue.local import LocalQueue
from dispatcher.rendering import TemplateRegistry
from dispatcher.retry import RetryPolicy
from dispatcher.sending import Sender
from dispatcher.store import Database, Store
from dispatcher.worker import Worker

__all__ = ["Runtime"]


@dataclass
class Runtime:
    settings: Settings
    store: Store
    queue: LocalQueue
    bus: Bus
    templates: TemplateRegistry
    providers: dict[str, Provider]
    fan_out: FanOut
    deliverer: Deliverer

    @classmethod
    async def open(cls, settings: Settings,
                   providers: dict[str, Provider] | None = None) -> Runtime:
        """Build everything; ``providers`` replaces the configured email/SMS/push adapters."""
        templates = TemplateRegistry(settings.templates_dir)
        db = Database(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
        await db.create_schema()
        store = Store.from_database(db)
        queue = LocalQueue(db, visibility_timeout=settings.queue_visibility_timeout,
                           max_receives=settings.queue_max_receives,
                           poll_interval=settings.queue_poll_interval)
        bus = LocalBus()
        providers = {**_providers(settings), **(providers or {})}
        in_app = InAppChannel(bus)
        planner = Planner(templates, in_app, critical=settings.critical(),
                          phone_region=settings.default_phone_region)
        sender = Sender(providers, store.ledger, RetryPolicy(
            settings.retry_max_attempts, settings.retry_base_delay, settings.retry_max_delay),
            window=max(settings.send_concurrency // settings.worker_concurrency, 8),
            deactivate=store.users.deactivate_devices)
        deliverer = Deliverer(store, templates, planner, sender, in_app,
                              SettleTimes(lease_seconds=settings.send_lease_seconds),
                              resend_stale=settings.recovery == "resend")
        fan_out = FanOut(store, queue, templates, settings.chunk_size)
        return cls(settings, store, queue, bus, templates, providers, fan_out, deliverer)

    def worker(self) -> Worker:
        return Worker(self.queue, self.deliverer, concurrency=self.settings.worker_concurrency,
                      visibility_timeout=self.settings.queue_visibility_timeout,
                      known_services=frozenset(self.settings.service_keys().values()))

    async def ready(self) -> None:
        """Raise when the store or the queue is unreachable."""
        await self.store.db.ping()
        await self.queue.depth()

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
        await self.queue.close()
        await self.bus.close()
        await self.store.db.close()


def _providers(settings: Settings) -> dict[str, Provider]:
    return {channel: LogProvider(channel, settings.log_provider_path)
            for channel in ("email", "sms", "push")}
