"""Following notifications until no ledger row is pending, then a summary.

On a terminal: a live progress bar per channel (rich). Elsewhere (a pipe, a CI log): a line
``progress: in_app 600/1000 (sent 600, failed 0, skipped 0); …`` whenever the counts change, at
most once a second, and the last one. Both go to stderr; the summary table goes to stdout.
The counts are the API's (``GET /v1/notifications/{id}``: per channel, ``pending`` includes
the rows not fanned out yet), summed over the notifications followed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from dispatcher.client import Client

__all__ = ["Tally", "failure_reasons", "follow", "summary", "tally"]

FINAL = ("sent", "failed", "skipped")
#: Failed rows read (per notification) to tell the reasons in the summary.
REASON_SAMPLE = 1000

#: channel -> {pending, sent, failed, skipped}
Tally = dict[str, dict[str, int]]


def tally(answers: Sequence[dict[str, Any]]) -> Tally:
    """The counts of several notifications, summed per channel."""
    total: Tally = {}
    for answer in answers:
        for channel, counts in (answer.get("counts") or {}).items():
            bucket = total.setdefault(channel, dict.fromkeys(("pending", *FINAL), 0))
            for status in bucket:
                bucket[status] += int(counts.get(status, 0))
    return total


def settled(counts: Tally) -> bool:
    return all(bucket["pending"] == 0 for bucket in counts.values())


def failed(counts: Tally) -> int:
    return sum(bucket["failed"] for bucket in counts.values())


def follow(client: Client, ids: Sequence[str], *, timeout: float, interval: float = 0.5,
           console: Console | None = None) -> tuple[Tally, bool]:
    """Poll until no row is pending or ``timeout`` seconds passed; (counts, settled)."""
    console = console or Console(stderr=True)
    view: _View = _Bars(console) if console.is_terminal else _Lines(console)
    deadline = time.monotonic() + timeout
    with view:
        while True:
            counts = tally([client.notification(i) for i in ids])
            view.show(counts)
            if settled(counts) or time.monotonic() >= deadline:
                view.last(counts)
                return counts, settled(counts)
            time.sleep(interval)


def summary(counts: Tally, reasons: Counter[tuple[str, str]] | None = None) -> list[Table]:
    """The per-channel table, and the failure reasons when rows failed."""
    table = Table(title="deliveries")
    for column in ("channel", "recipients", *FINAL, "pending"):
        table.add_column(column, justify="left" if column == "channel" else "right")
    for channel, bucket in counts.items():
        table.add_row(channel, str(sum(bucket.values())), *(str(bucket[s]) for s in FINAL),
                      str(bucket["pending"]), style="red" if bucket["failed"] else None)
    tables = [table]
    if reasons:
        why = Table(title="failed rows by reason")
        for column in ("channel", "reason", "rows"):
            why.add_column(column, justify="right" if column == "rows" else "left")
        for (channel, reason), n in reasons.most_common():
            why.add_row(channel, reason, str(n))
        tables.append(why)
    return tables


def failure_reasons(client: Client, ids: Sequence[str]) -> Counter[tuple[str, str]]:
    """(channel, reason) of the failed rows, up to :data:`REASON_SAMPLE` per notification."""
    reasons: Counter[tuple[str, str]] = Counter()
    for notification_id in ids:
        page = client.deliveries(notification_id, status="failed", limit=REASON_SAMPLE)
        reasons.update((row["channel"], row["reason"] or "unknown") for row in page["items"])
    return reasons


class _View:
    def __enter__(self) -> _View:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def show(self, counts: Tally) -> None:
        raise NotImplementedError

    def last(self, counts: Tally) -> None:
        self.show(counts)


class _Bars(_View):
    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description:>7}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("sent {task.fields[sent]}  failed {task.fields[failed]}  "
                       "skipped {task.fields[skipped]}"),
            TimeElapsedColumn(), console=console)
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _Bars:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def show(self, counts: Tally) -> None:
        for channel, bucket in counts.items():
            done, total = sum(bucket[s] for s in FINAL), sum(bucket.values())
            if channel not in self._tasks:
                self._tasks[channel] = self._progress.add_task(
                    channel, total=total, sent=0, failed=0, skipped=0)
            self._progress.update(self._tasks[channel], completed=done, total=total,
                                  sent=bucket["sent"], failed=bucket["failed"], skipped=bucket["skipped"])


class _Lines(_View):
    def __init__(self, console: Console, every: float = 1.0) -> None:
        self._console = console
        self._every = every
        self._printed: str | None = None
        self._at = 0.0

    def show(self, counts: Tally, *, force: bool = False) -> None:
        line = "progress: " + "; ".join(
            f"{channel} {sum(b[s] for s in FINAL)}/{sum(b.values())} "
            f"(sent {b['sent']}, failed {b['failed']}, skipped {b['skipped']})"
            for channel, b in counts.items())
        now = time.monotonic()
        if line != self._printed and (force or now - self._at >= self._every):
            self._console.print(line, highlight=False, soft_wrap=True)
            self._printed, self._at = line, now

    def last(self, counts: Tally) -> None:
        self.show(counts, force=True)
