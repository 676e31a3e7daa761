"""Observability: Prometheus metrics (:mod:`.metrics`) and logs with context (:mod:`.logs`).

The core reports what happened with one-line calls (:func:`rows_recorded`,
:func:`dispatcher.observability.logs.bind_batch`, …) and knows nothing of either backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dispatcher.model import DeliveryStatus, Reason, RowState
from dispatcher.observability import logs, metrics

__all__ = ["rows_cancelled", "rows_recorded", "stale_failed"]


def rows_recorded(rows: Iterable[RowState]) -> None:
    """Rows whose state was just committed to the ledger: count the final ones
    (``dispatcher_deliveries_total``) and log a WARNING for each failed one."""
    rows = list(rows)
    metrics.deliveries(rows)
    logs.failed_deliveries(rows)


def stale_failed(per_channel: Mapping[str, int]) -> None:
    """Rows a stopped worker left ``sending`` that recovery just made ``failed``/
    ``outcome_unknown`` (``dispatcher.store.ledger``), per channel: counted like any final row."""
    metrics.deliveries_counted(
        (channel, DeliveryStatus.FAILED.value, Reason.OUTCOME_UNKNOWN.value, n)
        for channel, n in per_channel.items() if n)


def rows_cancelled(per_channel: Mapping[str, int]) -> None:
    """Rows a cancel just made ``skipped``/``cancelled``, per channel."""
    metrics.deliveries_counted(
        (channel, DeliveryStatus.SKIPPED.value, Reason.CANCELLED.value, n)
        for channel, n in per_channel.items() if n)
