"""Observability: Prometheus metrics (:mod:`.metrics`) and logs with context (:mod:`.logs`).

The core reports what happened with one-line calls (:func:`rows_recorded`,
:func:`dispatcher.observability.logs.bind_batch`, …) and knows nothing of either backend.
"""

from __future__ import annotations

from collections.abc import Iterable

from dispatcher.model import RowState
from dispatcher.observability import logs, metrics

__all__ = ["rows_recorded"]


def rows_recorded(rows: Iterable[RowState]) -> None:
    """Rows whose state was just committed to the ledger: count the final ones
    (``dispatcher_deliveries_total``) and log a WARNING for each failed one."""
    rows = list(rows)
    metrics.deliveries(rows)
    logs.failed_deliveries(rows)
