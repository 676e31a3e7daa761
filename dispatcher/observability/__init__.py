"""Observability: Prometheus metrics (:mod:`.metrics`) and logs with context (:mod:`.logs`).

The core reports what happened with one-line calls (:func:`rows_recorded`,
:func:`dispatcher.observability.logs.bind_batch`, …) and knows nothing of either backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dispatcher.model import DeliveryStatus, Reason, RowState
from dispatcher.observability import logs, metrics

__all__ = ["rows_recorded", "rows_settled"]


def rows_recorded(rows: Iterable[RowState]) -> None:
    """Rows whose state was just committed to the ledger: count the final ones
    (``dispatcher_deliveries_total``) and log a WARNING for each failed one."""
    rows = list(rows)
    metrics.deliveries(rows)
    logs.failed_deliveries(rows)


def rows_settled(per_channel: Mapping[str, int], status: DeliveryStatus, reason: Reason) -> None:
    """Rows the ledger itself just made final, known only by number per channel (a cancel's
    ``skipped``/``cancelled``, recovery's ``failed``/``outcome_unknown``): counted like any
    final row."""
    metrics.deliveries_counted((channel, status.value, reason.value, n)
                               for channel, n in per_channel.items() if n)
