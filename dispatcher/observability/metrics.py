"""Prometheus metrics: what the dispatcher counts, and how ``GET /metrics`` collects it.

The metrics (README, "Metrics"):

* ``dispatcher_deliveries_total{channel,status,reason}``: ledger rows made final by this
  deployment (``sent``, ``failed``, ``skipped``; ``reason`` empty when sent). A row counts
  once when it is recorded; an update that sends a row again counts it again;
* ``dispatcher_provider_request_seconds{channel}``: one provider call (email, SMS, push), from
  the request to its answer or error;
* ``dispatcher_chunk_seconds``: one chunk message, from its batch starting to its batch's
  outcome (delivered, retried or dead-lettered);
* ``dispatcher_queue_messages{state}``: the queue's messages by state, asked of the queue at
  each scrape (``visible``, ``in_flight``, ``delayed``, ``dead_letter``; a state the queue
  can't tell is left out);
* ``dispatcher_http_requests_total{method,route,status}`` and
  ``dispatcher_http_request_seconds{method,route}``: by route *template*
  (``/v1/notifications/{notification_id}``), never the raw path, so the label set stays
  bounded; a request no route matched is ``route="unmatched"``.

Multi-process: ``dispatcher serve`` runs its workers as child processes. Each process writes
its samples to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode)
and ``/metrics`` adds them up. :func:`prepare_multiprocess` sets that up in the serving process
before the children start (they inherit the variable): the directory given, emptied of an
earlier run's files, or a fresh temporary one. A ``dispatcher worker`` started on its own
(production: gateways and workers apart) keeps its samples in memory and serves them on
``DISPATCHER_METRICS_PORT`` (:func:`serve_worker_metrics`).

The core calls the one-line recorders at the end of this module; nothing else of
prometheus-client leaks into it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from channels.base import Message, Provider, Receipt
from dispatcher.errors import ConfigurationError
from dispatcher.model import FINAL_STATUSES, RowState
from dispatcher.queue import QueueStats

__all__ = ["CONTENT_TYPE", "ENV", "chunks_timed", "deliveries", "exposition", "http_request",
           "prepare_multiprocess", "serve_worker_metrics", "timed_providers"]

T = TypeVar("T")

log = logging.getLogger("dispatcher.metrics")

#: prometheus-client's multiprocess directory variable.
ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TEMP_PREFIX = "dispatcher-metrics-"
_ORPHAN_AGE = 3600.0

# Provider calls: 5 ms (a local stand-in) to 10 s (DISPATCHER_PROVIDER_TIMEOUT's default).
_PROVIDER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Chunks: a few ms (one in-app recipient) to minutes (500 recipients behind a slow provider).
_CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Metrics:
    """The metric objects, made on first use: prometheus-client picks its storage (memory or
    the multiprocess files) when a sample is first made, which must come after
    :func:`prepare_multiprocess`."""

    def __init__(self) -> None:
        self.deliveries = Counter("dispatcher_deliveries", "Ledger rows made final, by outcome.",
                                  ["channel", "status", "reason"])
        self.provider_seconds = Histogram("dispatcher_provider_request_seconds",
                                          "One provider request, from sending to its answer.",
                                          ["channel"], buckets=_PROVIDER_BUCKETS)
        self.chunk_seconds = Histogram("dispatcher_chunk_seconds",
                                       "One chunk message, from its batch starting to its outcome.",
                                       buckets=_CHUNK_BUCKETS)
        self.http_requests = Counter("dispatcher_http_requests", "HTTP requests answered.",
                                     ["method", "route", "status"])
        self.http_seconds = Histogram("dispatcher_http_request_seconds",
                                      "HTTP requests, from receiving to the end of the answer.",
                                      ["method", "route"], buckets=_HTTP_BUCKETS)
        #: The two HTTP metrics' children by (method, route template, status): a bounded set
        #: (routes are templates, methods and statuses few). ``labels()`` checks and joins its
        #: arguments under a lock on every call: 2-3 % of a busy gateway's CPU.
        self.http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        #: ``provider_seconds``' child per channel (``labels()`` is a lock and a lookup).
        self.provider_children: dict[str, Histogram] = {}


_metrics: _Metrics | None = None


def _m() -> _Metrics:
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


def prepare_multiprocess() -> Path:
    """Make this process and the children it starts from now on write their samples to one
    directory, and return it: ``PROMETHEUS_MULTIPROC_DIR`` as given (emptied of an earlier
    run's files), else a fresh temporary directory (and the ones left by dead processes are
    removed). Call before any metric is recorded."""
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        _remove_orphaned_temp_dirs()
        path = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-"))
        os.environ[ENV] = str(path)
    # chosen when prometheus_client is imported, maybe before the variable was set
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


def _remove_orphaned_temp_dirs() -> None:
    """The directories of ``serve`` processes that are gone and untouched for an hour: a
    killed ``serve``'s worker processes finish their chunks before they stop, still writing."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_TEMP_PREFIX}*-*"):
        pid = folder.name[len(_TEMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and _untouched(folder, _ORPHAN_AGE):
            shutil.rmtree(folder, ignore_errors=True)


def _untouched(folder: Path, seconds: float) -> bool:
    try:
        newest = max(p.stat().st_mtime for p in (folder, *folder.iterdir()))
    except OSError:
        return False
    return time.time() - newest > seconds


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exposition(queue: QueueStats | None) -> bytes:
    """The text of ``GET /metrics``: every process's samples, and the queue's figures."""
    return generate_latest(_registry()) + _queue_text(queue)


def _registry() -> CollectorRegistry:
    """This process's samples, or every process's in multiprocess mode."""
    _m()  # every family is listed before its first sample
    if not os.environ.get(ENV):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def serve_worker_metrics(host: str, port: int | None) -> None:
    """A ``dispatcher worker`` of its own (not one of ``serve``'s): its deliveries, provider
    and chunk metrics on ``http://host:port/metrics``, from a thread (``port`` None: none).
    The queue's figures are the gateway's to give."""
    if port is None:
        return
    try:
        start_http_server(port, addr=host, registry=_registry())
    except OSError as exc:
        raise ConfigurationError(f"DISPATCHER_METRICS_PORT={port}: can't listen on {host}:{port} "
                                 f"({exc.strerror or exc})") from None


def _queue_text(queue: QueueStats | None) -> bytes:
    family = GaugeMetricFamily("dispatcher_queue_messages", "Messages in the queue, by state "
                               "(asked of the queue at each scrape; SQS: approximate).",
                               labels=["state"])
    if queue is not None:
        for state, count in (("visible", queue.visible), ("in_flight", queue.in_flight),
                             ("delayed", queue.delayed), ("dead_letter", queue.dead_letters)):
            if count is not None:
                family.add_metric([state], count)
    registry = CollectorRegistry()
    registry.register(_Fixed(family))
    return generate_latest(registry)


class _Fixed:
    def __init__(self, family: GaugeMetricFamily) -> None:
        self._family = family

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return [self._family]


# The one-line recorders the core calls ---------------------------------------------------


@contextlib.contextmanager
def _never_raising() -> Iterator[None]:
    """A sample that can't be recorded (its file gone, the disk full) is lost, never the work
    being counted: the recorders run right after an outcome is committed, inside a send."""
    try:
        yield
    except Exception as exc:
        _lose(exc)


def _lose(exc: Exception) -> None:
    global _lost
    _lost += 1
    if _lost == 1 or _lost % 10_000 == 0:
        log.warning("metrics: %d sample(s) lost so far; last: %s: %s", _lost, type(exc).__name__, exc)


_lost = 0


def deliveries(rows: Iterable[RowState]) -> None:
    """Count the rows among ``rows`` that are final (sent, failed, skipped): one increment
    per label set, not per row (each is a lock and a write to the multiprocess file)."""
    with _never_raising():
        counts = collections.Counter(
            (row.key.channel, row.status.value, row.reason.value if row.reason else "")
            for row in rows if row.status in FINAL_STATUSES)
        counter = _m().deliveries
        for labels, n in counts.items():
            counter.labels(*labels).inc(n)


def deliveries_counted(counts: Iterable[tuple[str, str, str, int]]) -> None:
    """Count final rows known only by number: (channel, status, reason, how many)."""
    with _never_raising():
        counter = _m().deliveries
        for channel, status, reason, n in counts:
            counter.labels(channel, status, reason).inc(n)


async def chunks_timed(work: Awaitable[T], chunks: int) -> T:
    """Await ``work`` (a batch of ``chunks`` chunk messages) and time it, once per chunk."""
    start = time.monotonic()
    try:
        return await work
    finally:
        elapsed = time.monotonic() - start
        with _never_raising():
            histogram = _m().chunk_seconds
            for _ in range(chunks):
                histogram.observe(elapsed)


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    with _never_raising():
        metrics = _m()
        children = metrics.http_children.get((method, route, status))
        if children is None:
            children = metrics.http_children[method, route, status] = (
                metrics.http_requests.labels(method, route, str(status)),
                metrics.http_seconds.labels(method, route))
        children[0].inc()
        children[1].observe(seconds)


class _TimedProvider:
    """A provider whose every ``send`` is timed in ``dispatcher_provider_request_seconds``."""

    def __init__(self, provider: Provider) -> None:
        self._provider = provider
        self.channel = provider.channel
        self.name = provider.name

    async def send(self, message: Message) -> Receipt:
        start = time.monotonic()
        try:
            return await self._provider.send(message)
        finally:
            # as _never_raising() does, without a generator's set-up on every send
            try:
                metrics = _m()
                child = metrics.provider_children.get(message.channel)
                if child is None:
                    child = metrics.provider_children[message.channel] = (
                        metrics.provider_seconds.labels(message.channel))
                child.observe(time.monotonic() - start)
            except Exception as exc:
                _lose(exc)

    async def aclose(self) -> None:
        await self._provider.aclose()


def timed_providers(providers: Mapping[str, Provider]) -> dict[str, Provider]:
    return {channel: _TimedProvider(p) for channel, p in providers.items()}  # type: ignore[misc]
