"""End-to-end completion, read cheaply: one ledger query every 200 ms for the whole run.

Asking the API about each notification (``GET /v1/notifications/{id}``) would add a request
per notification per poll to the very processes being measured; an earlier measurement was
distorted that way. Instead a thread reads the final rows of the notifications still open
straight from the contender's ledger table, in one query per interval, by primary key (the
ids are bound as one list). A row carries the time it became final (the dispatcher's
``deliveries.updated_at``, in µs; the Celery peer's ``created_at``), so the poll interval
adds nothing to a latency: it only decides when the harness notices.

A notification is done when each of its four channels (in-app, email, SMS, push) has a final
row (``sent``, ``failed`` or ``skipped``), and its update's push row is final at version 2
or later. The time of a channel is its row's time when first seen final, at any version:
the dispatcher's ledger keeps one row per channel, which the update takes over (push and
in-app) in place. If an update takes over a v1 push row before the harness saw it final,
the v1 push is counted as *superseded*: it may or may not have been sent (the update's own
push is counted either way). At small rates that count is 0; the report shows it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["CHANNELS", "Completion", "FinalRow", "ReadFinal", "Tracked"]

CHANNELS = ("in_app", "email", "sms", "push")
FINAL = ("sent", "failed", "skipped")
#: Ids per query: enough for a deep backlog, few enough for one statement on both engines.
MAX_IDS = 5_000


class FinalRow(NamedTuple):
    notification_id: str
    channel: str
    version: int
    status: str
    at: float                    # epoch seconds the row became final


#: The final rows of these notifications (one query); runs in the completion thread.
ReadFinal = Callable[[Sequence[str]], Iterable[FinalRow]]


@dataclass
class Tracked:
    """What the ledger said about one notification."""

    channels: dict[str, FinalRow] = field(default_factory=dict)   # first final sighting
    update: FinalRow | None = None                                 # push row at version ≥ 2

    def see(self, row: FinalRow) -> None:
        self.channels.setdefault(row.channel, row)
        if row.channel == "push" and row.version >= 2 and self.update is None:
            self.update = row

    def done(self, expect_update: bool) -> bool:
        return len(self.channels) == len(CHANNELS) and (self.update is not None or not expect_update)

    @property
    def final_at(self) -> float:
        """When its last v1 row became final."""
        return max(row.at for row in self.channels.values())


class Completion:
    """Watches the ledger in a thread: ``with Completion(read) as c: c.watch(id) … c.wait(t)``."""

    def __init__(self, read: ReadFinal, *, updates: bool = True, interval: float = 0.2) -> None:
        self.tracked: dict[str, Tracked] = {}
        self.queries = 0
        self._read = read
        self._updates = updates
        self._interval = interval
        self._open: dict[str, None] = {}          # insertion-ordered: oldest first
        self._lock = threading.Lock()
        self._idle = threading.Event()             # set while nothing is open
        self._idle.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="completion", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Completion:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, notification_id: str) -> None:
        """Start reading this notification's rows (called when its first request is sent)."""
        with self._lock:
            if notification_id not in self.tracked:
                self.tracked[notification_id] = Tracked()
                self._open[notification_id] = None
                self._idle.clear()

    def forget(self, notification_id: str) -> None:
        """Stop waiting for it: its request was refused, so no row will come."""
        with self._lock:
            self.tracked.pop(notification_id, None)
            self._open.pop(notification_id, None)
            if not self._open:
                self._idle.set()

    def wait(self, timeout: float) -> bool:
        """True once every watched notification is done; False after ``timeout`` seconds."""
        return self._idle.wait(timeout)

    def still_open(self) -> list[str]:
        """The watched notifications not done yet, oldest first."""
        with self._lock:
            return list(self._open)

    @property
    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def _poll(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self._round()
            except Exception as exc:  # noqa: BLE001  reported by the caller, who waits on it
                self.error = exc
            self._stop.wait(max(0.0, self._interval - (time.monotonic() - began)))

    def _round(self) -> None:
        with self._lock:
            ids = list(self._open)[:MAX_IDS]
        if not ids:
            return
        rows = sorted(self._read(ids), key=lambda row: row.at)
        self.queries += 1
        with self._lock:
            for row in rows:
                if row.notification_id in self._open:
                    self.tracked[row.notification_id].see(row)
            for nid in ids:
                if nid in self._open and self.tracked[nid].done(self._updates):
                    del self._open[nid]
            if not self._open:
                self._idle.set()
