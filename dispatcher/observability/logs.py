"""Logging: plain text for a terminal, or one JSON object per line for a log pipeline
(``DISPATCHER_LOG_FORMAT=json``).

Every line carries the context it was written in, from context variables: ``request_id``
(the API: ``X-Request-ID`` when the caller sent a sane one, else generated), ``notification_id``
and ``chunk`` (a worker's batch: the notifications and the queue messages in it) and
``user_id`` (a row's outcome, a user's request). A field a call passes in ``extra`` wins over
the context's. asyncio tasks copy the context when they start, so what a batch or a request
binds stays with it and the tasks it starts.

JSON lines have ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``process`` (the
pid: ``dispatcher serve`` runs worker processes beside the API's), the context's
fields, the call's ``extra`` fields, and ``exception`` (the traceback) when there is one.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal

from dispatcher.model import DeliveryStatus, RowState

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "bind", "bind_batch", "configure", "failed_deliveries"]

CONTEXT_FIELDS = ("request_id", "notification_id", "chunk", "user_id")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"dispatcher_log_{name}", default=None) for name in CONTEXT_FIELDS}

#: At most this many ids are listed in a batch's ``notification_id``/``chunk`` (then ``…``).
_MAX_LISTED = 10

# What every LogRecord has: anything else on a record came from ``extra`` (uvicorn's
# ``color_message`` is the message again, with terminal colours).
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"}

log = logging.getLogger("dispatcher.delivery")


def configure(level: str = "info", fmt: Literal["text", "json"] | str = "text") -> None:
    """Set up the root logger once for the process, on stderr (the CLI calls this first,
    before the settings are read: an unknown ``fmt`` is text, with a warning)."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = fmt.strip().lower()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python's warnings and an uncaught exception's traceback as log lines too, so that with
    # json every line of stderr is one object.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    if fmt not in ("json", "text"):
        logging.getLogger("dispatcher").warning(
            "DISPATCHER_LOG_FORMAT=%r is neither text nor json: text it is", fmt)


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("dispatcher").critical("uncaught %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb))


def bind(**fields: str | None) -> None:
    """Put ``fields`` (of :data:`CONTEXT_FIELDS`) in the current context, for every line the
    current task (and the tasks it starts) writes from now on."""
    for name, value in fields.items():
        _context[name].set(value)


def bind_batch(chunks: Iterable[tuple[str, str | None]]) -> None:
    """A worker's batch: ``(queue message id, notification id or None)`` per chunk message."""
    pairs = list(chunks)
    notifications = list(dict.fromkeys(n for _, n in pairs if n))
    bind(chunk=_listed([m for m, _ in pairs]), notification_id=_listed(notifications))


def _listed(ids: list[str]) -> str | None:
    if not ids:
        return None
    more = ",…" if len(ids) > _MAX_LISTED else ""
    return ",".join(ids[:_MAX_LISTED]) + more


def context() -> dict[str, str]:
    """The context's fields that are set."""
    return {name: value for name, var in _context.items() if (value := var.get()) is not None}


def failed_deliveries(rows: Iterable[RowState]) -> None:
    """A WARNING for each failed row among ``rows``, with its reason and detail."""
    for row in rows:
        if row.status == DeliveryStatus.FAILED:
            reason = row.reason.value if row.reason else "unknown"
            log.warning("delivery failed: %s to %s: %s (%s)", row.key.channel, row.key.user_id,
                        reason, row.detail or "no detail",
                        extra={"notification_id": row.key.notification_id, "user_id": row.key.user_id,
                               "channel": row.key.channel, "reason": reason, "detail": row.detail})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
            "process": record.process}
        line.update(context())
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    """The classic line, with the context's ids at its end (``[request_id=… chunk=…]``)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = context()
        if fields:
            head, newline, rest = text.partition("\n")
            text = head + " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]" + newline + rest
        return text
